//! Appends and a topic's head: seqs start at one and stay contiguous under concurrency, topics
//! are independent, payloads round-trip byte for byte, tops are read in one batch, and the store
//! answers a ping.

use protocol::{Payload, Topic};

use crate::SessionStore;

use super::{Harness, LONG, append_n, json, limits, pos, seqs, topic};

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
