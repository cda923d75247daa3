//! Protocol v1 over real sockets: every frame type, every error code and close code a
//! single node produces, and bad input that must not hurt anyone else.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{TestGateway, seqs};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn hello_subscribe_publish_unsubscribe_ping() {
    let gw = TestGateway::start().await;
    let (mut a, welcome) = gw.hello().await;
    assert_eq!(welcome["resumed"], false);
    assert_eq!(welcome["pod"], "test-pod");
    assert_eq!(welcome["session"].as_str().unwrap().len(), 32);
    assert!(
        welcome["resume"]
            .as_str()
            .unwrap()
            .starts_with(welcome["session"].as_str().unwrap())
    );

    a.send(json!({"type": "subscribe", "topic": "chat.1", "ref": 1}))
        .await;
    let sub = a.expect("subscribed").await;
    assert_eq!(
        (sub["seq"].as_u64(), sub["ref"].as_u64()),
        (Some(0), Some(1))
    );
    assert!(sub.get("recovered").is_none());
    let epoch = sub["epoch"].clone();

    let (mut b, _) = gw.hello().await;
    b.send(json!({"type": "publish", "topic": "chat.1", "data": {"t": "hi", "n": [1, 2.5, null]}, "ref": 7})).await;
    let published = b.expect("published").await;
    assert_eq!(
        published,
        json!({"type": "published", "topic": "chat.1", "seq": 1, "ref": 7})
    );

    let m = a.expect("message").await;
    assert_eq!(
        m,
        json!({"type": "message", "topic": "chat.1", "seq": 1, "data": {"t": "hi", "n": [1, 2.5, null]}})
    );

    a.send(json!({"type": "ping", "ref": 3})).await;
    assert_eq!(a.expect("pong").await, json!({"type": "pong", "ref": 3}));
    a.send(json!({"type": "refresh", "token": "x", "ref": 4}))
        .await;
    assert_eq!(a.expect("refreshed").await["ref"], 4);

    a.send(json!({"type": "unsubscribe", "topic": "chat.1", "ref": 5}))
        .await;
    assert_eq!(
        a.expect("unsubscribed").await,
        json!({"type": "unsubscribed", "topic": "chat.1", "ref": 5})
    );
    b.publish("chat.1", json!(2)).await;
    a.silent_for(Duration::from_millis(300)).await;

    // Subscribing again reports the latest seq and the same epoch.
    let again = a.subscribe("chat.1").await;
    assert_eq!((again["seq"].as_u64(), &again["epoch"]), (Some(2), &epoch));
}

#[tokio::test]
async fn errors_for_bad_frames_keep_the_connection() {
    let gw = TestGateway::start().await;
    let (mut a, _) = gw.hello().await;
    let cases = [
        ("{not json", "bad_request"),
        ("[1,2]", "bad_request"),
        (r#"{"topic":"a"}"#, "bad_request"),
        (r#"{"type":"launch","ref":9}"#, "unknown_type"),
        (r#"{"type":"subscribe","ref":9}"#, "bad_request"),
        (r#"{"type":"publish","topic":"a","ref":9}"#, "bad_request"),
        (
            r#"{"type":"subscribe","topic":"a b","ref":9}"#,
            "bad_request",
        ),
        (
            r#"{"type":"subscribe","topic":"a>","ref":9}"#,
            "bad_request",
        ),
        (r#"{"type":"subscribe","topic":"","ref":9}"#, "bad_request"),
        (
            r#"{"type":"unsubscribe","topic":"never","ref":9}"#,
            "not_subscribed",
        ),
        (r#"{"type":"hello"}"#, "bad_request"),
        (r#"{"type":"refresh"}"#, "bad_request"),
    ];
    for (text, code) in cases {
        a.send_raw(Message::text(text)).await;
        let e = a.expect("error").await;
        assert_eq!(e["code"], code, "{text} -> {e}");
        assert!(!e["message"].as_str().unwrap().is_empty());
        if text.contains("\"ref\":9") {
            assert_eq!(e["ref"], 9, "{text} -> {e}");
        }
    }
    let long = "a".repeat(201);
    a.send(json!({"type": "subscribe", "topic": long})).await;
    assert_eq!(a.expect("error").await["code"], "bad_request");
    a.send_raw(Message::binary(vec![1, 2, 3])).await;
    assert_eq!(a.expect("error").await["code"], "bad_request");
    // Still fully working.
    a.subscribe("ok").await;
    let seq = a.publish("ok", json!("x")).await;
    assert_eq!(a.expect("message").await["seq"], seq);
}

#[tokio::test]
async fn frames_before_hello_are_refused_then_hello_works() {
    let gw = TestGateway::start().await;
    let mut c = gw.client().await;
    c.send(json!({"type": "publish", "topic": "a", "data": 1, "ref": 2}))
        .await;
    let e = c.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_u64()),
        (Some("bad_request"), Some(2))
    );
    c.send(json!({"type": "subscribe", "topic": "a"})).await;
    assert_eq!(c.expect("error").await["code"], "bad_request");
    c.send(json!({"type": "hello"})).await;
    c.expect("welcome").await;
    // Nothing was published before hello.
    assert_eq!(c.subscribe("a").await["seq"], 0);
}

#[tokio::test]
async fn no_hello_in_time_closes_1008() {
    let gw = TestGateway::with(|c| c.handshake_timeout = Duration::from_millis(300)).await;
    let mut c = gw.client().await;
    let closed = c.closed().await;
    assert_eq!(closed.code, 1008);
    assert_eq!(closed.reason["error"], "hello_timeout");
    assert_eq!(closed.reason["reconnect"], true);
}

#[tokio::test]
async fn oversize_message_closes_1009_and_others_keep_going() {
    let gw = TestGateway::with(|c| c.max_message_size = 1024).await;
    let (mut bystander, _) = gw.hello().await;
    bystander.subscribe("t").await;
    let (mut a, _) = gw.hello().await;
    let data = "x".repeat(2000);
    a.send(json!({"type": "publish", "topic": "t", "data": data}))
        .await;
    let closed = a.closed().await;
    assert_eq!(closed.code, 1009);
    assert_eq!(closed.reason["reconnect"], false);
    let (mut p, _) = gw.hello().await;
    let seq = p.publish("t", json!("small")).await;
    assert_eq!(seq, 1);
    assert_eq!(bystander.expect("message").await["seq"], 1);
}

#[tokio::test]
async fn invalid_utf8_closes_1007() {
    let gw = TestGateway::start().await;
    let (mut a, _) = gw.hello().await;
    // A text frame whose payload is not UTF-8, written as raw bytes (tungstenite's client
    // refuses to build one).
    let frame = Message::Frame(
        tokio_tungstenite::tungstenite::protocol::frame::Frame::message(
            vec![0xff, 0xfe, 0xfd],
            tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode::Data(
                tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Text,
            ),
            true,
        ),
    );
    a.send_raw(frame).await;
    let closed = a.closed().await;
    assert_eq!(closed.code, 1007);
}

#[tokio::test]
async fn server_publish_api_uses_the_same_sequence() {
    let gw = TestGateway::start().await;
    let (mut a, _) = gw.hello().await;
    a.subscribe("news").await;
    let r = gw.publish_api("news", json!({"h": 1})).await;
    assert_eq!(r["seq"], 1);
    let (mut b, _) = gw.hello().await;
    let seq = b.publish("news", json!({"h": 2})).await;
    assert_eq!(seq, 2);
    let r = gw.publish_api("news", json!({"h": 3})).await;
    assert_eq!(r["seq"], 3);
    let msgs = a.messages(3).await;
    assert_eq!(seqs(&msgs), vec![1, 2, 3]);
    assert_eq!(msgs[2]["data"], json!({"h": 3}));
    let (status, _) = gw
        .admin_post("/api/publish", r#"{"topic":"bad topic","data":1}"#)
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn many_subscribers_get_every_message_in_order() {
    let gw = TestGateway::start().await;
    let mut subs = Vec::new();
    for _ in 0..20 {
        let (mut c, _) = gw.hello().await;
        c.subscribe("fan").await;
        subs.push(c);
    }
    let mut publishers = Vec::new();
    for p in 0..4 {
        let url = gw.ws_url();
        publishers.push(tokio::spawn(async move {
            let mut c = support::Client::connect(&url).await;
            c.send(json!({"type": "hello"})).await;
            c.expect("welcome").await;
            for i in 0..25 {
                c.publish("fan", json!({"p": p, "i": i})).await;
            }
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }
    for s in &mut subs {
        let msgs = s.messages(100).await;
        assert_eq!(seqs(&msgs), (1..=100).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn hello_with_initial_subscriptions_answers_welcome_then_subscribed_in_order() {
    let gw = TestGateway::with(|c| c.max_subscriptions = 2).await;
    gw.publish_api("chat.1", json!("before")).await;

    // A bad topic name refuses the whole hello; the connection may say hello again.
    let mut a = gw.client().await;
    a.send(json!({"type": "hello", "subscribe": ["chat.1", "no spaces"]}))
        .await;
    assert_eq!(a.expect("error").await["code"], "bad_request");

    a.send(json!({"type": "hello", "subscribe": ["chat.1", "chat.2", "chat.1", "chat.3"]}))
        .await;
    let welcome = a.expect("welcome").await;
    assert_eq!(welcome["resumed"], false);
    let first = a.expect("subscribed").await;
    assert_eq!(
        (&first["topic"], first["seq"].as_u64()),
        (&json!("chat.1"), Some(1))
    );
    assert!(
        first.get("ref").is_none() && first.get("reason").is_none(),
        "{first}"
    );
    let second = a.expect("subscribed").await;
    assert_eq!(
        (&second["topic"], second["seq"].as_u64()),
        (&json!("chat.2"), Some(0))
    );
    // Named twice: confirmed like a second `subscribe`, nothing re-sent.
    let again = a.expect("subscribed").await;
    assert_eq!(
        (&again["topic"], again["seq"].as_u64()),
        (&json!("chat.1"), Some(1))
    );
    assert!(again.get("recovered").is_none());
    // Past --max-subscriptions: the same error a `subscribe` gets.
    assert_eq!(a.expect("error").await["code"], "limit_reached");

    // Live from the positions `subscribed` reported.
    let (mut b, _) = gw.hello().await;
    let seq = b.publish("chat.2", json!("live")).await;
    let m = a.expect("message").await;
    assert_eq!(
        (&m["topic"], m["seq"].as_u64()),
        (&json!("chat.2"), Some(seq))
    );

    // The subscriptions are in the session record: a resume restores both.
    a.leave().await;
    let mut c = gw.client().await;
    c.send(json!({"type": "hello", "resume": welcome["resume"]}))
        .await;
    let resumed = c.expect("welcome").await;
    assert_eq!(resumed["resumed"], true);
    let topics = resumed["topics"].as_object().unwrap();
    assert_eq!(topics.len(), 2, "{resumed}");
    assert_eq!(topics["chat.2"]["seq"], seq);
}

/// A fresh session that subscribes in `hello` is saved once, with its subscriptions, before
/// `welcome` is flushed: one store call per handshake, not two.
#[tokio::test]
async fn a_fresh_hello_with_subscriptions_saves_the_session_once() {
    let gw = TestGateway::start().await;
    let mut a = gw.client().await;
    a.send(json!({"type": "hello", "subscribe": ["news", "sport"]}))
        .await;
    let welcome = a.expect("welcome").await;
    assert_eq!(a.expect("subscribed").await["topic"], "news");
    assert_eq!(a.expect("subscribed").await["topic"], "sport");
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains("gateway_session_store_seconds_count{op=\"save_session\"} 1\n"),
        "{metrics}"
    );
    // That one save holds both subscriptions: a resume restores them.
    a.leave().await;
    let mut b = gw.client().await;
    b.send(json!({"type": "hello", "resume": welcome["resume"]}))
        .await;
    let resumed = b.expect("welcome").await;
    assert_eq!(resumed["resumed"], true);
    assert_eq!(resumed["topics"].as_object().unwrap().len(), 2, "{resumed}");
}
