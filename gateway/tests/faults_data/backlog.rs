//! A resume that does not read its backlog: pod memory stays bounded while a client resumes
//! over a 50 MB backlog and never reads it, and a resume over the default replay budget is not
//! recovered and replays nothing.

use std::time::Duration;

use serde_json::json;
use test_support::{NatsServer, RedisServer};

use super::{MIB, blob};
use crate::support;
use crate::support::faults_data::{api_publish, cluster_pod, metric, publish_many, subscriber};
use crate::support::process::Pod;
use crate::support::{Client, seqs};

/// Messages of the backlog here, and the size of each: about 50 MB in all.
const BACKLOG: usize = 800;
const BACKLOG_BYTES: usize = 62_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_that_never_reads_a_50_mb_backlog_keeps_pod_memory_bounded() {
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    let pod = Pod::start(&[
        "--redis-url",
        &redis.url(),
        "--nats-url",
        &nats.url(),
        "--pod-name",
        "big",
        "--history-size",
        "2000",
        "--replay-budget",
        &(512 * MIB).to_string(),
        // The stuck replay must outlive the measurement, not be dropped by the write timeout.
        "--write-timeout",
        "120s",
        "--rebalance-rate",
        "0",
    ]);
    let admin = pod.admin_addr();
    let public = ([127, 0, 0, 1], pod.port).into();
    for _ in 0..1_500 {
        if support::http(public, "GET", "/readyz", None, None).await.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut client = Client::connect(&pod.url()).await;
    client.send(json!({"type": "hello"})).await;
    let welcome = client.expect("welcome").await;
    let epoch = client.subscribe("backlog").await["epoch"].clone();
    client.ws.close(None).await.unwrap();
    drop(client);

    let mut witness = subscriber(&pod.url(), &["w"]).await;
    // Warm the allocator up with the same sizes before taking the baseline.
    for i in 0..20 {
        api_publish(admin, "warm", &blob(i, BACKLOG_BYTES)).await;
    }
    let before = pod.rss_kib();
    for i in 0..BACKLOG {
        assert_eq!(
            api_publish(admin, "backlog", &blob(i, BACKLOG_BYTES)).await,
            i as u64 + 1
        );
    }
    let after_publish = pod.rss_kib();
    let delivered_before = metric(admin, "gateway_messages_delivered_total").await;

    let mut resumed = Client::connect(&pod.url()).await;
    resumed
        .send(json!({"type": "hello", "resume": welcome["resume"],
                     "positions": {"backlog": {"seq": 0, "epoch": epoch}}}))
        .await;
    let w = resumed.expect("welcome").await;
    assert_eq!(w["resumed"], true, "{w}");
    assert_eq!(w["topics"]["backlog"]["recovered"], true, "{w}");
    assert_eq!(w["topics"]["backlog"]["seq"], BACKLOG as u64, "{w}");

    // The client reads nothing more: the replay stalls once the socket buffers are full. Wait
    // until the pod stops writing (its delivered count holds still), well short of the backlog.
    let mut last = -1.0;
    let mut stalled_at = 0.0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = metric(admin, "gateway_messages_delivered_total").await - delivered_before;
        if now == last && now > 0.0 {
            stalled_at = now;
            break;
        }
        last = now;
    }
    assert!(
        stalled_at > 0.0 && stalled_at < BACKLOG as f64 / 2.0,
        "the replay should stall early: {stalled_at} of {BACKLOG} written"
    );

    // While it is stuck, publishes keep succeeding (to the stuck topic too) and the witness keeps
    // receiving. Memory is sampled meanwhile.
    let mut peak = pod.rss_kib();
    for i in 0..20u64 {
        assert_eq!(api_publish(admin, "w", &json!(i)).await, i + 1);
        assert_eq!(witness.expect("message").await["seq"], i + 1);
        if i % 2 == 0 {
            let seq = api_publish(admin, "backlog", &blob(i as usize, BACKLOG_BYTES)).await;
            assert_eq!(seq, BACKLOG as u64 + 1 + i / 2);
        }
        peak = peak.max(pod.rss_kib());
    }
    let total = BACKLOG + 10;
    eprintln!(
        "gateway RSS: {before} KiB before the ~50 MB backlog, {after_publish} KiB after publishing \
         it, peak {peak} KiB while a resume of it was stuck ({stalled_at} messages written)"
    );
    let growth_mib = peak.saturating_sub(before) / 1024;
    assert!(
        growth_mib < 40,
        "RSS grew by {growth_mib} MiB over a {} MiB backlog",
        BACKLOG * BACKLOG_BYTES / MIB
    );

    // Nothing was lost while stuck: reading now gets the whole backlog and what came after it.
    let got = seqs(&resumed.messages(total).await);
    assert_eq!(got, (1..=total as u64).collect::<Vec<_>>());
    assert_eq!(api_publish(admin, "w", &json!("after")).await, 21);
    assert_eq!(witness.expect("message").await["data"], "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_over_the_default_replay_budget_is_not_recovered_and_replays_nothing() {
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    // Default `--replay-budget` (16 MiB); 300 messages of 62 kB are about 18 MiB.
    let gw = cluster_pod(&redis.url(), &nats.url(), "a", |c| c.history_size = 1_000).await;
    let (mut client, welcome) = gw.hello().await;
    let epoch = client.subscribe("backlog").await["epoch"].clone();
    client.ws.close(None).await.unwrap();
    drop(client);
    let mut witness = subscriber(&gw.ws_url(), &["w"]).await;

    let (mut publisher, _) = gw.hello().await;
    let n = 300;
    let acked = publish_many(&mut publisher, "backlog", n, |i| blob(i, BACKLOG_BYTES)).await;
    assert_eq!(acked, (1..=n as u64).collect::<Vec<_>>());

    let mut resumed = gw.client().await;
    resumed
        .send(json!({"type": "hello", "resume": welcome["resume"],
                     "positions": {"backlog": {"seq": 0, "epoch": epoch}}}))
        .await;
    let w = resumed.expect("welcome").await;
    assert_eq!(w["resumed"], true, "{w}");
    assert_eq!(w["topics"]["backlog"]["recovered"], false, "{w}");
    assert_eq!(w["topics"]["backlog"]["seq"], n as u64, "{w}");
    // No replay: the next frame is the next message published, live.
    assert_eq!(
        gw.publish_api("backlog", json!("live")).await["seq"],
        n as u64 + 1
    );
    let next = resumed.expect("message").await;
    assert_eq!(
        (next["seq"].as_u64(), &next["data"]),
        (Some(n as u64 + 1), &json!("live"))
    );
    gw.publish_api("w", json!("still here")).await;
    assert_eq!(witness.expect("message").await["data"], "still here");
}
