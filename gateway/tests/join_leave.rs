//! Join/leave events (namespaces with `join_leave`): every pod's subscribers see each join and
//! leave once, with a gap-free `pseq`; drains emit none; unsubscribe and expiry emit one leave;
//! a resume replays what was missed, or sends a fresh list with `recovered: false` when the log
//! no longer has it.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use support::{Client, TestGateway};
use test_support::{NatsServer, RedisServer};

fn join_leave_on(c: &mut gateway::Config) {
    c.app.presence = true;
    c.app.join_leave = true;
    c.heartbeat_interval = Duration::from_millis(200);
}

async fn pod(redis: &RedisServer, nats: &NatsServer, name: &str) -> TestGateway {
    TestGateway::fleet_pod(redis, nats, name, join_leave_on).await
}

/// The next `n` frames, each of which must be a `join` or `leave`.
async fn events(c: &mut Client, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let v = c.next().await;
        assert!(v["type"] == "join" || v["type"] == "leave", "{v}");
        out.push(v);
    }
    out
}

/// The next frame of `kind`, skipping the join/leave events a member hears meanwhile.
async fn reply(c: &mut Client, kind: &str) -> Value {
    loop {
        let v = c.next().await;
        if v["type"] != "join" && v["type"] != "leave" {
            assert_eq!(v["type"], kind, "{v}");
            return v;
        }
    }
}

fn pseqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["pseq"].as_u64().unwrap()).collect()
}

fn contiguous_after(events: &[Value], after: u64) {
    let want: Vec<u64> = (after + 1..=after + events.len() as u64).collect();
    assert_eq!(pseqs(events), want, "{events:?}");
}

fn session(v: &Value) -> String {
    v["session"].as_str().unwrap().to_owned()
}

/// `(kind, session)` of each event.
fn what(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                session(&e["member"]),
            )
        })
        .collect()
}

/// Subscribes; returns the `subscribed` frame (with the presence position `pseq`/`pepoch`).
async fn follow(c: &mut Client, topic: &str) -> Value {
    let s = c.subscribe(topic).await;
    assert!(s["pseq"].is_u64() && s["pepoch"].is_string(), "{s}");
    s
}

/// A new session on `gw` following `topic`: its client and session id.
async fn member(gw: &TestGateway, topic: &str) -> (Client, String) {
    let (mut c, welcome) = gw.hello().await;
    follow(&mut c, topic).await;
    (c, session(&welcome))
}

/// Unsubscribes each client from `topic`, one after the other, each answered.
async fn leave_all(clients: &mut [Client], topic: &str) {
    for c in clients {
        c.send(json!({"type": "unsubscribe", "topic": topic})).await;
        reply(c, "unsubscribed").await;
    }
}

/// The position a client resumes `topic` from, messages and presence.
fn position(subscribed: &Value, pseq: u64, pepoch: &Value) -> Value {
    json!({"seq": subscribed["seq"], "epoch": subscribed["epoch"], "pseq": pseq, "pepoch": pepoch})
}

#[tokio::test]
async fn joins_and_leaves_reach_every_pod_in_pseq_order() {
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    let pods = [
        pod(&redis, &nats, "pod-0").await,
        pod(&redis, &nats, "pod-1").await,
        pod(&redis, &nats, "pod-2").await,
    ];
    let (mut w1, _) = pods[1].hello().await;
    let (mut w2, _) = pods[2].hello().await;
    let s1 = follow(&mut w1, "room").await;
    let s2 = follow(&mut w2, "room").await;
    // The second witness's own join is the first event the first one sees.
    let first = s1["pseq"].as_u64().unwrap();
    assert_eq!(s2["pseq"].as_u64().unwrap(), first + 1);
    let mut members = Vec::new();
    let mut joined = Vec::new();
    for _ in 0..2 {
        for gw in &pods {
            let (c, s) = member(gw, "room").await;
            joined.push(s);
            members.push(c);
        }
    }
    leave_all(&mut members[..3], "room").await;
    let seen1 = events(&mut w1, 10).await;
    let seen2 = events(&mut w2, 9).await;
    contiguous_after(&seen1, first);
    contiguous_after(&seen2, first + 1);
    assert_eq!(what(&seen1[1..]), what(&seen2), "both pods saw one order");
    let mut want: Vec<(String, String)> =
        joined.iter().map(|s| ("join".into(), s.clone())).collect();
    want.extend(joined[..3].iter().map(|s| ("leave".to_owned(), s.clone())));
    assert_eq!(what(&seen2), want);
    // Every event carries the topic and its presence epoch.
    assert!(
        seen2
            .iter()
            .all(|e| e["topic"] == "room" && e["epoch"] == s2["pepoch"])
    );
    // The list agrees with the events, at the position they reached.
    w2.send(json!({"type": "presence", "topic": "room", "ref": 5}))
        .await;
    let list = w2.expect("presence").await;
    assert_eq!(list["pseq"], seen2.last().unwrap()["pseq"], "{list}");
    assert_eq!(list["members"].as_array().unwrap().len(), 5);
}

/// The pod holding half the members drains: its clients resume on the other pods, the list
/// stays the same, and a witness on another pod sees no join or leave. The next real leave
/// follows on from the last pseq.
#[tokio::test]
async fn a_drain_emits_no_join_or_leave() {
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    let pods = [
        pod(&redis, &nats, "pod-0").await,
        pod(&redis, &nats, "pod-1").await,
        pod(&redis, &nats, "pod-2").await,
    ];
    let (mut witness, _) = pods[1].hello().await;
    let mut last = follow(&mut witness, "room").await["pseq"].as_u64().unwrap();
    let mut moving = Vec::new();
    for _ in 0..4 {
        let (mut c, w) = pods[0].hello().await;
        follow(&mut c, "room").await;
        moving.push((c, w));
    }
    let mut staying = Vec::new();
    for gw in &pods[1..] {
        for _ in 0..2 {
            let (mut c, _) = gw.hello().await;
            follow(&mut c, "room").await;
            staying.push(c);
        }
    }
    let joins = events(&mut witness, 8).await;
    contiguous_after(&joins, last);
    last += 8;
    witness
        .send(json!({"type": "presence", "topic": "room", "ref": 1}))
        .await;
    let before = witness.expect("presence").await;
    assert_eq!(before["pseq"].as_u64(), Some(last));
    let listed = |v: &Value| -> BTreeSet<String> {
        v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(session)
            .collect()
    };

    let (status, _) = pods[0].admin_post("/admin/drain", "").await;
    assert_eq!(status, 202);
    for (i, (c, welcome)) in moving.iter_mut().enumerate() {
        assert_eq!(c.closed().await.code, 1001);
        let mut resumed = pods[1 + i % 2].client().await;
        resumed
            .send(json!({"type": "hello", "resume": welcome["resume"]}))
            .await;
        let w = resumed.expect("welcome").await;
        assert_eq!(w["resumed"], true);
        // No presence position from the client: it follows from the topic's position, which
        // the drain did not move.
        assert_eq!(w["topics"]["room"]["pseq"].as_u64(), Some(last), "{w}");
        *c = resumed;
    }
    // Several beats and a sweep later: nothing arrived, the list is the same, and the
    // position did not move.
    witness.silent_for(Duration::from_millis(1_500)).await;
    witness
        .send(json!({"type": "presence", "topic": "room", "ref": 2}))
        .await;
    let after = witness.expect("presence").await;
    assert_eq!(listed(&after), listed(&before));
    assert_eq!(after["pseq"].as_u64(), Some(last));

    // A moved client unsubscribes: one leave, the next pseq, on the witness and on a moved
    // client on another pod alike.
    let (gone, welcome) = &mut moving[0];
    gone.send(json!({"type": "unsubscribe", "topic": "room"}))
        .await;
    reply(gone, "unsubscribed").await;
    let leave = events(&mut witness, 1).await;
    contiguous_after(&leave, last);
    assert_eq!(what(&leave), vec![("leave".into(), session(welcome))]);
    assert_eq!(events(&mut moving[1].0, 1).await, leave);
    witness.silent_for(Duration::from_millis(500)).await;
}

/// Embedded (in-process store): an unsubscribe is one leave at once; a socket that vanishes is
/// one leave once its resume window passed, and nothing after.
#[tokio::test]
async fn unsubscribe_and_expiry_each_emit_one_leave() {
    let gw = TestGateway::with(|c| {
        join_leave_on(c);
        c.resume_window = Duration::from_secs(2);
    })
    .await;
    let (mut witness, _) = gw.hello().await;
    let start = follow(&mut witness, "room").await["pseq"].as_u64().unwrap();
    let (mut a, wa) = gw.hello().await;
    let (mut b, wb) = gw.hello().await;
    follow(&mut a, "room").await;
    follow(&mut b, "room").await;
    contiguous_after(&events(&mut witness, 2).await, start);
    a.send(json!({"type": "unsubscribe", "topic": "room"}))
        .await;
    reply(&mut a, "unsubscribed").await;
    let left = events(&mut witness, 1).await;
    assert_eq!(what(&left), vec![("leave".into(), session(&wa))]);
    contiguous_after(&left, start + 2);
    // Subscribing again is a join again.
    a.subscribe("room").await;
    contiguous_after(&events(&mut witness, 1).await, start + 3);

    drop(b);
    let expired = events(&mut witness, 1).await;
    assert_eq!(what(&expired), vec![("leave".into(), session(&wb))]);
    contiguous_after(&expired, start + 4);
    witness.silent_for(Duration::from_millis(1_500)).await;
}

/// A client away for a while resumes on another pod with its presence position: the joins and
/// leaves it missed arrive after `welcome`, in order, and then live ones follow on.
#[tokio::test]
async fn a_resume_replays_missed_joins_and_leaves_in_order() {
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    let pods = [
        pod(&redis, &nats, "pod-0").await,
        pod(&redis, &nats, "pod-1").await,
    ];
    resume_replays(&pods[0], &pods[1]).await;
}

/// The same on the embedded store (one process, in-memory log).
#[tokio::test]
async fn a_resume_replays_missed_joins_and_leaves_embedded() {
    let gw = TestGateway::with(join_leave_on).await;
    resume_replays(&gw, &gw).await;
}

/// Subscribes on `first`, goes away while others join and leave (on both), resumes on
/// `second` with its positions.
async fn resume_replays(first: &TestGateway, second: &TestGateway) {
    let (mut away, welcome) = first.hello().await;
    let subscribed = follow(&mut away, "room").await;
    let at = subscribed["pseq"].as_u64().unwrap();
    drop(away);
    let mut missed = Vec::new();
    let (mut b, wb) = second.hello().await;
    follow(&mut b, "room").await;
    missed.push(("join".to_owned(), session(&wb)));
    let (mut c, wc) = first.hello().await;
    follow(&mut c, "room").await;
    missed.push(("join".to_owned(), session(&wc)));
    c.send(json!({"type": "unsubscribe", "topic": "room"}))
        .await;
    reply(&mut c, "unsubscribed").await;
    missed.push(("leave".to_owned(), session(&wc)));

    let mut back = second.client().await;
    back.send(json!({
        "type": "hello",
        "resume": welcome["resume"],
        "positions": {"room": position(&subscribed, at, &subscribed["pepoch"])},
    }))
    .await;
    let w = back.expect("welcome").await;
    assert_eq!(w["resumed"], true);
    assert_eq!(w["topics"]["room"]["pseq"].as_u64(), Some(at));
    let replayed = events(&mut back, 3).await;
    contiguous_after(&replayed, at);
    assert_eq!(what(&replayed), missed);
    // Live again: the next event follows on.
    let (mut d, wd) = first.hello().await;
    follow(&mut d, "room").await;
    let live = events(&mut back, 1).await;
    contiguous_after(&live, at + 3);
    assert_eq!(what(&live), vec![("join".into(), session(&wd))]);
}

/// Embedded, with a log of two events: a client that missed four gets the members instead,
/// with `recovered: false` and the position the list is at; live events follow on from it.
#[tokio::test]
async fn a_trimmed_log_sends_a_fresh_list() {
    let gw = TestGateway::with(|c| {
        join_leave_on(c);
        c.app.presence_log_size = 2;
    })
    .await;
    let (mut away, welcome) = gw.hello().await;
    let subscribed = follow(&mut away, "room").await;
    let at = subscribed["pseq"].as_u64().unwrap();
    drop(away);
    let mut present = BTreeSet::from([session(&welcome)]);
    let mut others = Vec::new();
    for _ in 0..4 {
        let (mut c, w) = gw.hello().await;
        follow(&mut c, "room").await;
        present.insert(session(&w));
        others.push(c);
    }
    let mut back = gw.client().await;
    back.send(json!({
        "type": "hello",
        "resume": welcome["resume"],
        "positions": {"room": position(&subscribed, at, &subscribed["pepoch"])},
    }))
    .await;
    back.expect("welcome").await;
    let list = back.expect("presence").await;
    assert_eq!(list["recovered"], false, "{list}");
    assert!(list.get("ref").is_none());
    assert_eq!(list["pseq"].as_u64(), Some(at + 4));
    assert_eq!(list["epoch"], subscribed["pepoch"]);
    let listed: BTreeSet<String> = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(session)
        .collect();
    assert_eq!(listed, present);
    let (mut e, _) = gw.hello().await;
    follow(&mut e, "room").await;
    contiguous_after(&events(&mut back, 1).await, at + 4);
}

/// The Redis log lost (its position key deleted, as an eviction or a flush would): the next
/// position is in a new, later epoch, and a client subscribing with a position from the old
/// one gets a fresh list with `recovered: false`, never events that reuse old numbers.
#[tokio::test]
async fn a_lost_log_is_a_new_epoch_and_a_fresh_list() {
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    let gw = pod(&redis, &nats, "pod-0").await;
    let (mut a, wa) = gw.hello().await;
    let subscribed = follow(&mut a, "room").await;
    let old = subscribed["pepoch"].as_str().unwrap().to_owned();
    redis.cmd(&["DEL", "gw:presence-pos:{room}"]);
    let (mut b, wb) = gw.hello().await;
    b.send(json!({
        "type": "subscribe",
        "topic": "room",
        "since": position(&subscribed, subscribed["pseq"].as_u64().unwrap(), &json!(old)),
    }))
    .await;
    // `subscribed` confirms the client's position; the list that follows replaces it.
    let s = b.expect("subscribed").await;
    assert_eq!(s["pepoch"].as_str(), Some(old.as_str()));
    let list = b.expect("presence").await;
    assert_eq!(list["recovered"], false, "{list}");
    let new = list["epoch"].as_str().unwrap().to_owned();
    assert!(new > old, "epochs order by creation: {old} then {new}");
    let listed: BTreeSet<String> = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(session)
        .collect();
    assert_eq!(listed, BTreeSet::from([session(&wa), session(&wb)]));
    // The old subscriber's next event is a gap in its epoch: it gets the fresh list too.
    let (mut c, _) = gw.hello().await;
    follow(&mut c, "room").await;
    let fresh = a.expect("presence").await;
    assert_eq!(fresh["recovered"], false);
    assert_eq!(fresh["epoch"].as_str(), Some(new.as_str()));
}

/// An ephemeral topic (no history) with presence still has sequenced joins and leaves: a
/// member on another pod hears each once, in `pseq` order, and they pass through that pod's
/// ordering of notes like a history topic's.
#[tokio::test]
async fn an_ephemeral_topics_joins_and_leaves_reach_another_pod_in_order() {
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    let dir = std::env::temp_dir().join(format!("gw-jl-{}", test_support::free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.toml");
    let text = "[[namespaces]]\nprefix = \"cursor.\"\nhistory = false\npresence = true\njoin_leave = true\n";
    std::fs::write(&file, text).unwrap();
    let edit = |file: std::path::PathBuf| {
        move |c: &mut gateway::Config| {
            join_leave_on(c);
            c.app.config_file = Some(file);
        }
    };
    let a = TestGateway::fleet_pod(&redis, &nats, "pod-a", edit(file.clone())).await;
    let b = TestGateway::fleet_pod(&redis, &nats, "pod-b", edit(file)).await;
    let (mut witness, _) = b.hello().await;
    let s = follow(&mut witness, "cursor.1").await;
    assert!(s.get("seq").is_none(), "ephemeral: no seq ({s})");
    let first = s["pseq"].as_u64().unwrap();
    let mut members = Vec::new();
    let mut joined = Vec::new();
    for _ in 0..4 {
        let (c, s) = member(&a, "cursor.1").await;
        joined.push(s);
        members.push(c);
    }
    leave_all(&mut members[..2], "cursor.1").await;
    let seen = events(&mut witness, 6).await;
    contiguous_after(&seen, first);
    let mut want: Vec<(String, String)> =
        joined.iter().map(|s| ("join".into(), s.clone())).collect();
    want.extend(joined[..2].iter().map(|s| ("leave".to_owned(), s.clone())));
    assert_eq!(what(&seen), want);
    witness.silent_for(Duration::from_millis(300)).await;
}
