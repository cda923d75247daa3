//! The client against a scripted fake gateway: resume with the resume token and positions,
//! duplicates of an overlapping replay dropped, `after_ms` honoured, publish ids and `seq`s,
//! `reconnect:false` stops; subscriptions opened by `hello` itself, answered without `ref`.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gateway_client::{ClientConfig, ClientError, Event, Position};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

mod support;

use support::{Ws, recv, send};

/// Closes like the gateway: close frame, wait for the reply, then drop the TCP connection.
async fn close(mut ws: Ws, code: u16, reason: &str) {
    let frame = CloseFrame {
        code: code.into(),
        reason: reason.into(),
    };
    ws.send(Message::Close(Some(frame))).await.unwrap();
    while ws.next().await.is_some() {}
}

fn message(seq: u64) -> Value {
    json!({"type": "message", "topic": "t", "seq": seq, "data": {"n": seq}})
}

fn welcome(resumed: bool, topics: Value) -> Value {
    json!({"type": "welcome", "session": "s1", "resume": "s1.secret", "pod": "fake",
           "resumed": resumed, "topics": topics})
}

/// Two connections: a drain after three messages, then a resume with an overlapping replay, a
/// publish, and a close that says not to reconnect.
async fn fake_gateway(listener: TcpListener) -> Vec<Value> {
    let mut hellos = Vec::new();
    let (tcp, _) = listener.accept().await.unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    hellos.push(recv(&mut ws).await);
    // The subscription asked for before the connection opened came in `hello.subscribe`: it is
    // answered after `welcome`, without `ref`.
    send(&mut ws, welcome(false, json!({}))).await;
    send(
        &mut ws,
        json!({"type": "subscribed", "topic": "t", "seq": 0, "epoch": "e1"}),
    )
    .await;
    for seq in 1..=3 {
        send(&mut ws, message(seq)).await;
    }
    close(ws, 1001, r#"{"reconnect":true,"after_ms":150}"#).await;

    let (tcp, _) = listener.accept().await.unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    hellos.push(recv(&mut ws).await);
    send(
        &mut ws,
        welcome(
            true,
            json!({"t": {"seq": 4, "epoch": "e1", "recovered": true}}),
        ),
    )
    .await;
    for seq in 2..=4 {
        send(&mut ws, message(seq)).await;
    }
    let publish = recv(&mut ws).await;
    assert_eq!(
        (&publish["type"], &publish["id"]),
        (&json!("publish"), &json!("p-1"))
    );
    send(
        &mut ws,
        json!({"type": "published", "topic": "t", "seq": 5, "ref": publish["ref"]}),
    )
    .await;
    close(ws, 1008, r#"{"reconnect":false,"error":"unauthorized"}"#).await;
    hellos
}

#[tokio::test]
async fn resumes_with_positions_drops_duplicates_honours_after_ms_and_stops() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let gateway = tokio::spawn(fake_gateway(listener));

    let config =
        ClientConfig::new([url]).backoff(Duration::from_millis(5), Duration::from_millis(10));
    let (client, mut events) = gateway_client::connect(config);
    let from = client.subscribe("t", None).await.unwrap();
    assert_eq!(
        from,
        Position {
            seq: 0,
            epoch: "e1".into()
        }
    );
    assert_eq!(client.resume_token().as_deref(), Some("s1.secret"));

    let mut seen = Vec::new();
    let mut published = None;
    while let Some(event) = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .unwrap()
    {
        if matches!(&event, Event::Message(m) if m.seq == 4) {
            published = Some(client.publish("t", &json!({"x": 1}), Some("p-1")).await);
        }
        let closed = matches!(event, Event::Closed { .. });
        seen.push(event);
        if closed {
            break;
        }
    }
    assert_eq!(published, Some(Ok(5)));
    let delivered: Vec<u64> = seen
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(m.seq),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, [1, 2, 3, 4], "each message once, in order");
    let duplicates: Vec<u64> = seen
        .iter()
        .filter_map(|e| match e {
            Event::Duplicate { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(duplicates, [2, 3]);
    let delays: Vec<Duration> = seen
        .iter()
        .filter_map(|e| match e {
            Event::Reconnecting { delay, .. } => Some(*delay),
            _ => None,
        })
        .collect();
    assert_eq!(
        delays,
        [Duration::from_millis(150)],
        "after_ms, not the backoff; no reconnect after reconnect:false"
    );
    assert!(
        seen.iter()
            .any(|e| matches!(e, Event::Connected { resumed: true, .. }))
    );
    assert!(!seen.iter().any(|e| matches!(e, Event::Gap(_))));
    match seen.last() {
        Some(Event::Closed {
            error: Some(ClientError::Stopped { code: 1008, error }),
        }) => assert_eq!(error, "unauthorized"),
        other => panic!("expected a stop, got {other:?}"),
    }
    assert!(matches!(
        client.publish("t", &1, None).await,
        Err(ClientError::Closed)
    ));

    let hellos = gateway.await.unwrap();
    assert!(hellos[0].get("resume").is_none());
    assert_eq!(hellos[0]["subscribe"], json!(["t"]));
    assert_eq!(hellos[1]["resume"], "s1.secret");
    assert!(
        hellos[1].get("subscribe").is_none(),
        "the resume's positions restore it"
    );
    assert_eq!(
        hellos[1]["positions"],
        json!({"t": {"seq": 3, "epoch": "e1"}})
    );
}

/// `hello.subscribe` with `a` and `secret`, the error for `secret` in its place (no `ref`, no
/// topic), then `c` (it has a position) as a `subscribe` frame with `since`.
async fn hello_subscribe_gateway(listener: TcpListener) -> Value {
    let (tcp, _) = listener.accept().await.unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    let hello = recv(&mut ws).await;
    if hello["subscribe"] != json!(["a", "secret"]) {
        // Not the hello this test expects: stop the client (it would reconnect forever).
        close(
            ws,
            1008,
            r#"{"reconnect":false,"error":"unexpected_hello"}"#,
        )
        .await;
        return hello;
    }
    send(&mut ws, welcome(false, json!({}))).await;
    send(
        &mut ws,
        json!({"type": "subscribed", "topic": "a", "seq": 4, "epoch": "e1"}),
    )
    .await;
    send(
        &mut ws,
        json!({"type": "error", "code": "forbidden", "topic": "secret", "message": "may not subscribe to secret"}),
    )
    .await;
    let sub = recv(&mut ws).await;
    assert_eq!(
        (&sub["type"], &sub["topic"], &sub["since"]),
        (
            &json!("subscribe"),
            &json!("c"),
            &json!({"seq": 2, "epoch": "e1"})
        )
    );
    send(
        &mut ws,
        json!({"type": "subscribed", "topic": "c", "seq": 2, "epoch": "e1", "recovered": true,
               "ref": sub["ref"]}),
    )
    .await;
    close(ws, 1000, r#"{"reconnect":false,"error":"done"}"#).await;
    hello
}

#[tokio::test]
async fn hello_subscribes_plain_topics_and_matches_replies_without_ref_in_order() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let gateway = tokio::spawn(hello_subscribe_gateway(listener));
    let (client, mut events) = gateway_client::connect(ClientConfig::new([url]));
    let since = Position {
        seq: 2,
        epoch: "e1".into(),
    };
    let (a, secret, c) = tokio::join!(
        client.subscribe("a", None),
        client.subscribe("secret", None),
        client.subscribe("c", Some(since.clone())),
    );
    let at = |seq| Position {
        seq,
        epoch: "e1".into(),
    };
    assert_eq!(a, Ok(at(4)));
    let refused = secret.unwrap_err();
    assert_eq!(refused.code(), Some("forbidden"));
    assert_eq!(c, Ok(since));
    let positions = client.positions();
    assert_eq!(
        positions.keys().map(String::as_str).collect::<Vec<_>>(),
        ["a", "c"]
    );
    let mut errors = Vec::new();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .unwrap()
    {
        match event {
            Event::Error(ClientError::Server { code, .. }) => errors.push(code),
            Event::Closed { .. } => break,
            _ => {}
        }
    }
    assert_eq!(errors, ["forbidden"]);
    assert_eq!(gateway.await.unwrap()["subscribe"], json!(["a", "secret"]));
}
