//! The client against a scripted fake gateway: resume with the resume token and positions,
//! duplicates of an overlapping replay dropped, `after_ms` honoured, publish ids and `seq`s,
//! `reconnect:false` stops.

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
    send(&mut ws, welcome(false, json!({}))).await;
    let sub = recv(&mut ws).await;
    assert_eq!(sub["type"], "subscribe");
    send(
        &mut ws,
        json!({"type": "subscribed", "topic": "t", "seq": 0, "epoch": "e1", "ref": sub["ref"]}),
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
    assert_eq!(hellos[1]["resume"], "s1.secret");
    assert_eq!(
        hellos[1]["positions"],
        json!({"t": {"seq": 3, "epoch": "e1"}})
    );
}
