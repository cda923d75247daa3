//! Witnesses and publishers for multi-node tests: a witness records every message it is sent,
//! with the epoch it was sent in; a publisher publishes numbered payloads and records which
//! were acknowledged and with which `seq`. [`check`] then proves delivery: every acknowledged
//! message arrived exactly once with its acknowledged `seq`, no `(epoch, seq)` twice, no hole
//! inside an epoch, and every epoch change announced.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::{Client, TestGateway, WAIT};

/// One message as a witness got it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub epoch: String,
    pub seq: u64,
    pub data: Value,
    /// The frame carried `epoch` (it must, exactly when the epoch changed).
    pub announced: bool,
    pub at: Instant,
}

/// What a witness saw of one topic.
#[derive(Debug, Clone, Default)]
pub struct TopicLog {
    /// The `subscribed` reply: epoch and latest seq when the subscription started.
    pub start: (String, u64),
    pub msgs: Vec<Seen>,
}

#[derive(Debug, Default)]
struct WitnessState {
    topics: HashMap<String, TopicLog>,
    /// Frames that were neither messages nor expected replies (errors, closes).
    odd: Vec<String>,
}

/// A subscriber that must go on receiving: records every message of its topics until stopped.
pub struct Witness {
    state: Arc<Mutex<WitnessState>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Witness {
    /// Says hello on `pod`, subscribes to `topics` and records from then on.
    pub async fn start(pod: &TestGateway, topics: &[String]) -> Self {
        let (mut c, _) = pod.hello().await;
        let state = Arc::new(Mutex::new(WitnessState::default()));
        for topic in topics {
            c.send(json!({"type": "subscribe", "topic": topic})).await;
            loop {
                let v = c.next().await;
                if v["type"] == "subscribed" && v["topic"] == topic.as_str() {
                    let start = (v["epoch"].as_str().unwrap().to_owned(), seq_of(&v));
                    state.lock().unwrap().topics.insert(
                        topic.clone(),
                        TopicLog {
                            start,
                            msgs: Vec::new(),
                        },
                    );
                    break;
                }
                record(&state, &v);
            }
        }
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(watch_frames(c, state.clone(), stop_rx));
        Self { state, stop, task }
    }

    /// What was seen so far of `topic`.
    pub fn log(&self, topic: &str) -> TopicLog {
        self.state.lock().unwrap().topics[topic].clone()
    }

    /// Unexpected frames so far (errors, a close).
    pub fn odd(&self) -> Vec<String> {
        self.state.lock().unwrap().odd.clone()
    }

    /// Waits (up to 30 s) until every acknowledged publish of `publishers` on the witness's
    /// topics has arrived; returns whether it did.
    pub async fn wait_for(&self, publishers: &[&PubLog]) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let missing = {
                let s = self.state.lock().unwrap();
                let seen: HashSet<(String, u64)> = s
                    .topics
                    .values()
                    .flat_map(|log| log.msgs.iter().filter_map(|m| payload_id(&m.data)))
                    .collect();
                publishers
                    .iter()
                    .flat_map(|p| p.acked.iter().map(move |a| (p, a)))
                    .filter(|(_, a)| s.topics.contains_key(&a.topic))
                    .any(|(p, a)| !seen.contains(&(p.name.clone(), a.n)))
            };
            if !missing {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(WAIT, self.task).await;
    }
}

fn seq_of(v: &Value) -> u64 {
    v["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {v}"))
}

/// The `(publisher, n)` a publisher's payload carries.
fn payload_id(data: &Value) -> Option<(String, u64)> {
    Some((data["p"].as_str()?.to_owned(), data["n"].as_u64()?))
}

fn record(state: &Mutex<WitnessState>, v: &Value) {
    let mut s = state.lock().unwrap();
    if v["type"] != "message" {
        s.odd.push(v.to_string());
        return;
    }
    let topic = v["topic"].as_str().unwrap_or_default().to_owned();
    let Some(log) = s.topics.get_mut(&topic) else {
        s.odd.push(v.to_string());
        return;
    };
    let current = log
        .msgs
        .last()
        .map_or(log.start.0.clone(), |m| m.epoch.clone());
    let announced = v.get("epoch").is_some();
    let epoch = v["epoch"].as_str().map_or(current, str::to_owned);
    log.msgs.push(Seen {
        epoch,
        seq: seq_of(v),
        data: v["data"].clone(),
        announced,
        at: Instant::now(),
    });
}

async fn watch_frames(
    mut c: Client,
    state: Arc<Mutex<WitnessState>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let frame = tokio::select! {
            f = c.ws.next() => f,
            _ = stop.changed() => {
                let _ = c.ws.close(None).await;
                return;
            }
        };
        match frame {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                record(&state, &v);
            }
            Some(Ok(Message::Close(c))) => {
                state.lock().unwrap().odd.push(format!("close {c:?}"));
                return;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                state.lock().unwrap().odd.push(format!("error {e}"));
                return;
            }
            None => {
                state.lock().unwrap().odd.push("connection ended".into());
                return;
            }
        }
    }
}

/// One acknowledged publish.
#[derive(Debug, Clone)]
pub struct Ack {
    pub n: u64,
    pub topic: String,
    pub seq: u64,
    pub at: Instant,
}

/// What a publisher did.
#[derive(Debug, Clone, Default)]
pub struct PubLog {
    pub name: String,
    pub acked: Vec<Ack>,
    /// Refused publishes: when, the topic, the error code and message.
    pub errors: Vec<(Instant, String, String, String)>,
}

impl PubLog {
    /// The first acknowledgement on one of `topics` after `t`.
    pub fn first_ack_after(&self, t: Instant, topics: &[String]) -> Option<&Ack> {
        self.acked
            .iter()
            .find(|a| a.at > t && topics.contains(&a.topic))
    }

    pub fn acks_after(&self, t: Instant) -> usize {
        self.acked.iter().filter(|a| a.at > t).count()
    }
}

/// A client publishing `{"p": name, "n": n}` for n = 0, 1, … round-robin over its topics, one
/// at a time (the next once the previous one is answered), every `pace`, until stopped or
/// `max` publishes.
pub struct Publisher {
    state: Arc<Mutex<PubLog>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Publisher {
    pub async fn start(pod: &TestGateway, name: &str, topics: Vec<String>) -> Self {
        let (c, _) = pod.hello().await;
        let state = Arc::new(Mutex::new(PubLog {
            name: name.to_owned(),
            ..PubLog::default()
        }));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(publish_loop(
            c,
            name.to_owned(),
            topics,
            state.clone(),
            stop_rx,
        ));
        Self { state, stop, task }
    }

    pub fn log(&self) -> PubLog {
        self.state.lock().unwrap().clone()
    }

    /// Waits (up to 60 s) until at least `n` publishes were acknowledged after `t`.
    pub async fn wait_acks_after(&self, t: Instant, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.log().acks_after(t) < n {
            let log = self.log();
            assert!(
                Instant::now() < deadline,
                "{}: only {} acks after the fault; last errors: {:?}",
                log.name,
                log.acks_after(t),
                log.errors.iter().rev().take(3).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) -> PubLog {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("publisher stops")
            .expect("publisher task did not panic");
        self.state.lock().unwrap().clone()
    }
}

/// Between two publishes: enough for the fleet to keep up on 2 cores.
const PACE: Duration = Duration::from_millis(15);
/// Publishes per publisher at most (a bound, never reached by the tests' waits).
const MAX_PUBLISHES: u64 = 20_000;

async fn publish_loop(
    mut c: Client,
    name: String,
    topics: Vec<String>,
    state: Arc<Mutex<PubLog>>,
    stop: watch::Receiver<bool>,
) {
    for n in 0..MAX_PUBLISHES {
        if *stop.borrow() {
            return;
        }
        let topic = &topics[usize::try_from(n).unwrap() % topics.len()];
        c.send(json!({"type": "publish", "topic": topic, "data": {"p": name, "n": n}, "ref": n}))
            .await;
        // The gateway bounds every store call, so an answer always comes.
        let reply = loop {
            let v = c.next().await;
            if v["ref"] == n {
                break v;
            }
        };
        let at = Instant::now();
        {
            let mut s = state.lock().unwrap();
            match reply["type"].as_str() {
                Some("published") => s.acked.push(Ack {
                    n,
                    topic: topic.clone(),
                    seq: seq_of(&reply),
                    at,
                }),
                Some("error") => s.errors.push((
                    at,
                    topic.clone(),
                    reply["code"].as_str().unwrap_or("?").to_owned(),
                    reply["message"].as_str().unwrap_or("").to_owned(),
                )),
                _ => panic!("unexpected reply to a publish: {reply}"),
            }
        }
        tokio::time::sleep(PACE).await;
    }
}

/// What [`check`] found for one topic.
#[derive(Debug)]
pub struct TopicReport {
    pub topic: String,
    pub delivered: usize,
    pub acked: usize,
    /// Acknowledged publishes the witness never got.
    pub lost: usize,
    /// Epochs the witness saw, in order (the subscription's first).
    pub epochs: Vec<String>,
}

impl TopicReport {
    pub fn epoch_changes(&self) -> usize {
        self.epochs.len() - 1
    }
}

impl TopicLog {
    /// When the first message of an epoch other than the subscription's arrived.
    pub fn first_new_epoch_at(&self) -> Option<Instant> {
        self.msgs
            .iter()
            .find(|m| m.epoch != self.start.0)
            .map(|m| m.at)
    }
}

/// Checks one topic of a witness against the publishers: no `(epoch, seq)` twice, each epoch
/// gap-free (the first one from the subscription's `seq`, later ones from 1) and announced,
/// epochs moving forward, every payload at most once, and every acknowledged publish delivered
/// with its acknowledged `seq`.
pub fn check(log: &TopicLog, topic: &str, publishers: &[&PubLog]) -> TopicReport {
    let mut pairs = HashSet::new();
    let mut payloads = HashMap::new();
    let mut epochs = vec![log.start.0.clone()];
    let mut expected_next = log.start.1 + 1;
    for m in &log.msgs {
        assert!(
            pairs.insert((m.epoch.clone(), m.seq)),
            "{topic}: ({}, {}) delivered twice",
            m.epoch,
            m.seq
        );
        if m.epoch != *epochs.last().unwrap() {
            assert!(
                m.announced,
                "{topic}: epoch change to {} not announced",
                m.epoch
            );
            assert!(
                m.epoch > *epochs.last().unwrap(),
                "{topic}: epoch went back from {} to {}",
                epochs.last().unwrap(),
                m.epoch
            );
            epochs.push(m.epoch.clone());
            expected_next = 1;
        }
        assert_eq!(
            m.seq, expected_next,
            "{topic}: hole or reorder in epoch {}: got seq {} where {} was next",
            m.epoch, m.seq, expected_next
        );
        expected_next += 1;
        if let Some(id) = payload_id(&m.data) {
            assert!(
                payloads.insert(id.clone(), m.seq).is_none(),
                "{topic}: payload {id:?} delivered twice"
            );
        }
    }
    let mut acked = 0;
    let mut lost = Vec::new();
    for p in publishers {
        for a in p.acked.iter().filter(|a| a.topic == topic) {
            acked += 1;
            match payloads.get(&(p.name.clone(), a.n)) {
                Some(&seq) => assert_eq!(
                    seq, a.seq,
                    "{topic}: {}#{} acknowledged as seq {} but delivered as {seq}",
                    p.name, a.n, a.seq
                ),
                None => lost.push(format!("{}#{} (seq {})", p.name, a.n, a.seq)),
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{topic}: {} acknowledged publishes never delivered: {lost:?}; epochs {epochs:?}",
        lost.len()
    );
    TopicReport {
        topic: topic.to_owned(),
        delivered: log.msgs.len(),
        acked,
        lost: lost.len(),
        epochs,
    }
}

/// The subjects the NATS connection named `pod` is subscribed to, and the node it is on
/// (from `/connz?subs=1` of every running node); `None` if no node has it.
pub fn nats_subjects(
    nats: &test_support::NatsCluster,
    pod: &str,
) -> Option<(usize, BTreeSet<String>)> {
    (0..nats.len())
        .filter(|&i| nats.is_running(i))
        .find_map(|i| {
            let body = nats.monitor_get(i, "/connz?subs=1").ok()?;
            let connz: Value = serde_json::from_str(&body).ok()?;
            let conn = connz["connections"]
                .as_array()?
                .iter()
                .find(|c| c["name"] == pod)?;
            let subs = conn["subscriptions_list"]
                .as_array()
                .map(|l| {
                    l.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            Some((i, subs))
        })
}
