//! TLS and authentication of the NATS connection: [`NatsAuth`] and how [`NatsConfig`]'s TLS
//! settings become `async-nats` options.
//!
//! TLS is required (never negotiated away) when any URL is `tls://` or `wss://`, or when
//! [`NatsConfig::require_tls`] is set: the client then upgrades right after the server's `INFO`
//! and refuses a server that does not speak TLS, so `CONNECT` (with its credentials) and every
//! message only ever cross an encrypted connection. TLS settings without TLS being required are
//! refused rather than ignored.

use async_nats::{ConnectOptions, ServerAddr};

use super::NatsConfig;
use crate::BackplaneError;

/// How the client authenticates to NATS. `Debug` never shows a secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum NatsAuth {
    /// No credentials (or the ones in the URL).
    #[default]
    None,
    /// `authorization { token: … }`.
    Token(String),
    /// `authorization { user: …, password: … }`.
    UserPassword { user: String, password: String },
    /// An nkey seed (`SU…`): the server knows the public key, the client signs its nonce.
    NKey(String),
    /// The text of a `.creds` file: a user JWT and its nkey seed (decentralized auth).
    Credentials(String),
}

impl NatsAuth {
    /// An nkey seed, checked now so that a bad one fails at start, not at every reconnect.
    pub fn nkey(seed: impl Into<String>) -> Result<Self, BackplaneError> {
        let seed = seed.into();
        nkeys::KeyPair::from_seed(&seed).map_err(|_| {
            BackplaneError::Invalid("not an nkey seed (expected one line starting with S)".into())
        })?;
        Ok(Self::NKey(seed))
    }

    /// The contents of a `.creds` file, checked now like [`nkey`](Self::nkey).
    pub fn credentials(creds: impl Into<String>) -> Result<Self, BackplaneError> {
        let creds = creds.into();
        ConnectOptions::with_credentials(&creds).map_err(|_| {
            BackplaneError::Invalid(
                "not a NATS credentials file (expected a user JWT and an nkey seed)".into(),
            )
        })?;
        Ok(Self::Credentials(creds))
    }

    /// What kind of authentication this is, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Token(_) => "token",
            Self::UserPassword { .. } => "user/password",
            Self::NKey(_) => "nkey",
            Self::Credentials(_) => "credentials",
        }
    }

    fn apply(&self, options: ConnectOptions) -> Result<ConnectOptions, BackplaneError> {
        Ok(match self {
            Self::None => options,
            Self::Token(token) => options.token(token.clone()),
            Self::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.clone())
            }
            Self::NKey(seed) => options.nkey(seed.clone()),
            Self::Credentials(creds) => options
                .credentials(creds)
                .map_err(|_| BackplaneError::Invalid("not a NATS credentials file".into()))?,
        })
    }
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UserPassword { user, .. } => f
                .debug_struct("UserPassword")
                .field("user", user)
                .field("password", &"***")
                .finish(),
            other => write!(f, "{}", other.kind()),
        }
    }
}

/// Whether the client must use TLS with every server of `addrs` under `config`.
pub(super) fn tls_required(config: &NatsConfig, addrs: &[ServerAddr]) -> bool {
    config.require_tls || addrs.iter().any(|a| matches!(a.scheme(), "tls" | "wss"))
}

/// Applies TLS and authentication to `options`, refusing combinations that would not be what
/// they look like.
pub(super) fn apply(
    config: &NatsConfig,
    addrs: &[ServerAddr],
    mut options: ConnectOptions,
) -> Result<ConnectOptions, BackplaneError> {
    let required = tls_required(config, addrs);
    if required {
        if let Some(ws) = addrs.iter().find(|a| a.scheme() == "ws") {
            return Err(BackplaneError::Invalid(format!(
                "TLS is required but {} is a plaintext WebSocket URL: use wss://",
                protocol::redact_url(ws.as_url_str())
            )));
        }
        options = options.require_tls(true);
    }
    if let Some(tls) = &config.tls {
        if !required {
            return Err(BackplaneError::Invalid(
                "TLS settings were given but TLS is not required: use tls:// URLs or require_tls"
                    .into(),
            ));
        }
        options = options.tls_client_config(async_nats::rustls::ClientConfig::clone(tls));
    }
    if config.auth != NatsAuth::None
        && let Some(with_user) = addrs.iter().find(|a| a.has_user_pass())
    {
        return Err(BackplaneError::Invalid(format!(
            "{} carries credentials and {} authentication is configured too: give them once",
            protocol::redact_url(with_user.as_url_str()),
            config.auth.kind()
        )));
    }
    config.auth.apply(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_secrets() {
        let auths = [
            NatsAuth::Token("tok-secret".into()),
            NatsAuth::UserPassword {
                user: "gw".into(),
                password: "pw-secret".into(),
            },
            NatsAuth::NKey("SU-secret".into()),
            NatsAuth::Credentials("creds-secret".into()),
        ];
        for auth in auths {
            let debug = format!("{auth:?}");
            assert!(!debug.contains("secret"), "{debug}");
        }
    }

    #[test]
    fn seeds_and_creds_files_are_checked_at_once() {
        let user = nkeys::KeyPair::new_user();
        let seed = user.seed().unwrap();
        assert_eq!(NatsAuth::nkey(seed.clone()).unwrap(), NatsAuth::NKey(seed));
        let err = NatsAuth::nkey("SUNOTASEED").unwrap_err().to_string();
        assert!(!err.contains("SUNOTASEED"), "{err}");
        assert!(NatsAuth::nkey(user.public_key()).is_err(), "a public key");

        // The layout `nsc` writes: a user JWT, then the user's seed. The JWT is only parsed
        // here (the server checks its signature chain); the seed must be a real one.
        let creds = format!(
            "-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.c2ln\n\
             ------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        );
        assert!(matches!(
            NatsAuth::credentials(creds),
            Ok(NatsAuth::Credentials(_))
        ));
        let err = NatsAuth::credentials("token-secret-not-creds")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("token-secret"), "{err}");
    }
}
