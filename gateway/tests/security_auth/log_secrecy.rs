//! Credentials stay out of the log: every token, the secret and the resume secret, at debug
//! level, whatever happened to them.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;

use super::witness_token;
use crate::support::Client;
use crate::support::hostile::{
    Witness, claims, confused, granting, hello, hello_on, hs256, key_path, log_path, now, rs256,
    secret_file, sign, start_logged, unsigned,
};

#[tokio::test]
async fn tokens_never_appear_in_the_log() {
    let log = log_path("tokens");
    let secret = secret_file();
    let mut pod = start_logged(
        &[
            "--auth",
            "required",
            "--jwt-secret-file",
            secret.to_str().unwrap(),
            "--jwt-public-key",
            key_path("rsa_public.pem").to_str().unwrap(),
        ],
        "debug",
        &log,
    );
    let url = pod.url();
    let good = hs256(&granting("alice", &["chat.*"], &["chat.*"]));
    let rsa = rs256(&granting("alice", &["chat.*"], &[]));
    let refreshed = hs256(&granting("alice", &["chat.a"], &[]));
    let mut expired = claims("alice");
    expired["exp"] = json!(now() - 60);
    let expired = hs256(&expired);
    let forged = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another-secret-that-is-long-enough-for-hs256!"),
        &granting("alice", &["*"], &["*"]),
    );
    let none = unsigned("none", &claims("alice"));
    let confusion = confused(&claims("alice"));
    let sentinel = "not-a-jwt-SENTINEL-7f3a9c1e5b2d4068".to_string();
    let big = hs256(&json!({"sub": "alice", "exp": now() + 600, "pad": "q".repeat(20_000)}));
    let bob = hs256(&claims("bob"));

    let wtoken = witness_token();
    let admin = ([127, 0, 0, 1], pod.admin).into();
    let mut w = Witness::join(&url, admin, Some(&wtoken)).await;
    let (mut a, welcome) = hello(&url, Some(&good)).await.welcome();
    let resume = welcome["resume"].as_str().unwrap().to_owned();
    a.subscribe("chat.a").await;
    for token in [&refreshed, &forged, &bob, &expired] {
        a.send(json!({"type": "refresh", "token": token})).await;
        let _ = a.next().await;
    }
    for token in [&expired, &forged, &none, &confusion, &sentinel, &big, &rsa] {
        let _ = hello(&url, Some(token)).await;
        w.check().await;
    }
    // Resume with the session's secret (also a credential).
    drop(a);
    let (b, _) = hello_on(
        Client::connect(&url).await,
        Some(&good),
        json!({"resume": resume}),
    )
    .await
    .welcome();
    w.check().await;
    drop((b, w));
    pod.terminate();
    assert!(pod.process.wait_timeout(Duration::from_secs(20)).is_some());

    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(
        text.contains("token refused"),
        "debug logging was not on:\n{text}"
    );
    let mut secrets: Vec<String> = vec![
        std::fs::read_to_string(&secret).unwrap(),
        resume.split('.').nth(1).unwrap().to_owned(),
    ];
    for token in [
        &good, &rsa, &refreshed, &expired, &forged, &none, &confusion, &sentinel, &big, &bob,
        &wtoken,
    ] {
        secrets.push(token.clone());
        // Each part of a token that identifies it (the header alone is shared by many).
        secrets.extend(
            token
                .split('.')
                .skip(1)
                .filter(|p| p.len() >= 16)
                .map(str::to_owned),
        );
    }
    for s in secrets {
        assert!(
            !text.contains(&s),
            "the log contains a credential: {}…",
            &s[..s.len().min(24)]
        );
    }
}
