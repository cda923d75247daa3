//! The server API across a fleet: disconnect, server-side subscriptions, revocations and
//! broadcast, with real gateways on a real Redis and NATS.

mod support;

use std::time::Duration;

use gateway::auth::AuthMode;
use serde_json::{Value, json};
use support::hostile::{claims, hs256, now, secret_file};
use support::{Client, TestGateway};
use test_support::{NatsServer, RedisServer};

struct Fleet {
    _redis: RedisServer,
    _nats: NatsServer,
    pods: Vec<TestGateway>,
}

async fn fleet(n: usize) -> Fleet {
    let (redis, nats) = (RedisServer::start(), NatsServer::start());
    let mut pods = Vec::new();
    for i in 0..n {
        let (r, u) = (redis.url(), nats.url());
        pods.push(
            TestGateway::with(move |c| {
                c.redis_url = Some(r);
                c.nats_url = vec![u];
                c.pod_name = Some(format!("pod-{i}"));
                c.security.auth_mode = AuthMode::Required;
                c.security.jwt_secret_file = Some(secret_file());
                c.security.default_subscribe = vec!["*".into()];
                c.security.default_publish = vec!["*".into()];
            })
            .await,
        );
    }
    // The server API answers `unavailable` until NATS is connected.
    for pod in &pods {
        pod.ready().await;
    }
    Fleet {
        _redis: redis,
        _nats: nats,
        pods,
    }
}

fn token(user: &str) -> String {
    hs256(&claims(user))
}

async fn hello(gw: &TestGateway, frame: Value) -> (Client, Value) {
    let mut c = gw.client().await;
    c.send(frame).await;
    let welcome = c.expect("welcome").await;
    (c, welcome)
}

async fn login(gw: &TestGateway, user: &str) -> (Client, String) {
    let (c, w) = hello(gw, json!({"type": "hello", "token": token(user)})).await;
    (c, w["resume"].as_str().unwrap().to_owned())
}

async fn api(gw: &TestGateway, path: &str, body: Value) -> Value {
    let (status, text) = gw.admin_post(path, &body.to_string()).await;
    assert_eq!(status, 200, "{path}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// Skips frames until one of `kind`.
async fn next_of(c: &mut Client, kind: &str) -> Value {
    loop {
        let v = c.next().await;
        if v["type"] == kind {
            return v;
        }
    }
}

#[tokio::test]
async fn disconnect_closes_the_user_on_every_pod_and_none_of_its_sessions_resumes() {
    let f = fleet(2).await;
    let (mut on_a, resume_a) = login(&f.pods[0], "alice").await;
    let (mut on_b, resume_b) = login(&f.pods[1], "alice").await;
    // A third session, closed cleanly: resumable without a connection.
    let (mut gone, resume_gone) = login(&f.pods[0], "alice").await;
    gone.leave().await;
    // A witness of another user keeps its connection and its messages.
    let (mut bob, _) = login(&f.pods[0], "bob").await;
    bob.subscribe("news").await;

    let answer = api(
        &f.pods[1],
        "/api/disconnect",
        json!({"user": "alice", "reason": "banned"}),
    )
    .await;
    assert_eq!(answer["sessions"], 3, "{answer}");
    for c in [&mut on_a, &mut on_b] {
        let closed = c.closed().await;
        assert_eq!(closed.code, 1008);
        assert_eq!(
            closed.reason,
            json!({"reconnect": false, "error": "disconnected"})
        );
    }
    for (pod, resume) in [(0, &resume_a), (1, &resume_b), (1, &resume_gone)] {
        let (_, w) = hello(
            &f.pods[pod],
            json!({"type": "hello", "token": token("alice"), "resume": resume}),
        )
        .await;
        assert_eq!(w["resumed"], false, "no session of alice resumes: {w}");
    }
    f.pods[1].publish_api("news", json!("still here")).await;
    assert_eq!(bob.expect("message").await["data"], "still here");
}

#[tokio::test]
async fn server_side_subscriptions_reach_every_pod_and_survive_a_resume_on_a_third() {
    let f = fleet(3).await;
    let (mut on_a, resume_a) = login(&f.pods[0], "alice").await;
    let (mut on_b, _) = login(&f.pods[1], "alice").await;
    api(
        &f.pods[2],
        "/api/subscribe",
        json!({"user": "alice", "topic": "alerts"}),
    )
    .await;
    for c in [&mut on_a, &mut on_b] {
        let s = c.expect("subscribed").await;
        assert_eq!(
            (&s["topic"], &s["reason"]),
            (&json!("alerts"), &json!("server"))
        );
    }
    assert_eq!(f.pods[2].publish_api("alerts", json!(1)).await["seq"], 1);
    for c in [&mut on_a, &mut on_b] {
        assert_eq!(c.expect("message").await["seq"], 1);
    }
    // The subscription is in the session record: it comes back on another pod.
    on_a.leave().await;
    f.pods[0].publish_api("alerts", json!(2)).await;
    let (mut on_c, w) = hello(
        &f.pods[2],
        json!({"type": "hello", "token": token("alice"), "resume": resume_a}),
    )
    .await;
    assert_eq!(w["resumed"], true);
    assert_eq!(w["topics"]["alerts"]["recovered"], true, "{w}");
    assert_eq!(on_c.expect("message").await["seq"], 2);
    api(
        &f.pods[0],
        "/api/unsubscribe",
        json!({"user": "alice", "topic": "alerts"}),
    )
    .await;
    for c in [&mut on_b, &mut on_c] {
        let u = next_of(c, "unsubscribed").await;
        assert_eq!(
            (&u["topic"], &u["reason"]),
            (&json!("alerts"), &json!("server"))
        );
    }
}

#[tokio::test]
async fn a_revoked_jti_or_user_is_refused_on_hello_refresh_and_resume() {
    let f = fleet(1).await;
    let gw = &f.pods[0];
    let mut with_jti = claims("carol");
    with_jti["jti"] = json!("token-1");
    let revoked = hs256(&with_jti);
    let (mut c, w) = hello(gw, json!({"type": "hello", "token": revoked})).await;
    let resume = w["resume"].as_str().unwrap().to_owned();
    api(
        gw,
        "/api/revoke",
        json!({"jti": "token-1", "until": now() + 3_600}),
    )
    .await;
    // refresh with the revoked token
    c.send(json!({"type": "refresh", "token": revoked, "ref": 1}))
        .await;
    let e = c.expect("error").await;
    assert_eq!(
        (&e["code"], &e["message"]),
        (&json!("unauthorized"), &json!("revoked"))
    );
    // a fresh hello and a resume with it
    for frame in [
        json!({"type": "hello", "token": revoked}),
        json!({"type": "hello", "token": revoked, "resume": resume}),
    ] {
        let mut again = gw.client().await;
        again.send(frame).await;
        let closed = again.closed().await;
        assert_eq!(
            (closed.code, &closed.reason["error"]),
            (1008, &json!("revoked"))
        );
    }
    // Another token of carol still works; revoking the user stops that too.
    let (_ok, _) = login(gw, "carol").await;
    api(
        gw,
        "/api/revoke",
        json!({"user": "carol", "until": now() + 3_600}),
    )
    .await;
    let mut refused = gw.client().await;
    refused
        .send(json!({"type": "hello", "token": token("carol")}))
        .await;
    assert_eq!(refused.closed().await.reason["error"], "revoked");
    let (status, _) = gw
        .admin_post("/api/revoke", &json!({"until": 1}).to_string())
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn broadcast_sequences_each_topic_and_reports_bad_ones() {
    let f = fleet(1).await;
    let gw = &f.pods[0];
    let (mut c, _) = login(gw, "dana").await;
    c.subscribe("b").await;
    gw.publish_api("b", json!("first")).await;
    assert_eq!(c.expect("message").await["seq"], 1);
    let answer = api(
        gw,
        "/api/broadcast",
        json!({"topics": ["a", "b", "no spaces"], "data": {"x": 1}}),
    )
    .await;
    let results = answer["results"].as_array().unwrap();
    assert_eq!(
        (&results[0]["seq"], &results[1]["seq"]),
        (&json!(1), &json!(2)),
        "{answer}"
    );
    assert!(results[2]["error"].is_string(), "{answer}");
    let m = c.expect("message").await;
    assert_eq!((&m["seq"], &m["data"]), (&json!(2), &json!({"x": 1})));
    tokio::time::sleep(Duration::from_millis(10)).await;
}
