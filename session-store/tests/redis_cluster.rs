//! The Redis store on a real Redis Cluster (three masters, three replicas): every topic script
//! keeps to its topic's slot, sessions work, and a slot moved to another master is a new epoch
//! for its topics. Pins down what fred does with redirections (see the `redis` module docs).

use std::time::Duration;

use protocol::{Payload, SessionId, Topic};
use session_store::{RedisConfig, RedisStore, SessionRecord, SessionStore, StoreError};
use test_support::RedisCluster;

fn topic(name: &str) -> Topic {
    Topic::new(name).expect("valid topic")
}

fn json(text: &str) -> Payload {
    Payload::parse(text).expect("valid JSON")
}

/// One topic per master.
fn topics_on_each_master(cluster: &RedisCluster) -> Vec<String> {
    let masters = cluster.masters();
    let mut picked: Vec<Option<String>> = vec![None; masters.len()];
    for i in 0..1_000 {
        let name = format!("t{i}");
        let m = cluster.master_for_key(&name);
        let at = masters.iter().position(|&x| x == m).expect("a master");
        picked[at].get_or_insert(name);
        if picked.iter().all(Option::is_some) {
            return picked.into_iter().map(Option::unwrap).collect();
        }
    }
    panic!("no topic name on every master");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_on_every_master_sessions_and_a_moved_slot() {
    let cluster = RedisCluster::start();
    let store = RedisStore::connect(RedisConfig {
        // One connection: its slot table is the one a moved slot makes stale.
        pool_size: 1,
        call_timeout: Duration::from_secs(2),
        ..RedisConfig::new(cluster.url())
    })
    .await
    .expect("connect");
    store.ping().await.expect("cluster answers");

    let names = topics_on_each_master(&cluster);
    for name in &names {
        let t = topic(name);
        for i in 1..=3 {
            let appended = store.append(&t, &json(&i.to_string()), None).await.unwrap();
            assert_eq!(appended.seq, i);
        }
        let page = store.history(&t, 1, 10).await.unwrap();
        assert_eq!(page.top.seq, 3);
        let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, vec![2, 3]);
    }

    let id = SessionId::generate();
    let claim = store
        .claim_session(&id, "pod-a", Duration::from_secs(60))
        .await
        .unwrap();
    let record = SessionRecord {
        id: id.clone(),
        secret: "ab".repeat(32),
        user: None,
        subscriptions: Default::default(),
        confirmed: false,
        created_ms: 1,
        last_pod: "pod-a".into(),
        granted: None,
        info: None,
    };
    assert!(
        store
            .save_session(&record, claim.generation, Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert_eq!(store.load_session(&id).await.unwrap().unwrap().id, id);

    // Move the first topic's slot: its keys now live in another process, so the next call
    // starts a new epoch there. That call meets MOVED; a read is retried and answers.
    let moved = topic(&names[0]);
    let before = store.top(&moved).await.unwrap();
    let slot = cluster.key_slot(&names[0]);
    let (from, to) = (
        cluster.master_for_slot(slot),
        cluster.master_for_key(&names[1]),
    );
    tokio::task::block_in_place(|| cluster.reshard(slot, from, to));
    let after = store.top(&moved).await.expect("a read follows the move");
    assert_eq!(after.seq, 0, "a new history");
    assert!(
        after.epoch.is_newer_than(&before.epoch),
        "{:?} after {:?}",
        after.epoch,
        before.epoch
    );

    // An append is never sent twice: the one that meets MOVED fails, the next one succeeds.
    let second = topic(&names[1]);
    let slot = cluster.key_slot(&names[1]);
    let from = cluster.master_for_slot(slot);
    tokio::task::block_in_place(|| cluster.reshard(slot, from, cluster.master_for_key(&names[2])));
    let refused = store.append(&second, &json("1"), None).await.unwrap_err();
    assert!(matches!(refused, StoreError::Unavailable(_)), "{refused:?}");
    let appended = store.append(&second, &json("2"), None).await.unwrap();
    assert_eq!(appended.seq, 1, "a new epoch on the new master");
}
