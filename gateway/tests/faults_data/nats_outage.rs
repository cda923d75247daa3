//! A NATS outage while 3 × 400 messages are published: nothing is lost.

use std::time::Duration;

use serde_json::json;
use test_support::{FaultProxy, NatsServer, RedisServer};

use super::LIMIT;
use crate::support;
use crate::support::faults_data::{Reader, cluster_pod, metric, publish_many, subscriber};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_outage_with_1200_messages_published_meanwhile_loses_nothing() {
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    let link = FaultProxy::start(([127, 0, 0, 1], nats.port));
    let topics = ["o0", "o1", "o2"];
    // A long resync: what A missed must come back through the catch-up on its NATS reconnect.
    let a = cluster_pod(&redis.url(), &link.url("nats"), "a", |c| {
        c.outbound_queue = 64;
        c.topic_resync_interval = Duration::from_secs(60);
    })
    .await;
    let b = cluster_pod(&redis.url(), &nats.url(), "b", |_| {}).await;
    let reader = Reader::spawn(subscriber(&a.ws_url(), &topics).await);
    let (mut publisher, _) = b.hello().await;
    for t in topics {
        assert_eq!(publisher.publish(t, json!("before")).await, 1);
    }
    reader
        .wait("the first messages", LIMIT, |s| {
            topics.iter().all(|t| s.count(t) == 1)
        })
        .await;

    // A loses NATS and cannot get it back; B keeps publishing into history.
    link.refuse(true);
    link.cut();
    let ready = || support::http(a.public, "GET", "/readyz", None, None);
    for _ in 0..200 {
        if ready().await.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready().await.0, 503, "A should see its backplane down");
    let per_topic = 400;
    for t in topics {
        let acked = publish_many(&mut publisher, t, per_topic, |i| json!({"n": i})).await;
        assert_eq!(acked, (2..=per_topic as u64 + 1).collect::<Vec<_>>());
    }
    link.refuse(false);
    let restored = std::time::Instant::now();

    let s = reader
        .wait("every message after the outage", LIMIT, |s| {
            s.closed.is_some() || topics.iter().all(|t| s.count(t) == per_topic + 1)
        })
        .await;
    let delivered_after = restored.elapsed();
    assert!(
        s.closed.is_none(),
        "the subscriber was closed: {:?}",
        s.closed
    );
    for t in topics {
        assert_eq!(
            s.seqs[t],
            (1..=per_topic as u64 + 1).collect::<Vec<_>>(),
            "{t}: gap, duplicate or reorder"
        );
    }
    // Back on NATS (delivered above means reconnected: the resync timer is far off), and live.
    for _ in 0..600 {
        if ready().await.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready().await.0, 200, "A should be back on NATS");
    let seq = publisher.publish("o0", json!("after")).await;
    reader
        .wait("a live message", LIMIT, |s| {
            s.seqs["o0"].last() == Some(&seq)
        })
        .await;
    assert!(reader.snapshot().closed.is_none());
    eprintln!(
        "nats outage: proxy refused {} reconnects; all delivered {:?} after the link was back; \
         pod a read {} messages from history for its full queue",
        link.connections_refused(),
        delivered_after,
        metric(a.admin, "gateway_subscriber_lagged_total").await
    );
}
