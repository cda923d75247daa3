//! Grants and topic names: subscribes and publishes outside the grants are forbidden, `{user}`
//! expands only for a plain user id, and topic names with wildcards, separators or unicode are
//! bad requests.

use serde_json::json;

use super::{auth_gateway, error_for, witness};
use crate::support::hostile::{granting, hello, hs256};

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
