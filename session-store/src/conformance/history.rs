//! History: reads after a position in order, capped by `max_len` and by age, in bounded pages
//! forwards and backwards, stopping at trimmed and aged messages.

use std::time::Duration;

use crate::{PAGE_BYTES, ReverseHistory, SessionStore, recover};

use super::{Harness, LONG, append_n, json, limits, pos, seqs, topic};

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
