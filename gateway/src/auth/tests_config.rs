//! Configuration and key sets: startup failures, JWKS selection by `kid`, and a URL's refresh
//! keeping the last good copy (served by a local server).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use tokio_util::sync::CancellationToken;

use super::keys::tests::fixture_path;
use super::tests::{
    all_keys_config, assert_invalid, auth, claims, private_key, secret_config, sign,
};
use super::*;

#[test]
fn bad_configurations_fail_fast() {
    let no_key = Authenticator::new(AuthConfig {
        mode: AuthMode::Required,
        ..AuthConfig::default()
    });
    assert!(matches!(no_key, Err(AuthError::Config(_))));
    let both = AuthConfig {
        jwt_secret_file: Some(fixture_path("rsa_public.pem")),
        ..secret_config()
    };
    assert!(Authenticator::new(both).is_err());
    let short = AuthConfig {
        jwt_secret_env: Some("short".into()),
        ..secret_config()
    };
    assert!(Authenticator::new(short).is_err());
    let missing = AuthConfig {
        jwt_public_keys: vec!["does/not/exist.pem".into()],
        ..secret_config()
    };
    let e = Authenticator::new(missing).unwrap_err().to_string();
    assert!(e.contains("does/not/exist.pem"), "{e}");
    let private = AuthConfig {
        jwt_public_keys: vec![fixture_path("ec_private.pem")],
        ..secret_config()
    };
    let e = Authenticator::new(private).unwrap_err().to_string();
    assert!(e.contains("ec_private.pem"), "{e}");
    let pattern = AuthConfig {
        default_publish: vec!["a b".into()],
        ..secret_config()
    };
    assert!(Authenticator::new(pattern).is_err());
    let url = AuthConfig {
        jwks_url: Some("ftp://x/jwks".into()),
        ..secret_config()
    };
    assert!(Authenticator::new(url).is_err());
    // The secret is not shown by the configuration's Debug.
    let shown = format!("{:?}", secret_config());
    assert!(!shown.contains("a-test-secret"), "{shown}");
}

fn jwk(alg: Algorithm, private_file: &str, kid: &str) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(&private_key(alg, private_file), alg).unwrap();
    jwk.common.key_id = Some(kid.into());
    jwk
}

fn jwks_json(keys: Vec<Jwk>) -> String {
    serde_json::to_string(&JwkSet { keys }).unwrap()
}

#[test]
fn jwks_file_keys_are_selected_by_kid() {
    let path = std::env::temp_dir().join(format!("gw-jwks-{}.json", std::process::id()));
    std::fs::write(
        &path,
        jwks_json(vec![
            jwk(Algorithm::RS256, "rsa_private.pem", "r1"),
            jwk(Algorithm::RS256, "rsa2_private.pem", "r2"),
            jwk(Algorithm::ES256, "ec_private.pem", "e1"),
        ]),
    )
    .unwrap();
    let a = auth(AuthConfig {
        mode: AuthMode::Required,
        jwks_file: Some(path.clone()),
        ..AuthConfig::default()
    });
    std::fs::remove_file(&path).unwrap();
    let rsa = private_key(Algorithm::RS256, "rsa_private.pem");
    let rsa2 = private_key(Algorithm::RS256, "rsa2_private.pem");
    let c = claims("alice");
    a.verify(&sign(Algorithm::RS256, &rsa, &c, Some("r1")))
        .unwrap();
    a.verify(&sign(Algorithm::RS256, &rsa2, &c, Some("r2")))
        .unwrap();
    // Without a kid, every key of the algorithm is tried.
    a.verify(&sign(Algorithm::RS256, &rsa2, &c, None)).unwrap();
    // The kid names the key: another key's signature fails.
    assert_invalid(
        &a,
        &sign(Algorithm::RS256, &rsa, &c, Some("r2")),
        Rejection::BadSignature,
    );
    // The kid's key has another algorithm.
    assert_invalid(
        &a,
        &sign(Algorithm::RS256, &rsa, &c, Some("e1")),
        Rejection::NoKey,
    );
    // Unknown kid, and no key without a kid to fall back to.
    assert_invalid(
        &a,
        &sign(Algorithm::RS256, &rsa, &c, Some("zz")),
        Rejection::NoKey,
    );
}

#[test]
fn unknown_kid_falls_back_to_static_keys() {
    let a = auth(all_keys_config());
    a.verify(&sign(
        Algorithm::RS256,
        &private_key(Algorithm::RS256, "rsa_private.pem"),
        &claims("a"),
        Some("some-kid"),
    ))
    .unwrap();
}

/// A JWKS server whose answer the test switches: 0 = set A, 1 = HTTP 500, 2 = garbage,
/// 3 = set B.
async fn jwks_server(state: Arc<AtomicU8>) -> String {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let set_a = jwks_json(vec![jwk(Algorithm::RS256, "rsa_private.pem", "a")]);
    let set_b = jwks_json(vec![jwk(Algorithm::EdDSA, "ed25519_private.pem", "b")]);
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let (a, b, state) = (set_a.clone(), set_b.clone(), state.clone());
            async move {
                match state.load(Ordering::SeqCst) {
                    0 => a.into_response(),
                    1 => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                    2 => "{\"keys\": \"nope\"}".into_response(),
                    _ => b.into_response(),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/jwks.json")
}

#[tokio::test]
async fn jwks_url_refresh_keeps_the_last_good_copy() {
    let state = Arc::new(AtomicU8::new(1));
    let url = jwks_server(state.clone()).await;
    let a = auth(AuthConfig {
        mode: AuthMode::Required,
        jwks_url: Some(url.clone()),
        ..AuthConfig::default()
    });
    let token_a = sign(
        Algorithm::RS256,
        &private_key(Algorithm::RS256, "rsa_private.pem"),
        &claims("a"),
        Some("a"),
    );
    let token_b = sign(
        Algorithm::EdDSA,
        &private_key(Algorithm::EdDSA, "ed25519_private.pem"),
        &claims("b"),
        Some("b"),
    );
    // The URL is down at startup: no keys yet, tokens refused.
    assert!(a.refresh_jwks().await.is_err());
    assert!(!a.has_keys());
    assert_invalid(&a, &token_a, Rejection::NoKey);

    state.store(0, Ordering::SeqCst);
    assert_eq!(a.refresh_jwks().await.unwrap(), 1);
    a.verify(&token_a).unwrap();

    // Down, then serving garbage: the last good set stays.
    for broken in [1, 2] {
        state.store(broken, Ordering::SeqCst);
        let e = a.refresh_jwks().await.unwrap_err();
        assert!(e.to_string().contains(&url), "{e}");
        a.verify(&token_a).unwrap();
    }

    // Rotation: the new set replaces the old one.
    state.store(3, Ordering::SeqCst);
    a.refresh_jwks().await.unwrap();
    a.verify(&token_b).unwrap();
    assert!(a.verify(&token_a).is_err());
}

#[tokio::test]
async fn background_refresh_follows_rotation_and_stops() {
    let state = Arc::new(AtomicU8::new(0));
    let url = jwks_server(state.clone()).await;
    // A JWKS file seeds the keys until the URL answers.
    let path = std::env::temp_dir().join(format!("gw-jwks-seed-{}.json", std::process::id()));
    std::fs::write(
        &path,
        jwks_json(vec![jwk(Algorithm::ES256, "ec_private.pem", "seed")]),
    )
    .unwrap();
    let a = auth(AuthConfig {
        mode: AuthMode::Required,
        jwks_url: Some(url),
        jwks_file: Some(path.clone()),
        jwks_refresh: Duration::from_millis(100),
        ..AuthConfig::default()
    });
    std::fs::remove_file(&path).unwrap();
    let seed = sign(
        Algorithm::ES256,
        &private_key(Algorithm::ES256, "ec_private.pem"),
        &claims("s"),
        Some("seed"),
    );
    a.verify(&seed).unwrap();
    let token_b = sign(
        Algorithm::EdDSA,
        &private_key(Algorithm::EdDSA, "ed25519_private.pem"),
        &claims("b"),
        Some("b"),
    );
    let cancel = CancellationToken::new();
    let task = a.spawn_jwks_refresh(cancel.clone()).unwrap();
    let token_a = sign(
        Algorithm::RS256,
        &private_key(Algorithm::RS256, "rsa_private.pem"),
        &claims("a"),
        Some("a"),
    );
    let eventually = |token: String| {
        let a = a.clone();
        async move {
            for _ in 0..100 {
                if a.verify(&token).is_ok() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            false
        }
    };
    assert!(eventually(token_a.clone()).await, "set A never loaded");
    // Down for a while: still set A.
    state.store(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.verify(&token_a).unwrap();
    // Rotated.
    state.store(3, Ordering::SeqCst);
    assert!(eventually(token_b).await, "set B never loaded");
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("refresh task stops when cancelled")
        .unwrap();
    // Without a URL there is nothing to refresh.
    assert!(auth(secret_config()).spawn_jwks_refresh(cancel).is_none());
}

#[tokio::test]
async fn an_unknown_kid_triggers_an_early_refetch() {
    let state = Arc::new(AtomicU8::new(0));
    let url = jwks_server(state.clone()).await;
    let a = auth(AuthConfig {
        mode: AuthMode::Required,
        jwks_url: Some(url),
        // Far beyond the test: only the unknown kid can cause the second fetch (after 200 ms).
        jwks_refresh: Duration::from_secs(2),
        ..AuthConfig::default()
    });
    let cancel = CancellationToken::new();
    let _task = a.spawn_jwks_refresh(cancel.clone()).unwrap();
    for _ in 0..100 {
        if a.has_keys() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(a.has_keys());
    state.store(3, Ordering::SeqCst);
    let token_b = sign(
        Algorithm::EdDSA,
        &private_key(Algorithm::EdDSA, "ed25519_private.pem"),
        &claims("b"),
        Some("b"),
    );
    let started = std::time::Instant::now();
    assert_invalid(&a, &token_b, Rejection::NoKey);
    let mut accepted = false;
    while started.elapsed() < Duration::from_millis(1500) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if a.verify(&token_b).is_ok() {
            accepted = true;
            break;
        }
    }
    assert!(accepted, "the unknown kid did not trigger a refetch");
    cancel.cancel();
}
