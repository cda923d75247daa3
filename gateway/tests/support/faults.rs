//! Store-fault harness: witnesses that record every message they are sent, publishers that
//! publish steadily through `/api/publish` and retry each message until it is acknowledged, and
//! the checks that hold whatever happened to Redis in between.
//!
//! A [`Witness`] is one connected subscriber. It never reconnects: a close is recorded, and the
//! tests assert it did not happen. [`check_witness`] verifies what one witness saw against the
//! protocol's delivery rules (gap-free within an epoch, a new epoch announced on its first
//! message and starting at 1, never a repeated `(epoch, seq)`), [`assert_consistent`] that every
//! `(epoch, seq)` means one message to everybody, witnesses and publishers alike.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use protocol::Epoch;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

use super::{TestGateway, http};

/// How long any condition of these tests is waited for before the test fails: generous, for a
/// loaded machine; never a measure of speed.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A gateway in cluster mode: `redis_url` (a server or a proxy in front of one), NATS if given,
/// a short resync interval and store timeout, so that faults are noticed and recovered from
/// within the tests' bounds. The timeout (1 s) is short for a dead Redis but not so short that
/// a loaded machine times out calls to a healthy one (a history read that times out closes its
/// subscriber with 1013, which the tests would take for the fault's doing).
pub async fn pod(
    redis_url: String,
    nats_url: Option<String>,
    name: &str,
    edit: impl FnOnce(&mut gateway::Config),
) -> TestGateway {
    let name = name.to_owned();
    TestGateway::with(move |c| {
        c.redis_url = Some(redis_url);
        c.nats_url = nats_url.into_iter().collect();
        c.pod_name = Some(name);
        c.topic_resync_interval = Duration::from_millis(500);
        c.store_timeout = Duration::from_secs(1);
        edit(c);
    })
    .await
}

/// One message as a witness received it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The message's epoch: its own `epoch` field, or the one the witness was in.
    pub epoch: String,
    pub seq: u64,
    pub data: Value,
    /// Whether the message carried `epoch` (the first of a new epoch must).
    pub announced: bool,
}

/// Everything one witness received.
#[derive(Debug, Clone, Default)]
pub struct WitnessLog {
    pub name: String,
    /// From `subscribed`.
    pub initial_epoch: String,
    pub initial_seq: u64,
    pub seen: Vec<Seen>,
    /// Frames other than messages and pongs (e.g. `error`), as received.
    pub other: Vec<Value>,
    /// How the connection ended, if it did before the witness was stopped.
    pub ended: Option<String>,
}

impl WitnessLog {
    /// Whether it received `(epoch, seq)`.
    pub fn has(&self, epoch: &str, seq: u64) -> bool {
        self.seen.iter().any(|s| s.epoch == epoch && s.seq == seq)
    }

    /// The epochs it was in, in order, each with the seqs received in it.
    pub fn epochs(&self) -> Vec<(String, Vec<u64>)> {
        let mut out: Vec<(String, Vec<u64>)> = vec![(self.initial_epoch.clone(), Vec::new())];
        for s in &self.seen {
            if out.last().is_some_and(|(e, _)| *e != s.epoch) {
                out.push((s.epoch.clone(), Vec::new()));
            }
            out.last_mut().expect("one epoch at least").1.push(s.seq);
        }
        out
    }

    /// One line per epoch: for failure messages and the test log.
    pub fn summary(&self) -> String {
        let epochs: Vec<String> = self
            .epochs()
            .iter()
            .map(|(e, seqs)| match (seqs.first(), seqs.last()) {
                (Some(a), Some(b)) => format!("{e}: {} msgs, {a}..={b}", seqs.len()),
                _ => format!("{e}: none"),
            })
            .collect();
        format!(
            "{} [{}] ended: {:?}, other frames: {}",
            self.name,
            epochs.join("; "),
            self.ended,
            self.other.len()
        )
    }
}

/// A subscriber connected to one pod for the whole test, recording what it gets.
pub struct Witness {
    log: Arc<Mutex<WitnessLog>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Witness {
    /// Connects to `pod`, says hello and subscribes to `topic`; returns once `subscribed` came.
    pub async fn start(name: &str, pod: &TestGateway, topic: &str) -> Self {
        let (mut ws, _) = connect_async(pod.ws_url()).await.expect("witness connects");
        send(&mut ws, json!({"type": "hello"})).await;
        let welcome = next_text(&mut ws).await;
        assert_eq!(welcome["type"], "welcome", "{name}: {welcome}");
        send(&mut ws, json!({"type": "subscribe", "topic": topic})).await;
        let subscribed = next_text(&mut ws).await;
        assert_eq!(subscribed["type"], "subscribed", "{name}: {subscribed}");
        let log = Arc::new(Mutex::new(WitnessLog {
            name: name.to_owned(),
            initial_epoch: subscribed["epoch"].as_str().expect("epoch").to_owned(),
            initial_seq: subscribed["seq"].as_u64().expect("seq"),
            ..WitnessLog::default()
        }));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(record(ws, log.clone(), stopped));
        Self { log, stop, task }
    }

    pub fn log(&self) -> WitnessLog {
        self.log.lock().unwrap().clone()
    }

    /// Waits until `condition` holds for the log; fails the test after [`DEADLINE`].
    pub async fn wait_for(&self, what: &str, condition: impl Fn(&WitnessLog) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let log = self.log();
            if condition(&log) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {DEADLINE:?}: {}",
                log.summary()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Closes the connection and returns the log.
    pub async fn stop(self) -> WitnessLog {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        self.log.lock().unwrap().clone()
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

async fn next_text(ws: &mut Ws) -> Value {
    loop {
        let frame = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = frame {
            return serde_json::from_str(t.as_str()).expect("JSON frame");
        }
    }
}

async fn record(mut ws: Ws, log: Arc<Mutex<WitnessLog>>, mut stop: watch::Receiver<bool>) {
    let mut epoch = log.lock().unwrap().initial_epoch.clone();
    loop {
        let frame = tokio::select! {
            frame = ws.next() => frame,
            _ = stop.changed() => {
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                return;
            }
        };
        let ended = match frame {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("JSON frame");
                let mut log = log.lock().unwrap();
                if v["type"] == "message" {
                    let announced = v.get("epoch").is_some();
                    if let Some(e) = v["epoch"].as_str() {
                        epoch = e.to_owned();
                    }
                    log.seen.push(Seen {
                        epoch: epoch.clone(),
                        seq: v["seq"].as_u64().expect("seq"),
                        data: v["data"].clone(),
                        announced,
                    });
                } else if v["type"] != "pong" {
                    log.other.push(v);
                }
                continue;
            }
            Some(Ok(Message::Close(c))) => format!("close frame {c:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => format!("error {e}"),
            None => "end of stream".to_owned(),
        };
        log.lock().unwrap().ended = Some(ended);
        return;
    }
}

/// Checks one witness against the delivery rules and returns its epochs (see
/// [`WitnessLog::epochs`]):
/// - it was not disconnected and got no error frame;
/// - within an epoch, each message is the one after the previous (from the `subscribed` seq on);
/// - a message with `epoch` moves to a newer epoch than the witness was in, and is its seq 1;
/// - no `(epoch, seq)` twice.
pub fn check_witness(log: &WitnessLog) -> Vec<(String, Vec<u64>)> {
    let name = &log.name;
    assert_eq!(
        log.ended,
        None,
        "{name} was disconnected: {}",
        log.summary()
    );
    assert!(log.other.is_empty(), "{name} got {:?}", log.other);
    let mut epoch = log.initial_epoch.clone();
    let mut last = log.initial_seq;
    let mut seen = HashSet::new();
    for (i, s) in log.seen.iter().enumerate() {
        if s.announced && s.epoch != epoch {
            assert!(
                Epoch::new(s.epoch.clone()).is_newer_than(&Epoch::new(epoch.clone())),
                "{name}: message {i} moves from epoch {epoch} to an older one {}",
                s.epoch
            );
            assert_eq!(
                s.seq, 1,
                "{name}: the first message of epoch {} is not seq 1",
                s.epoch
            );
            epoch = s.epoch.clone();
        } else {
            assert_eq!(
                s.seq,
                last + 1,
                "{name}: message {i} in epoch {epoch} (announced: {}) is not the one after {last}: {}",
                s.announced,
                log.summary()
            );
        }
        last = s.seq;
        assert!(
            seen.insert((s.epoch.clone(), s.seq)),
            "{name}: ({}, {}) twice",
            s.epoch,
            s.seq
        );
    }
    log.epochs()
}

/// Asserts every `(epoch, seq)` is one payload for all witnesses and all acknowledgements.
pub fn assert_consistent(logs: &[&WitnessLog], acks: &[Ack]) {
    let mut meaning: HashMap<(String, u64), (Value, String)> = HashMap::new();
    let facts = acks
        .iter()
        .map(|a| {
            (
                (a.epoch.clone(), a.seq),
                a.data.clone(),
                format!("ack of {}", a.id),
            )
        })
        .chain(logs.iter().flat_map(|log| {
            log.seen
                .iter()
                .map(|s| ((s.epoch.clone(), s.seq), s.data.clone(), log.name.clone()))
        }));
    for (key, data, who) in facts {
        match meaning.get(&key) {
            Some((first, by)) => assert_eq!(
                first, &data,
                "({}, {}) is {first} for {by} but {data} for {who}",
                key.0, key.1
            ),
            None => {
                meaning.insert(key, (data, who));
            }
        }
    }
}

/// Asserts each witness received every publish acknowledged in `epoch`, waiting for those still
/// on their way.
pub async fn wait_all_delivered(witnesses: &[&Witness], acks: &[Ack], epoch: &str) {
    let wanted: Vec<u64> = acks
        .iter()
        .filter(|a| a.epoch == epoch)
        .map(|a| a.seq)
        .collect();
    assert!(!wanted.is_empty(), "nothing was acknowledged in {epoch}");
    for w in witnesses {
        w.wait_for(&format!("every publish acknowledged in {epoch}"), |log| {
            wanted.iter().all(|&seq| log.has(epoch, seq))
        })
        .await;
    }
}

/// A publish `/api/publish` acknowledged.
#[derive(Debug, Clone)]
pub struct Ack {
    /// The publish id (also in `data`).
    pub id: String,
    pub seq: u64,
    pub epoch: String,
    pub duplicate: bool,
    pub data: Value,
    /// Answers other than 200 before this one (503 while the store was down).
    pub refused: u32,
    /// When it was acknowledged, relative to the publisher's start: for the test log only.
    pub at: Duration,
}

/// Publishes `{"by": name, "n": n}` for n = 0, 1, ... on `topic`, one at a time, through the
/// admin API of `admins` in turn, each with the publish id `name-n`, retrying a refused publish
/// (with the same id) until it is acknowledged; stops after `max` or when told to.
pub struct Publisher {
    acks: Arc<Mutex<Vec<Ack>>>,
    refusals: Arc<AtomicU32>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Publisher {
    pub fn start(name: &str, admins: Vec<SocketAddr>, topic: &str, max: u64) -> Self {
        let acks = Arc::new(Mutex::new(Vec::new()));
        let refusals = Arc::new(AtomicU32::new(0));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(publish_steadily(
            Job {
                name: name.to_owned(),
                admins,
                topic: topic.to_owned(),
                max,
            },
            acks.clone(),
            refusals.clone(),
            stopped,
        ));
        Self {
            acks,
            refusals,
            stop,
            task,
        }
    }

    /// Publishes refused (503) so far, retried or not yet.
    pub fn refusals(&self) -> u32 {
        self.refusals.load(Ordering::Relaxed)
    }

    /// Waits until at least one publish was refused after `since` refusals.
    pub async fn wait_refused(&self, since: u32) {
        let deadline = Instant::now() + DEADLINE;
        while self.refusals() <= since {
            assert!(
                Instant::now() < deadline,
                "no publish refused within {DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn acks(&self) -> Vec<Ack> {
        self.acks.lock().unwrap().clone()
    }

    /// Waits until `condition` holds for the acknowledgements so far; fails after [`DEADLINE`].
    pub async fn wait_for(&self, what: &str, condition: impl Fn(&[Ack]) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if condition(&self.acks()) {
                return;
            }
            assert!(
                !self.task.is_finished(),
                "{what}: the publisher ended first"
            );
            assert!(
                Instant::now() < deadline,
                "{what}: not within {DEADLINE:?} ({} acknowledged)",
                self.acks().len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for `n` more acknowledgements than there are now.
    pub async fn wait_more(&self, n: usize) {
        let target = self.acks().len() + n;
        self.wait_for(&format!("{n} more acknowledgements"), |acks| {
            acks.len() >= target
        })
        .await;
    }

    /// Stops after the publish in flight (re-raising a panic of the publishing task).
    pub async fn stop(self) -> Vec<Ack> {
        let _ = self.stop.send(true);
        match tokio::time::timeout(DEADLINE, self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Ok(Err(e)) => panic!("publisher: {e}"),
            Err(_) => panic!("publisher did not stop within {DEADLINE:?}"),
        }
        self.acks.lock().unwrap().clone()
    }
}

struct Job {
    name: String,
    admins: Vec<SocketAddr>,
    topic: String,
    max: u64,
}

async fn publish_steadily(
    job: Job,
    acks: Arc<Mutex<Vec<Ack>>>,
    refusals: Arc<AtomicU32>,
    stop: watch::Receiver<bool>,
) {
    let Job {
        name,
        admins,
        topic,
        max,
    } = job;
    let started = Instant::now();
    for n in 0..max {
        if *stop.borrow() {
            return;
        }
        let id = format!("{name}-{n}");
        let data = json!({"by": name, "n": n});
        let body = json!({"topic": topic, "data": data, "id": id}).to_string();
        let deadline = Instant::now() + DEADLINE;
        let mut refused = 0;
        loop {
            let admin = admins[(n as usize + refused as usize) % admins.len()];
            let (status, reply) = http(admin, "POST", "/api/publish", Some(&body), None).await;
            if status == 200 {
                let v: Value = serde_json::from_str(&reply).expect("publish reply");
                acks.lock().unwrap().push(Ack {
                    id,
                    seq: v["seq"].as_u64().expect("seq"),
                    epoch: v["epoch"].as_str().expect("epoch").to_owned(),
                    duplicate: v["duplicate"] == true,
                    data,
                    refused,
                    at: started.elapsed(),
                });
                break;
            }
            assert_eq!(status, 503, "publish {id}: {reply}");
            refused += 1;
            refusals.fetch_add(1, Ordering::Relaxed);
            assert!(
                Instant::now() < deadline,
                "publish {id} still refused after {DEADLINE:?}: {reply}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Steady, not flat out: the faults land between and during publishes.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Opens a session on `pod`, then resumes it on a new connection claiming the client last had
/// `position` (`{seq, epoch}`) of `topic`; returns the resumed `welcome`.
pub async fn resume_at(pod: &TestGateway, topic: &str, position: Value) -> Value {
    let (mut first, welcome) = pod.hello().await;
    first.ws.close(None).await.expect("close");
    drop(first);
    let mut client = pod.client().await;
    client
        .send(json!({"type": "hello", "resume": welcome["resume"],
                     "positions": {topic: position}}))
        .await;
    let resumed = client.expect("welcome").await;
    assert_eq!(resumed["resumed"], true, "{resumed}");
    resumed
}

/// The one epoch of `acks`, asserting they all share it.
pub fn epoch_of(acks: &[Ack]) -> String {
    let epoch = acks.first().expect("acknowledgements").epoch.clone();
    assert!(
        acks.iter().all(|a| a.epoch == epoch),
        "more than one epoch in {acks:?}"
    );
    epoch
}
