//! Which tokens verify: each configured algorithm with its user, and forged, expired, malformed
//! and algorithm-confused tokens closed 1008 without poisoning the verifier.

use gateway::auth::AuthMode;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

use super::{auth_gateway, error_for, refused, witness};
use crate::support::TestGateway;
use crate::support::hostile::{
    Witness, claims, confused, granting, hello, hello_on, hs256, key_path, now, rs256, sign,
    signed_with, unsigned,
};

/// A token's parts joined back after `edit` changed them.
fn with_parts(token: &str, edit: impl FnOnce(&mut Vec<String>)) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    edit(&mut parts);
    parts.join(".")
}

fn b64(v: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test]
async fn valid_tokens_of_each_algorithm_are_accepted_with_their_user() {
    let gw = auth_gateway(|c| {
        c.security
            .jwt_public_key
            .extend([key_path("ec_public.pem"), key_path("ed25519_public.pem")])
    })
    .await;
    let mut w = witness(&gw).await;
    let grants = granting("alice", &["chat.*"], &["chat.{user}"]);
    for (alg, token) in [
        ("HS256", hs256(&grants)),
        ("RS256", rs256(&grants)),
        (
            "ES256",
            signed_with(Algorithm::ES256, "ec_private.pem", &grants),
        ),
        (
            "EdDSA",
            signed_with(Algorithm::EdDSA, "ed25519_private.pem", &grants),
        ),
    ] {
        let (mut c, welcome) = hello(&gw.ws_url(), Some(&token)).await.welcome();
        assert_eq!(welcome["user"], "alice", "{alg}");
        c.subscribe("chat.alice").await;
        assert!(c.publish("chat.alice", json!(alg)).await > 0);
        assert_eq!(c.expect("message").await["data"], alg);
        w.check().await;
    }
}

#[tokio::test]
async fn forged_expired_and_garbage_tokens_are_closed_1008() {
    let gw = auth_gateway(|_| {}).await;
    let mut w = witness(&gw).await;
    let alice = granting("alice", &["*"], &["*"]);
    let valid = hs256(&alice);
    let other_secret = EncodingKey::from_secret(b"another-secret-that-is-long-enough-for-hs256!");
    let mut expired = claims("alice");
    expired["exp"] = json!(now() - 60);
    let mut not_yet = claims("alice");
    not_yet["nbf"] = json!(now() + 600);
    let mut escalated = granting("admin", &["*"], &["*"]);
    escalated["exp"] = json!(now() + 600);
    let raw_rs256 = |header: Value, claims: &Value, file: &str| {
        let pem = std::fs::read(key_path(file)).unwrap();
        let key = EncodingKey::from_rsa_pem(&pem).unwrap();
        let message = format!("{}.{}", b64(&header), b64(claims));
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::RS256).unwrap();
        format!("{message}.{sig}")
    };
    let bob = hs256(&claims("bob"));
    let cases: Vec<(&str, String, &str, bool)> = vec![
        (
            "HS256 signed with another secret",
            sign(Algorithm::HS256, &other_secret, &alice),
            "unauthorized",
            false,
        ),
        (
            "RS256 signed with another private key",
            signed_with(Algorithm::RS256, "rsa2_private.pem", &alice),
            "unauthorized",
            false,
        ),
        (
            "claims swapped under a valid signature",
            with_parts(&valid, |p| p[1] = b64(&escalated)),
            "unauthorized",
            false,
        ),
        (
            "signature of another valid token",
            with_parts(&valid, |p| p[2] = bob.split('.').nth(2).unwrap().into()),
            "unauthorized",
            false,
        ),
        (
            "signature stripped",
            with_parts(&valid, |p| p[2].clear()),
            "unauthorized",
            false,
        ),
        ("alg none", unsigned("none", &alice), "unauthorized", false),
        ("alg None", unsigned("None", &alice), "unauthorized", false),
        ("alg NONE", unsigned("NONE", &alice), "unauthorized", false),
        ("alg nOnE", unsigned("nOnE", &alice), "unauthorized", false),
        (
            "alg none with a signature",
            format!("{}c2ln", unsigned("none", &alice)),
            "unauthorized",
            false,
        ),
        (
            "alg HS256 without a signature",
            unsigned("HS256", &alice),
            "unauthorized",
            false,
        ),
        (
            "algorithm confusion: HS256 with the RSA public key as secret",
            confused(&alice),
            "unauthorized",
            false,
        ),
        (
            "a jku header pointing at the attacker's keys",
            raw_rs256(
                json!({"alg": "RS256", "typ": "JWT", "jku": "http://127.0.0.1:9/jwks.json"}),
                &alice,
                "rsa2_private.pem",
            ),
            "unauthorized",
            false,
        ),
        (
            "an embedded jwk header",
            raw_rs256(
                json!({"alg": "RS256", "typ": "JWT", "jwk": {"kty": "RSA", "e": "AQAB", "n": "AQAB"}}),
                &alice,
                "rsa2_private.pem",
            ),
            "unauthorized",
            false,
        ),
        ("expired", hs256(&expired), "token_expired", true),
        ("not yet valid", hs256(&not_yet), "unauthorized", false),
        (
            "no exp",
            hs256(&json!({"sub": "alice"})),
            "unauthorized",
            false,
        ),
        (
            "no sub",
            hs256(&json!({"exp": now() + 600})),
            "unauthorized",
            false,
        ),
        ("empty sub", hs256(&claims("")), "unauthorized", false),
        (
            "sub with control characters",
            hs256(&claims("alice\nadmin")),
            "unauthorized",
            false,
        ),
        (
            "sub that is not a string",
            hs256(&json!({"sub": 7, "exp": now() + 600})),
            "unauthorized",
            false,
        ),
        (
            "exp that is a string",
            hs256(&json!({"sub": "alice", "exp": "tomorrow"})),
            "unauthorized",
            false,
        ),
        ("garbage", "garbage".into(), "unauthorized", false),
        (
            "three garbage segments",
            "a.b.c".into(),
            "unauthorized",
            false,
        ),
        ("empty string", String::new(), "unauthorized", false),
        (
            "header that is not JSON",
            with_parts(&valid, |p| p[0] = "bm90LWpzb24".into()),
            "unauthorized",
            false,
        ),
        (
            "valid token with a fourth segment",
            format!("{valid}.extra"),
            "unauthorized",
            false,
        ),
        (
            "valid token with leading whitespace",
            format!(" {valid}"),
            "unauthorized",
            false,
        ),
        (
            "a signed token above 16 KiB",
            hs256(&json!({"sub": "alice", "exp": now() + 600, "pad": "x".repeat(20_000)})),
            "unauthorized",
            false,
        ),
        ("60 KiB of dots", ".".repeat(60_000), "unauthorized", false),
    ];
    for (what, token, error, reconnect) in &cases {
        let closed = hello(&gw.ws_url(), Some(token)).await.closed();
        refused(&closed, error, *reconnect, what);
        w.check().await;
    }
    // No token at all.
    refused(
        &hello(&gw.ws_url(), None).await.closed(),
        "unauthorized",
        false,
        "no token",
    );
    // A token that is not a string is a malformed frame: answered, not closed.
    let mut c = gw.client().await;
    error_for(&mut c, json!({"type": "hello", "token": 42}), "bad_request").await;
    refused(
        &hello_on(c, Some("garbage"), json!({})).await.closed(),
        "unauthorized",
        false,
        "garbage after a malformed hello",
    );
    // Nothing above poisoned the verifier.
    let (_c, welcome) = hello(&gw.ws_url(), Some(&valid)).await.welcome();
    assert_eq!(welcome["user"], "alice");
    w.check().await;
}

#[tokio::test]
async fn with_public_keys_only_no_hmac_token_is_accepted() {
    // No HS256 secret: the classic algorithm-confusion setup.
    let gw = TestGateway::with(|c| {
        c.security.auth_mode = AuthMode::Required;
        c.security.jwt_public_key = vec![key_path("rsa_public.pem")];
    })
    .await;
    let rsa_witness = rs256(&granting("witness", &["witness"], &[]));
    let mut w = Witness::join(&gw.ws_url(), gw.admin, Some(&rsa_witness)).await;
    let alice = granting("alice", &["*"], &["*"]);
    let public = std::fs::read(key_path("rsa_public.pem")).unwrap();
    let trimmed = String::from_utf8(public.clone()).unwrap().trim().to_owned();
    for (what, token) in [
        ("HS256 keyed with the public key PEM", confused(&alice)),
        (
            "HS256 keyed with the trimmed public key PEM",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(trimmed.as_bytes()),
                &alice,
            ),
        ),
        (
            "HS384 keyed with the public key PEM",
            sign(Algorithm::HS384, &EncodingKey::from_secret(&public), &alice),
        ),
        ("HS256 with the suite secret", hs256(&alice)),
        ("alg none", unsigned("none", &alice)),
        (
            "ES256 without an EC key configured",
            signed_with(Algorithm::ES256, "ec_private.pem", &alice),
        ),
    ] {
        refused(
            &hello(&gw.ws_url(), Some(&token)).await.closed(),
            "unauthorized",
            false,
            what,
        );
        w.check().await;
    }
    let (_c, welcome) = hello(&gw.ws_url(), Some(&rs256(&alice))).await.welcome();
    assert_eq!(welcome["user"], "alice");
}
