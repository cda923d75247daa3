//! Hostile clients against authentication and permissions: forged, expired and garbage tokens,
//! token expiry and refresh, grants, topic names that try to escape their subject, and resume
//! tokens presented by another user. Every attack runs next to a well-behaved witness client
//! that must keep receiving its messages.

mod support;

use std::time::Duration;

use gateway::auth::AuthMode;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use support::hostile::{
    Outcome, Witness, claims, confused, granting, hello, hello_on, hs256, key_path, log_path, now,
    rs256, secret_file, sign, signed_with, start_logged, unsigned,
};
use support::{Client, Closed, TestGateway, seqs};
use test_support::{NatsServer, RedisServer};

/// A gateway requiring tokens: HS256 with the suite secret, RS256 with `rsa_public.pem`.
async fn auth_gateway(edit: impl FnOnce(&mut gateway::Config)) -> TestGateway {
    TestGateway::with(|c| {
        c.security.auth_mode = AuthMode::Required;
        c.security.jwt_secret_file = Some(secret_file());
        c.security.jwt_public_key = vec![key_path("rsa_public.pem")];
        edit(c);
    })
    .await
}

fn witness_token() -> String {
    hs256(&granting("witness", &["witness"], &[]))
}

async fn witness(gw: &TestGateway) -> Witness {
    Witness::join(&gw.ws_url(), gw.admin, Some(&witness_token())).await
}

fn refused(closed: &Closed, error: &str, reconnect: bool, what: &str) {
    assert_eq!(closed.code, 1008, "{what}: {closed:?}");
    assert_eq!(
        closed.reason,
        json!({"reconnect": reconnect, "error": error}),
        "{what}"
    );
}

/// Sends `frame` and returns the next frame, which must be an `error` with `code`.
async fn error_for(c: &mut Client, frame: Value, code: &str) -> Value {
    c.send(frame.clone()).await;
    let e = c.expect("error").await;
    assert_eq!(e["code"], code, "{frame} -> {e}");
    e
}

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

#[tokio::test]
async fn issuer_and_audience_are_enforced() {
    let gw = auth_gateway(|c| {
        c.security.jwt_issuer = Some("https://idp.example.com/".into());
        c.security.jwt_audience = Some("realtime".into());
    })
    .await;
    let token = |iss: Option<&str>, aud: Option<Value>| {
        let mut c = granting("witness", &["witness"], &[]);
        if let Some(iss) = iss {
            c["iss"] = json!(iss);
        }
        if let Some(aud) = aud {
            c["aud"] = aud;
        }
        hs256(&c)
    };
    let good = token(Some("https://idp.example.com/"), Some(json!("realtime")));
    let mut w = Witness::join(&gw.ws_url(), gw.admin, Some(&good)).await;
    for (what, t) in [
        (
            "wrong issuer",
            token(Some("https://evil.example.com/"), Some(json!("realtime"))),
        ),
        (
            "issuer without its trailing slash",
            token(Some("https://idp.example.com"), Some(json!("realtime"))),
        ),
        ("no issuer", token(None, Some(json!("realtime")))),
        (
            "wrong audience",
            token(Some("https://idp.example.com/"), Some(json!("other"))),
        ),
        (
            "audience list without ours",
            token(Some("https://idp.example.com/"), Some(json!(["a", "b"]))),
        ),
        ("no audience", token(Some("https://idp.example.com/"), None)),
    ] {
        refused(
            &hello(&gw.ws_url(), Some(&t)).await.closed(),
            "unauthorized",
            false,
            what,
        );
        w.check().await;
    }
    let listed = token(
        Some("https://idp.example.com/"),
        Some(json!(["other", "realtime"])),
    );
    let (_c, welcome) = hello(&gw.ws_url(), Some(&listed)).await.welcome();
    assert_eq!(welcome["user"], "witness");
}

#[tokio::test]
async fn optional_mode_gives_anonymous_grants_and_still_refuses_bad_tokens() {
    let gw = TestGateway::with(|c| {
        c.security.auth_mode = AuthMode::Optional;
        c.security.jwt_secret_file = Some(secret_file());
        c.security.anon_subscribe = vec!["public.*".into()];
    })
    .await;
    let mut w = witness(&gw).await;
    let (mut anon, welcome) = hello(&gw.ws_url(), None).await.welcome();
    assert_eq!(welcome.get("user"), None, "{welcome}");
    anon.subscribe("public.news").await;
    error_for(
        &mut anon,
        json!({"type": "subscribe", "topic": "private.news", "ref": 1}),
        "forbidden",
    )
    .await;
    error_for(
        &mut anon,
        json!({"type": "publish", "topic": "public.news", "data": 1, "ref": 2}),
        "forbidden",
    )
    .await;
    error_for(
        &mut anon,
        json!({"type": "subscribe", "topic": "witness", "ref": 3}),
        "forbidden",
    )
    .await;
    w.check().await;
    // The anonymous client still receives what it may read.
    gw.publish_api("public.news", json!("hi")).await;
    assert_eq!(anon.expect("message").await["data"], "hi");
    // An invalid token is refused, not downgraded to anonymous.
    let mut expired = claims("alice");
    expired["exp"] = json!(now() - 60);
    refused(
        &hello(&gw.ws_url(), Some(&hs256(&expired))).await.closed(),
        "token_expired",
        true,
        "expired in optional mode",
    );
    refused(
        &hello(&gw.ws_url(), Some(&confused(&claims("alice"))))
            .await
            .closed(),
        "unauthorized",
        false,
        "forged in optional mode",
    );
    w.check().await;
    let (_c, welcome) = hello(
        &gw.ws_url(),
        Some(&hs256(&granting("alice", &["private.*"], &[]))),
    )
    .await
    .welcome();
    assert_eq!(welcome["user"], "alice");
}

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

#[tokio::test]
async fn an_expired_token_closes_1008_and_the_client_resumes_losslessly_with_a_new_one() {
    let gw = auth_gateway(|c| c.security.jwt_leeway = Duration::ZERO).await;
    let mut w = Witness::join(
        &gw.ws_url(),
        gw.admin,
        Some(&hs256(&granting("witness", &["witness", "feed"], &[]))),
    )
    .await;
    w.client.subscribe("feed").await;
    let mut short = granting("alice", &["feed"], &[]);
    short["exp"] = json!(now() + 2);
    let (mut a, welcome) = hello(&gw.ws_url(), Some(&hs256(&short))).await.welcome();
    assert_eq!(welcome["user"], "alice");
    let epoch = a.subscribe("feed").await["epoch"].clone();
    for i in 1..=3 {
        gw.publish_api("feed", json!(i)).await;
    }
    assert_eq!(seqs(&a.messages(3).await), vec![1, 2, 3]);
    let closed = a.closed().await;
    refused(&closed, "token_expired", true, "expiry without refresh");
    for i in 4..=6 {
        gw.publish_api("feed", json!(i)).await;
    }
    // The old token is refused the same way (within its last second it may still be welcomed,
    // and closed at once): the client must get a new one.
    let closed = match hello(&gw.ws_url(), Some(&hs256(&short))).await {
        Outcome::Closed(closed) => closed,
        Outcome::Welcome(mut c, _) => c.closed().await,
        Outcome::Error(_, e) => panic!("{e}"),
    };
    refused(
        &closed,
        "token_expired",
        true,
        "reconnect with the expired token",
    );
    let fresh = hs256(&granting("alice", &["feed"], &[]));
    let (mut b, welcome) = hello_on(
        Client::connect(&gw.ws_url()).await,
        Some(&fresh),
        json!({"resume": welcome["resume"], "positions": {"feed": {"seq": 3, "epoch": epoch}}}),
    )
    .await
    .welcome();
    assert_eq!(welcome["resumed"], true, "{welcome}");
    assert_eq!(welcome["user"], "alice");
    assert_eq!(welcome["topics"]["feed"]["recovered"], true, "{welcome}");
    let missed = b.messages(3).await;
    assert_eq!(seqs(&missed), vec![4, 5, 6]);
    assert_eq!(missed[2]["data"], 6);
    assert_eq!(
        seqs(&w.client.messages(6).await),
        (1..=6).collect::<Vec<_>>()
    );
    w.check().await;
}

#[tokio::test]
async fn refresh_before_expiry_keeps_the_connection_open() {
    let gw = auth_gateway(|c| c.security.jwt_leeway = Duration::ZERO).await;
    let mut w = witness(&gw).await;
    let mut short = granting("alice", &["feed"], &[]);
    short["exp"] = json!(now() + 2);
    let (mut a, _) = hello(&gw.ws_url(), Some(&hs256(&short))).await.welcome();
    a.subscribe("feed").await;
    let long = granting("alice", &["feed"], &[]);
    a.send(json!({"type": "refresh", "token": hs256(&long), "ref": 5}))
        .await;
    let r = a.expect("refreshed").await;
    assert_eq!(r["exp"], long["exp"], "{r}");
    assert_eq!(r["ref"], 5);
    // Past the first token's exp: still open, still delivering.
    a.silent_for(Duration::from_millis(3_200)).await;
    gw.publish_api("feed", json!("still here")).await;
    assert_eq!(a.expect("message").await["data"], "still here");
    a.send(json!({"type": "ping"})).await;
    a.expect("pong").await;
    w.check().await;
}

#[tokio::test]
async fn refresh_with_fewer_grants_removes_subscriptions() {
    let gw = auth_gateway(|_| {}).await;
    let mut w = witness(&gw).await;
    let (mut a, _) = hello(
        &gw.ws_url(),
        Some(&hs256(&granting("alice", &["chat.*", "news"], &["chat.*"]))),
    )
    .await
    .welcome();
    a.subscribe("chat.a").await;
    a.subscribe("chat.b").await;
    a.subscribe("news").await;
    a.send(
        json!({"type": "refresh", "token": hs256(&granting("alice", &["news"], &[])), "ref": 9}),
    )
    .await;
    let mut removed = Vec::new();
    loop {
        let f = a.next().await;
        match f["type"].as_str() {
            Some("unsubscribed") => {
                assert_eq!(f["reason"], "forbidden", "{f}");
                removed.push(f["topic"].as_str().unwrap().to_owned());
            }
            Some("refreshed") => break,
            _ => panic!("unexpected {f}"),
        }
    }
    removed.sort();
    assert_eq!(removed, ["chat.a", "chat.b"]);
    // Revoked topics deliver nothing; the kept one still does.
    gw.publish_api("chat.a", json!("revoked")).await;
    gw.publish_api("news", json!("kept")).await;
    assert_eq!(a.expect("message").await["data"], "kept");
    error_for(
        &mut a,
        json!({"type": "subscribe", "topic": "chat.c", "ref": 1}),
        "forbidden",
    )
    .await;
    error_for(
        &mut a,
        json!({"type": "publish", "topic": "chat.a", "data": 1, "ref": 2}),
        "forbidden",
    )
    .await;
    w.check().await;
}

#[tokio::test]
async fn refresh_for_another_user_or_with_a_bad_token_is_refused_and_changes_nothing() {
    let gw = auth_gateway(|_| {}).await;
    let mut w = witness(&gw).await;
    let (mut a, _) = hello(
        &gw.ws_url(),
        Some(&hs256(&granting("alice", &["chat.*"], &[]))),
    )
    .await
    .welcome();
    a.subscribe("chat.a").await;
    let mut expired = granting("alice", &["*"], &["*"]);
    expired["exp"] = json!(now() - 60);
    for (what, token, code) in [
        (
            "another user",
            hs256(&granting("mallory", &["*"], &["*"])),
            "forbidden",
        ),
        (
            "forged",
            confused(&granting("alice", &["*"], &["*"])),
            "unauthorized",
        ),
        (
            "alg none",
            unsigned("none", &granting("alice", &["*"], &["*"])),
            "unauthorized",
        ),
        ("expired", hs256(&expired), "unauthorized"),
        ("garbage", "garbage".to_owned(), "unauthorized"),
    ] {
        a.send(json!({"type": "refresh", "token": token, "ref": 3}))
            .await;
        let e = a.expect("error").await;
        assert_eq!(
            (e["code"].as_str(), e["ref"].as_u64()),
            (Some(code), Some(3)),
            "{what}: {e}"
        );
        // The grants did not widen.
        error_for(
            &mut a,
            json!({"type": "subscribe", "topic": "admin", "ref": 4}),
            "forbidden",
        )
        .await;
        w.check().await;
    }
    error_for(&mut a, json!({"type": "refresh", "ref": 6}), "bad_request").await;
    // Still subscribed, still open.
    gw.publish_api("chat.a", json!("x")).await;
    assert_eq!(a.expect("message").await["data"], "x");
}

#[tokio::test]
async fn subscribe_and_publish_outside_the_grants_are_forbidden_and_the_connection_stays() {
    let gw = auth_gateway(|_| {}).await;
    let mut w = witness(&gw).await;
    let (mut a, _) = hello(
        &gw.ws_url(),
        Some(&hs256(&granting(
            "alice",
            &["chat.*", "user.{user}.*", "news"],
            &["chat.{user}"],
        ))),
    )
    .await
    .welcome();
    for topic in [
        "admin",
        "user.bob.inbox",
        "user.alice",
        "newsroom",
        "chat",
        "witness",
    ] {
        let e = error_for(
            &mut a,
            json!({"type": "subscribe", "topic": topic, "ref": 7}),
            "forbidden",
        )
        .await;
        assert_eq!(e["ref"], 7);
        w.check().await;
    }
    for topic in ["chat.bob", "news", "user.alice.inbox", "chat.alice.x"] {
        error_for(
            &mut a,
            json!({"type": "publish", "topic": topic, "data": 1, "ref": 8}),
            "forbidden",
        )
        .await;
    }
    a.subscribe("user.alice.inbox").await;
    a.subscribe("chat.lobby").await;
    a.subscribe("news").await;
    assert_eq!(a.publish("chat.alice", json!("mine")).await, 1);
    // The forbidden publishes never reached anyone.
    gw.publish_api("news", json!("n")).await;
    assert_eq!(a.expect("message").await["data"], "n");
    w.check().await;

    // `{user}` only expands for a plain user id: `bob.x` must not get a corner of bob's space.
    let (mut dotted, welcome) = hello(
        &gw.ws_url(),
        Some(&hs256(&granting(
            "bob.x",
            &["user.{user}.*", "public"],
            &[],
        ))),
    )
    .await
    .welcome();
    assert_eq!(welcome["user"], "bob.x");
    for topic in ["user.bob.x.inbox", "user.bob.inbox", "user.bob.x"] {
        error_for(
            &mut dotted,
            json!({"type": "subscribe", "topic": topic}),
            "forbidden",
        )
        .await;
    }
    dotted.subscribe("public").await;
    w.check().await;
}

#[tokio::test]
async fn topics_with_wildcards_separators_or_unicode_are_bad_requests() {
    let gw = auth_gateway(|_| {}).await;
    let mut w = witness(&gw).await;
    let (mut a, _) = hello(
        &gw.ws_url(),
        Some(&hs256(&granting("alice", &["*"], &["*"]))),
    )
    .await
    .welcome();
    let long = "a".repeat(201);
    for topic in [
        ">",
        "a.>",
        "*",
        "a.*",
        "*.a",
        "a b",
        " a",
        "a\t",
        "a\nb",
        "a\r\nb",
        "é",
        "日本",
        "a\u{0}b",
        "a/b",
        "a\\b",
        "a{b}",
        "a~2Eb",
        "a#",
        "a$b",
        "a%2E",
        "a\u{200b}",
        "",
        long.as_str(),
    ] {
        for kind in ["subscribe", "publish", "unsubscribe"] {
            let e = error_for(
                &mut a,
                json!({"type": kind, "topic": topic, "data": 1, "ref": 11}),
                "bad_request",
            )
            .await;
            assert_eq!(e["ref"], 11);
        }
    }
    // Non-string topics too.
    for topic in [json!(1), json!(null), json!(["a"]), json!({"a": 1})] {
        error_for(
            &mut a,
            json!({"type": "subscribe", "topic": topic}),
            "bad_request",
        )
        .await;
    }
    w.check().await;
    // Dots are separators inside the name only: these are valid, distinct topics.
    for topic in ["a..b", ".a", "a.", "..", "a:b", "a-b", "a_b"] {
        a.subscribe(topic).await;
    }
    w.check().await;
}

async fn cluster_pod(redis: &RedisServer, nats: &NatsServer, name: &str) -> TestGateway {
    let (r, n, name) = (redis.url(), nats.url(), name.to_owned());
    TestGateway::with(move |c| {
        c.redis_url = Some(r);
        c.nats_url = vec![n];
        c.pod_name = Some(name);
        c.store_timeout = Duration::from_secs(2);
        // Rebalancing would close clients with 1012 mid-test.
        c.rebalance_rate = 0;
    })
    .await
}

#[tokio::test]
async fn look_alike_topics_never_receive_each_others_messages_across_a_cluster() {
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    let a = cluster_pod(&redis, &nats, "a").await;
    let b = cluster_pod(&redis, &nats, "b").await;
    let mut w = Witness::join(&a.ws_url(), b.admin, None).await;
    // Names that collide under naive subject or key schemes: separators, escapes, case.
    let topics = [
        "a.b",
        "a:b",
        "a_b",
        "a-b",
        "a..b",
        "a.b.",
        ".a.b",
        "a.b.c",
        "a",
        "b",
        "ab",
        "A.B",
        "a_2Eb",
        "a-2Eb",
        "a2Eb",
        "a~b.x",
        ".",
        "..",
        ":",
        "_",
        "-",
        "seq:a",
        "hist:a",
        "a:seq",
        "t.a.b",
        "gw.t.a~2Eb",
        "gw.t.a_2Eb",
        "a.b:",
    ];
    let topics: Vec<&str> = topics
        .into_iter()
        .filter(|t| protocol::Topic::new(t).is_ok())
        .collect();
    assert!(topics.len() >= 25);
    let mut subs = Vec::new();
    for (i, topic) in topics.iter().enumerate() {
        let pod = if i % 2 == 0 { &a } else { &b };
        let (mut c, _) = pod.hello().await;
        let epoch = c.subscribe(topic).await["epoch"].clone();
        let other = if i % 2 == 0 { &b } else { &a };
        let (mut c2, _) = other.hello().await;
        c2.subscribe(topic).await;
        subs.push((topic, c, c2, epoch));
    }
    let (mut pa, _) = a.hello().await;
    let (mut pb, _) = b.hello().await;
    for topic in &topics {
        pa.publish(topic, json!({"for": topic, "via": "a"})).await;
        pb.publish(topic, json!({"for": topic, "via": "b"})).await;
    }
    w.check().await;
    for (topic, c, c2, _) in &mut subs {
        for c in [c, c2] {
            let got = c.messages(2).await;
            for m in &got {
                assert_eq!(m["topic"], **topic, "{m}");
                assert_eq!(m["data"]["for"], **topic, "cross-delivery: {m}");
            }
            assert_eq!(seqs(&got), vec![1, 2], "{topic}");
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (_, c, c2, _) in &mut subs {
        c.silent_for(Duration::from_millis(1)).await;
        c2.silent_for(Duration::from_millis(1)).await;
    }
    // The stored histories are as separate as the live subjects.
    let (mut late, _) = b.hello().await;
    for (topic, _, _, epoch) in &subs {
        late.send(
            json!({"type": "subscribe", "topic": topic, "since": {"seq": 0, "epoch": epoch}}),
        )
        .await;
        let s = late.expect("subscribed").await;
        assert_eq!(s["recovered"], true, "{s}");
        let got = late.messages(2).await;
        for m in &got {
            assert_eq!(m["data"]["for"], **topic, "history cross-talk: {m}");
        }
    }
    w.check().await;
}

#[tokio::test]
async fn a_resume_token_presented_by_another_user_yields_a_fresh_session() {
    let gw = auth_gateway(|_| {}).await;
    let mut w = witness(&gw).await;
    let alice_token = hs256(&granting("alice", &["chat.*"], &[]));
    let (mut alice, welcome) = hello(&gw.ws_url(), Some(&alice_token)).await.welcome();
    let resume = welcome["resume"].as_str().unwrap().to_owned();
    let session = welcome["session"].as_str().unwrap().to_owned();
    alice.subscribe("chat.secret").await;

    let mallory = hs256(&granting("mallory", &["chat.*"], &[]));
    let forged_secret = format!("{session}.{}", "0".repeat(64));
    for (what, token, resume) in [
        (
            "another user, alice still connected",
            &mallory,
            resume.clone(),
        ),
        (
            "alice's session id with a guessed secret",
            &alice_token,
            forged_secret,
        ),
        (
            "a malformed resume token",
            &alice_token,
            format!("{resume}x"),
        ),
    ] {
        let outcome = hello_on(
            Client::connect(&gw.ws_url()).await,
            Some(token),
            json!({"resume": resume, "positions": {"chat.secret": {"seq": 0, "epoch": "x"}}}),
        )
        .await;
        let (mut c, w2) = match outcome {
            Outcome::Welcome(c, w2) => (c, w2),
            _ => panic!("{what}: no welcome"),
        };
        assert_eq!(w2["resumed"], false, "{what}: {w2}");
        assert_ne!(w2["session"], session.as_str(), "{what}");
        assert_eq!(w2.get("topics"), None, "{what}: {w2}");
        gw.publish_api("chat.secret", json!(what)).await;
        // Alice keeps her connection and her messages; the impostor gets nothing.
        assert_eq!(alice.expect("message").await["data"], what);
        c.silent_for(Duration::from_millis(100)).await;
        w.check().await;
    }
    // Alice's own resume still works after all that.
    alice.ws.close(None).await.unwrap();
    drop(alice);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut back, welcome) = hello_on(
        Client::connect(&gw.ws_url()).await,
        Some(&alice_token),
        json!({"resume": resume}),
    )
    .await
    .welcome();
    assert_eq!(welcome["resumed"], true, "{welcome}");
    assert_eq!(welcome["session"], session.as_str());
    gw.publish_api("chat.secret", json!("back")).await;
    assert_eq!(back.expect("message").await["data"], "back");
    w.check().await;
}
