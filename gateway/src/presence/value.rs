//! How a member is stored: the Redis hash value `<owner pod>|<expiry ms>|<tail>` (see
//! `redis`), whose tail is the user key alone, or `i<n>:<info><user key>` when the session has
//! `info` (`<n>`: the byte length of the info's compact JSON). A tail never starts with `i`
//! otherwise (user keys start with `u:` or `s:`), so members written before `info` existed
//! read as members without it. The Lua scripts (`lua/apply.lua`, `lua/sweep.lua`) write and
//! read the same form.

use protocol::Member;

/// The tail of a stored member: its user key, prefixed with its info when it has one. The
/// scripts write it (`tail` in `lua/apply.lua`); this twin pins the form down in tests.
#[cfg(test)]
pub fn encode_tail(user_key: &str, info: Option<&str>) -> String {
    match info {
        Some(info) => format!("i{}:{info}{user_key}", info.len()),
        None => user_key.to_owned(),
    }
}

/// The user key and info of a stored tail; `None` when the length prefix is broken.
pub fn decode_tail(tail: &str) -> Option<(&str, Option<&str>)> {
    let Some(rest) = tail.strip_prefix('i') else {
        return Some((tail, None));
    };
    let (len, rest) = rest.split_once(':')?;
    let len: usize = len.parse().ok()?;
    let info = rest.get(..len)?;
    Some((&rest[len..], Some(info)))
}

/// A stored member value: owner pod (empty when detached), expiry (ms), user key and info.
pub fn decode_value(value: &str) -> Option<(&str, &str, &str, Option<&str>)> {
    let mut parts = value.splitn(3, '|');
    let (owner, expiry, tail) = (parts.next()?, parts.next()?, parts.next()?);
    let (user, info) = decode_tail(tail)?;
    Some((owner, expiry, user, info))
}

/// The member a session, user key and stored info stand for. Info that is not JSON (never
/// written by a gateway) is left out rather than failing the whole list.
pub fn member_of(session: &str, user_key: &str, info: Option<&str>) -> Member {
    Member {
        user: user_key.strip_prefix("u:").map(str::to_owned),
        session: session.to_owned(),
        info: info.and_then(|i| serde_json::from_str(i).ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_without_info_read_as_before() {
        // Written by a pod from before `info`.
        assert_eq!(
            decode_value("pod-1|1700000000000|u:ann"),
            Some(("pod-1", "1700000000000", "u:ann", None))
        );
        assert_eq!(decode_value("|17|s:abc"), Some(("", "17", "s:abc", None)));
        // A user id with `|` in it stays whole.
        assert_eq!(decode_value("p|1|u:a|b"), Some(("p", "1", "u:a|b", None)));
        assert_eq!(encode_tail("u:ann", None), "u:ann");
    }

    #[test]
    fn info_round_trips_whatever_it_contains() {
        for info in [
            r#"{"name":"Ann"}"#,
            r#""a|b:c""#,
            "12",
            r#"["é","\n"]"#,
            "null",
        ] {
            for user in ["u:ann", "u:x|y", "s:abc", "u:i9:"] {
                let value = format!("pod|5|{}", encode_tail(user, Some(info)));
                assert_eq!(
                    decode_value(&value),
                    Some(("pod", "5", user, Some(info))),
                    "{value}"
                );
            }
        }
        assert_eq!(encode_tail("u:ann", Some("{}")), "i2:{}u:ann");
    }

    #[test]
    fn broken_prefixes_are_refused() {
        assert_eq!(decode_tail("i9:{}"), None);
        assert_eq!(decode_tail("ix:{}u:a"), None);
        assert_eq!(decode_tail("i2"), None);
        assert_eq!(decode_value("pod|5"), None);
    }

    #[test]
    fn members_carry_their_info() {
        let m = member_of("s1", "u:ann", Some(r#"{"name":"Ann"}"#));
        assert_eq!(m.user.as_deref(), Some("ann"));
        assert_eq!(m.info, Some(serde_json::json!({"name": "Ann"})));
        assert_eq!(member_of("s1", "s:s1", None).info, None);
        assert_eq!(member_of("s1", "s:s1", Some("not json")).info, None);
    }
}
