//! The shared backplane behaviour against a real `nats-server`, then what only NATS has:
//! connecting in the background, outages and reconnects, slow consumers, the wire layout.

#[macro_use]
mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use backplane::{AnyBackplane, Backplane, BackplaneError, NatsBackplane, NatsConfig, Subject};
use bytes::Bytes;
use common::{WAIT, next, topic};
use futures_util::StreamExt;
use test_support::{NatsServer, free_port};

fn config(url: &str, name: &str) -> NatsConfig {
    NatsConfig {
        request_timeout: Duration::from_secs(5),
        ..NatsConfig::new([url], name)
    }
}

/// A backplane whose first connection is established and announced.
async fn connected(config: NatsConfig) -> NatsBackplane {
    let bp = NatsBackplane::connect(config).await.expect("connect");
    let mut ticks = bp.reconnects();
    tokio::time::timeout(WAIT, ticks.wait_for(|&n| n >= 1))
        .await
        .expect("first connection within the wait")
        .expect("monitor alive");
    assert!(bp.is_connected());
    bp
}

async fn pods() -> (NatsServer, NatsBackplane, NatsBackplane) {
    let server = NatsServer::start();
    let a = connected(config(&server.url(), "pod-a")).await;
    let b = connected(config(&server.url(), "pod-b")).await;
    (server, a, b)
}

conformance_suite!(nats, crate::pods);

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn next_tick(ticks: &mut tokio::sync::watch::Receiver<u64>) {
    tokio::time::timeout(WAIT, ticks.changed())
        .await
        .expect("reconnects ticked within the wait")
        .expect("monitor alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_without_a_server_and_connects_when_it_appears() {
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let started = Instant::now();
    let bp = NatsBackplane::connect(config(&url, "pod-a"))
        .await
        .expect("connect");
    assert!(started.elapsed() < Duration::from_secs(1), "connect waited");
    assert!(!bp.is_connected());
    let t = topic("early");
    assert!(matches!(
        bp.publish(&t, Bytes::from_static(b"x")).await,
        Err(BackplaneError::Unavailable(_))
    ));
    let mut ticks = bp.reconnects();
    // Subscribing while disconnected returns at once; the subscription goes live with the
    // connection, and the tick says so.
    let started = Instant::now();
    let mut early = bp
        .subscribe(&t)
        .await
        .expect("subscribe while disconnected");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "subscribe waited"
    );

    let server = NatsServer::start_on(port);
    next_tick(&mut ticks).await;
    assert!(bp.is_connected());
    let other = connected(config(&server.url(), "pod-b")).await;
    other
        .publish(&t, Bytes::from_static(b"hello"))
        .await
        .unwrap();
    assert_eq!(next(&mut early).await, "hello");
    bp.publish(&t, Bytes::from_static(b"mine")).await.unwrap();
    assert_eq!(next(&mut early).await, "mine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_ticks_reconnects_and_subscriptions_resume() {
    let mut server = NatsServer::start();
    let a = connected(config(&server.url(), "pod-a")).await;
    let b = connected(config(&server.url(), "pod-b")).await;
    let t = topic("survives");
    let mut sub = a.subscribe(&t).await.unwrap();
    b.publish(&t, Bytes::from_static(b"before")).await.unwrap();
    assert_eq!(next(&mut sub).await, "before");

    let (mut ticks_a, mut ticks_b) = (a.reconnects(), b.reconnects());
    server.kill();
    wait_until("both pods notice", || {
        !a.is_connected() && !b.is_connected()
    })
    .await;
    assert!(matches!(
        a.publish(&t, Bytes::from_static(b"lost")).await,
        Err(BackplaneError::Unavailable(_))
    ));
    // Made during the outage: live once the tick comes.
    let during_topic = topic("made.during.outage");
    let mut during = a.subscribe(&during_topic).await.unwrap();

    server.restart();
    next_tick(&mut ticks_a).await;
    next_tick(&mut ticks_b).await;
    assert!(a.is_connected() && b.is_connected());
    b.publish(&t, Bytes::from_static(b"after")).await.unwrap();
    assert_eq!(next(&mut sub).await, "after");
    b.publish(&during_topic, Bytes::from_static(b"late"))
        .await
        .unwrap();
    assert_eq!(next(&mut during).await, "late");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_subscription_is_removed_on_the_server() {
    let (_server, a, b) = pods().await;
    let gone = topic("gone");
    let sub = a.subscribe(&gone).await.unwrap();
    drop(sub);
    // Any later subscribe ends with a round trip, so the UNSUB sent on drop has been handled.
    let marker = topic("marker");
    let mut marks = a.subscribe(&marker).await.unwrap();
    let received = || a.client().statistics().in_messages.load(Ordering::Relaxed);
    let before = received();
    for _ in 0..50 {
        b.publish(&gone, Bytes::from_static(b"x")).await.unwrap();
    }
    b.publish(&marker, Bytes::from_static(b"m")).await.unwrap();
    assert_eq!(next(&mut marks).await, "m");
    assert_eq!(
        received() - before,
        1,
        "only the marker may reach pod a's connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_loses_messages_but_keeps_its_subscription() {
    let server = NatsServer::start();
    let a = connected(NatsConfig {
        subscription_capacity: 16,
        ..config(&server.url(), "slow")
    })
    .await;
    let t = topic("firehose");
    let mut sub = a.subscribe(&t).await.unwrap();
    for i in 0..500 {
        a.publish(&t, Bytes::from(i.to_string())).await.unwrap();
    }
    wait_until("drops are counted", || a.slow_consumer_drops() > 0).await;
    // Whatever fitted the buffer is still delivered, in order; the rest is gone.
    let mut got = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
        got.push(
            String::from_utf8(m.to_vec())
                .unwrap()
                .parse::<u32>()
                .unwrap(),
        );
    }
    assert!(!got.is_empty() && got.len() < 500, "received {}", got.len());
    assert!(got.windows(2).all(|w| w[0] < w[1]), "out of order: {got:?}");
    a.publish(&t, Bytes::from_static(b"still here"))
        .await
        .unwrap();
    assert_eq!(next(&mut sub).await, "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_layout_matches_the_design() {
    let server = NatsServer::start();
    let bp = connected(NatsConfig {
        subject_prefix: "prod.gw".into(),
        ..config(&server.url(), "pod-a")
    })
    .await;
    let raw = async_nats::connect(server.url()).await.unwrap();
    let cases = [
        (topic("chat.room:1"), "prod.gw.t.chat~2Eroom~3A1"),
        (Subject::Heartbeat, "prod.gw.hb"),
        (Subject::Control("web-0.x".into()), "prod.gw.ctl.web-0~2Ex"),
    ];
    for (subject, expected) in cases {
        assert_eq!(bp.nats_subject(&subject).unwrap(), expected);
        let mut sub = raw.subscribe(expected).await.unwrap();
        // Receiving its own probe proves the server has registered the raw subscription before
        // the backplane publishes on another connection.
        raw.publish(expected, Bytes::from_static(b"probe"))
            .await
            .unwrap();
        let mut recv = async || {
            tokio::time::timeout(WAIT, sub.next())
                .await
                .unwrap()
                .unwrap()
        };
        assert_eq!(recv().await.payload, "probe");
        bp.publish(&subject, Bytes::from_static(b"p"))
            .await
            .unwrap();
        assert_eq!(recv().await.payload, "p");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_backplane_delegates_to_nats() {
    let (_server, a, b) = pods().await;
    let (a, b) = (AnyBackplane::from(a), AnyBackplane::from(b));
    assert!(a.is_connected());
    let t = topic("any");
    let mut sub = b.subscribe(&t).await.unwrap();
    a.publish(&t, Bytes::from_static(b"via enum"))
        .await
        .unwrap();
    assert_eq!(next(&mut sub).await, "via enum");
    assert!(*a.reconnects().borrow() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_payload_is_the_servers() {
    let server = NatsServer::start_with_max_payload(32 * 1024);
    let bp = connected(config(&server.url(), "pod-a")).await;
    assert_eq!(bp.max_payload(), Some(32 * 1024));
    assert_eq!(
        AnyBackplane::from(bp.clone()).max_payload(),
        Some(32 * 1024)
    );
    // Above it, a publish fails: the caller must refuse such a payload before anything else.
    let t = topic("big");
    assert!(
        bp.publish(&t, Bytes::from(vec![b'x'; 32 * 1024 + 1]))
            .await
            .is_err()
    );
    bp.publish(&t, Bytes::from(vec![b'x'; 32 * 1024]))
        .await
        .unwrap();
    let default = NatsServer::start();
    let bp = connected(config(&default.url(), "pod-b")).await;
    assert_eq!(bp.max_payload(), Some(1024 * 1024));
}

#[tokio::test]
async fn invalid_configuration_is_refused() {
    let bad = [
        NatsConfig {
            urls: vec![],
            ..NatsConfig::default()
        },
        NatsConfig {
            subject_prefix: "gw.*".into(),
            ..NatsConfig::default()
        },
        NatsConfig {
            subject_prefix: String::new(),
            ..NatsConfig::default()
        },
        NatsConfig {
            urls: vec!["nats://[::1".into()],
            ..NatsConfig::default()
        },
        NatsConfig {
            request_timeout: Duration::ZERO,
            ..NatsConfig::default()
        },
    ];
    for config in bad {
        let shown = format!("{config:?}");
        assert!(
            matches!(
                NatsBackplane::connect(config).await,
                Err(BackplaneError::Invalid(_))
            ),
            "{shown}"
        );
    }
}
