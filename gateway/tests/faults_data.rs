//! Faults on the data path against real servers (redis-server, nats-server), each with a witness
//! client that must go on receiving while the fault lasts: a resume that does not read a large
//! backlog, a socket killed halfway through a replay, racing and delayed session takeovers, and
//! a NATS outage while hundreds of messages are published.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::faults_data::{
    Reader, StoredSession, api_publish, cluster_pod, connect_with_small_buffer, drop_abruptly,
    metric, publish_many, subscriber,
};
use support::process::Pod;
use support::{Client, seqs};
use test_support::{FaultProxy, NatsServer, RedisServer};

/// Generous bound for anything a test waits for.
const LIMIT: Duration = Duration::from_secs(30);

const MIB: usize = 1 << 20;

/// A payload of about `bytes` (within the default 64 KiB message limit), numbered.
fn blob(i: usize, bytes: usize) -> Value {
    json!({"i": i, "pad": "x".repeat(bytes)})
}

// --- 1. A resume that does not read its backlog --------------------------------------------

/// Messages of the backlog in test 1, and the size of each: about 50 MB in all.
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

// --- 2. A socket killed halfway through a replay, resumed without positions -----------------

/// Backlog of test 2: 2000 messages of 8 kB, far more than socket buffers hold.
const REPLAY: usize = 2_000;
const REPLAY_BYTES: usize = 8_000;

/// A session with `REPLAY` messages missed on `topic`, and its resume token and epoch.
async fn missed_backlog(gw: &support::TestGateway, topic: &str) -> (Value, Value) {
    let (mut client, welcome) = gw.hello().await;
    let epoch = client.subscribe(topic).await["epoch"].clone();
    client.ws.close(None).await.unwrap();
    drop(client);
    let (mut publisher, _) = gw.hello().await;
    let acked = publish_many(&mut publisher, topic, REPLAY, |i| blob(i, REPLAY_BYTES)).await;
    assert_eq!(acked.len(), REPLAY);
    (welcome["resume"].clone(), epoch)
}

/// Resumes with the token only and reads the replay to the top; returns the welcome and seqs.
async fn resume_without_positions(gw: &support::TestGateway, token: &Value) -> (Value, Vec<u64>) {
    let mut again = gw.client().await;
    again.send(json!({"type": "hello", "resume": token})).await;
    let w = again.expect("welcome").await;
    let top = w["topics"]["r"]["seq"].as_u64().unwrap();
    let mut got = Vec::new();
    if w["topics"]["r"]["recovered"] == true {
        while got.last().copied().unwrap_or(0) < top {
            let m = again.expect("message").await;
            got.push(m["seq"].as_u64().unwrap());
        }
    }
    (w, got)
}

async fn replay_gateway(
    redis: &RedisServer,
    nats: &NatsServer,
    write_timeout: Duration,
) -> support::TestGateway {
    cluster_pod(&redis.url(), &nats.url(), "a", move |c| {
        c.history_size = 3_000;
        c.replay_budget = 64 * MIB;
        c.write_timeout = write_timeout;
    })
    .await
}

/// The pod ends a replay whose client stopped reading (write timeout): the saved position is
/// the last flushed message, never past what the client received, but unconfirmed (the client
/// may not have read it), so a resume with the token alone is `recovered: false`: never a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_the_pod_abandons_halfway_resumes_without_positions_with_no_gap() {
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    let gw = replay_gateway(&redis, &nats, Duration::from_secs(2)).await;
    let (token, epoch) = missed_backlog(&gw, "r").await;
    let witness = Reader::spawn(subscriber(&gw.ws_url(), &["w"]).await);

    let mut first = connect_with_small_buffer(gw.public, 64 * 1024).await;
    first
        .send(json!({"type": "hello", "resume": token,
                     "positions": {"r": {"seq": 0, "epoch": epoch}}}))
        .await;
    let w = first.expect("welcome").await;
    assert_eq!(w["topics"]["r"]["recovered"], true, "{w}");
    let mut got = seqs(&first.messages(300).await);
    // Stop reading: the pod's writes stall and time out; it drops the socket without a close
    // frame, the kernel still delivering what was flushed. Meanwhile the witness is served.
    let session = w["session"].as_str().unwrap().to_owned();
    let active = metric(gw.admin, "gateway_connections_active").await;
    gw.publish_api("w", json!(1)).await;
    witness
        .wait("witness message", LIMIT, |s| s.count("w") == 1)
        .await;
    for _ in 0..200 {
        if metric(gw.admin, "gateway_connections_active").await < active {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        metric(gw.admin, "gateway_connections_active").await < active,
        "not abandoned"
    );
    // Read what the kernel had until the stream ends.
    loop {
        match tokio::time::timeout(LIMIT, futures_util::StreamExt::next(&mut first.ws)).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                got.push(v["seq"].as_u64().unwrap());
            }
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_)) | None) => break,
            Err(_) => panic!("the abandoned stream did not end"),
        }
    }
    assert_eq!(
        got,
        (1..=got.len() as u64).collect::<Vec<_>>(),
        "first connection in order"
    );
    let received = got.len() as u64;
    let saved = StoredSession::read(&redis, &session).seq("r").unwrap();
    eprintln!("abandoned replay: client received {received}, pod saved {saved} of {REPLAY}");
    assert!(
        saved < REPLAY as u64,
        "the replay was not cut halfway: saved {saved}"
    );
    assert!(
        saved <= received,
        "saved {saved} past what the client received ({received})"
    );

    // The pod gave up on the socket: what it flushed may still have sat unread in buffers, so
    // the saved position is not confirmed, and a resume with the token alone cannot claim to
    // recover from it: `recovered: false`, never a silent gap.
    assert_eq!(
        StoredSession::read(&redis, &session).record["confirmed"],
        false
    );
    let (w, rest) = resume_without_positions(&gw, &token).await;
    assert_eq!(w["topics"]["r"]["recovered"], false, "{w}");
    assert!(rest.is_empty());
    gw.publish_api("w", json!(2)).await;
    witness
        .wait("witness message", LIMIT, |s| s.count("w") == 2)
        .await;
    assert_eq!(witness.snapshot().seqs["w"], vec![1, 2]);
}

/// The client drops its socket (reset) halfway through a replay, after reading `k` messages.
/// The pod saves the last message it flushed, which can be past what the client processed
/// (whatever sat unread in the dropped socket's buffers was sent but never read). So the saved
/// position is unconfirmed, and a resume with the token alone is answered `recovered: false`
/// rather than replaying from there. A resume with the client's own positions recovers
/// everything after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_cut_by_the_client_restarts_after_the_saved_position() {
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    let gw = replay_gateway(&redis, &nats, Duration::from_secs(10)).await;
    let (token, epoch) = missed_backlog(&gw, "r").await;
    let witness = Reader::spawn(subscriber(&gw.ws_url(), &["w"]).await);

    let mut first = connect_with_small_buffer(gw.public, 64 * 1024).await;
    first
        .send(json!({"type": "hello", "resume": token,
                     "positions": {"r": {"seq": 0, "epoch": epoch}}}))
        .await;
    let w = first.expect("welcome").await;
    assert_eq!(w["topics"]["r"]["recovered"], true, "{w}");
    let session = w["session"].as_str().unwrap().to_owned();
    let active = metric(gw.admin, "gateway_connections_active").await;
    let k = 300;
    let got = seqs(&first.messages(k).await);
    assert_eq!(got, (1..=k as u64).collect::<Vec<_>>());
    drop_abruptly(first);
    for _ in 0..200 {
        if metric(gw.admin, "gateway_connections_active").await < active {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        metric(gw.admin, "gateway_connections_active").await < active,
        "still open"
    );
    gw.publish_api("w", json!(1)).await;
    witness
        .wait("witness message", LIMIT, |s| s.count("w") == 1)
        .await;

    let saved = StoredSession::read(&redis, &session).seq("r").unwrap();
    eprintln!(
        "client-cut replay: client read {k}, pod saved {saved} of {REPLAY} ({} unread in buffers)",
        saved.saturating_sub(k as u64)
    );
    assert!(
        saved >= k as u64,
        "saved {saved} below what the client read ({k})"
    );
    assert!(saved <= REPLAY as u64);

    assert_eq!(
        StoredSession::read(&redis, &session).record["confirmed"],
        false
    );
    let (w, rest) = resume_without_positions(&gw, &token).await;
    assert_eq!(w["topics"]["r"]["recovered"], false, "{w}");
    assert!(
        rest.is_empty(),
        "nothing is replayed from an unconfirmed position"
    );

    // With the positions it really has, the same client recovers everything after them.
    let mut third = gw.client().await;
    third
        .send(json!({"type": "hello", "resume": token,
                     "positions": {"r": {"seq": k, "epoch": epoch}}}))
        .await;
    let w = third.expect("welcome").await;
    assert_eq!(w["topics"]["r"]["recovered"], true, "{w}");
    let rest = seqs(&third.messages(REPLAY - k).await);
    assert_eq!(rest, (k as u64 + 1..=REPLAY as u64).collect::<Vec<_>>());
    gw.publish_api("w", json!(2)).await;
    witness
        .wait("witness message", LIMIT, |s| s.count("w") == 2)
        .await;
}

// --- 3. Takeovers: a race across pods, and a takeover delayed on the backplane -------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_resumes_of_one_session_at_two_pods_at_once_leave_exactly_one_connection() {
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    let a = cluster_pod(&redis.url(), &nats.url(), "a", |_| {}).await;
    let b = cluster_pod(&redis.url(), &nats.url(), "b", |_| {}).await;
    let witness = Reader::spawn(subscriber(&b.ws_url(), &["t"]).await);
    for round in 1..=5u64 {
        let (mut c, welcome) = a.hello().await;
        c.subscribe("t").await;
        c.ws.close(None).await.unwrap();
        drop(c);
        let token = welcome["resume"].clone();
        let session = welcome["session"].as_str().unwrap().to_owned();

        let mut on_a = a.client().await;
        let mut on_b = b.client().await;
        let hello = json!({"type": "hello", "resume": token});
        tokio::join!(on_a.send(hello.clone()), on_b.send(hello));
        let (on_a, on_b) = (Reader::spawn(on_a), Reader::spawn(on_b));
        // One of them is closed as taken over (before or after its welcome).
        let mut outcome = None;
        for _ in 0..1_500 {
            let (sa, sb) = (on_a.snapshot(), on_b.snapshot());
            if sa.closed.is_some() {
                outcome = Some((sa, on_b, "b"));
                break;
            }
            if sb.closed.is_some() {
                outcome = Some((sb, on_a, "a"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (loser, winner, winner_pod) =
            outcome.unwrap_or_else(|| panic!("round {round}: both connections stayed open"));
        let (code, reason) = loser.closed.clone().unwrap();
        assert_eq!(
            (code, reason["error"].as_str()),
            (1000, Some("session_taken_over")),
            "round {round}"
        );
        // The survivor has its welcome, holds the latest claim and keeps receiving.
        winner
            .wait("the survivor's welcome", LIMIT, |s| {
                s.other.iter().any(|v| v["type"] == "welcome")
            })
            .await;
        let stored = StoredSession::read(&redis, &session);
        assert_eq!(stored.owner, winner_pod, "round {round}");
        let seq = a.publish_api("t", json!(round)).await["seq"]
            .as_u64()
            .unwrap();
        let s = winner
            .wait("the survivor to receive", LIMIT, |s| {
                s.seqs.get("t").is_some_and(|v| v.contains(&seq))
            })
            .await;
        assert!(
            s.closed.is_none(),
            "round {round}: the survivor was closed too: {s:?}"
        );
        witness
            .wait("the witness to receive", LIMIT, |s| {
                s.count("t") == round as usize
            })
            .await;
        eprintln!(
            "race round {round}: survivor on pod {winner_pod} at generation {}",
            stored.generation
        );
    }
    assert_eq!(witness.snapshot().seqs["t"], (1..=5).collect::<Vec<u64>>());
}

/// Session on pod A (generation 1, in claim order); it resumes on pod B (2), whose NATS link is
/// paused, so B's takeover for A is stuck; it resumes again on A (3), which closes generation 1
/// itself. When B's
/// link comes back, A's takeover closes B's generation 2, and B's late takeover, for
/// generation 2, reaches A and leaves generation 3 open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_delayed_on_the_backplane_never_closes_the_newer_connection() {
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    let link = FaultProxy::start(([127, 0, 0, 1], nats.port));
    // A long resync: the witness below gets B's marker over NATS, not from history.
    let a = cluster_pod(&redis.url(), &nats.url(), "a", |c| {
        c.topic_resync_interval = Duration::from_secs(60);
    })
    .await;
    let b = cluster_pod(&redis.url(), &link.url("nats"), "b", |_| {}).await;
    // B already follows "s", so resuming the session there needs nothing from NATS.
    let witness_b = Reader::spawn(subscriber(&b.ws_url(), &["s"]).await);
    let witness_a = Reader::spawn(subscriber(&a.ws_url(), &["marks"]).await);
    let (mut marker, _) = b.hello().await;
    let mut marks = 0;
    mark(&mut marker, &witness_a, &mut marks).await;

    let (mut gen1, welcome) = a.hello().await;
    gen1.subscribe("s").await;
    let session = welcome["session"].as_str().unwrap().to_owned();
    let token = welcome["resume"].clone();
    let gen1_generation = StoredSession::read(&redis, &session).generation;
    assert!(gen1_generation > 0);

    let links = link.connections_accepted();
    link.pause();
    let mut gen2 = b.client().await;
    gen2.send(json!({"type": "hello", "resume": token})).await;
    let w = gen2.expect("welcome").await;
    assert_eq!(
        (w["resumed"].as_bool(), w["pod"].as_str()),
        (Some(true), Some("b"))
    );
    // B's takeover for generation 1 is stuck in the paused link: gen 1 is still served.
    gen1.send(json!({"type": "ping"})).await;
    gen1.expect("pong").await;

    let mut gen3 = a.client().await;
    gen3.send(json!({"type": "hello", "resume": token})).await;
    let w = gen3.expect("welcome").await;
    assert_eq!(
        (w["resumed"].as_bool(), w["pod"].as_str()),
        (Some(true), Some("a"))
    );
    let stored = StoredSession::read(&redis, &session);
    // Generations only grow: the third claim is above the first two.
    let gen3_generation = stored.generation;
    assert!(gen3_generation > gen1_generation);
    assert_eq!(stored.owner, "a");
    // A closed its own older connection at once.
    let closed = gen1.closed().await;
    assert_eq!(
        (closed.code, closed.reason["error"].as_str()),
        (1000, Some("session_taken_over"))
    );
    // B cannot hear A's takeover yet: generation 2 still answers.
    gen2.send(json!({"type": "ping"})).await;
    gen2.expect("pong").await;

    link.resume();
    // A's takeover for generation 3 reaches B: generation 2 closes.
    let closed = gen2.closed().await;
    assert_eq!(
        (closed.code, closed.reason["error"].as_str()),
        (1000, Some("session_taken_over"))
    );
    // B's late takeover (generation 2) went out before these markers on the same connection:
    // once A has them, it has handled it too.
    mark(&mut marker, &witness_a, &mut marks).await;
    mark(&mut marker, &witness_a, &mut marks).await;
    // Same NATS connection throughout: nothing B queued during the pause was dropped by a
    // reconnect, so the late takeover did reach A.
    assert_eq!(link.connections_accepted(), links, "B reconnected to NATS");
    gen3.send(json!({"type": "ping"})).await;
    gen3.expect("pong").await;
    // Generation 3 still holds the session: its save is accepted, it keeps receiving.
    gen3.subscribe("s2").await;
    assert_eq!(a.publish_api("s", json!("for gen 3")).await["seq"], 1);
    let m = gen3.expect("message").await;
    assert_eq!(m["data"], "for gen 3");
    gen3.silent_for(Duration::from_millis(300)).await;
    let stored = StoredSession::read(&redis, &session);
    assert_eq!(
        (stored.generation, stored.owner.as_str()),
        (gen3_generation, "a")
    );
    assert!(
        stored.record["subscriptions"]["s2"].is_object(),
        "{}",
        stored.record
    );
    witness_b
        .wait("B's witness to receive", LIMIT, |s| s.count("s") == 1)
        .await;
    assert!(witness_a.snapshot().closed.is_none() && witness_b.snapshot().closed.is_none());
}

/// Publishes a marker on B and waits until A's witness has it: B's earlier backplane traffic
/// (same connection, same order) has reached A by then.
async fn mark(marker: &mut Client, witness: &Reader, marks: &mut usize) {
    *marks += 1;
    let n = *marks;
    marker.publish("marks", json!(n)).await;
    witness
        .wait("B's marker at A", LIMIT, |s| s.count("marks") == n)
        .await;
}

// --- 4. A NATS outage while 3 × 400 messages are published ----------------------------------

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
