//! Token verification against real keys (the test-only fixtures in `tests/keys/`).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{EncodingKey, Header};
use proptest::prelude::*;
use protocol::Topic;
use serde_json::{Value, json};

use super::keys::tests::{fixture, fixture_path};
use super::*;

const SECRET: &[u8] = b"a-test-secret-that-is-long-enough-for-hs256";

pub(super) fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn topic(s: &str) -> Topic {
    Topic::new(s).unwrap()
}

pub(super) fn claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now() + 600})
}

pub(super) fn private_key(alg: Algorithm, file: &str) -> EncodingKey {
    let pem = fixture(file);
    match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        other => panic!("no fixture for {other:?}"),
    }
    .unwrap()
}

pub(super) fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value, kid: Option<&str>) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET),
        claims,
        None,
    )
}

fn rs256(claims: &Value) -> String {
    sign(
        Algorithm::RS256,
        &private_key(Algorithm::RS256, "rsa_private.pem"),
        claims,
        None,
    )
}

pub(super) fn secret_config() -> AuthConfig {
    AuthConfig {
        mode: AuthMode::Required,
        jwt_secret_env: Some(String::from_utf8(SECRET.to_vec()).unwrap()),
        ..AuthConfig::default()
    }
}

pub(super) fn all_keys_config() -> AuthConfig {
    AuthConfig {
        jwt_public_keys: [
            "rsa_public.pem",
            "ec_public.pem",
            "ec384_public.pem",
            "ed25519_public.pem",
        ]
        .into_iter()
        .map(fixture_path)
        .collect(),
        ..secret_config()
    }
}

pub(super) fn auth(config: AuthConfig) -> Authenticator {
    Authenticator::new(config).unwrap()
}

/// Asserts a rejection, and that neither its `Debug` nor its `Display` leaks any part of the
/// token.
pub(super) fn rejected(a: &Authenticator, token: &str) -> AuthError {
    let e = a.verify(token).unwrap_err();
    let shown = format!("{e} {e:?}");
    for part in token.split('.').filter(|p| p.len() > 3) {
        assert!(!shown.contains(part), "{shown} leaks the token");
    }
    e
}

pub(super) fn assert_invalid(a: &Authenticator, token: &str, why: Rejection) {
    let e = rejected(a, token);
    assert!(
        matches!(e, AuthError::Invalid(r) if r == why),
        "expected {why:?}, got {e:?}"
    );
    assert_eq!(e.close_error(), "unauthorized");
}

#[test]
fn valid_tokens_of_every_algorithm_are_accepted() {
    let a = auth(all_keys_config());
    let tokens = [
        hs256(&claims("alice")),
        rs256(&claims("alice")),
        sign(
            Algorithm::ES256,
            &private_key(Algorithm::ES256, "ec_private.pem"),
            &claims("alice"),
            None,
        ),
        sign(
            Algorithm::ES384,
            &private_key(Algorithm::ES384, "ec384_private.pem"),
            &claims("alice"),
            None,
        ),
        sign(
            Algorithm::EdDSA,
            &private_key(Algorithm::EdDSA, "ed25519_private.pem"),
            &claims("alice"),
            None,
        ),
    ];
    for token in tokens {
        let id = a.verify(&token).unwrap();
        assert_eq!(id.user, "alice");
        assert!(id.exp.unwrap() > now());
        let left = id.expires_in().unwrap();
        assert!(left > Duration::from_secs(590) && left <= Duration::from_secs(600));
        assert!(!format!("{id:?}").contains(&token));
    }
}

#[test]
fn minted_tokens_carry_grants() {
    let a = auth(secret_config());
    let token = mint_hs256(
        SECRET,
        "alice",
        &["chat.*".into(), "user.{user}".into()],
        &["chat.{user}".into()],
        Duration::from_secs(60),
        None,
        None,
    )
    .unwrap();
    let id = a.verify(&token).unwrap();
    assert_eq!(id.user, "alice");
    let g = &id.grants;
    assert!(g.can_subscribe(&topic("chat.lobby")));
    assert!(g.can_subscribe(&topic("user.alice")));
    assert!(!g.can_subscribe(&topic("user.bob")));
    assert!(g.can_publish(&topic("chat.alice")));
    assert!(!g.can_publish(&topic("chat.lobby")));

    assert!(mint_hs256(b"short", "a", &[], &[], Duration::from_secs(1), None, None).is_err());
    assert!(mint_hs256(SECRET, "", &[], &[], Duration::from_secs(1), None, None).is_err());
    let bad = mint_hs256(
        SECRET,
        "a",
        &["chat.*.x".into()],
        &[],
        Duration::from_secs(1),
        None,
        None,
    );
    assert!(bad.unwrap_err().to_string().contains("chat.*.x"));
}

#[test]
fn without_the_claim_the_defaults_apply() {
    let a = auth(AuthConfig {
        default_subscribe: vec!["news".into(), "user.{user}.*".into()],
        default_publish: vec!["user.{user}.out".into()],
        ..secret_config()
    });
    let id = a.verify(&hs256(&claims("bob"))).unwrap();
    assert!(id.grants.can_subscribe(&topic("news")));
    assert!(id.grants.can_subscribe(&topic("user.bob.in")));
    assert!(!id.grants.can_subscribe(&topic("user.alice.in")));
    assert!(id.grants.can_publish(&topic("user.bob.out")));
    assert!(!id.grants.can_publish(&topic("news")));

    // A claim replaces the defaults entirely: a missing list grants nothing.
    let mut c = claims("bob");
    c["gw"] = json!({"sub": ["chat.*"]});
    let id = a.verify(&hs256(&c)).unwrap();
    assert!(id.grants.can_subscribe(&topic("chat.x")));
    assert!(!id.grants.can_subscribe(&topic("news")));
    assert!(!id.grants.can_publish(&topic("user.bob.out")));

    // A user id unfit for topics gets no `{user}` topics, and the rest of its grants.
    let id = a.verify(&hs256(&claims("bob.admin"))).unwrap();
    assert!(id.grants.can_subscribe(&topic("news")));
    assert!(!id.grants.can_subscribe(&topic("user.bob.admin.x")));
}

#[test]
fn bad_signatures_are_rejected() {
    let a = auth(all_keys_config());
    let other = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another-secret-that-is-long-enough-too"),
        &claims("alice"),
        None,
    );
    assert_invalid(&a, &other, Rejection::BadSignature);
    let other_rsa = sign(
        Algorithm::RS256,
        &private_key(Algorithm::RS256, "rsa2_private.pem"),
        &claims("alice"),
        None,
    );
    assert_invalid(&a, &other_rsa, Rejection::BadSignature);

    // A valid token whose claims were swapped for others.
    let good = hs256(&claims("alice"));
    let parts: Vec<&str> = good.split('.').collect();
    let forged_claims = URL_SAFE_NO_PAD.encode(claims("admin").to_string());
    let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
    assert_invalid(&a, &forged, Rejection::BadSignature);
    // Signature stripped.
    assert!(a.verify(&format!("{}.{}.", parts[0], parts[1])).is_err());
}

#[test]
fn alg_none_is_rejected() {
    let a = auth(all_keys_config());
    let body = URL_SAFE_NO_PAD.encode(claims("alice").to_string());
    for alg in ["none", "None", "NONE", "nOnE", ""] {
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "typ": "JWT"}).to_string());
        for sig in ["", "c2ln"] {
            let token = format!("{header}.{body}.{sig}");
            assert_invalid(&a, &token, Rejection::Malformed);
        }
    }
    // No alg at all.
    let header = URL_SAFE_NO_PAD.encode(json!({"typ": "JWT"}).to_string());
    assert_invalid(&a, &format!("{header}.{body}."), Rejection::Malformed);
}

#[test]
fn algorithm_confusion_is_rejected() {
    // The attacker signs HS256 with the RSA public key (PEM text, or its DER) as the secret.
    let pem = fixture("rsa_public.pem");
    let (_, der_key) = keys::parse_public_pem(&pem).unwrap();
    let der = der_key.try_get_as_bytes().unwrap().to_vec();
    let c = claims("admin");
    let forged = [
        sign(Algorithm::HS256, &EncodingKey::from_secret(&pem), &c, None),
        sign(Algorithm::HS256, &EncodingKey::from_secret(&der), &c, None),
        sign(Algorithm::HS384, &EncodingKey::from_secret(&pem), &c, None),
    ];
    // Only public keys configured: no HMAC key exists at all.
    let public_only = auth(AuthConfig {
        jwt_secret_env: None,
        ..all_keys_config()
    });
    // With an HS256 secret too: the forged token meets the real secret and fails.
    let with_secret = auth(all_keys_config());
    for token in &forged {
        assert_invalid(&public_only, token, Rejection::NoKey);
        let e = rejected(&with_secret, token);
        assert!(
            matches!(
                e,
                AuthError::Invalid(Rejection::BadSignature | Rejection::NoKey)
            ),
            "{e:?}"
        );
    }
    // The converse: an RS256 header on an HMAC-signed body finds no RSA key that accepts it.
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": "RS256"}).to_string());
    let hs = hs256(&c);
    let parts: Vec<&str> = hs.split('.').collect();
    let token = format!("{header}.{}.{}", parts[1], parts[2]);
    assert!(with_secret.verify(&token).is_err());
}

#[test]
fn expiry_and_not_before_use_the_leeway() {
    let a = auth(all_keys_config());
    for token in [
        hs256(&json!({"sub": "a", "exp": now() - 60})),
        rs256(&json!({"sub": "a", "exp": now() - 60})),
    ] {
        let e = rejected(&a, &token);
        assert!(matches!(e, AuthError::Expired), "{e:?}");
        assert_eq!(e.close_error(), "token_expired");
    }
    // Within the 5 s leeway.
    a.verify(&hs256(&json!({"sub": "a", "exp": now() - 2})))
        .unwrap();
    assert_invalid(
        &a,
        &hs256(&json!({"sub": "a", "exp": now() + 600, "nbf": now() + 60})),
        Rejection::NotYetValid,
    );
    a.verify(&hs256(
        &json!({"sub": "a", "exp": now() + 600, "nbf": now() + 2}),
    ))
    .unwrap();
    // An expired token with a bad signature is a bad signature, not an expiry.
    let forged = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another-secret-that-is-long-enough-too"),
        &json!({"sub": "a", "exp": now() - 60}),
        None,
    );
    assert_invalid(&a, &forged, Rejection::BadSignature);
}

#[test]
fn exp_is_required_unless_disabled() {
    let token = hs256(&json!({"sub": "a"}));
    assert_invalid(&auth(secret_config()), &token, Rejection::MissingClaim);
    let lax = auth(AuthConfig {
        require_exp: false,
        ..secret_config()
    });
    let id = lax.verify(&token).unwrap();
    assert_eq!(id.exp, None);
    assert_eq!(id.expires_in(), None);
}

#[test]
fn issuer_and_audience_are_checked_when_configured() {
    let a = auth(AuthConfig {
        issuer: Some("https://idp.example".into()),
        audience: Some("gateway".into()),
        ..secret_config()
    });
    let exp = now() + 600;
    a.verify(&hs256(
        &json!({"sub": "a", "exp": exp, "iss": "https://idp.example", "aud": "gateway"}),
    ))
    .unwrap();
    a.verify(&hs256(
        &json!({"sub": "a", "exp": exp, "iss": "https://idp.example", "aud": ["other", "gateway"]}),
    ))
    .unwrap();
    let cases = [
        (
            json!({"sub": "a", "exp": exp, "iss": "https://evil.example", "aud": "gateway"}),
            Rejection::WrongIssuer,
        ),
        (
            json!({"sub": "a", "exp": exp, "aud": "gateway"}),
            Rejection::MissingClaim,
        ),
        (
            json!({"sub": "a", "exp": exp, "iss": "https://idp.example", "aud": "other"}),
            Rejection::WrongAudience,
        ),
        (
            json!({"sub": "a", "exp": exp, "iss": "https://idp.example"}),
            Rejection::MissingClaim,
        ),
    ];
    for (c, why) in cases {
        assert_invalid(&a, &hs256(&c), why);
    }
    // Without configured iss/aud, tokens carrying them are accepted.
    auth(secret_config())
        .verify(&hs256(
            &json!({"sub": "a", "exp": exp, "iss": "x", "aud": "y"}),
        ))
        .unwrap();
}

#[test]
fn garbage_is_rejected() {
    let a = auth(all_keys_config());
    let long = "a".repeat(MAX_TOKEN_LEN + 1);
    for token in [
        "",
        "abc",
        "a.b",
        "a.b.c",
        "a.b.c.d",
        "....",
        "\u{0}\u{1}.\u{ff}.x",
        long.as_str(),
    ] {
        assert_invalid(&a, token, Rejection::Malformed);
    }
    // A readable HS256 header: the signature is checked (and fails) before the claims are read.
    for token in ["eyJhbGciOiJIUzI1NiJ9.%%%.xxx", "eyJhbGciOiJIUzI1NiJ9.."] {
        let e = rejected(&a, token);
        assert!(
            matches!(
                e,
                AuthError::Invalid(Rejection::BadSignature | Rejection::Malformed)
            ),
            "{e:?}"
        );
    }
    // Claims of the wrong shape, correctly signed.
    for c in [
        json!({"exp": now() + 60}),
        json!({"sub": 42, "exp": now() + 60}),
        json!({"sub": "a", "exp": "soon"}),
        json!({"sub": "a", "exp": now() + 60, "gw": "everything"}),
        json!([1, 2, 3]),
    ] {
        let e = rejected(&a, &hs256(&c));
        assert_eq!(e.close_error(), "unauthorized", "{c}: {e:?}");
    }
    for sub in ["", "a\nb", "\u{7}"] {
        assert_invalid(&a, &hs256(&claims(sub)), Rejection::BadClaim);
    }
    assert_invalid(&a, &hs256(&claims(&"u".repeat(300))), Rejection::BadClaim);
}

#[test]
fn modes_decide_anonymous_grants() {
    let off = auth(AuthConfig::default());
    assert_eq!(off.mode(), AuthMode::Off);
    assert_eq!(off.anonymous(), Some(Grants::all()));
    assert!(!off.has_keys());
    let optional = auth(AuthConfig {
        mode: AuthMode::Optional,
        anon_subscribe: vec!["public.*".into(), "user.{user}".into()],
        ..secret_config()
    });
    let anon = optional.anonymous().unwrap();
    assert!(anon.can_subscribe(&topic("public.news")));
    assert!(!anon.can_subscribe(&topic("user.anonymous")));
    assert!(!anon.can_publish(&topic("public.news")));
    let required = auth(secret_config());
    assert_eq!(required.anonymous(), None);
    assert!(required.has_keys());
}

proptest! {
    #[test]
    fn arbitrary_tokens_never_panic(token in "\\PC{0,300}") {
        let a = auth(all_keys_config());
        let _ = a.verify(&token);
    }

    #[test]
    fn arbitrary_dotted_tokens_never_panic(
        h in "[A-Za-z0-9_-]{0,60}",
        c in "[A-Za-z0-9_-]{0,60}",
        s in "[A-Za-z0-9_-]{0,60}",
    ) {
        let a = auth(all_keys_config());
        let header = URL_SAFE_NO_PAD.encode(format!("{{\"alg\":\"HS256\",\"x\":\"{h}\"}}"));
        let _ = a.verify(&format!("{header}.{c}.{s}"));
        let _ = a.verify(&format!("{h}.{c}.{s}"));
    }
}
