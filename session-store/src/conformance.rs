//! The behavioural suite every [`SessionStore`] must pass, so the memory and Redis stores give the
//! gateway the same guarantees.
//!
//! Each behaviour is an async function generic over a [`Harness`] (which makes fresh stores and
//! knows how to make one lose its history). [`conformance_tests!`](crate::conformance_tests)
//! expands to one `#[tokio::test]` per behaviour for a given harness, so adding a behaviour here
//! and to the macro's list runs it against every backend.
//!
//! The tests run in real time with short ttls (1–3 s) rather than paused Tokio time, because
//! Redis expires keys on its own clock. Compiled for this crate's tests and behind the
//! `conformance` feature (which the crate's own integration tests enable); it panics on failure
//! like any test code.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use protocol::{Epoch, Payload, Position, PublishId, SessionId, Topic};

use crate::{
    HistoryLimits, HistoryPage, Owner, PAGE_BYTES, ReverseHistory, SessionRecord, SessionStore,
    recover,
};

/// Makes stores for the suite.
pub trait Harness: Send + Sync + 'static {
    type Store: SessionStore + ReverseHistory + crate::OrderedAppends + Clone;

    /// A store applying `limits`. Each test gets its own harness, so the backend starts empty.
    fn store(&self, limits: HistoryLimits) -> impl Future<Output = Self::Store> + Send;

    /// Makes `store` lose every topic's state (Redis: FLUSHALL; memory: wait out the ttl).
    fn lose_history(
        &self,
        store: &Self::Store,
        limits: HistoryLimits,
    ) -> impl Future<Output = ()> + Send;
}

/// Generates one `#[tokio::test]` per behaviour; `$make` is an async fn returning a [`Harness`].
#[macro_export]
macro_rules! conformance_tests {
    ($make:path) => {
        $crate::conformance_tests!(@each $make;
            seq_starts_at_one_and_is_contiguous,
            concurrent_appends_get_unique_contiguous_seqs,
            history_after_returns_later_messages_in_order,
            history_is_capped_by_max_len,
            zero_max_len_keeps_no_history,
            history_drops_messages_older_than_ttl,
            epoch_is_stable_and_changes_when_history_is_lost,
            idle_topic_expires_after_ttl,
            top_of_unknown_topic_is_zero_with_stable_epoch,
            history_of_unknown_topic_is_empty_with_stable_epoch,
            topics_are_independent,
            sessions_save_load_delete,
            sessions_expire_after_ttl,
            payloads_round_trip_exactly,
            ping_succeeds,
            epochs_only_move_forward,
            history_is_read_in_bounded_pages,
            history_reads_backwards_in_bounded_pages,
            backward_reads_stop_at_trimmed_and_aged_messages,
            publish_ids_deduplicate,
            new_epoch_replaces_only_the_stale_epoch,
            tops_are_read_in_one_batch,
            session_claims_fence_older_generations,
            a_rolled_back_session_still_saves_and_claims_stay_ahead,
            exclusions_are_kept_with_their_messages,
        );
    };
    (@each $make:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let harness = $make().await;
                $crate::conformance::$name(&harness).await;
            }
        )*
    };
}

const LONG: Duration = Duration::from_secs(60);

fn limits(max_len: usize, ttl: Duration) -> HistoryLimits {
    HistoryLimits {
        max_len,
        ttl,
        ..HistoryLimits::default()
    }
}

fn topic(name: &str) -> Topic {
    Topic::new(name).expect("valid topic name")
}

fn json(text: &str) -> Payload {
    Payload::parse(text).expect("valid JSON")
}

fn pos(seq: u64, epoch: &Epoch) -> Position {
    Position {
        seq,
        epoch: epoch.clone(),
    }
}

fn seqs(page: &HistoryPage) -> Vec<u64> {
    page.messages.iter().map(|m| m.seq).collect()
}

async fn append_n<S: SessionStore>(store: &S, t: &Topic, n: u64) -> Epoch {
    let mut epoch = None;
    for i in 0..n {
        let appended = store
            .append(t, &json(&format!("{{\"i\":{i}}}")), None)
            .await
            .expect("append");
        let first = epoch.get_or_insert_with(|| appended.epoch.clone());
        assert_eq!(&appended.epoch, first, "epoch changed between appends");
    }
    epoch.expect("appended at least once")
}

pub async fn seq_starts_at_one_and_is_contiguous<H: Harness>(h: &H) {
    let store = h.store(limits(100, LONG)).await;
    let t = topic("conf.seq");
    let mut epoch = None;
    for expected in 1..=5 {
        let appended = store.append(&t, &json("{}"), None).await.expect("append");
        assert_eq!(appended.seq, expected);
        assert_eq!(epoch.get_or_insert(appended.epoch.clone()), &appended.epoch);
    }
    let top = store.top(&t).await.expect("top");
    assert_eq!(top, pos(5, &epoch.expect("epoch")));
}

pub async fn concurrent_appends_get_unique_contiguous_seqs<H: Harness>(h: &H) {
    const TASKS: u64 = 8;
    const EACH: u64 = 25;
    let store = h.store(limits(1_000, LONG)).await;
    let t = topic("conf.concurrent");
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let (store, t) = (store.clone(), t.clone());
        tasks.spawn(async move {
            let mut got = Vec::new();
            for i in 0..EACH {
                let data = json(&format!("{{\"task\":{task},\"i\":{i}}}"));
                let appended = store.append(&t, &data, None).await.expect("append");
                got.push((appended.seq, appended.epoch, data));
            }
            got
        });
    }
    let mut all = Vec::new();
    while let Some(got) = tasks.join_next().await {
        all.extend(got.expect("append task"));
    }
    all.sort_by_key(|(seq, _, _)| *seq);
    let all_seqs: Vec<u64> = all.iter().map(|(seq, _, _)| *seq).collect();
    assert_eq!(all_seqs, (1..=TASKS * EACH).collect::<Vec<_>>());
    let epoch = all[0].1.clone();
    assert!(all.iter().all(|(_, e, _)| *e == epoch), "one epoch");

    // History holds each message under the seq its writer was given.
    let page = store.history(&t, 0, 10_000).await.expect("history");
    assert_eq!(page.top, pos(TASKS * EACH, &epoch));
    let history: Vec<(u64, Payload)> = page.messages.into_iter().map(|m| (m.seq, m.data)).collect();
    let expected: Vec<(u64, Payload)> = all.into_iter().map(|(s, _, d)| (s, d)).collect();
    assert_eq!(history, expected);
}

pub async fn history_after_returns_later_messages_in_order<H: Harness>(h: &H) {
    let store = h.store(limits(100, LONG)).await;
    let t = topic("conf.history");
    let epoch = append_n(&store, &t, 10).await;

    let page = store.history(&t, 4, 10_000).await.expect("history");
    assert_eq!(page.top, pos(10, &epoch));
    assert_eq!(seqs(&page), (5..=10).collect::<Vec<_>>());
    for m in &page.messages {
        assert_eq!(m.data, json(&format!("{{\"i\":{}}}", m.seq - 1)));
    }
    let recovery = recover(&pos(4, &epoch), page);
    assert!(recovery.recovered);
    assert_eq!(recovery.messages.len(), 6);

    assert_eq!(
        seqs(&store.history(&t, 0, 10_000).await.expect("history")),
        (1..=10).collect::<Vec<_>>()
    );
    let at_top = store.history(&t, 10, 10_000).await.expect("history");
    assert!(at_top.messages.is_empty());
    assert!(recover(&pos(10, &epoch), at_top).recovered);
    // A client claiming to be ahead of the top is not recovered.
    let ahead = store.history(&t, 20, 10_000).await.expect("history");
    assert!(ahead.messages.is_empty());
    assert_eq!(ahead.top, pos(10, &epoch));
    assert!(!recover(&pos(20, &epoch), ahead).recovered);
}

pub async fn history_is_capped_by_max_len<H: Harness>(h: &H) {
    let store = h.store(limits(5, LONG)).await;
    let t = topic("conf.capped");
    let epoch = append_n(&store, &t, 12).await;

    let page = store.history(&t, 0, 10_000).await.expect("history");
    assert_eq!(seqs(&page), vec![8, 9, 10, 11, 12]);
    assert_eq!(page.top, pos(12, &epoch));
    for old in [0, 3, 6] {
        let page = store.history(&t, old, 10_000).await.expect("history");
        assert!(!recover(&pos(old, &epoch), page).recovered, "from {old}");
    }
    let page = store.history(&t, 7, 10_000).await.expect("history");
    let recovery = recover(&pos(7, &epoch), page);
    assert!(recovery.recovered);
    assert_eq!(recovery.messages.len(), 5);
}

pub async fn zero_max_len_keeps_no_history<H: Harness>(h: &H) {
    let store = h.store(limits(0, LONG)).await;
    let t = topic("conf.nohistory");
    let epoch = append_n(&store, &t, 3).await;
    let page = store.history(&t, 0, 10_000).await.expect("history");
    assert!(page.messages.is_empty());
    assert_eq!(page.top, pos(3, &epoch));
    assert!(!recover(&pos(2, &epoch), page.clone()).recovered);
    assert!(
        recover(
            &pos(3, &epoch),
            store.history(&t, 3, 10_000).await.expect("history")
        )
        .recovered
    );
}

pub async fn history_drops_messages_older_than_ttl<H: Harness>(h: &H) {
    // Sleeps only ever make the first message older; the second keeps 1.5 s of slack.
    let ttl = Duration::from_secs(3);
    let store = h.store(limits(100, ttl)).await;
    let t = topic("conf.aged");
    let epoch = append_n(&store, &t, 1).await;
    tokio::time::sleep(Duration::from_millis(1_700)).await;
    let second = store
        .append(&t, &json("\"fresh\""), None)
        .await
        .expect("append");
    assert_eq!((second.seq, &second.epoch), (2, &epoch));
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    // The first message is over 3 s old, the second about 1.5 s: only the second is left.
    let page = store.history(&t, 0, 10_000).await.expect("history");
    assert_eq!(page.top, pos(2, &epoch));
    assert_eq!(seqs(&page), vec![2]);
    assert!(!recover(&pos(0, &epoch), page).recovered);
    let recovery = recover(
        &pos(1, &epoch),
        store.history(&t, 1, 10_000).await.expect("history"),
    );
    assert!(recovery.recovered);
    assert_eq!(recovery.messages[0].data, json("\"fresh\""));
}

pub async fn epoch_is_stable_and_changes_when_history_is_lost<H: Harness>(h: &H) {
    let lim = limits(100, Duration::from_secs(2));
    let store = h.store(lim).await;
    let t = topic("conf.epoch");
    let old = append_n(&store, &t, 3).await;
    assert_eq!(store.top(&t).await.expect("top"), pos(3, &old));
    assert_eq!(
        store.history(&t, 0, 10_000).await.expect("history").top,
        pos(3, &old)
    );

    h.lose_history(&store, lim).await;

    let top = store.top(&t).await.expect("top");
    assert_eq!(top.seq, 0);
    assert_ne!(top.epoch, old, "a lost history must get a new epoch");
    let appended = store.append(&t, &json("1"), None).await.expect("append");
    assert_eq!((appended.seq, &appended.epoch), (1, &top.epoch));
    // A position from the old history is never recovered, even where the seqs overlap.
    assert!(
        !recover(
            &pos(0, &old),
            store.history(&t, 0, 10_000).await.expect("history")
        )
        .recovered
    );
    assert!(
        !recover(
            &pos(1, &old),
            store.history(&t, 1, 10_000).await.expect("history")
        )
        .recovered
    );
    assert!(
        recover(
            &pos(0, &top.epoch),
            store.history(&t, 0, 10_000).await.expect("history")
        )
        .recovered
    );
}

pub async fn idle_topic_expires_after_ttl<H: Harness>(h: &H) {
    let store = h.store(limits(100, Duration::from_secs(1))).await;
    let t = topic("conf.idle");
    let old = append_n(&store, &t, 2).await;
    tokio::time::sleep(Duration::from_millis(1_400)).await;
    let page = store.history(&t, 0, 10_000).await.expect("history");
    assert_eq!(page.top.seq, 0);
    assert_ne!(page.top.epoch, old);
    assert!(page.messages.is_empty());
}

pub async fn top_of_unknown_topic_is_zero_with_stable_epoch<H: Harness>(h: &H) {
    let store = h.store(limits(100, LONG)).await;
    let t = topic("conf.unknown");
    let top = store.top(&t).await.expect("top");
    assert_eq!(top.seq, 0);
    assert_eq!(store.top(&t).await.expect("top"), top);
    let appended = store.append(&t, &json("1"), None).await.expect("append");
    assert_eq!((appended.seq, &appended.epoch), (1, &top.epoch));
    store.append(&t, &json("2"), None).await.expect("append");
    // The subscribe flow: a position taken from `top` recovers what was published after it.
    let recovery = recover(
        &top,
        store.history(&t, top.seq, 10_000).await.expect("history"),
    );
    assert!(recovery.recovered);
    assert_eq!(recovery.messages.len(), 2);
}

pub async fn history_of_unknown_topic_is_empty_with_stable_epoch<H: Harness>(h: &H) {
    let store = h.store(limits(100, LONG)).await;
    let t = topic("conf.unknown-history");
    let page = store.history(&t, 0, 10_000).await.expect("history");
    assert_eq!(page.top.seq, 0);
    assert!(page.messages.is_empty());
    assert!(recover(&page.top.clone(), page.clone()).recovered);
    let appended = store.append(&t, &json("1"), None).await.expect("append");
    assert_eq!((appended.seq, appended.epoch), (1, page.top.epoch));
}

pub async fn topics_are_independent<H: Harness>(h: &H) {
    let store = h.store(limits(100, LONG)).await;
    let (a, b) = (topic("conf.a"), topic("conf.b"));
    append_n(&store, &a, 3).await;
    let appended = store
        .append(&b, &json("\"b\""), None)
        .await
        .expect("append");
    assert_eq!(appended.seq, 1);
    assert_eq!(
        seqs(&store.history(&a, 0, 10_000).await.expect("history")),
        vec![1, 2, 3]
    );
    assert_eq!(
        seqs(&store.history(&b, 0, 10_000).await.expect("history")),
        vec![1]
    );
}

fn record(id: SessionId, user: Option<&str>) -> SessionRecord {
    let mut subscriptions = BTreeMap::new();
    subscriptions.insert(topic("chat.room-1"), pos(41, &Epoch::new("a1b2c3d4")));
    subscriptions.insert(topic("user:alice"), pos(0, &Epoch::new("00ff00ff")));
    SessionRecord {
        id,
        secret: "5e".repeat(32),
        user: user.map(str::to_owned),
        subscriptions,
        confirmed: true,
        created_ms: 1_700_000_000_123,
        last_pod: "gateway-0".into(),
        granted: Some(crate::HookGrant {
            sub: vec!["chat.*".into()],
            publish: vec![],
            expire_at: Some(1_900_000_000),
        }),
        info: Some(serde_json::json!({"name": "Alice", "tags": ["a", 1]})),
    }
}

pub async fn sessions_save_load_delete<H: Harness>(h: &H) {
    let store = h.store(limits(100, LONG)).await;
    let id = SessionId::generate();
    assert_eq!(store.load_session(&id).await.expect("load"), None);

    let mut session = record(id.clone(), Some("alice"));
    store.save_session(&session, 1, LONG).await.expect("save");
    assert_eq!(
        store.load_session(&id).await.expect("load"),
        Some(session.clone())
    );

    session.subscriptions.clear();
    session.user = None;
    session.last_pod = "gateway-7".into();
    store.save_session(&session, 1, LONG).await.expect("save");
    assert_eq!(store.load_session(&id).await.expect("load"), Some(session));

    let other = record(SessionId::generate(), None);
    store.save_session(&other, 1, LONG).await.expect("save");
    store.delete_session(&id).await.expect("delete");
    assert_eq!(store.load_session(&id).await.expect("load"), None);
    assert_eq!(
        store.load_session(&other.id).await.expect("load"),
        Some(other)
    );
    store
        .delete_session(&id)
        .await
        .expect("deleting twice is fine");
}

pub async fn sessions_expire_after_ttl<H: Harness>(h: &H) {
    let store = h.store(limits(100, LONG)).await;
    let ttl = Duration::from_secs(3);
    let session = record(SessionId::generate(), Some("bob"));
    store.save_session(&session, 1, ttl).await.expect("save");
    assert!(
        store
            .load_session(&session.id)
            .await
            .expect("load")
            .is_some()
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // Saving again restarts the ttl: at 3.5 s the first save would have expired, the second not.
    store.save_session(&session, 1, ttl).await.expect("save");
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert!(
        store
            .load_session(&session.id)
            .await
            .expect("load")
            .is_some()
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(store.load_session(&session.id).await.expect("load"), None);
}

pub async fn payloads_round_trip_exactly<H: Harness>(h: &H) {
    let store = h.store(limits(100, LONG)).await;
    let t = topic("conf.payloads");
    let big = format!("\"{}\"", "xyzé".repeat(16 * 1024));
    let texts = [
        r#""héllo wörld ✓ 日本語 🎉""#,
        r#""quote \" backslash \\ slash \/ newline \n tab \t nul \u0000 bell \u0007""#,
        r#""\ud83d\ude00 escaped surrogates, \u00e9 escaped accent""#,
        r#"{"nested":{"a":[1,2,{"b":null}],"c":true},"n":-1.5e10,"e":""}"#,
        r#"{ "spaced" : [ 1 , 2 ] ,"keys in":"original order","a":0 }"#,
        "[]",
        "0",
        "null",
        "-0.000001",
        "18446744073709551616",
        big.as_str(),
    ];
    let mut expected = Vec::new();
    for text in texts {
        let data = json(text);
        let appended = store.append(&t, &data, None).await.expect("append");
        expected.push((appended.seq, text));
    }
    let page = store.history(&t, 0, 10_000).await.expect("history");
    let got: Vec<(u64, &str)> = page
        .messages
        .iter()
        .map(|m| (m.seq, m.data.as_str()))
        .collect();
    assert_eq!(got, expected);
}

pub async fn ping_succeeds<H: Harness>(h: &H) {
    let store = h.store(limits(100, LONG)).await;
    store.ping().await.expect("ping");
}

pub async fn epochs_only_move_forward<H: Harness>(h: &H) {
    let lim = limits(100, Duration::from_secs(2));
    let store = h.store(lim).await;
    let t = topic("conf.order");
    let first = append_n(&store, &t, 2).await;
    assert_eq!(first.as_str().len(), 16, "epochs are 64-bit hex: {first:?}");
    h.lose_history(&store, lim).await;
    let second = store.top(&t).await.expect("top").epoch;
    assert!(second.is_newer_than(&first), "{second:?} after {first:?}");
}

pub async fn history_is_read_in_bounded_pages<H: Harness>(h: &H) {
    let store = h.store(limits(1_000, LONG)).await;
    let t = topic("conf.pages");
    append_n(&store, &t, 25).await;
    let mut after = 0;
    let mut pages = Vec::new();
    loop {
        let page = store.history(&t, after, 10).await.expect("history");
        assert_eq!(page.top.seq, 25);
        let Some(last) = page.messages.last() else {
            break;
        };
        after = last.seq;
        pages.push(seqs(&page));
    }
    let expected: Vec<Vec<u64>> =
        vec![(1..=10).collect(), (11..=20).collect(), (21..=25).collect()];
    assert_eq!(pages, expected);

    // Bytes bound a page too, but a page always carries at least one message.
    let big = topic("conf.pages-big");
    let blob = json(&format!("\"{}\"", "x".repeat(PAGE_BYTES * 2 / 3)));
    for _ in 0..3 {
        store.append(&big, &blob, None).await.expect("append");
    }
    assert_eq!(
        seqs(&store.history(&big, 0, 100).await.expect("history")),
        vec![1]
    );
    assert_eq!(
        seqs(&store.history(&big, 1, 100).await.expect("history")),
        vec![2]
    );
}

pub async fn history_reads_backwards_in_bounded_pages<H: Harness>(h: &H) {
    let store = h.store(limits(1_000, LONG)).await;
    let t = topic("conf.back");
    let unknown = store.history_before(&t, None, 10).await.expect("history");
    assert_eq!((unknown.top.seq, seqs(&unknown)), (0, vec![]));
    let epoch = append_n(&store, &t, 25).await;
    // Newest first from the top, then page by page before the oldest one read.
    let mut before = None;
    let mut pages = Vec::new();
    loop {
        let page = store.history_before(&t, before, 10).await.expect("history");
        assert_eq!(page.top, pos(25, &epoch));
        let Some(oldest) = page.messages.last() else {
            break;
        };
        before = Some(oldest.seq);
        pages.push(seqs(&page));
    }
    let expected: Vec<Vec<u64>> = vec![
        (16..=25).rev().collect(),
        (6..=15).rev().collect(),
        (1..=5).rev().collect(),
    ];
    assert_eq!(pages, expected);
    // The same payloads as the forward read.
    let forward = store.history(&t, 0, 100).await.expect("history");
    let mut backward = store.history_before(&t, None, 100).await.expect("history");
    backward.messages.reverse();
    assert_eq!(forward, backward);
    // Bounds above the top, and at the bottom.
    assert_eq!(
        seqs(
            &store
                .history_before(&t, Some(1_000), 2)
                .await
                .expect("history")
        ),
        vec![25, 24]
    );
    assert_eq!(
        seqs(&store.history_before(&t, Some(1), 2).await.expect("history")),
        Vec::<u64>::new()
    );

    // Bytes bound a page, which always carries at least one message.
    let big = topic("conf.back-big");
    let blob = json(&format!("\"{}\"", "x".repeat(PAGE_BYTES * 2 / 3)));
    for _ in 0..3 {
        store.append(&big, &blob, None).await.expect("append");
    }
    assert_eq!(
        seqs(
            &store
                .history_before(&big, None, 100)
                .await
                .expect("history")
        ),
        vec![3]
    );
    assert_eq!(
        seqs(
            &store
                .history_before(&big, Some(3), 100)
                .await
                .expect("history")
        ),
        vec![2]
    );
}

pub async fn backward_reads_stop_at_trimmed_and_aged_messages<H: Harness>(h: &H) {
    let store = h.store(limits(5, LONG)).await;
    let t = topic("conf.back-capped");
    append_n(&store, &t, 12).await;
    let page = store.history_before(&t, None, 100).await.expect("history");
    assert_eq!((page.top.seq, seqs(&page)), (12, vec![12, 11, 10, 9, 8]));
    assert!(
        seqs(
            &store
                .history_before(&t, Some(8), 100)
                .await
                .expect("history")
        )
        .is_empty()
    );

    let ttl = Duration::from_secs(3);
    let store = h.store(limits(100, ttl)).await;
    let t = topic("conf.back-aged");
    append_n(&store, &t, 1).await;
    tokio::time::sleep(Duration::from_millis(1_700)).await;
    store.append(&t, &json("2"), None).await.expect("append");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let page = store.history_before(&t, None, 100).await.expect("history");
    assert_eq!((page.top.seq, seqs(&page)), (2, vec![2]));
}

pub async fn publish_ids_deduplicate<H: Harness>(h: &H) {
    let store = h.store(limits(100, LONG)).await;
    let t = topic("conf.dedup");
    let id = PublishId::new("order-17").expect("id");
    let first = store
        .append(&t, &json("1"), Some(&id))
        .await
        .expect("append");
    assert!(!first.duplicate);
    let retry = store
        .append(&t, &json("1"), Some(&id))
        .await
        .expect("append");
    assert!(retry.duplicate);
    assert_eq!((retry.seq, &retry.epoch), (first.seq, &first.epoch));
    assert_eq!(
        store.top(&t).await.expect("top").seq,
        first.seq,
        "nothing stored twice"
    );
    let other = PublishId::new("order-18").expect("id");
    let next = store
        .append(&t, &json("2"), Some(&other))
        .await
        .expect("append");
    assert_eq!((next.seq, next.duplicate), (first.seq + 1, false));
    // Ids are per topic.
    let elsewhere = store
        .append(&topic("conf.dedup-other"), &json("1"), Some(&id))
        .await
        .expect("append");
    assert!(!elsewhere.duplicate);
    assert_eq!(
        seqs(&store.history(&t, 0, 100).await.expect("history")),
        vec![1, 2]
    );
}

pub async fn new_epoch_replaces_only_the_stale_epoch<H: Harness>(h: &H) {
    let store = h.store(limits(100, LONG)).await;
    let t = topic("conf.new-epoch");
    let epoch = append_n(&store, &t, 3).await;
    let unchanged = store
        .new_epoch(&t, &Epoch::new("0000000000000000"))
        .await
        .expect("new epoch");
    assert_eq!(unchanged, pos(3, &epoch), "another epoch is left alone");
    let moved = store.new_epoch(&t, &epoch).await.expect("new epoch");
    assert_eq!(moved.seq, 0);
    assert!(moved.epoch.is_newer_than(&epoch));
    assert!(
        store
            .history(&t, 0, 100)
            .await
            .expect("history")
            .messages
            .is_empty()
    );
    // A second pod finding the same stale epoch does not move it again.
    assert_eq!(store.new_epoch(&t, &epoch).await.expect("new epoch"), moved);
    let appended = store.append(&t, &json("1"), None).await.expect("append");
    assert_eq!((appended.seq, &appended.epoch), (1, &moved.epoch));
}

pub async fn tops_are_read_in_one_batch<H: Harness>(h: &H) {
    let store = h.store(limits(100, LONG)).await;
    let topics: Vec<Topic> = (0..5).map(|i| topic(&format!("conf.tops-{i}"))).collect();
    for (i, t) in topics.iter().enumerate().skip(1) {
        append_n(&store, t, i as u64).await;
    }
    let tops = store.tops(&topics).await.expect("tops");
    assert_eq!(
        tops.iter().map(|p| p.seq).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    for (t, top) in topics.iter().zip(&tops) {
        assert_eq!(&store.top(t).await.expect("top"), top);
    }
}

pub async fn session_claims_fence_older_generations<H: Harness>(h: &H) {
    let store = h.store(limits(100, LONG)).await;
    let id = SessionId::generate();
    let first = store
        .claim_session(&id, "pod-a", LONG)
        .await
        .expect("claim");
    assert_eq!(first.previous, None);
    let mut session = record(id.clone(), Some("alice"));
    // The saver's pod is the owner the next claim reports.
    session.last_pod = "pod-a".into();
    assert!(
        store
            .save_session(&session, first.generation, LONG)
            .await
            .expect("save")
    );

    let second = store
        .claim_session(&id, "pod-b", LONG)
        .await
        .expect("claim");
    assert!(second.generation > first.generation);
    assert_eq!(
        second.previous,
        Some(Owner {
            pod: "pod-a".into(),
            generation: first.generation
        })
    );
    // The older connection's record is kept, but it may not write any more.
    assert_eq!(
        store.load_session(&id).await.expect("load"),
        Some(session.clone())
    );
    let stale = SessionRecord {
        last_pod: "pod-a".into(),
        subscriptions: BTreeMap::new(),
        ..session.clone()
    };
    assert!(
        !store
            .save_session(&stale, first.generation, LONG)
            .await
            .expect("save")
    );
    session.last_pod = "pod-b".into();
    assert!(
        store
            .save_session(&session, second.generation, LONG)
            .await
            .expect("save")
    );
    assert_eq!(store.load_session(&id).await.expect("load"), Some(session));
}

pub async fn a_rolled_back_session_still_saves_and_claims_stay_ahead<H: Harness>(h: &H) {
    let store = h.store(limits(100, LONG)).await;
    let id = SessionId::generate();
    let live = store
        .claim_session(&id, "pod-a", LONG)
        .await
        .expect("claim");
    let mut session = record(id.clone(), None);
    session.last_pod = "pod-a".into();
    // The store lost the session (flushed, or restored from before the claim): the live
    // connection's save is not refused, and records it again.
    store.delete_session(&id).await.expect("delete");
    assert!(
        store
            .save_session(&session, live.generation, LONG)
            .await
            .expect("save")
    );
    let next = store
        .claim_session(&id, "pod-b", LONG)
        .await
        .expect("claim");
    assert!(next.generation > live.generation);
    assert_eq!(next.previous.map(|o| o.pod), Some("pod-a".to_owned()));
}

/// A message appended with an excluded session keeps it in history, in every read direction and
/// through the ordered path; a duplicate keeps the first append's exclusion.
fn excluding(session: &SessionId) -> crate::Extras<'_> {
    crate::Extras {
        exclude: Some(session),
        stage: None,
    }
}

pub async fn exclusions_are_kept_with_their_messages<H: Harness>(h: &H) {
    use crate::{Lane, OrderedAppends};
    let store = h.store(limits(100, LONG)).await;
    let t = topic("conf.exclude");
    let (a, b) = (SessionId::generate(), SessionId::generate());
    store.append(&t, &json("1"), None).await.expect("append");
    let id = PublishId::new("x-1").expect("id");
    store
        .append_with(&t, &json("2"), Some(&id), excluding(&a))
        .await
        .expect("append");
    let again = store
        .append_with(&t, &json("2"), Some(&id), excluding(&b))
        .await
        .expect("append");
    assert!(again.duplicate);
    let mut lane = Lane::new(1);
    store
        .issue_append_with(&mut lane, &t, &json("3"), None, excluding(&b))
        .await
        .expect("ordered append");
    store
        .issue_append(&mut lane, &t, &json("4"), None)
        .await
        .expect("ordered append");
    let expected = vec![(1, None), (2, Some(a)), (3, Some(b)), (4, None)];
    let forward = store.history(&t, 0, 100).await.expect("history");
    let got: Vec<_> = forward
        .messages
        .into_iter()
        .map(|m| (m.seq, m.exclude))
        .collect();
    assert_eq!(got, expected);
    let backward = store.history_before(&t, None, 100).await.expect("history");
    let mut got: Vec<_> = backward
        .messages
        .into_iter()
        .map(|m| (m.seq, m.exclude))
        .collect();
    got.reverse();
    assert_eq!(got, expected);
}
