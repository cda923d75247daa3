//! Floods on one connection: frames and publish bytes are rate limited, then closed 1008, and
//! subscriptions per connection are capped with `limit_reached`.

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::witness;
use crate::support;
use crate::support::TestGateway;

#[tokio::test]
async fn a_frame_flood_is_rate_limited_then_closed_1008_while_others_keep_receiving() {
    let gw = TestGateway::with(|c| c.security.max_frame_rate = 20).await;
    let mut w = witness(&gw).await;
    let (mut flood, _) = gw.hello().await;
    // A well-behaved publisher on the same pod, under its own limit.
    let (mut publisher, _) = gw.hello().await;
    let feed = w.stream(40, Duration::from_millis(10));
    let polite = async {
        let mut seqs = Vec::new();
        for i in 0..10 {
            seqs.push(publisher.publish("witness", json!({"polite": i})).await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        seqs
    };
    let started = Instant::now();
    let attack = async {
        // 2,000 frames at once: 100 times the rate.
        for i in 0..2_000 {
            let frame = Message::text(json!({"type": "ping", "ref": i}).to_string());
            if flood.ws.feed(frame).await.is_err() {
                break;
            }
        }
        let _ = flood.ws.flush().await;
        let (mut pongs, mut limited) = (0, 0);
        loop {
            match support::hostile::frame_or_close(&mut flood).await {
                Ok(f) if f["type"] == "pong" => pongs += 1,
                Ok(f) if f["type"] == "error" && f["code"] == "rate_limited" => limited += 1,
                Ok(f) => panic!("unexpected {f}"),
                Err(closed) => return (pongs, limited, closed, started.elapsed()),
            }
        }
    };
    let (seqs, (pongs, limited, closed, took)) = tokio::join!(polite, attack);
    assert_eq!(closed.code, 1008);
    assert_eq!(
        closed.reason,
        json!({"reconnect": false, "error": "rate_limited"})
    );
    // The burst (two seconds' worth, less `hello`) passes, and what the rate refills while
    // the flood lasts; every other frame is answered `rate_limited` until more than
    // max(rate, 10) were dropped within 10 s.
    let refilled = (took.as_secs_f64() * 20.0).ceil() as usize;
    assert!(
        (39..=40 + refilled).contains(&pongs),
        "pongs: {pongs} in {took:?}"
    );
    assert_eq!(limited, 20, "rate_limited answers");
    assert_eq!(seqs.len(), 10);
    feed.await.unwrap();
    // The witness got every admin message and every polite publish, in order.
    let mut admin = Vec::new();
    let mut polite = Vec::new();
    while admin.len() < 40 || polite.len() < 10 {
        let m = w.client.expect("message").await;
        match m["data"].get("n") {
            Some(n) => admin.push(n.as_u64().unwrap()),
            None => polite.push(m["data"]["polite"].as_u64().unwrap()),
        }
    }
    assert_eq!(admin, (1..=40).collect::<Vec<_>>());
    assert_eq!(polite, (0..10).collect::<Vec<_>>());
    w.check().await;
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains(r#"gateway_closes_total{code="1008"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_publish_byte_flood_is_rate_limited_then_closed_1008() {
    let gw = TestGateway::with(|c| {
        c.max_message_size = 16 * 1024;
        c.security.max_publish_bytes_rate = 10_000;
    })
    .await;
    let mut w = witness(&gw).await;
    let (mut reader, _) = gw.hello().await;
    reader.subscribe("flood").await;
    let (mut flood, _) = gw.hello().await;
    let data = "x".repeat(12 * 1024);
    for i in 0..100 {
        let frame = json!({"type": "publish", "topic": "flood", "data": data, "ref": i});
        if flood
            .ws
            .feed(Message::text(frame.to_string()))
            .await
            .is_err()
        {
            break;
        }
    }
    let _ = flood.ws.flush().await;
    let (mut published, mut limited) = (0, Vec::new());
    let closed = loop {
        match support::hostile::frame_or_close(&mut flood).await {
            Ok(f) if f["type"] == "published" => published += 1,
            Ok(f) if f["code"] == "rate_limited" => limited.push(f["ref"].as_u64().unwrap()),
            Ok(f) => panic!("unexpected {f}"),
            Err(closed) => break closed,
        }
    };
    assert_eq!(closed.code, 1008);
    assert_eq!(closed.reason["error"], "rate_limited");
    assert!((1..=3).contains(&published), "published: {published}");
    assert_eq!(limited.len(), 10);
    assert!(limited.windows(2).all(|w| w[0] < w[1]), "{limited:?}");
    // Subscribers got exactly what was accepted, nothing that was dropped.
    assert_eq!(reader.messages(published).await.len(), published);
    reader.silent_for(Duration::from_millis(200)).await;
    w.check().await;
}

#[tokio::test]
async fn subscriptions_per_connection_are_capped_with_limit_reached() {
    let gw = TestGateway::with(|c| c.max_subscriptions = 5).await;
    let mut w = witness(&gw).await;
    let (mut a, _) = gw.hello().await;
    for i in 0..5 {
        a.subscribe(&format!("t{i}")).await;
    }
    for i in 5..50 {
        a.send(json!({"type": "subscribe", "topic": format!("t{i}"), "ref": i}))
            .await;
        let e = a.expect("error").await;
        assert_eq!(
            (e["code"].as_str(), e["ref"].as_u64()),
            (Some("limit_reached"), Some(i))
        );
    }
    w.check().await;
    a.send(json!({"type": "unsubscribe", "topic": "t0"})).await;
    a.expect("unsubscribed").await;
    a.subscribe("t5").await;
    w.check().await;
}
