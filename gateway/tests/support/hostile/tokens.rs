//! Tokens for the security suites: the suite's HS256 secret, claims and grants, tokens signed
//! with the test keys, and broken ones (unsigned, algorithm-confused).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// The HS256 secret of every suite gateway (written to [`secret_file`]).
pub const SECRET: &str = "hostile-suite-hs256-secret-long-enough-for-the-gateway";

pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// A test key of `tests/keys/`.
pub fn key_path(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(file)
}

/// A file holding [`SECRET`], written once per test binary.
pub fn secret_file() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("hostile-secret-{}", std::process::id()));
        std::fs::write(&path, SECRET).unwrap();
        path
    })
    .clone()
}

/// `sub`, `iat` and an `exp` ten minutes ahead.
pub fn claims(sub: &str) -> Value {
    json!({"sub": sub, "iat": now(), "exp": now() + 600})
}

/// `claims` with a `gw` claim granting exactly these patterns.
pub fn granting(sub: &str, subscribe: &[&str], publish: &[&str]) -> Value {
    let mut c = claims(sub);
    c["gw"] = json!({"sub": subscribe, "pub": publish});
    c
}

pub fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

pub fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

/// Signed with a private key of `tests/keys/`.
pub fn signed_with(alg: Algorithm, private_pem: &str, claims: &Value) -> String {
    let pem = std::fs::read(key_path(private_pem)).unwrap();
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        other => panic!("no fixture for {other:?}"),
    }
    .unwrap();
    sign(alg, &key, claims)
}

pub fn rs256(claims: &Value) -> String {
    signed_with(Algorithm::RS256, "rsa_private.pem", claims)
}

/// An unsigned token whose header names `alg` (e.g. `none`): header and claims, empty signature.
pub fn unsigned(alg: &str, claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "typ": "JWT"}).to_string());
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{body}.")
}

/// Algorithm confusion: an HS256 token "signed" with the RSA public key's PEM as the secret.
pub fn confused(claims: &Value) -> String {
    let public = std::fs::read(key_path("rsa_public.pem")).unwrap();
    sign(Algorithm::HS256, &EncodingKey::from_secret(&public), claims)
}
