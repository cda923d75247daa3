//! A socket killed halfway through a replay, resumed without positions: whether the pod
//! abandons the replay or the client cuts it, the resume never leaves a gap.

use std::time::Duration;

use serde_json::{Value, json};
use test_support::{NatsServer, RedisServer};

use super::{LIMIT, MIB, blob};
use crate::support;
use crate::support::faults_data::{
    Reader, StoredSession, cluster_pod, connect_with_small_buffer, drop_abruptly, metric,
    publish_many, subscriber,
};
use crate::support::seqs;

/// Backlog of the replays here: 2000 messages of 8 kB, far more than socket buffers hold.
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
