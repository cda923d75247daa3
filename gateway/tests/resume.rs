//! Resume on one node: missed messages exactly once and in order, `recovered: false` past the
//! history or the epoch, fresh sessions for forged or expired tokens.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use proptest::prelude::*;
use serde_json::{Value, json};
use support::{Client, TestGateway, seqs};
use tokio_tungstenite::tungstenite::Message;

/// Closes cleanly, returning every message that arrived before the server's close frame.
async fn close_and_drain(c: &mut Client) -> Vec<Value> {
    c.ws.send(Message::Close(None)).await.unwrap();
    let mut out = Vec::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(support::WAIT, c.ws.next()).await {
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["type"] == "message" {
                out.push(v);
            }
        }
    }
    out
}

#[tokio::test]
async fn resume_gets_exactly_the_missed_messages() {
    let gw = TestGateway::start().await;
    let (mut a, welcome) = gw.hello().await;
    a.subscribe("room").await;
    a.subscribe("other").await;
    let (mut p, _) = gw.hello().await;
    p.publish("room", json!(1)).await;
    assert_eq!(a.expect("message").await["seq"], 1);
    assert!(close_and_drain(&mut a).await.is_empty());

    for i in 2..=6 {
        p.publish("room", json!(i)).await;
    }
    let mut a = gw.client().await;
    a.send(json!({"type": "hello", "resume": welcome["resume"]}))
        .await;
    let w = a.expect("welcome").await;
    assert_eq!(w["resumed"], true);
    assert_eq!(w["session"], welcome["session"]);
    assert_eq!(w["topics"]["room"]["recovered"], true);
    assert_eq!(w["topics"]["room"]["seq"], 6);
    assert_eq!(w["topics"]["other"]["recovered"], true);
    let missed = a.messages(5).await;
    assert_eq!(seqs(&missed), vec![2, 3, 4, 5, 6]);
    assert_eq!(missed[4]["data"], 6);
    // Live messages continue after the replay, without duplicates.
    p.publish("room", json!(7)).await;
    assert_eq!(a.expect("message").await["seq"], 7);
    a.silent_for(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn client_positions_win_over_the_servers() {
    let gw = TestGateway::start().await;
    let (mut a, welcome) = gw.hello().await;
    let sub = a.subscribe("room").await;
    let (mut p, _) = gw.hello().await;
    for i in 1..=4 {
        p.publish("room", json!(i)).await;
    }
    a.messages(4).await;
    close_and_drain(&mut a).await;
    // The client says it only processed up to 2 (e.g. it crashed before handling 3 and 4).
    let mut a = gw.client().await;
    a.send(json!({"type": "hello", "resume": welcome["resume"],
                  "positions": {"room": {"seq": 2, "epoch": sub["epoch"]}}}))
        .await;
    let w = a.expect("welcome").await;
    assert_eq!(w["topics"]["room"]["recovered"], true);
    assert_eq!(seqs(&a.messages(2).await), vec![3, 4]);
}

#[tokio::test]
async fn subscribe_since_recovers_or_says_not_recovered() {
    let gw = TestGateway::with(|c| c.history_size = 5).await;
    let (mut p, _) = gw.hello().await;
    let (mut a, _) = gw.hello().await;
    let epoch = a.subscribe("h").await["epoch"].clone();
    for i in 1..=8 {
        p.publish("h", json!(i)).await;
    }
    a.messages(8).await;
    a.send(json!({"type": "unsubscribe", "topic": "h"})).await;
    a.expect("unsubscribed").await;

    // Within history: 4..=8 are kept.
    a.send(
        json!({"type": "subscribe", "topic": "h", "since": {"seq": 5, "epoch": epoch}, "ref": 1}),
    )
    .await;
    let s = a.expect("subscribed").await;
    assert_eq!(
        (s["recovered"].as_bool(), s["seq"].as_u64()),
        (Some(true), Some(8))
    );
    assert_eq!(seqs(&a.messages(3).await), vec![6, 7, 8]);
    a.send(json!({"type": "unsubscribe", "topic": "h"})).await;
    a.expect("unsubscribed").await;

    // Past history: 2 was trimmed.
    a.send(json!({"type": "subscribe", "topic": "h", "since": {"seq": 1, "epoch": epoch}}))
        .await;
    let s = a.expect("subscribed").await;
    assert_eq!(s["recovered"], false);
    a.silent_for(Duration::from_millis(200)).await;
    a.send(json!({"type": "unsubscribe", "topic": "h"})).await;
    a.expect("unsubscribed").await;

    // Another epoch: never recovered, whatever the seq.
    a.send(json!({"type": "subscribe", "topic": "h", "since": {"seq": 7, "epoch": "other"}}))
        .await;
    assert_eq!(a.expect("subscribed").await["recovered"], false);
    a.silent_for(Duration::from_millis(200)).await;
    p.publish("h", json!(9)).await;
    assert_eq!(a.expect("message").await["seq"], 9);
}

#[tokio::test]
async fn resume_past_history_reports_not_recovered() {
    let gw = TestGateway::with(|c| c.history_size = 3).await;
    let (mut a, welcome) = gw.hello().await;
    a.subscribe("t").await;
    close_and_drain(&mut a).await;
    let (mut p, _) = gw.hello().await;
    for i in 1..=10 {
        p.publish("t", json!(i)).await;
    }
    let mut a = gw.client().await;
    a.send(json!({"type": "hello", "resume": welcome["resume"]}))
        .await;
    let w = a.expect("welcome").await;
    assert_eq!(w["resumed"], true);
    assert_eq!(
        w["topics"]["t"],
        json!({"seq": 10, "epoch": w["topics"]["t"]["epoch"], "recovered": false})
    );
    a.silent_for(Duration::from_millis(200)).await;
    p.publish("t", json!(11)).await;
    assert_eq!(a.expect("message").await["seq"], 11);
}

#[tokio::test]
async fn expired_forged_or_malformed_tokens_get_a_fresh_session() {
    let gw = TestGateway::with(|c| c.resume_window = Duration::from_millis(400)).await;
    let (mut a, welcome) = gw.hello().await;
    a.subscribe("t").await;
    close_and_drain(&mut a).await;

    let session = welcome["session"].as_str().unwrap();
    let forged = format!("{session}.{}", "0".repeat(64));
    for token in [
        json!(forged),
        json!("garbage"),
        json!(format!("{}.x", "a".repeat(32))),
    ] {
        let mut c = gw.client().await;
        c.send(json!({"type": "hello", "resume": token})).await;
        let w = c.expect("welcome").await;
        assert_eq!(w["resumed"], false, "{token}");
        assert_ne!(w["session"], welcome["session"]);
        assert!(w.get("topics").is_none());
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut c = gw.client().await;
    c.send(json!({"type": "hello", "resume": welcome["resume"]}))
        .await;
    let w = c.expect("welcome").await;
    assert_eq!(w["resumed"], false, "expired session must not resume");
}

#[tokio::test]
async fn a_resumed_session_takes_over_the_old_connection() {
    let gw = TestGateway::start().await;
    let (mut a, welcome) = gw.hello().await;
    a.subscribe("t").await;
    let mut b = gw.client().await;
    b.send(json!({"type": "hello", "resume": welcome["resume"]}))
        .await;
    assert_eq!(b.expect("welcome").await["resumed"], true);
    let closed = a.closed().await;
    assert_eq!(closed.code, 1000);
    assert_eq!(closed.reason["error"], "session_taken_over");
    assert_eq!(closed.reason["reconnect"], false);
    let (mut p, _) = gw.hello().await;
    p.publish("t", json!(1)).await;
    assert_eq!(b.expect("message").await["seq"], 1);
}

#[derive(Debug, Clone)]
enum Op {
    Publish(u8),
    Disconnect(usize),
    Resume { who: usize, with_positions: bool },
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            3 => (1u8..6).prop_map(Op::Publish),
            1 => (0usize..3).prop_map(Op::Disconnect),
            1 => ((0usize..3), any::<bool>()).prop_map(|(who, with_positions)| Op::Resume { who, with_positions }),
        ],
        1..25,
    )
}

struct Sub {
    client: Option<Client>,
    resume: Value,
    epoch: Value,
    got: Vec<u64>,
}

async fn interleaving(ops: Vec<Op>) {
    let gw = TestGateway::with(|c| c.history_size = 1_000).await;
    let mut subs = Vec::new();
    for _ in 0..3 {
        let (mut c, w) = gw.hello().await;
        let s = c.subscribe("p").await;
        subs.push(Sub {
            client: Some(c),
            resume: w["resume"].clone(),
            epoch: s["epoch"].clone(),
            got: Vec::new(),
        });
    }
    let (mut publisher, _) = gw.hello().await;
    let mut published = 0;
    let resume = |s: &mut Sub, with_positions: bool| {
        let url = gw.ws_url();
        let mut hello = json!({"type": "hello", "resume": s.resume});
        if with_positions {
            let last = s.got.last().copied().unwrap_or(0);
            hello["positions"] = json!({"p": {"seq": last, "epoch": s.epoch}});
        }
        async move {
            let mut c = Client::connect(&url).await;
            c.send(hello).await;
            let w = c.expect("welcome").await;
            assert_eq!(w["resumed"], true);
            assert_eq!(w["topics"]["p"]["recovered"], true, "{w}");
            c
        }
    };
    for op in ops {
        match op {
            Op::Publish(n) => {
                for _ in 0..n {
                    published += 1;
                    publisher.publish("p", json!(published)).await;
                }
            }
            Op::Disconnect(i) => {
                if let Some(mut c) = subs[i].client.take() {
                    let msgs = close_and_drain(&mut c).await;
                    subs[i].got.extend(seqs(&msgs));
                }
            }
            Op::Resume {
                who,
                with_positions,
            } => {
                if subs[who].client.is_none() {
                    let c = resume(&mut subs[who], with_positions).await;
                    subs[who].client = Some(c);
                }
            }
        }
    }
    for s in &mut subs {
        if s.client.is_none() {
            s.client = Some(resume(s, true).await);
        }
        let c = s.client.as_mut().unwrap();
        let last = s.got.last().copied().unwrap_or(0);
        let msgs = c.messages((published - last) as usize).await;
        s.got.extend(seqs(&msgs));
        assert_eq!(
            s.got,
            (1..=published).collect::<Vec<u64>>(),
            "gap, duplicate or reorder"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random interleavings of publish, disconnect and resume never give a subscriber a gap,
    /// a duplicate or a reordering.
    #[test]
    fn interleavings_never_lose_duplicate_or_reorder(ops in ops()) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(interleaving(ops));
    }
}
