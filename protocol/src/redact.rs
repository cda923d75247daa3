//! Printing backend URLs without their credentials.
//!
//! Redis and NATS URLs may carry a password (`redis://user:pw@host`, `nats://user:pw@host`); logs,
//! `Debug` output and error messages show them through [`redact_url`].

/// `url` with everything between `://` and the last `@` replaced by `***`: the user and password
/// of a `scheme://user:password@host` URL. A URL without credentials is returned unchanged. An
/// `@` later in the URL (a query) masks more than needed, never less.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        // No scheme (`user:pw@host:4222` is a valid NATS address): mask up to the `@`.
        (None, Some(at)) => format!("***{}", &url[at..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_masked() {
        assert_eq!(
            redact_url("redis://user:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        assert_eq!(
            redact_url("rediss://:p@ss@host:1"),
            "rediss://***@host:1",
            "an unencoded @ in the password"
        );
        assert_eq!(redact_url("tls://u:pw@h:4222"), "tls://***@h:4222");
        assert_eq!(redact_url("u:pw@h:4222"), "***@h:4222");
        assert_eq!(redact_url("h:4222"), "h:4222");
    }
}
