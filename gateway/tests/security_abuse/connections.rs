//! Limits on connections: concurrent and new connections per address are capped with 429,
//! slowloris sockets are dropped after the header timeout, and the handshake cap answers 503.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{lo, witness, witness_from};
use crate::support;
use crate::support::hostile::{Witness, read_until_closed, refusal, start_logged, ws_from};
use crate::support::{Client, TestGateway, http};

#[tokio::test]
async fn concurrent_connections_per_address_are_capped_with_429() {
    let gw = TestGateway::with(|c| c.security.max_conns_per_ip = 3).await;
    let mut w = witness_from(&gw, lo(2)).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(ws_from(lo(1), gw.public).await.expect("under the cap"));
    }
    for _ in 0..20 {
        let (status, retry, body) = refusal(ws_from(lo(1), gw.public).await);
        assert_eq!(
            (status, retry, body.as_str()),
            (429, Some(5), "ip_connections")
        );
    }
    w.check().await;
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains(r#"gateway_connections_total{outcome="ip_connections"} 20"#),
        "{metrics}"
    );
    // Other addresses are not affected.
    let (_c, _) = support::hostile::hello_on(
        ws_from(lo(3), gw.public).await.expect("another address"),
        None,
        json!({}),
    )
    .await
    .welcome();
    // One closes: its place frees up.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if ws_from(lo(1), gw.public).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the place was never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    w.check().await;
}

#[tokio::test]
async fn new_connections_per_address_are_rate_limited_with_429() {
    // 1/s with the minimum burst of 10.
    let gw = TestGateway::with(|c| c.security.max_new_conns_per_ip = 1).await;
    let mut w = witness_from(&gw, lo(2)).await;
    let (mut accepted, mut refused) = (0, 0);
    let started = Instant::now();
    for _ in 0..40 {
        match ws_from(lo(1), gw.public).await {
            Ok(_) => accepted += 1,
            Err(e) => {
                let (status, retry, body) = refusal(Err(e));
                assert_eq!((status, body.as_str()), (429, "ip_rate"));
                let retry = retry.expect("Retry-After");
                assert!((1..=2).contains(&retry), "Retry-After: {retry}");
                refused += 1;
            }
        }
    }
    // The burst, plus one per second the attempts took.
    let refilled = started.elapsed().as_secs() as usize + 1;
    assert!(
        (10..=10 + refilled).contains(&accepted),
        "accepted {accepted} in {:?}",
        started.elapsed()
    );
    assert_eq!(accepted + refused, 40);
    w.check().await;
    // Other addresses connect meanwhile.
    ws_from(lo(3), gw.public).await.expect("another address");
    w.check().await;
}

#[tokio::test]
async fn slowloris_sockets_are_dropped_after_the_header_timeout_while_clients_connect() {
    let log = support::hostile::log_path("slowloris");
    let pod = start_logged(&["--header-read-timeout", "1s"], "warn", &log);
    let _ = std::fs::remove_file(&log);
    let public: SocketAddr = ([127, 0, 0, 1], pod.port).into();
    let admin = pod.admin_addr();
    let mut w = Witness::join(&pod.url(), admin, None).await;
    let started = Instant::now();
    let mut stalled = Vec::new();
    // 400 send part of the request line and headers, then stall.
    for i in 0..400 {
        let mut s = TcpStream::connect(public).await.unwrap();
        let partial = format!("GET /ws HTTP/1.1\r\nHost: x\r\nX-Slow-{i}: ");
        s.write_all(partial.as_bytes()).await.unwrap();
        stalled.push(s);
    }
    // 50 send nothing at all.
    for _ in 0..50 {
        stalled.push(TcpStream::connect(public).await.unwrap());
    }
    // 25 finish one request on a keep-alive connection, then stall before the next.
    for _ in 0..25 {
        let mut s = TcpStream::connect(public).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /hea")
            .await
            .unwrap();
        stalled.push(s);
    }
    // 25 trickle one byte every 200 ms, forever.
    let mut tricklers = Vec::new();
    for _ in 0..25 {
        let mut s = TcpStream::connect(public).await.unwrap();
        tricklers.push(tokio::spawn(async move {
            let request = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n".repeat(100);
            for b in request {
                if s.write_all(&[b]).await.is_err() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            false
        }));
    }
    assert_eq!(stalled.len() + tricklers.len(), 500);
    // During the attack, normal clients connect, subscribe and receive.
    let mut late = Vec::new();
    for i in 0..10 {
        let c = Client::connect(&pod.url()).await;
        late.push(Witness::on_topic(c, admin, None, &format!("late-{i}")).await);
    }
    w.check().await;
    for c in &mut late {
        c.check().await;
    }
    let drops = stalled.iter_mut().map(|s| async move {
        read_until_closed(s, Duration::from_secs(10)).await;
    });
    futures_util::future::join_all(drops).await;
    for t in tricklers {
        let dropped = tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("trickler dropped in time")
            .unwrap();
        assert!(dropped, "a trickling socket outlived its whole request");
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "took {took:?}");
    // Still serving.
    w.check().await;
    let c = Client::connect(&pod.url()).await;
    let _ = support::hostile::hello_on(c, None, json!({}))
        .await
        .welcome();
    assert_eq!(
        http(public, "GET", "/healthz", None, None).await,
        (200, "ok".into())
    );
}

#[tokio::test]
async fn the_handshake_cap_answers_503_until_a_handshake_finishes() {
    let gw = TestGateway::with(|c| {
        c.security.max_handshakes = 3;
        c.handshake_timeout = Duration::from_secs(2);
    })
    .await;
    let mut w = witness(&gw).await;
    // Three upgraded sockets that never say hello hold every handshake place.
    let mut pending = Vec::new();
    for _ in 0..3 {
        pending.push(gw.client().await);
    }
    for _ in 0..10 {
        let (status, retry, body) = refusal(ws_from(lo(1), gw.public).await);
        assert_eq!((status, retry, body.as_str()), (503, Some(1), "handshakes"));
        w.check().await;
    }
    // One finishes its handshake: a place frees up.
    let first = pending.remove(0);
    let (_done, _) = support::hostile::hello_on(first, None, json!({}))
        .await
        .welcome();
    let fourth = gw.client().await;
    assert_eq!(refusal(ws_from(lo(1), gw.public).await).0, 503);
    // The stalled ones are closed when their hello time is up, freeing the rest.
    for mut c in pending.into_iter().chain([fourth]) {
        let closed = c.closed().await;
        assert_eq!(closed.code, 1008);
        assert_eq!(closed.reason["error"], "hello_timeout");
    }
    let (_c, _) = gw.hello().await;
    w.check().await;
}
