//! How [`Subject`]s become NATS subjects.
//!
//! Layout under the configured prefix `{p}` (default `gw`):
//! - `{p}.t.<encoded topic>`: topic messages
//! - `{p}.s.<session id>`: direct messages for one session (ids are lowercase hex already)
//! - `{p}.hb`: heartbeats
//! - `{p}.ctl.<encoded pod name>`: commands for one pod
//! - `{p}.rtt.<nonce>`: private round-trip probes (see `NatsBackplane::subscribe`)
//!
//! Encoding of topic and pod names ("~XX" escaping): every byte outside `[A-Za-z0-9_-]` becomes
//! `~` followed by two uppercase hex digits, so `chat.room:1` is `chat~2Eroom~3A1`. Why this one:
//! - `.` (NATS's token separator), `*` and `>` (wildcards) and whitespace can never survive, so a
//!   name is always exactly one token and can never widen or split a subscription;
//! - `~` is itself escaped, so the escape is unambiguous and the mapping is injective (proved
//!   below by a round-trip property test: [`decode_token`] inverts [`encode_token`]);
//! - names made only of the common characters stay readable with `nats sub 'gw.t.>'`.
//!
//! The empty string (possible for a pod name, never for a topic) encodes as a lone `~`, which
//! no other name produces because an escape in a non-empty name always has two hex digits.

use crate::{BackplaneError, Subject};

/// Subjects longer than this are refused: the server's default maximum control line is 4 KiB
/// and exceeding it would make the server drop the whole connection, not just this message.
pub const MAX_SUBJECT_LEN: usize = 1024;

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Encodes any string as one NATS subject token (see the module docs).
pub fn encode_token(name: &str) -> String {
    if name.is_empty() {
        return "~".to_owned();
    }
    let mut out = String::with_capacity(name.len());
    for &b in name.as_bytes() {
        if is_plain(b) {
            out.push(char::from(b));
        } else {
            out.push('~');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

/// Inverts [`encode_token`]; `None` if `token` is not an encoding of any string.
pub fn decode_token(token: &str) -> Option<String> {
    if token == "~" {
        return Some(String::new());
    }
    if token.is_empty() {
        return None;
    }
    let hex = |b: u8| {
        HEX.iter()
            .position(|&h| h == b)
            .and_then(|v| u8::try_from(v).ok())
    };
    let mut bytes = Vec::with_capacity(token.len());
    let mut it = token.bytes();
    while let Some(b) = it.next() {
        if b == b'~' {
            let hi = hex(it.next()?)?;
            let lo = hex(it.next()?)?;
            let decoded = (hi << 4) | lo;
            // A plain byte written as an escape is not canonical: refuse it, so that each string
            // has exactly one encoding.
            if is_plain(decoded) {
                return None;
            }
            bytes.push(decoded);
        } else if is_plain(b) {
            bytes.push(b);
        } else {
            return None;
        }
    }
    String::from_utf8(bytes).ok()
}

/// Checks a subject prefix: one or more `.`-separated tokens of `[A-Za-z0-9_-]`.
pub fn validate_prefix(prefix: &str) -> Result<(), BackplaneError> {
    let ok = !prefix.is_empty()
        && prefix
            .split('.')
            .all(|t| !t.is_empty() && t.bytes().all(is_plain));
    if ok {
        Ok(())
    } else {
        Err(BackplaneError::Invalid(format!(
            "subject prefix {prefix:?} must be dot-separated tokens of A-Z a-z 0-9 _ -"
        )))
    }
}

/// The NATS subject for `subject` under `prefix` (already validated).
pub fn nats_subject(prefix: &str, subject: &Subject) -> Result<String, BackplaneError> {
    let s = match subject {
        Subject::Topic(t) => format!("{prefix}.t.{}", encode_token(t.as_str())),
        // Session ids are validated lowercase hex; encoding them anyway costs nothing and keeps
        // the one-token guarantee independent of that validation.
        Subject::Session(id) => format!("{prefix}.s.{}", encode_token(id.as_str())),
        Subject::Heartbeat => format!("{prefix}.hb"),
        Subject::Control(pod) => format!("{prefix}.ctl.{}", encode_token(pod)),
        Subject::Fleet => format!("{prefix}.fleet"),
    };
    if s.len() > MAX_SUBJECT_LEN {
        return Err(BackplaneError::Invalid(format!(
            "{subject} encodes to {} bytes, over {MAX_SUBJECT_LEN}",
            s.len()
        )));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use protocol::{SessionId, Topic};

    fn topic(name: &str) -> Subject {
        Subject::Topic(Topic::new(name).expect("valid topic"))
    }

    #[test]
    fn examples() {
        assert_eq!(encode_token("chat.room:1"), "chat~2Eroom~3A1");
        assert_eq!(encode_token("a_b-C9"), "a_b-C9");
        assert_eq!(encode_token("~"), "~7E");
        assert_eq!(encode_token(""), "~");
        assert_eq!(encode_token("pod *>"), "pod~20~2A~3E");
        assert_eq!(nats_subject("gw", &topic("a.b")).unwrap(), "gw.t.a~2Eb");
        assert_eq!(nats_subject("gw", &Subject::Heartbeat).unwrap(), "gw.hb");
        assert_eq!(nats_subject("gw", &Subject::Fleet).unwrap(), "gw.fleet");
        let id = SessionId::generate();
        assert_eq!(
            nats_subject("x.y", &Subject::Session(id.clone())).unwrap(),
            format!("x.y.s.{id}")
        );
        assert_eq!(
            nats_subject("gw", &Subject::Control("p.1".into())).unwrap(),
            "gw.ctl.p~2E1"
        );
    }

    #[test]
    fn non_canonical_tokens_do_not_decode() {
        for bad in ["", "~4", "~2e", "~41", "a.b", "~~", "a b", "~ZZ"] {
            assert_eq!(decode_token(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn prefixes() {
        for good in ["gw", "prod.gw", "a-b_c.D9"] {
            assert!(validate_prefix(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "gw.", ".gw", "g w", "gw.*", "gw.>", "a..b", "gw~"] {
            assert!(validate_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn oversized_subjects_are_refused() {
        let pod = "p".repeat(MAX_SUBJECT_LEN);
        assert!(matches!(
            nats_subject("gw", &Subject::Control(pod)),
            Err(BackplaneError::Invalid(_))
        ));
        // The longest topic that could exist still fits, even when every byte is escaped.
        let worst = ".".repeat(Topic::MAX_LEN);
        assert!(nats_subject("gw", &topic(&worst)).is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Injectivity: `decode_token` is a left inverse of `encode_token`, so two different
        /// names can never share an encoding.
        #[test]
        fn round_trip(name in any::<String>()) {
            let token = encode_token(&name);
            prop_assert_eq!(decode_token(&token), Some(name));
        }

        /// Every encoding is exactly one token with no separator, wildcard or whitespace.
        #[test]
        fn one_safe_token(name in any::<String>()) {
            let token = encode_token(&name);
            prop_assert!(!token.is_empty());
            prop_assert!(token.bytes().all(|b| is_plain(b) || b == b'~'));
        }

        #[test]
        fn distinct_topics_get_distinct_subjects(
            a in "[A-Za-z0-9_.:-]{1,200}",
            b in "[A-Za-z0-9_.:-]{1,200}",
        ) {
            let (sa, sb) = (
                nats_subject("gw", &topic(&a)).unwrap(),
                nats_subject("gw", &topic(&b)).unwrap(),
            );
            prop_assert_eq!(sa.split('.').count(), 3);
            prop_assert_eq!(a == b, sa == sb);
        }

        /// Near-collisions a random search would rarely hit: names that differ only in which
        /// punctuation joins the same parts.
        #[test]
        fn separators_never_collide(
            parts in proptest::collection::vec("[A-Za-z0-9]{0,4}", 1..5),
            seps in proptest::collection::vec(prop_oneof![Just('.'), Just(':'), Just('_'), Just('-')], 4),
        ) {
            let names: Vec<String> = seps
                .iter()
                .map(|sep| parts.join(&sep.to_string()))
                .collect();
            for x in &names {
                for y in &names {
                    prop_assert_eq!(x == y, encode_token(x) == encode_token(y));
                }
            }
        }
    }
}
