//! Flags of the connections to Redis and NATS: TLS and credentials (see
//! `docs/operations.md`, "TLS and credentials").
//!
//! Rules, checked by [`BackendConfig::validate`] before anything binds:
//! - TLS is asked for by the URL: `rediss://` (also `rediss-cluster://`, `rediss-sentinel://`)
//!   for Redis; `tls://`/`wss://` URLs or `--nats-require-tls` for NATS. A TLS flag without TLS
//!   being asked for, or a credential flag without the backend, is an error: nothing is ignored.
//! - A URL scheme the binary cannot honour is an error naming the flag.
//! - Credentials are given once: in the URL or in a file flag, not both; one NATS method.
//!
//! Files are read once, at start, by [`BackendConfig::redis`] and [`BackendConfig::nats`]
//! (secrets without their trailing newlines, a `.creds` file as is); a missing, unreadable or
//! malformed one fails the start with the flag and path in the message.
//! Secrets go straight into the backend configurations, whose `Debug` masks them: this struct
//! holds only paths and names.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use backplane::{NatsAuth, NatsConfig};
use clap::Args;
use protocol::redact_url;
use session_store::{RedisConfig, RedisTls};

use super::tls::{FileFlag, TlsFiles, client_config, read_secret, read_text};

/// Redis URL schemes the store honours (TLS ones through rustls).
const REDIS_SCHEMES: [&str; 6] = [
    "redis",
    "rediss",
    "redis-cluster",
    "rediss-cluster",
    "redis-sentinel",
    "rediss-sentinel",
];

#[derive(Debug, Clone, Default, Args)]
pub struct BackendConfig {
    /// PEM CA certificates that verify Redis's certificate (`rediss://`), instead of the
    /// system's roots.
    #[arg(long, env = "GATEWAY_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// PEM client certificate (chain) for Redis mTLS; needs --redis-client-key.
    #[arg(long, env = "GATEWAY_REDIS_CLIENT_CERT")]
    pub redis_client_cert: Option<PathBuf>,

    /// PEM private key of --redis-client-cert.
    #[arg(long, env = "GATEWAY_REDIS_CLIENT_KEY")]
    pub redis_client_key: Option<PathBuf>,

    /// Name Redis's certificate is verified against (and sent as SNI) instead of the host
    /// dialled: for a URL by IP, cluster nodes and Sentinel primaries announced by IP.
    #[arg(long, env = "GATEWAY_REDIS_TLS_SERVER_NAME")]
    pub redis_tls_server_name: Option<String>,

    /// Redis ACL user (default: the URL's, else `default`).
    #[arg(long, env = "GATEWAY_REDIS_USERNAME")]
    pub redis_username: Option<String>,

    /// File holding the Redis password (`requirepass` or the ACL user's).
    #[arg(long, env = "GATEWAY_REDIS_PASSWORD_FILE")]
    pub redis_password_file: Option<PathBuf>,

    /// PEM CA certificates that verify the NATS servers' certificates, instead of the system's
    /// roots. Needs TLS: tls:// URLs or --nats-require-tls.
    #[arg(long, env = "GATEWAY_NATS_CA_FILE")]
    pub nats_ca_file: Option<PathBuf>,

    /// PEM client certificate (chain) for NATS mTLS (`verify: true`); needs --nats-client-key.
    #[arg(long, env = "GATEWAY_NATS_CLIENT_CERT")]
    pub nats_client_cert: Option<PathBuf>,

    /// PEM private key of --nats-client-cert.
    #[arg(long, env = "GATEWAY_NATS_CLIENT_KEY")]
    pub nats_client_key: Option<PathBuf>,

    /// Use TLS with every NATS server, also with nats:// URLs; refuse servers without TLS.
    #[arg(long, env = "GATEWAY_NATS_REQUIRE_TLS")]
    pub nats_require_tls: bool,

    /// NATS `.creds` file (user JWT and nkey seed).
    #[arg(long, env = "GATEWAY_NATS_CREDS_FILE")]
    pub nats_creds_file: Option<PathBuf>,

    /// File holding a NATS token.
    #[arg(long, env = "GATEWAY_NATS_TOKEN_FILE")]
    pub nats_token_file: Option<PathBuf>,

    /// File holding a NATS nkey seed (`SU…`).
    #[arg(long, env = "GATEWAY_NATS_NKEY_FILE")]
    pub nats_nkey_file: Option<PathBuf>,

    /// NATS user; needs --nats-password-file.
    #[arg(long, env = "GATEWAY_NATS_USER")]
    pub nats_user: Option<String>,

    /// File holding the password of --nats-user.
    #[arg(long, env = "GATEWAY_NATS_PASSWORD_FILE")]
    pub nats_password_file: Option<PathBuf>,
}

/// A backend connection setting that cannot work, or a file that cannot be used. Messages
/// name the flag; URLs in them are redacted; file contents never appear.
#[derive(Debug, thiserror::Error)]
pub enum BackendConfigError {
    #[error("--{flag}: scheme {scheme:?} is not supported (use one of {allowed})")]
    Scheme {
        flag: &'static str,
        scheme: String,
        allowed: &'static str,
    },
    #[error("--{flag} needs {needs}")]
    Requires {
        flag: &'static str,
        needs: &'static str,
    },
    #[error(
        "--{flag} is a TLS setting but the connection would be plaintext ({url}): {fix}; TLS \
         settings are never ignored"
    )]
    NotTls {
        flag: &'static str,
        url: String,
        fix: &'static str,
    },
    #[error("--{flag}: {url} already carries credentials; give them in one place")]
    Twice { flag: &'static str, url: String },
    #[error("--{a} and --{b} are both set: choose one NATS authentication")]
    Conflict { a: &'static str, b: &'static str },
    #[error("--{flag} {}: {reason}", path.display())]
    File {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("--{flag} {name:?} is not a DNS name or an IP address")]
    ServerName { flag: &'static str, name: String },
    #[error("--{key} does not fit --{cert}: {reason}")]
    ClientKey {
        cert: &'static str,
        key: &'static str,
        reason: String,
    },
    #[error("no system root certificates found to verify the server: set --{flag}")]
    NoSystemRoots { flag: &'static str },
    #[error("TLS configuration: {0}")]
    Tls(String),
}

type Result<T> = std::result::Result<T, BackendConfigError>;

/// The scheme of `url` (`""` when it has none).
fn scheme(url: &str) -> &str {
    url.split_once("://").map_or("", |(s, _)| s)
}

/// Whether `url` may carry a user or password. Any `@` counts: an unencoded `/` in a password
/// would hide it from a stricter look at the authority.
fn has_userinfo(url: &str) -> bool {
    url.split_once("://").map_or(url, |(_, r)| r).contains('@')
}

fn redis_uses_tls(url: &str) -> bool {
    scheme(url).starts_with("rediss")
}

/// Whether NATS TLS is asked for: `--nats-require-tls`, or a `tls://` or `wss://` URL (which
/// makes the client require it from every server).
fn nats_asks_tls(require: bool, urls: &[String]) -> bool {
    require || urls.iter().any(|u| matches!(scheme(u), "tls" | "wss"))
}

fn requires(flag: &'static str, needs: &'static str) -> BackendConfigError {
    BackendConfigError::Requires { flag, needs }
}

impl BackendConfig {
    /// Rejects contradictions and unsupported schemes (no file is read here).
    pub fn validate(&self, redis_url: Option<&str>, nats_urls: &[String]) -> Result<()> {
        self.validate_redis(redis_url)?;
        self.validate_nats(nats_urls)
    }

    fn redis_tls_flags(&self) -> [(&'static str, bool); 4] {
        [
            ("redis-ca-file", self.redis_ca_file.is_some()),
            ("redis-client-cert", self.redis_client_cert.is_some()),
            ("redis-client-key", self.redis_client_key.is_some()),
            (
                "redis-tls-server-name",
                self.redis_tls_server_name.is_some(),
            ),
        ]
    }

    fn validate_redis(&self, url: Option<&str>) -> Result<()> {
        let tls_flag = self.redis_tls_flags().into_iter().find(|(_, set)| *set);
        let credential_flag = [
            ("redis-username", self.redis_username.is_some()),
            ("redis-password-file", self.redis_password_file.is_some()),
        ]
        .into_iter()
        .find(|(_, set)| *set);
        let Some(url) = url else {
            if let Some((flag, _)) = tls_flag.or(credential_flag) {
                return Err(requires(flag, "--redis-url"));
            }
            return Ok(());
        };
        let s = scheme(url);
        if !REDIS_SCHEMES.contains(&s) {
            return Err(BackendConfigError::Scheme {
                flag: "redis-url",
                scheme: s.to_owned(),
                allowed: "redis://, rediss://, redis-cluster://, rediss-cluster://, \
                          redis-sentinel://, rediss-sentinel://",
            });
        }
        if let Some((flag, _)) = tls_flag
            && !redis_uses_tls(url)
        {
            return Err(BackendConfigError::NotTls {
                flag,
                url: redact_url(url),
                fix: "use rediss:// (rediss-cluster://, rediss-sentinel://)",
            });
        }
        match (&self.redis_client_cert, &self.redis_client_key) {
            (Some(_), None) => return Err(requires("redis-client-cert", "--redis-client-key")),
            (None, Some(_)) => return Err(requires("redis-client-key", "--redis-client-cert")),
            _ => {}
        }
        if let Some((flag, _)) = credential_flag
            && has_userinfo(url)
        {
            return Err(BackendConfigError::Twice {
                flag,
                url: redact_url(url),
            });
        }
        if self.redis_username.is_some() && self.redis_password_file.is_none() {
            return Err(requires("redis-username", "--redis-password-file"));
        }
        Ok(())
    }

    fn validate_nats(&self, urls: &[String]) -> Result<()> {
        let tls_flag = [
            ("nats-ca-file", self.nats_ca_file.is_some()),
            ("nats-client-cert", self.nats_client_cert.is_some()),
            ("nats-client-key", self.nats_client_key.is_some()),
            ("nats-require-tls", self.nats_require_tls),
        ]
        .into_iter()
        .find(|(_, set)| *set);
        let auth = self.nats_auth_flags();
        let auth_flag = auth.first().copied();
        if urls.is_empty() {
            if let Some(flag) = tls_flag.map(|(f, _)| f).or(auth_flag) {
                return Err(requires(flag, "--nats-url"));
            }
            return Ok(());
        }
        for url in urls {
            let s = scheme(url);
            if !matches!(s, "" | "nats" | "tls" | "ws" | "wss") {
                return Err(BackendConfigError::Scheme {
                    flag: "nats-url",
                    scheme: s.to_owned(),
                    allowed: "nats://, tls://, ws://, wss:// or host:port",
                });
            }
        }
        let asks_tls = nats_asks_tls(self.nats_require_tls, urls);
        if asks_tls && let Some(ws) = urls.iter().find(|u| scheme(u) == "ws") {
            return Err(BackendConfigError::NotTls {
                flag: "nats-url",
                url: redact_url(ws),
                fix: "a ws:// server is never upgraded to TLS, use wss://",
            });
        }
        if let Some((flag, _)) = tls_flag
            && !asks_tls
        {
            return Err(BackendConfigError::NotTls {
                flag,
                url: redact_url(&urls[0]),
                fix: "use tls:// URLs or --nats-require-tls",
            });
        }
        match (&self.nats_client_cert, &self.nats_client_key) {
            (Some(_), None) => return Err(requires("nats-client-cert", "--nats-client-key")),
            (None, Some(_)) => return Err(requires("nats-client-key", "--nats-client-cert")),
            _ => {}
        }
        match (&self.nats_user, &self.nats_password_file) {
            (Some(_), None) => return Err(requires("nats-user", "--nats-password-file")),
            (None, Some(_)) => return Err(requires("nats-password-file", "--nats-user")),
            _ => {}
        }
        if let [a, b, ..] = auth[..] {
            return Err(BackendConfigError::Conflict { a, b });
        }
        if let Some(flag) = auth_flag
            && let Some(url) = urls.iter().find(|u| has_userinfo(u))
        {
            return Err(BackendConfigError::Twice {
                flag,
                url: redact_url(url),
            });
        }
        Ok(())
    }

    /// The NATS authentication flags that are set (user and password count as one).
    fn nats_auth_flags(&self) -> Vec<&'static str> {
        [
            ("nats-creds-file", self.nats_creds_file.is_some()),
            ("nats-token-file", self.nats_token_file.is_some()),
            ("nats-nkey-file", self.nats_nkey_file.is_some()),
            (
                "nats-user",
                self.nats_user.is_some() || self.nats_password_file.is_some(),
            ),
        ]
        .into_iter()
        .filter_map(|(flag, set)| set.then_some(flag))
        .collect()
    }

    /// Reads the Redis credential and TLS files into `redis` (whose URL is set).
    pub fn redis(&self, redis: &mut RedisConfig) -> Result<()> {
        self.validate_redis(Some(&redis.url))?;
        redis.username = self.redis_username.clone();
        if let Some(path) = &self.redis_password_file {
            redis.password = Some(read_secret(("redis-password-file", path))?);
        }
        if redis_uses_tls(&redis.url) {
            let client = client_config(TlsFiles {
                ca_flag: "redis-ca-file",
                ca: self.redis_ca_file.as_deref(),
                client: client_files(
                    ("redis-client-cert", &self.redis_client_cert),
                    ("redis-client-key", &self.redis_client_key),
                ),
                verify_as: self
                    .redis_tls_server_name
                    .as_deref()
                    .map(|n| ("redis-tls-server-name", n)),
            })?;
            redis.tls = Some(RedisTls {
                client: Arc::new(client),
                server_name: self.redis_tls_server_name.clone(),
            });
        }
        Ok(())
    }

    /// Reads the NATS credential and TLS files into `nats` (whose URLs are set).
    pub fn nats(&self, nats: &mut NatsConfig) -> Result<()> {
        self.validate_nats(&nats.urls)?;
        let backend = |flag: &'static str, path: &Path, e: backplane::BackplaneError| {
            let reason = match e {
                backplane::BackplaneError::Invalid(reason) => reason,
                other => other.to_string(),
            };
            BackendConfigError::File {
                flag,
                path: path.to_owned(),
                reason,
            }
        };
        nats.auth = if let Some(path) = &self.nats_creds_file {
            let flag = ("nats-creds-file", path.as_path());
            NatsAuth::credentials(read_text(flag)?).map_err(|e| backend(flag.0, path, e))?
        } else if let Some(path) = &self.nats_token_file {
            NatsAuth::Token(read_secret(("nats-token-file", path))?)
        } else if let Some(path) = &self.nats_nkey_file {
            let flag = ("nats-nkey-file", path.as_path());
            NatsAuth::nkey(read_secret(flag)?).map_err(|e| backend(flag.0, path, e))?
        } else if let (Some(user), Some(path)) = (&self.nats_user, &self.nats_password_file) {
            NatsAuth::UserPassword {
                user: user.clone(),
                password: read_secret(("nats-password-file", path))?,
            }
        } else {
            NatsAuth::None
        };
        nats.require_tls = self.nats_require_tls;
        if nats_asks_tls(self.nats_require_tls, &nats.urls) {
            let client = client_config(TlsFiles {
                ca_flag: "nats-ca-file",
                ca: self.nats_ca_file.as_deref(),
                client: client_files(
                    ("nats-client-cert", &self.nats_client_cert),
                    ("nats-client-key", &self.nats_client_key),
                ),
                verify_as: None,
            })?;
            nats.tls = Some(Arc::new(client));
        }
        Ok(())
    }
}

fn client_files<'a>(
    cert: (&'static str, &'a Option<PathBuf>),
    key: (&'static str, &'a Option<PathBuf>),
) -> Option<(FileFlag<'a>, FileFlag<'a>)> {
    match (cert.1, key.1) {
        (Some(c), Some(k)) => Some(((cert.0, c.as_path()), (key.0, k.as_path()))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(b: &BackendConfig, redis: Option<&str>, nats: &[&str]) -> String {
        let nats: Vec<String> = nats.iter().map(|s| s.to_string()).collect();
        b.validate(redis, &nats).unwrap_err().to_string()
    }

    #[test]
    fn tls_flags_need_a_tls_url() {
        let b = BackendConfig {
            redis_ca_file: Some("ca.pem".into()),
            ..Default::default()
        };
        let e = err(&b, Some("redis://:pw-secret@127.0.0.1:6379"), &[]);
        assert!(e.starts_with("--redis-ca-file is a TLS setting"), "{e}");
        assert!(!e.contains("pw-secret"), "{e}");
        assert!(b.validate(Some("rediss://127.0.0.1:6379"), &[]).is_ok());
        assert!(b.validate(Some("rediss-cluster://h:1"), &[]).is_ok());
        assert_eq!(err(&b, None, &[]), "--redis-ca-file needs --redis-url");

        let b = BackendConfig {
            nats_ca_file: Some("ca.pem".into()),
            ..Default::default()
        };
        let e = err(&b, None, &["nats://127.0.0.1:4222"]);
        assert!(e.starts_with("--nats-ca-file is a TLS setting"), "{e}");
        let urls = ["tls://127.0.0.1:4222".to_owned()];
        assert!(b.validate(None, &urls).is_ok());
        let require = BackendConfig {
            nats_require_tls: true,
            ..b.clone()
        };
        assert!(
            require
                .validate(None, &["nats://127.0.0.1:4222".into()])
                .is_ok()
        );
        let e = err(&require, None, &["ws://127.0.0.1:8080"]);
        assert!(e.contains("use wss://"), "{e}");
    }

    #[test]
    fn schemes_the_binary_cannot_honour_are_refused() {
        let b = BackendConfig::default();
        let e = err(&b, Some("redis+unix:///tmp/redis.sock"), &[]);
        assert!(e.starts_with("--redis-url: scheme \"redis+unix\""), "{e}");
        let e = err(&b, Some("127.0.0.1:6379"), &[]);
        assert!(e.starts_with("--redis-url: scheme \"\""), "{e}");
        let e = err(&b, None, &["http://127.0.0.1:4222"]);
        assert!(e.starts_with("--nats-url: scheme \"http\""), "{e}");
        assert!(b.validate(None, &["127.0.0.1:4222".into()]).is_ok());
    }

    #[test]
    fn credentials_are_given_once_and_in_pairs() {
        let b = BackendConfig {
            redis_password_file: Some("pw".into()),
            ..Default::default()
        };
        let e = err(&b, Some("redis://u:pw-secret@h:1"), &[]);
        assert!(
            e.starts_with("--redis-password-file: redis://***@h:1"),
            "{e}"
        );
        let b = BackendConfig {
            redis_username: Some("gw".into()),
            ..Default::default()
        };
        assert_eq!(
            err(&b, Some("redis://h:1"), &[]),
            "--redis-username needs --redis-password-file"
        );
        let b = BackendConfig {
            redis_client_cert: Some("c.pem".into()),
            ..Default::default()
        };
        assert_eq!(
            err(&b, Some("rediss://h:1"), &[]),
            "--redis-client-cert needs --redis-client-key"
        );
        let b = BackendConfig {
            nats_token_file: Some("t".into()),
            nats_user: Some("gw".into()),
            nats_password_file: Some("p".into()),
            ..Default::default()
        };
        assert_eq!(
            err(&b, None, &["nats://h:1"]),
            "--nats-token-file and --nats-user are both set: choose one NATS authentication"
        );
        let b = BackendConfig {
            nats_user: Some("gw".into()),
            ..Default::default()
        };
        assert_eq!(
            err(&b, None, &["nats://h:1"]),
            "--nats-user needs --nats-password-file"
        );
        let b = BackendConfig {
            nats_token_file: Some("t".into()),
            ..Default::default()
        };
        assert_eq!(err(&b, None, &[]), "--nats-token-file needs --nats-url");
        let e = err(&b, None, &["nats://a:b-secret@h:1"]);
        assert!(!e.contains("b-secret"), "{e}");
    }

    #[test]
    fn a_missing_file_fails_naming_the_flag() {
        let b = BackendConfig {
            redis_password_file: Some("/nonexistent/redis-password".into()),
            ..Default::default()
        };
        let mut redis = RedisConfig::new("redis://127.0.0.1:1");
        let e = b.redis(&mut redis).unwrap_err().to_string();
        assert!(
            e.starts_with("--redis-password-file /nonexistent/redis-password: "),
            "{e}"
        );
        let b = BackendConfig {
            nats_nkey_file: Some("/nonexistent/nkey".into()),
            ..Default::default()
        };
        let mut nats = NatsConfig::new(["nats://127.0.0.1:1"], "pod");
        let e = b.nats(&mut nats).unwrap_err().to_string();
        assert!(e.starts_with("--nats-nkey-file /nonexistent/nkey: "), "{e}");
    }
}
