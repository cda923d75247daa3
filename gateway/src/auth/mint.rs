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
