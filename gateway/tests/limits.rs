//! Limits and operations of one node: capacity, origin allowlist, idle timeout, slow consumers,
//! health, metrics and shutdown.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use support::{TestGateway, http};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::test]
async fn over_capacity_upgrades_get_503_with_retry_after() {
    let gw = TestGateway::with(|c| c.max_connections = 2).await;
    let (_a, _) = gw.hello().await;
    let (_b, _) = gw.hello().await;
    let err = tokio_tungstenite::connect_async(gw.ws_url())
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status(), 503);
            assert_eq!(resp.headers()["retry-after"], "5");
        }
        other => panic!("expected HTTP 503, got {other}"),
    }
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains(r#"gateway_connections_total{outcome="capacity"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn origin_allowlist_refuses_other_origins() {
    let gw =
        TestGateway::with(|c| c.allowed_origins = vec!["https://app.example.com".into()]).await;
    let mut req = gw.ws_url().into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", "https://evil.example.com".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await.unwrap_err() {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 403),
        other => panic!("expected 403, got {other}"),
    }
    let mut req = gw.ws_url().into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", "https://app.example.com".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_ok());
    // Non-browser clients send no Origin and are allowed.
    let (_c, _) = gw.hello().await;
}

#[tokio::test]
async fn a_peer_that_never_answers_pings_is_dropped() {
    let gw = TestGateway::with(|c| {
        c.ping_interval = Duration::from_millis(100);
        c.idle_timeout = Duration::from_millis(400);
    })
    .await;
    // A client that reads (and so answers pings) stays.
    let (mut alive, _) = gw.hello().await;
    // A client that never reads never answers a ping.
    let (mut dead, _) = gw.hello().await;
    alive.silent_for(Duration::from_millis(900)).await;
    alive.send(json!({"type": "ping"})).await;
    alive.expect("pong").await;
    // The dead one: its socket was closed by the server (reading now finds the end).
    let mut saw_end = false;
    for _ in 0..50 {
        match tokio::time::timeout(Duration::from_secs(2), dead.ws.next()).await {
            Ok(None) | Ok(Some(Err(_))) => {
                saw_end = true;
                break;
            }
            Ok(Some(Ok(_))) => {}
            Err(_) => break,
        }
    }
    assert!(saw_end, "idle connection was not dropped");
}

/// A gateway with a 16-message queue and `history` messages of history; a slow subscriber that
/// reads nothing while 2,000 × 8 KiB (16 MiB, far beyond socket buffers) are published to
/// "firehose", and a fast one that read all of them in order. Returns the gateway, the slow
/// client and its `welcome`, and the fast client.
async fn firehose(history: usize) -> (TestGateway, support::Client, Value, support::Client) {
    let gw = TestGateway::with(|c| {
        c.outbound_queue = 16;
        c.history_size = history;
        c.write_timeout = Duration::from_secs(60);
        c.write_buffer_size = 16 * 1024;
    })
    .await;
    let (mut slow, welcome) = gw.hello().await;
    slow.subscribe("firehose").await;
    let (mut fast, _) = gw.hello().await;
    fast.subscribe("firehose").await;
    let reader = tokio::spawn(async move {
        let msgs = fast.messages(2_000).await;
        assert_eq!(support::seqs(&msgs), (1..=2_000).collect::<Vec<_>>());
        fast
    });
    let data = "x".repeat(8 * 1024);
    for _ in 0..2_000 {
        gw.publish_api("firehose", json!(data)).await;
    }
    let fast = reader.await.unwrap();
    (gw, slow, welcome, fast)
}

/// A reader whose queue overflows during a burst is not closed: the messages that did not fit
/// are written from history once it has written its queue, in order, without a gap.
#[tokio::test]
async fn a_lagging_reader_catches_up_from_history_instead_of_being_closed() {
    let (gw, mut slow, _, mut fast) = firehose(2_500).await;
    let msgs = slow.messages(2_000).await;
    assert_eq!(support::seqs(&msgs), (1..=2_000).collect::<Vec<_>>());
    slow.send(json!({"type": "ping"})).await;
    slow.expect("pong").await;
    fast.send(json!({"type": "ping"})).await;
    fast.expect("pong").await;
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        !metrics.contains("gateway_subscriber_lagged_total 0"),
        "the slow reader's queue never overflowed: the test proves nothing"
    );
    assert!(!metrics.contains(r#"gateway_closes_total{code="1013"}"#));
}

/// A reader that falls further behind than history reaches is closed with 1013 `lagged` after
/// everything history still had, gap-free; its resume says `recovered: false`. Never a skip.
#[tokio::test]
async fn a_reader_behind_history_is_closed_1013_and_told_recovered_false() {
    let (gw, mut slow, welcome, mut fast) = firehose(100).await;
    let (msgs, closed) = slow.messages_until_close().await;
    let got = support::seqs(&msgs);
    assert_eq!(
        got,
        (1..=got.len() as u64).collect::<Vec<_>>(),
        "a gap before the close"
    );
    assert!(
        got.len() < 2_000,
        "the slow reader got everything: the test proves nothing"
    );
    assert_eq!(closed.code, 1013);
    assert_eq!(closed.reason["error"], "lagged");
    assert_eq!(closed.reason["reconnect"], true);

    let mut again = gw.client().await;
    let last = got.last().copied().unwrap_or(0);
    let epoch = fast.subscribe("firehose").await["epoch"].clone();
    again
        .send(json!({"type": "hello", "resume": welcome["resume"],
            "positions": {"firehose": {"seq": last, "epoch": epoch}}}))
        .await;
    let resumed = again.expect("welcome").await;
    assert_eq!(resumed["resumed"], true);
    assert_eq!(resumed["topics"]["firehose"]["recovered"], false);
    assert_eq!(resumed["topics"]["firehose"]["seq"], 2_000);
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(metrics.contains(r#"gateway_closes_total{code="1013"} 1"#));
}

#[tokio::test]
async fn health_readiness_and_metrics_reflect_a_session() {
    let gw = TestGateway::start().await;
    assert_eq!(
        http(gw.public, "GET", "/healthz", None, None).await,
        (200, "ok".into())
    );
    assert_eq!(http(gw.public, "GET", "/readyz", None, None).await.0, 200);
    let (mut a, _) = gw.hello().await;
    a.subscribe("m").await;
    let (mut b, _) = gw.hello().await;
    b.subscribe("m").await;
    a.publish("m", json!(1)).await;
    b.expect("message").await;
    let (status, metrics) = gw.admin_get("/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "gateway_connections_active 2",
        "gateway_connections_capacity 10000",
        r#"gateway_connections_total{outcome="accepted"} 2"#,
        "gateway_subscriptions_active 2",
        "gateway_topics_active 1",
        "gateway_draining 0",
        "gateway_delivery_latency_seconds_count 2",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in\n{metrics}"
        );
    }
    assert!(metrics.contains("gateway_messages_delivered_total 2"));
    assert!(metrics.contains("gateway_session_store_seconds_count{op=\"append\"} 1"));
    assert!(metrics.ends_with("# EOF\n"));
}

#[tokio::test]
async fn admin_token_is_required_when_set() {
    let gw = TestGateway::with(|c| c.admin_token = Some("s3cret".into())).await;
    assert_eq!(gw.admin_get("/metrics").await.0, 401);
    let (status, _) = http(
        gw.admin,
        "GET",
        "/metrics",
        None,
        Some("Authorization: Bearer wrong\r\n"),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = http(
        gw.admin,
        "GET",
        "/metrics",
        None,
        Some("Authorization: Bearer s3cret\r\n"),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn shutdown_closes_everyone_with_1001_and_returns() {
    let gw = TestGateway::with(|c| c.drain_rate = 50).await;
    let mut clients = Vec::new();
    for _ in 0..10 {
        let (mut c, _) = gw.hello().await;
        c.subscribe("x").await;
        clients.push(c);
    }
    let public = gw.public;
    let waiter = tokio::spawn(async move {
        let mut codes = Vec::new();
        for mut c in clients {
            let closed = c.closed().await;
            assert_eq!(closed.reason["reconnect"], true);
            assert!(closed.reason["after_ms"].as_u64().unwrap() < 1_000);
            codes.push(closed.code);
        }
        codes
    });
    gw.shutdown().await;
    assert_eq!(waiter.await.unwrap(), vec![1001; 10]);
    assert!(
        tokio::net::TcpStream::connect(public).await.is_err(),
        "still listening"
    );
}

#[tokio::test]
async fn admin_drain_refuses_new_upgrades_and_fails_readiness() {
    let gw = TestGateway::start().await;
    let (mut a, _) = gw.hello().await;
    let (status, body) = gw.admin_post("/admin/drain", "").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(a.closed().await.code, 1001);
    assert_eq!(http(gw.public, "GET", "/readyz", None, None).await.0, 503);
    match tokio_tungstenite::connect_async(gw.ws_url())
        .await
        .unwrap_err()
    {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 503),
        other => panic!("expected 503, got {other}"),
    }
    let (_, body) = gw.admin_get("/admin/drain").await;
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["draining"], true);
    assert_eq!(report["closed"], 1);
}
