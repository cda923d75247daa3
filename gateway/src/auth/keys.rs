//! Verification keys: an HS256 secret, PEM public keys and JWKS documents.
//!
//! Every key carries exactly one algorithm, fixed when it is loaded (from the PEM key type, the
//! JWK's `alg` or its key type and curve), never taken from a token. A token is only checked
//! against keys whose algorithm equals its header's `alg`, so `alg: none` (not an algorithm the
//! JWT crate knows) and algorithm confusion (an HS256 token "signed" with an RSA public key as
//! the secret) find no key at all.

use std::path::Path;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind};

use super::AuthError;

/// Shortest HS256 secret accepted: 256 bits, as RFC 7518 §3.2 requires.
pub const MIN_SECRET_LEN: usize = 32;

/// A verification key with its one algorithm.
#[derive(Clone)]
pub struct Key {
    pub alg: Algorithm,
    /// The JWK `kid`, for keys from a JWKS.
    pub kid: Option<String>,
    pub key: DecodingKey,
    /// Where the key came from (a file name, `JWKS <source>`), for messages. Never key material.
    pub source: String,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// The HS256 key of a shared secret.
    pub fn hs256(secret: &[u8], source: &str) -> Result<Self, AuthError> {
        check_secret(secret, source)?;
        Ok(Self {
            alg: Algorithm::HS256,
            kid: None,
            key: DecodingKey::from_secret(secret),
            source: source.to_owned(),
        })
    }
}

/// Refuses secrets too short to resist brute force.
pub fn check_secret(secret: &[u8], source: &str) -> Result<(), AuthError> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(AuthError::Config(format!(
            "the HS256 secret from {source} has {} bytes; at least {MIN_SECRET_LEN} are required \
             (e.g. `openssl rand -base64 48`)",
            secret.len()
        )));
    }
    Ok(())
}

/// Reads a secret file; trailing whitespace (a final newline) is not part of the secret.
pub fn read_secret_file(path: &Path) -> Result<Vec<u8>, AuthError> {
    let mut bytes = std::fs::read(path).map_err(|e| AuthError::KeyFile {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    while bytes.last().is_some_and(u8::is_ascii_whitespace) {
        bytes.pop();
    }
    Ok(bytes)
}

/// Loads a PEM public key file; the algorithm follows from the key type (RSA → RS256,
/// P-256 → ES256, P-384 → ES384, Ed25519 → EdDSA). Private keys are refused.
pub fn load_pem_file(path: &Path) -> Result<Key, AuthError> {
    let name = path.display().to_string();
    let fail = |reason: String| AuthError::KeyFile {
        path: name.clone(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let (alg, key) = parse_public_pem(&pem).map_err(fail)?;
    Ok(Key {
        alg,
        kid: None,
        key,
        source: name.clone(),
    })
}

/// The algorithm and key of a PEM public key (`PUBLIC KEY` or `RSA PUBLIC KEY`).
pub fn parse_public_pem(pem: &[u8]) -> Result<(Algorithm, DecodingKey), String> {
    let text = std::str::from_utf8(pem).map_err(|_| "not a PEM file (not text)".to_owned())?;
    let label = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("-----BEGIN "))
        .and_then(|l| l.strip_suffix("-----"))
        .ok_or_else(|| "not a PEM file (no -----BEGIN line)".to_owned())?;
    if label.contains("CERTIFICATE") {
        return Err(
            "is a certificate; give its public key (`openssl x509 -pubkey -noout -in CERT`)".into(),
        );
    }
    if label.contains("PRIVATE") {
        return Err(format!(
            "is a private key ({label}); give the public key (`openssl pkey -in KEY -pubout`)"
        ));
    }
    type Parser = fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>;
    let candidates: [(Parser, Algorithm); 3] = [
        (DecodingKey::from_rsa_pem, Algorithm::RS256),
        (DecodingKey::from_ec_pem, Algorithm::ES256),
        (DecodingKey::from_ed_pem, Algorithm::EdDSA),
    ];
    for (parse, alg) in candidates {
        let Ok(key) = parse(pem) else { continue };
        let alg = match alg {
            // The curve follows from the point's length (uncompressed: 1 + 2 × field size).
            Algorithm::ES256 => match key.try_get_as_bytes().map(<[u8]>::len) {
                Ok(65) => Algorithm::ES256,
                Ok(97) => Algorithm::ES384,
                _ => return Err("unsupported elliptic curve (use P-256 or P-384)".into()),
            },
            other => other,
        };
        check_usable(&key, alg)?;
        return Ok((alg, key));
    }
    Err(format!(
        "unsupported or malformed public key ({label}); expected an RSA, P-256, P-384 or Ed25519 \
         public key"
    ))
}

/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;

/// Rejects a key the crypto backend cannot use, at load time rather than on the first token.
fn check_usable(key: &DecodingKey, alg: Algorithm) -> Result<(), String> {
    if alg.family() == AlgorithmFamily::Rsa {
        // The RSA backend parses its key only when verifying: check the structure here.
        let bits = rsa_modulus_bits(key).ok_or("malformed RSA public key")?;
        if bits < MIN_RSA_BITS {
            return Err(format!(
                "RSA key of {bits} bits; at least {MIN_RSA_BITS} are required"
            ));
        }
        return Ok(());
    }
    // The other backends parse the key when building a verifier: `Ok(false)` (a wrong
    // signature) for a usable key, `Err` for a broken one.
    match jsonwebtoken::crypto::verify("AAAA", b"probe", key, alg) {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("the key cannot be used for {alg:?}: {e}")),
    }
}

/// The size of an RSA public key's modulus, from its PKCS#1 DER (`SEQUENCE { INTEGER n,
/// INTEGER e }`) or its JWK components.
fn rsa_modulus_bits(key: &DecodingKey) -> Option<usize> {
    fn item(tag: u8, der: &[u8]) -> Option<(&[u8], &[u8])> {
        let (&t, rest) = der.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = match first {
            0..=0x7f => (usize::from(first), rest),
            0x81 => (usize::from(*rest.first()?), &rest[1..]),
            0x82 => (
                usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?])),
                rest.get(2..)?,
            ),
            _ => return None,
        };
        (t == tag && rest.len() >= len).then(|| rest.split_at(len))
    }
    fn bits(n: &[u8]) -> usize {
        let n = &n[n.iter().take_while(|b| **b == 0).count()..];
        n.first()
            .map_or(0, |b| n.len() * 8 - b.leading_zeros() as usize)
    }
    match key.kind() {
        DecodingKeyKind::SecretOrDer(der) => {
            let (seq, _) = item(0x30, der)?;
            let (n, rest) = item(0x02, seq)?;
            let (e, _) = item(0x02, rest)?;
            (bits(e) > 1).then(|| bits(n))
        }
        DecodingKeyKind::RsaModulusExponent { n, e } => (bits(e) > 1).then(|| bits(n)),
    }
}

/// The signature algorithm of a JWK: its `alg`, else inferred from its key type and curve.
/// `None` for encryption keys, symmetric keys and anything unsupported.
fn jwk_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    let declared = match jwk.common.key_algorithm {
        None => None,
        Some(a) => Some(match a {
            KeyAlgorithm::RS256 => Algorithm::RS256,
            KeyAlgorithm::RS384 => Algorithm::RS384,
            KeyAlgorithm::RS512 => Algorithm::RS512,
            KeyAlgorithm::PS256 => Algorithm::PS256,
            KeyAlgorithm::PS384 => Algorithm::PS384,
            KeyAlgorithm::PS512 => Algorithm::PS512,
            KeyAlgorithm::ES256 => Algorithm::ES256,
            KeyAlgorithm::ES384 => Algorithm::ES384,
            KeyAlgorithm::EdDSA => Algorithm::EdDSA,
            // HMAC in a published key set would be a secret made public; encryption algorithms
            // do not sign.
            _ => return None,
        }),
    };
    let inferred = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => match declared {
            None => Algorithm::RS256,
            Some(d) if d.family() == AlgorithmFamily::Rsa => d,
            Some(_) => return None,
        },
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    // A declared `alg` must agree with the key (an RSA key declared ES256 is refused).
    match declared {
        Some(d) if d != inferred => None,
        _ => Some(inferred),
    }
}

/// The usable signature keys of a JWKS document, with the reasons others were skipped.
/// An error when the document is malformed or holds no usable key.
pub fn parse_jwks(json: &[u8], source: &str) -> Result<Vec<Key>, AuthError> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let fail = |reason: String| AuthError::Jwks {
        origin: source.to_owned(),
        reason,
    };
    let doc: Doc = serde_json::from_slice(json)
        .map_err(|e| fail(format!("not a JWKS document ({{\"keys\": [...]}}): {e}")))?;
    let mut keys = Vec::new();
    for (i, value) in doc.keys.into_iter().enumerate() {
        let kid = value.get("kid").and_then(|k| k.as_str()).map(str::to_owned);
        let label = kid.clone().unwrap_or_else(|| format!("#{i}"));
        let jwk: Jwk = match serde_json::from_value(value) {
            Ok(jwk) => jwk,
            Err(e) => {
                tracing::warn!(jwks = source, key = %label, error = %e, "skipping unreadable JWK");
                continue;
            }
        };
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        let Some(alg) = jwk_algorithm(&jwk) else {
            tracing::warn!(jwks = source, key = %label, "skipping JWK: not an RSA, P-256, P-384 or Ed25519 signature key");
            continue;
        };
        let key = match DecodingKey::from_jwk(&jwk) {
            Ok(key) => key,
            Err(e) => {
                tracing::warn!(jwks = source, key = %label, error = %e, "skipping malformed JWK");
                continue;
            }
        };
        if let Err(e) = check_usable(&key, alg) {
            tracing::warn!(jwks = source, key = %label, error = %e, "skipping unusable JWK");
            continue;
        }
        keys.push(Key {
            alg,
            kid,
            key,
            source: format!("JWKS {source}"),
        });
    }
    if keys.is_empty() {
        return Err(fail("no usable signature key".into()));
    }
    Ok(keys)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn fixture(name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/keys")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    pub fn fixture_path(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/keys")
            .join(name)
    }

    #[test]
    fn pem_key_types_pick_their_algorithm() {
        for (file, alg) in [
            ("rsa_public.pem", Algorithm::RS256),
            ("ec_public.pem", Algorithm::ES256),
            ("ed25519_public.pem", Algorithm::EdDSA),
        ] {
            let key = load_pem_file(&fixture_path(file)).unwrap();
            assert_eq!(key.alg, alg, "{file}");
            assert!(key.source.ends_with(file));
        }
    }

    fn pem(label: &str, der: &[u8]) -> Vec<u8> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
        .into_bytes()
    }

    #[test]
    fn p384_and_pkcs1_keys_load() {
        let key = load_pem_file(&fixture_path("ec384_public.pem")).unwrap();
        assert_eq!(key.alg, Algorithm::ES384);
        // The PKCS#1 form (`RSA PUBLIC KEY`) of the test RSA key.
        let (_, spki) = parse_public_pem(&fixture("rsa_public.pem")).unwrap();
        let pkcs1 = pem("RSA PUBLIC KEY", spki.try_get_as_bytes().unwrap());
        let (alg, _) = parse_public_pem(&pkcs1).unwrap();
        assert_eq!(alg, Algorithm::RS256);
    }

    #[test]
    fn weak_rsa_keys_are_refused() {
        // SEQUENCE { INTEGER n (1024 bits), INTEGER 65537 }
        let mut der = vec![0x30, 0x81, 0x89, 0x02, 0x81, 0x81, 0x00];
        der.extend([0xc5; 128]);
        der.extend([0x02, 0x03, 0x01, 0x00, 0x01]);
        let e = parse_public_pem(&pem("RSA PUBLIC KEY", &der)).unwrap_err();
        assert!(e.contains("1024 bits"), "{e}");
        // A JWK of the same size.
        let n = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            [0xc5; 128],
        );
        let json =
            serde_json::json!({"keys": [{"kty": "RSA", "kid": "weak", "n": n, "e": "AQAB"}]});
        assert!(parse_jwks(json.to_string().as_bytes(), "weak").is_err());
    }

    #[test]
    fn bad_pem_files_fail_with_the_file_name() {
        let private = load_pem_file(&fixture_path("rsa_private.pem")).unwrap_err();
        let text = private.to_string();
        assert!(
            text.contains("rsa_private.pem") && text.contains("private key"),
            "{text}"
        );

        let missing = load_pem_file(Path::new("no/such/key.pem")).unwrap_err();
        assert!(missing.to_string().contains("no/such/key.pem"));

        let dir = std::env::temp_dir().join(format!("gw-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        )
        .unwrap();
        let e = load_pem_file(&garbage).unwrap_err().to_string();
        assert!(e.contains("garbage.pem"), "{e}");
        std::fs::write(&garbage, "hello").unwrap();
        assert!(load_pem_file(&garbage).is_err());
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = load_pem_file(&garbage).unwrap_err().to_string();
        assert!(e.contains("certificate"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(Key::hs256(b"short", "test").is_err());
        assert!(Key::hs256(&[7; MIN_SECRET_LEN], "test").is_ok());
    }

    #[test]
    fn secret_files_lose_their_trailing_newline() {
        let path = std::env::temp_dir().join(format!("gw-secret-{}", std::process::id()));
        std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").unwrap();
        assert_eq!(
            read_secret_file(&path).unwrap(),
            b"0123456789abcdef0123456789abcdef"
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn jwks_keeps_usable_signature_keys_only() {
        let json = serde_json::json!({"keys": [
            // Symmetric key: a secret published in a key set; skipped.
            {"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0", "kid": "hmac"},
            // Encryption key; skipped.
            {"kty": "RSA", "use": "enc", "kid": "enc", "n": "AQAB", "e": "AQAB"},
            // Unknown key type; skipped without failing the set.
            {"kty": "XYZ", "kid": "odd"},
            // RSA key declared as ES256: contradictory; skipped.
            {"kty": "RSA", "alg": "ES256", "kid": "liar", "n": "AQAB", "e": "AQAB"},
            // Ed25519 key.
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
        ]});
        let keys = parse_jwks(json.to_string().as_bytes(), "test").unwrap();
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert_eq!(keys[0].alg, Algorithm::EdDSA);
        assert_eq!(keys[0].kid.as_deref(), Some("ed"));
    }

    #[test]
    fn malformed_or_empty_jwks_is_an_error() {
        for doc in [&b"not json"[..], b"{}", b"{\"keys\": []}", b"[1,2]"] {
            let e = parse_jwks(doc, "x.json").unwrap_err();
            assert!(e.to_string().contains("x.json"), "{e}");
        }
    }
}
