//! Ordered appends (`OrderedAppends`) against a real `redis-server`: many in flight on one
//! lane keep their issue order, lanes do not wait for each other, and a lost script cache
//! (a restart's) never stores a lane's appends out of order.

use std::time::Duration;

use protocol::{Payload, PublishId, Topic};
use session_store::{
    HistoryLimits, IssuedAppend, Lane, OrderedAppends, RedisConfig, RedisStore, SessionStore,
    StoreError,
};
use test_support::RedisServer;

async fn store(url: &str) -> RedisStore {
    RedisStore::connect(RedisConfig {
        limits: HistoryLimits::default(),
        call_timeout: Duration::from_secs(5),
        pool_size: 4,
        ..RedisConfig::new(url)
    })
    .await
    .expect("connect")
}

fn topic(name: &str) -> Topic {
    Topic::new(name).expect("topic")
}

fn payload(n: usize) -> Payload {
    Payload::parse(&format!("{{\"n\":{n}}}")).expect("JSON")
}

#[tokio::test]
async fn appends_in_flight_on_one_lane_keep_issue_order() {
    let redis = RedisServer::start();
    let store = store(&redis.url()).await;
    let topics = [topic("a"), topic("b"), topic("c")];
    let (mut first, mut second) = (Lane::new(1), Lane::new(2));
    // Two lanes interleaved on the same topics, everything issued before anything is awaited.
    let mut issued: Vec<(usize, usize, IssuedAppend)> = Vec::new();
    for n in 0..600 {
        let t = n % topics.len();
        let lane = if n % 2 == 0 { &mut first } else { &mut second };
        let id = PublishId::new(&format!("p{n}")).expect("id");
        issued.push((
            n % 2,
            t,
            store.issue_append(lane, &topics[t], &payload(n), Some(&id)),
        ));
    }
    let mut last = [[0u64; 3]; 2];
    let mut seen = [Vec::new(), Vec::new(), Vec::new()];
    for (lane, t, append) in issued {
        let appended = append.await.expect("append");
        assert!(!appended.duplicate);
        assert!(
            appended.seq > last[lane][t],
            "lane {lane}, topic {t}: seq {} after {}",
            appended.seq,
            last[lane][t]
        );
        last[lane][t] = appended.seq;
        seen[t].push(appended.seq);
    }
    for (t, mut seqs) in seen.into_iter().enumerate() {
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (1..=200).collect::<Vec<_>>(),
            "topic {t}: every seq once"
        );
        let page = store.history(&topics[t], 0, 1_000).await.expect("history");
        assert_eq!(page.messages.len(), 200);
    }
    // A retried id answers the first attempt's seq and stores nothing.
    let id = PublishId::new("p0").expect("id");
    let retry = store.issue_append(&mut first, &topics[0], &payload(0), Some(&id));
    let retry = retry.await.expect("retry");
    assert!(retry.duplicate);
    assert_eq!(store.top(&topics[0]).await.expect("top").seq, 200);
}

#[tokio::test]
async fn a_lost_script_cache_never_stores_a_lane_out_of_order() {
    let redis = RedisServer::start();
    let store = store(&redis.url()).await;
    let other = store.clone();
    let t = topic("flushed");
    for round in 0..5 {
        // What a restart does to the script cache, with another publisher loading the script
        // again (EVAL) while this lane's appends are on the wire.
        redis.cmd(&["SCRIPT", "FLUSH"]);
        let mut lane = Lane::new(round);
        let mut issued = Vec::new();
        let mut loader = Lane::new(round + 100);
        for n in 0..50 {
            issued.push(store.issue_append(&mut lane, &t, &payload(n), None));
            if n == 3 {
                let loading =
                    other.issue_append(&mut loader, &topic("elsewhere"), &payload(n), None);
                tokio::spawn(loading);
            }
        }
        let (mut last, mut ok, mut refused) = (0, 0, 0);
        for append in issued {
            match append.await {
                Ok(appended) => {
                    assert!(appended.seq > last, "seq {} after {last}", appended.seq);
                    last = appended.seq;
                    ok += 1;
                }
                Err(StoreError::Unavailable(message)) => {
                    assert!(message.contains("not stored"), "{message}");
                    refused += 1;
                }
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        assert_eq!(ok + refused, 50);
        // The lane's latest append may send the script itself: the next one succeeds.
        let next = store.issue_append(&mut lane, &t, &payload(50), None);
        let next = next.await.expect("append after the reload");
        assert!(next.seq > last);
        println!("round {round}: {ok} stored in order, {refused} refused");
    }
    // What was refused was not stored: history holds exactly the successes, gap-free.
    let page = store.history(&t, 0, 1_000).await.expect("history");
    let top = page.top.seq;
    assert_eq!(page.messages.len() as u64, top);
    assert!(
        page.messages.iter().zip(1..).all(|(m, seq)| m.seq == seq),
        "gap-free"
    );
}

#[tokio::test]
async fn a_cluster_keeps_each_topic_in_issue_order_across_masters() {
    let cluster = test_support::RedisCluster::start();
    let store = store(&cluster.url()).await;
    // Topics on every master; each master first sees the script in flight (EVAL), then by SHA.
    let topics: Vec<Topic> = (0..12).map(|n| topic(&format!("spread-{n}"))).collect();
    let masters: std::collections::HashSet<usize> = topics
        .iter()
        .map(|t| cluster.master_for_key(&format!("{{{t}}}")))
        .collect();
    assert_eq!(masters.len(), 3, "the topics cover every master");
    let mut lane = Lane::new(0);
    // One master learns the script first: the others must still get it sent in full.
    let first = store.issue_append(&mut lane, &topics[0], &payload(0), None);
    assert_eq!(first.await.expect("first append").seq, 1);
    let mut last = vec![0u64; topics.len()];
    last[0] = 1;
    let mut issued = Vec::new();
    for n in 0..360 {
        let t = n % topics.len();
        issued.push((
            t,
            store.issue_append(&mut lane, &topics[t], &payload(n), None),
        ));
    }
    for (t, append) in issued {
        let appended = append.await.expect("every append succeeds, none refused");
        assert_eq!(appended.seq, last[t] + 1, "topic {t} in issue order");
        last[t] = appended.seq;
    }
    assert_eq!(last[0], 31);
    assert!(last[1..].iter().all(|&seq| seq == 30));
}
