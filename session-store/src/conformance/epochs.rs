//! Epochs: stable while the history lives, changed when it is lost or the topic idles out, only
//! ever moving forward, and replaced only when the caller names the stale one.

use std::time::Duration;

use protocol::Epoch;

use crate::{SessionStore, recover};

use super::{Harness, LONG, append_n, json, limits, pos, topic};

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
