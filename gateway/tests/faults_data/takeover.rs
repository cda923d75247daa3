//! Takeovers: two resumes of one session racing at two pods, and a takeover delayed on the
//! backplane that must never close the newer connection.

use std::time::Duration;

use serde_json::json;
use test_support::{FaultProxy, NatsServer, RedisServer};

use super::LIMIT;
use crate::support::Client;
use crate::support::faults_data::{Reader, StoredSession, cluster_pod, subscriber};

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
