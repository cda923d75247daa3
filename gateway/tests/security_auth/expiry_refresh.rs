//! Token expiry and refresh: expiry closes 1008 and the client resumes losslessly with a new
//! token; a refresh extends the connection, narrows its grants, or is refused and changes
//! nothing.

use std::time::Duration;

use serde_json::json;

use super::{auth_gateway, error_for, refused, witness};
use crate::support::hostile::{
    Outcome, Witness, confused, granting, hello, hello_on, hs256, now, unsigned,
};
use crate::support::{Client, seqs};

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
