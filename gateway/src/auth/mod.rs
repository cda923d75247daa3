//! Authentication: JWT verification, topic grants and token minting.
//!
//! A client presents a JWT in `hello.token` (and later in `refresh`). [`Authenticator::verify`]
//! checks it against the configured keys, each with exactly one algorithm (see [`keys`]), then
//! `exp`/`nbf` (with a small leeway) and `iss`/`aud` when configured, and turns its `gw` claim
//! (or the configured defaults) into [`Grants`].
//!
//! Tokens are credentials: nothing here logs them, and neither [`Identity`] nor [`AuthError`]
//! contains token text in its `Debug` or `Display`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::{Deserialize, Serialize};

mod fetch;
mod jwks;
pub mod keys;
mod mint;
pub mod permissions;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_config;

use jwks::Jwks;
use keys::Key;
pub use mint::{TokenArgs, mint_from_args, mint_hs256};
pub use permissions::{Grants, InvalidPattern, TopicSet, check_pattern};

/// The environment variable holding an HS256 secret (an alternative to a secret file; never a
/// command-line value, which `ps` would show).
pub const SECRET_ENV: &str = "GATEWAY_JWT_SECRET";

/// Longest token accepted; a longer one is refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Longest `sub` accepted.
pub const MAX_SUB_LEN: usize = 256;

/// Who must present a token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// No authentication: everyone may subscribe and publish everywhere (embedded default).
    #[default]
    Off,
    /// A token is verified when given; anonymous clients get the anonymous grants.
    Optional,
    /// Every client needs a valid token.
    Required,
}

/// How to authenticate, mapped from the flags.
#[derive(Clone)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// A file holding the HS256 secret (trailing whitespace ignored).
    pub jwt_secret_file: Option<PathBuf>,
    /// The HS256 secret itself, read from [`SECRET_ENV`].
    pub jwt_secret_env: Option<String>,
    /// PEM public keys; RS256/ES256/ES384/EdDSA follows from each key's type.
    pub jwt_public_keys: Vec<PathBuf>,
    /// A JWKS URL, fetched at startup and every `jwks_refresh`.
    pub jwks_url: Option<String>,
    /// A JWKS file: the keys, or the starting copy when a URL is also given.
    pub jwks_file: Option<PathBuf>,
    pub jwks_refresh: Duration,
    /// Required `iss` when set.
    pub issuer: Option<String>,
    /// Required `aud` when set; without it tokens carrying an `aud` are still accepted.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    /// Refuse tokens without `exp` (they would never expire).
    pub require_exp: bool,
    /// Grants of authenticated users whose token has no `gw` claim.
    pub default_subscribe: Vec<String>,
    pub default_publish: Vec<String>,
    /// Grants of anonymous clients in mode `optional`.
    pub anon_subscribe: Vec<String>,
    pub anon_publish: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::Off,
            jwt_secret_file: None,
            jwt_secret_env: None,
            jwt_public_keys: Vec::new(),
            jwks_url: None,
            jwks_file: None,
            jwks_refresh: Duration::from_secs(300),
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(5),
            require_exp: true,
            default_subscribe: Vec::new(),
            default_publish: Vec::new(),
            anon_subscribe: Vec::new(),
            anon_publish: Vec::new(),
        }
    }
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("mode", &self.mode)
            .field("jwt_secret_file", &self.jwt_secret_file)
            .field(
                "jwt_secret_env",
                &self.jwt_secret_env.as_ref().map(|_| "[redacted]"),
            )
            .field("jwt_public_keys", &self.jwt_public_keys)
            .field("jwks_url", &self.jwks_url)
            .field("jwks_file", &self.jwks_file)
            .field("jwks_refresh", &self.jwks_refresh)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .field("require_exp", &self.require_exp)
            .field("default_subscribe", &self.default_subscribe)
            .field("default_publish", &self.default_publish)
            .field("anon_subscribe", &self.anon_subscribe)
            .field("anon_publish", &self.anon_publish)
            .finish()
    }
}

/// Why a token was refused. Carries no token text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Not a JWT, or an unknown `alg` (`none` included), or undecodable claims.
    Malformed,
    /// No configured key has the token's algorithm (and `kid`).
    NoKey,
    BadSignature,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    /// `exp`, `sub`, or a configured `iss`/`aud` is missing.
    MissingClaim,
    /// A claim has the wrong form (e.g. an empty or oversized `sub`).
    BadClaim,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed token",
            Rejection::NoKey => "no key for this token",
            Rejection::BadSignature => "bad signature",
            Rejection::NotYetValid => "token not yet valid",
            Rejection::WrongIssuer => "wrong issuer",
            Rejection::WrongAudience => "wrong audience",
            Rejection::MissingClaim => "missing claim",
            Rejection::BadClaim => "malformed claim",
        }
    }
}

/// Authentication errors: token rejections (for clients) and configuration errors (at startup).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("token expired")]
    Expired,
    #[error("invalid token: {}", .0.as_str())]
    Invalid(Rejection),
    #[error("key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("JWKS {origin}: {reason}")]
    Jwks { origin: String, reason: String },
    #[error("authentication configuration: {0}")]
    Config(String),
}

impl AuthError {
    /// The `error` of the close reason (§3a): `token_expired` (the client refreshes its token
    /// and resumes) or `unauthorized`.
    pub fn close_error(&self) -> &'static str {
        match self {
            AuthError::Expired => "token_expired",
            _ => "unauthorized",
        }
    }
}

/// A verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The `sub` claim.
    pub user: String,
    /// The `exp` claim (seconds since the Unix epoch).
    pub exp: Option<u64>,
    /// The `jti` claim, when the token has one.
    pub jti: Option<String>,
    /// The `info` claim (presence info), when the token has one and it is not `null`.
    pub info: Option<serde_json::Value>,
    pub grants: Grants,
}

impl Identity {
    /// Time left until `exp` (zero when past); `None` without `exp`.
    pub fn expires_in(&self) -> Option<Duration> {
        let exp = UNIX_EPOCH + Duration::from_secs(self.exp?);
        Some(
            exp.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
        )
    }
}

/// The `gw` claim.
#[derive(Debug, Default, Serialize, Deserialize)]
struct GwClaim {
    #[serde(default)]
    sub: Vec<String>,
    #[serde(default, rename = "pub")]
    publish: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    gw: Option<GwClaim>,
    /// The token's id, for `/api/revoke {jti}`.
    #[serde(default)]
    jti: Option<String>,
    /// Any JSON the issuer wants other members to see in presence (`Member.info`).
    #[serde(default)]
    info: Option<serde_json::Value>,
}

/// Verifies tokens. Cheap to clone (shared).
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    mode: AuthMode,
    /// The HS256 secret and PEM keys.
    static_keys: Vec<Key>,
    jwks: Option<Jwks>,
    validation: Validation,
    default_subscribe: Vec<String>,
    default_publish: Vec<String>,
    anonymous: Grants,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = &self.inner;
        f.debug_struct("Authenticator")
            .field("mode", &i.mode)
            .field("static_keys", &i.static_keys)
            .field("jwks_url", &i.jwks.as_ref().and_then(|j| j.url.as_ref()))
            .field("jwks_keys", &i.jwks.as_ref().map(|j| j.snapshot().len()))
            .finish_non_exhaustive()
    }
}

fn check_patterns(what: &str, patterns: &[String]) -> Result<(), AuthError> {
    for p in patterns {
        check_pattern(p).map_err(|e| AuthError::Config(format!("{what}: {e}")))?;
    }
    Ok(())
}

impl Authenticator {
    /// Loads every configured key; a missing or malformed key file fails here, naming the file.
    /// A JWKS URL is only checked for form: [`Self::spawn_jwks_refresh`] fetches it.
    pub fn new(config: AuthConfig) -> Result<Self, AuthError> {
        check_patterns("default subscribe", &config.default_subscribe)?;
        check_patterns("default publish", &config.default_publish)?;
        check_patterns("anonymous subscribe", &config.anon_subscribe)?;
        check_patterns("anonymous publish", &config.anon_publish)?;

        let mut static_keys = Vec::new();
        match (&config.jwt_secret_file, &config.jwt_secret_env) {
            (Some(_), Some(_)) => {
                return Err(AuthError::Config(format!(
                    "give the HS256 secret either in a file or in {SECRET_ENV}, not both"
                )));
            }
            (Some(path), None) => {
                let secret = keys::read_secret_file(path)?;
                static_keys.push(Key::hs256(&secret, &path.display().to_string())?);
            }
            (None, Some(secret)) => static_keys.push(Key::hs256(secret.as_bytes(), SECRET_ENV)?),
            (None, None) => {}
        }
        for path in &config.jwt_public_keys {
            static_keys.push(keys::load_pem_file(path)?);
        }

        let jwks = Jwks::from_config(&config)?;

        if config.mode != AuthMode::Off && static_keys.is_empty() && jwks.is_none() {
            return Err(AuthError::Config(format!(
                "auth mode {:?} needs a key: an HS256 secret (file or {SECRET_ENV}), a PEM public \
                 key, or a JWKS file or URL",
                config.mode
            )));
        }

        let mut validation = Validation::new(Algorithm::HS256);
        let leeway = config.leeway;
        validation.leeway = leeway.as_secs() + u64::from(leeway.subsec_nanos() > 0);
        validation.validate_nbf = true;
        let mut required = vec!["sub"];
        if config.require_exp {
            required.push("exp");
        }
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match &config.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);

        let anonymous = Grants::from_patterns(&config.anon_subscribe, &config.anon_publish, None);
        Ok(Self {
            inner: Arc::new(Inner {
                mode: config.mode,
                static_keys,
                jwks,
                validation,
                default_subscribe: config.default_subscribe,
                default_publish: config.default_publish,
                anonymous,
            }),
        })
    }

    pub fn mode(&self) -> AuthMode {
        self.inner.mode
    }

    /// The grants of a client without a token: everything in mode `off`, the anonymous grants
    /// in mode `optional`, `None` (refuse the client) in mode `required`.
    pub fn anonymous(&self) -> Option<Grants> {
        match self.inner.mode {
            AuthMode::Off => Some(Grants::all()),
            AuthMode::Optional => Some(self.inner.anonymous.clone()),
            AuthMode::Required => None,
        }
    }

    /// Whether any key is loaded (a JWKS URL that has never answered leaves none).
    pub fn has_keys(&self) -> bool {
        !self.inner.static_keys.is_empty()
            || self
                .inner
                .jwks
                .as_ref()
                .is_some_and(|j| !j.snapshot().is_empty())
    }

    /// Verifies `token` and returns who it is for and what it grants.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Invalid(Rejection::Malformed));
        }
        // The header is read unverified, only to pick keys: `alg` must equal a key's own.
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Invalid(Rejection::Malformed))?;
        let candidates = self.candidates(header.alg, header.kid.as_deref());
        let mut failure = AuthError::Invalid(Rejection::NoKey);
        for key in candidates.iter() {
            let mut validation = self.inner.validation.clone();
            validation.algorithms = vec![key.alg];
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => return self.identity(data.claims),
                // Another key of the same algorithm may have signed it.
                Err(e) if *e.kind() == ErrorKind::InvalidSignature => {
                    failure = AuthError::Invalid(Rejection::BadSignature);
                }
                // The signature was good (or the token is malformed): no other key will do.
                Err(e) => return Err(map_error(e.kind())),
            }
        }
        Err(failure)
    }

    /// Keys to try for a token: with a `kid` that a JWKS key has, that key alone; otherwise
    /// every key of the token's algorithm.
    fn candidates(&self, alg: Algorithm, kid: Option<&str>) -> Vec<Key> {
        let jwks = self.inner.jwks.as_ref().map(Jwks::snapshot);
        let jwks_keys = jwks.as_deref().map(Vec::as_slice).unwrap_or_default();
        if let Some(kid) = kid {
            let by_kid: Vec<Key> = jwks_keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .cloned()
                .collect();
            if !by_kid.is_empty() {
                return by_kid.into_iter().filter(|k| k.alg == alg).collect();
            }
            // An unknown kid may be a rotated key: fetch the set again (rate-limited).
            if let Some(j) = &self.inner.jwks
                && j.url.is_some()
            {
                j.wake.notify_one();
            }
        }
        self.inner
            .static_keys
            .iter()
            .chain(
                jwks_keys
                    .iter()
                    .filter(|k| kid.is_none() || k.kid.is_none()),
            )
            .filter(|k| k.alg == alg)
            .cloned()
            .collect()
    }

    fn identity(&self, claims: Claims) -> Result<Identity, AuthError> {
        let sub = claims.sub;
        if sub.is_empty() || sub.len() > MAX_SUB_LEN || sub.chars().any(char::is_control) {
            return Err(AuthError::Invalid(Rejection::BadClaim));
        }
        let grants = match &claims.gw {
            Some(gw) => Grants::from_patterns(&gw.sub, &gw.publish, Some(&sub)),
            None => Grants::from_patterns(
                &self.inner.default_subscribe,
                &self.inner.default_publish,
                Some(&sub),
            ),
        };
        Ok(Identity {
            user: sub,
            exp: claims.exp,
            jti: claims.jti.filter(|j| j.len() <= 256),
            info: claims.info.filter(|i| !i.is_null()),
            grants,
        })
    }
}

fn map_error(kind: &ErrorKind) -> AuthError {
    AuthError::Invalid(match kind {
        ErrorKind::ExpiredSignature => return AuthError::Expired,
        ErrorKind::ImmatureSignature => Rejection::NotYetValid,
        ErrorKind::InvalidIssuer => Rejection::WrongIssuer,
        ErrorKind::InvalidAudience => Rejection::WrongAudience,
        ErrorKind::MissingRequiredClaim(_) => Rejection::MissingClaim,
        ErrorKind::InvalidSignature => Rejection::BadSignature,
        ErrorKind::InvalidClaimFormat(_) => Rejection::BadClaim,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey => Rejection::NoKey,
        _ => Rejection::Malformed,
    })
}
