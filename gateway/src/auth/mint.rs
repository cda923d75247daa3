//! Minting tokens, for `gateway token` and tests.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use super::{AuthError, GwClaim, MAX_SUB_LEN, check_patterns, keys};

/// Mints an HS256 token (for `gateway token` and tests): `sub`, `iat`, `exp` = now + `ttl`, the
/// `gw` claim when any topic pattern is given (otherwise the gateway's defaults apply), and
/// `iss`/`aud` when given.
pub fn mint_hs256(
    secret: &[u8],
    sub: &str,
    sub_topics: &[String],
    pub_topics: &[String],
    ttl: Duration,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<String, AuthError> {
    keys::check_secret(secret, "the secret")?;
    if sub.is_empty() || sub.len() > MAX_SUB_LEN || sub.chars().any(char::is_control) {
        return Err(AuthError::Config(format!(
            "sub must be 1-{MAX_SUB_LEN} bytes without control characters"
        )));
    }
    check_patterns("subscribe topics", sub_topics)?;
    check_patterns("publish topics", pub_topics)?;
    #[derive(Serialize)]
    struct Minted<'a> {
        sub: &'a str,
        iat: u64,
        exp: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        iss: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        aud: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        gw: Option<GwClaim>,
    }
    let now = jsonwebtoken::get_current_timestamp();
    let gw = (!sub_topics.is_empty() || !pub_topics.is_empty()).then(|| GwClaim {
        sub: sub_topics.to_vec(),
        publish: pub_topics.to_vec(),
    });
    let claims = Minted {
        sub,
        iat: now,
        exp: now.saturating_add(ttl.as_secs()),
        iss: issuer,
        aud: audience,
        gw,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| AuthError::Config(format!("cannot sign: {e}")))
}

/// Flags of `gateway token`.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// HS256 secret file (else the GATEWAY_JWT_SECRET environment variable).
    #[arg(long, env = "GATEWAY_JWT_SECRET_FILE")]
    pub secret_file: Option<std::path::PathBuf>,
    /// The user id (`sub`).
    #[arg(long)]
    pub sub: String,
    /// Topic patterns the user may subscribe to (comma-separated; `*` suffix, `{user}`).
    #[arg(long, value_delimiter = ',')]
    pub sub_topics: Vec<String>,
    /// Topic patterns the user may publish to.
    #[arg(long, value_delimiter = ',')]
    pub pub_topics: Vec<String>,
    /// Lifetime of the token.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    #[arg(long)]
    pub issuer: Option<String>,
    #[arg(long)]
    pub audience: Option<String>,
}

/// `gateway token`: mints a test token with the gateway's own HS256 secret.
pub fn mint_from_args(args: &TokenArgs) -> Result<String, AuthError> {
    let secret = match &args.secret_file {
        Some(path) => keys::read_secret_file(path)?,
        None => std::env::var(super::SECRET_ENV)
            .map(String::into_bytes)
            .map_err(|_| {
                AuthError::Config("give --secret-file or set GATEWAY_JWT_SECRET".into())
            })?,
    };
    mint_hs256(
        &secret,
        &args.sub,
        &args.sub_topics,
        &args.pub_topics,
        args.ttl,
        args.issuer.as_deref(),
        args.audience.as_deref(),
    )
}
