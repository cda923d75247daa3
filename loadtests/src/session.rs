//! One subscribing client: connect, `hello`, subscribe, record every delivery, and on a close
//! that invites it (1001 drain, 1012 rebalance, 1013 overload, or a dropped socket) reconnect
//! and resume like the SDK does: resume token plus `positions`, honouring `after_ms`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::{Value, json};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_tungstenite::tungstenite::Message;

use crate::net::{ConnectError, Ws};
use crate::payload::{self, Delivered};
use crate::run::{Mode, Phase, Pool, Reconnect, Run, expected_for};
use crate::tracker::Tracker;

/// How long a client waits for `welcome` or `subscribed`.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Latencies buffered locally before they go to the shared histogram.
const LATENCY_BATCH: usize = 64;

/// What one session saw, returned when it ends.
#[derive(Debug, Default)]
pub struct SessionReport {
    pub topics: Vec<String>,
    pub tracker: Tracker,
    /// The pod of the first `welcome`, and of the last.
    pub first_pod: String,
    pub pod: String,
    /// Why the session gave up, if it did.
    pub failed: Option<String>,
}

/// A subscriber: call [`Session::run`].
#[derive(Debug)]
pub struct Session {
    run: Arc<Run>,
    report: SessionReport,
    epochs: HashMap<String, String>,
    resume: Option<String>,
    /// The balancer target of the current connection.
    target: Option<usize>,
    latencies: Vec<u64>,
    last_flush: Instant,
    delivered: u64,
}

/// Why a connection ended.
enum Ended {
    /// Close frame with this code and `after_ms` advice, or 1006 for a drop.
    Closed(u16, Option<u64>),
    Storm,
    Done,
}

impl Session {
    pub fn new(run: Arc<Run>, topics: Vec<String>) -> Self {
        Self {
            run,
            report: SessionReport {
                topics,
                ..SessionReport::default()
            },
            epochs: HashMap::new(),
            resume: None,
            target: None,
            latencies: Vec::with_capacity(LATENCY_BATCH),
            last_flush: Instant::now(),
            delivered: 0,
        }
    }

    /// Connects, subscribes, tells `ready` (with the handshake time), then receives until the
    /// run finishes; reconnects and resumes whenever the server asks.
    pub async fn run(
        mut self,
        ready: tokio::sync::oneshot::Sender<Result<(), String>>,
    ) -> SessionReport {
        let started = Instant::now();
        let mut ws = match self.open(Pool::Initial).await {
            Ok(ws) => ws,
            Err(e) => {
                let _ = ready.send(Err(e.clone()));
                self.report.failed = Some(e);
                return self.report;
            }
        };
        self.run.handshake.record(started.elapsed());
        self.report.first_pod = self.report.pod.clone();
        self.run
            .counters
            .sessions_ready
            .fetch_add(1, Ordering::Relaxed);
        let _ = ready.send(Ok(()));
        loop {
            let ended = self.receive(&mut ws).await;
            let closed_at = self.run.elapsed();
            let (code, after_ms) = match ended {
                Ended::Done => break,
                Ended::Storm => (0, None),
                Ended::Closed(code, after) => (code, after),
            };
            if let Some(i) = self.target.take() {
                self.run.balancer.release(i);
            }
            drop(ws);
            if code != 0 {
                self.run.count_close(code);
            }
            if !matches!(code, 0 | 1001 | 1006 | 1011 | 1012 | 1013) || self.run.is_stopping() {
                self.report.failed =
                    (!self.run.is_stopping()).then(|| format!("closed with {code}"));
                break;
            }
            let closed = Instant::now();
            if let Some(ms) = after_ms {
                sleep(Duration::from_millis(ms.min(5_000))).await;
            }
            match self.open(Pool::Again).await {
                Ok(new) => {
                    ws = new;
                    self.run.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                    let took = if code == 0 {
                        let storm = *self.run.storm_at.lock().expect("storm lock");
                        storm.map_or(closed.elapsed(), |at| at.elapsed())
                    } else {
                        closed.elapsed()
                    };
                    self.run.reconnect.record(took);
                    self.log(code, closed_at, Some(self.run.elapsed()));
                }
                Err(e) => {
                    self.log(code, closed_at, None);
                    self.report.failed = Some(e);
                    break;
                }
            }
        }
        self.flush_latencies();
        if let Some(i) = self.target.take() {
            self.run.balancer.release(i);
        }
        self.report
    }

    fn log(&self, code: u16, closed_at: Duration, welcomed_at: Option<Duration>) {
        self.run
            .events
            .lock()
            .expect("events lock")
            .push(Reconnect {
                code,
                closed_at,
                welcomed_at,
                resumed: self.resume.is_some(),
            });
    }

    /// Connects to a target of `pool` (retrying refusals elsewhere) and runs the handshake.
    async fn open(&mut self, pool: Pool) -> Result<Ws, String> {
        let mut last_error = String::from("deadline reached before connecting");
        while !self.run.is_stopping() {
            let i = self.run.balancer.pick(pool);
            let target = self.run.balancer.targets[i].clone();
            match self.run.net.connect(&target).await {
                Ok(mut ws) => match self.handshake(&mut ws).await {
                    Ok(()) => {
                        self.target = Some(i);
                        return Ok(ws);
                    }
                    Err(e) => {
                        self.run.balancer.release(i);
                        self.run
                            .counters
                            .connect_failures
                            .fetch_add(1, Ordering::Relaxed);
                        last_error = e;
                    }
                },
                Err(ConnectError::Refused(status)) => {
                    self.run.balancer.release(i);
                    self.run.balancer.avoid(i, Duration::from_millis(500));
                    self.run.counters.refused.fetch_add(1, Ordering::Relaxed);
                    last_error = format!("{} refused the upgrade: HTTP {status}", target.url);
                }
                Err(e) => {
                    self.run.balancer.release(i);
                    self.run
                        .counters
                        .connect_failures
                        .fetch_add(1, Ordering::Relaxed);
                    last_error = format!("{}: {e}", target.url);
                }
            }
            // Full jitter, so refused clients do not come back in lockstep.
            let pause = rand::rng().random_range(20..250);
            sleep(Duration::from_millis(pause)).await;
        }
        Err(last_error)
    }

    async fn send(ws: &mut Ws, v: Value) -> Result<(), String> {
        ws.send(Message::text(v.to_string()))
            .await
            .map_err(|e| format!("send: {e}"))
    }

    /// The next text frame that is not a delivery (deliveries are recorded on the way).
    async fn reply(&mut self, ws: &mut Ws) -> Result<Value, String> {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            let frame = timeout(deadline - Instant::now(), ws.next())
                .await
                .map_err(|_| "no reply in time".to_owned())?;
            match frame {
                Some(Ok(Message::Text(text))) => {
                    if !self.on_text(text.as_str()) {
                        return serde_json::from_str(text.as_str())
                            .map_err(|e| format!("bad frame {text}: {e}"));
                    }
                }
                Some(Ok(Message::Close(c))) => {
                    return Err(format!("closed during handshake: {c:?}"));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("read: {e}")),
                None => return Err("connection ended during handshake".into()),
            }
        }
    }

    /// `hello` (resuming when possible), then subscribe to every topic the server did not
    /// restore.
    async fn handshake(&mut self, ws: &mut Ws) -> Result<(), String> {
        if self.run.mode == Mode::Baseline {
            for topic in self.report.topics.clone() {
                ws.send(Message::text(format!("sub {topic}")))
                    .await
                    .map_err(|e| format!("send: {e}"))?;
                loop {
                    match timeout(REPLY_TIMEOUT, ws.next()).await {
                        Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "ok" => break,
                        Ok(Some(Ok(Message::Text(t)))) => {
                            self.on_text(t.as_str());
                        }
                        Ok(Some(Ok(_))) => {}
                        other => return Err(format!("no subscribe ack: {other:?}")),
                    }
                }
            }
            self.report.pod = "baseline".into();
            return Ok(());
        }
        let mut hello = json!({"type": "hello"});
        if let Some(token) = &self.resume {
            hello["resume"] = json!(token);
            hello["positions"] = self.positions();
        }
        // A fresh session may name its topics in the hello: the gateway answers `welcome` and
        // then one `subscribed` per topic, in order (a resume keeps the two-step path: its
        // topics come back in `welcome.topics`).
        let in_hello = self.run.hello_subscribe && self.resume.is_none();
        if in_hello {
            hello["subscribe"] = json!(self.report.topics);
        }
        Self::send(ws, hello).await?;
        let welcome = self.reply(ws).await?;
        if welcome["type"] != "welcome" {
            return Err(format!("expected welcome, got {welcome}"));
        }
        self.report.pod = welcome["pod"].as_str().unwrap_or_default().to_owned();
        self.resume = welcome["resume"].as_str().map(str::to_owned);
        let mut restored = Vec::new();
        if welcome["resumed"] == true
            && let Some(topics) = welcome["topics"].as_object()
        {
            for (topic, state) in topics {
                if state["recovered"] != true {
                    self.run
                        .counters
                        .unrecovered
                        .fetch_add(1, Ordering::Relaxed);
                }
                if let Some(epoch) = state["epoch"].as_str() {
                    self.epochs.insert(topic.clone(), epoch.to_owned());
                }
                restored.push(topic.clone());
            }
        }
        for topic in self.report.topics.clone() {
            if restored.contains(&topic) {
                continue;
            }
            if !in_hello {
                let mut sub = json!({"type": "subscribe", "topic": topic});
                let since = self.report.tracker.stream(&topic).map(|s| s.last());
                if let (Some(seq), Some(epoch)) = (since, self.epochs.get(&topic)) {
                    sub["since"] = json!({"seq": seq, "epoch": epoch});
                }
                Self::send(ws, sub).await?;
            }
            let reply = self.reply(ws).await?;
            if reply["type"] != "subscribed" || reply["topic"] != topic.as_str() {
                return Err(format!("expected subscribed to {topic}, got {reply}"));
            }
            if reply.get("recovered").is_some() && reply["recovered"] != true {
                self.run
                    .counters
                    .unrecovered
                    .fetch_add(1, Ordering::Relaxed);
            }
            let seq = reply["seq"].as_u64().unwrap_or(0);
            self.report.tracker.open(&topic, seq);
            if let Some(epoch) = reply["epoch"].as_str() {
                self.epochs.insert(topic, epoch.to_owned());
            }
        }
        Ok(())
    }

    /// `{topic: {seq, epoch}}`: what this client really received, for a lossless resume.
    fn positions(&self) -> Value {
        let mut out = serde_json::Map::new();
        for (topic, stream) in self.report.tracker.streams() {
            if let Some(epoch) = self.epochs.get(topic) {
                out.insert(topic.clone(), json!({"seq": stream.last(), "epoch": epoch}));
            }
        }
        Value::Object(out)
    }

    /// Records a delivery; `false` when `text` is not one.
    fn on_text(&mut self, text: &str) -> bool {
        let parsed = match self.run.mode {
            Mode::Gateway => payload::parse_gateway(text),
            Mode::Baseline => payload::parse_baseline(text),
        };
        let Some(d) = parsed else {
            if text.starts_with(r#"{"type":"error""#) {
                self.run
                    .counters
                    .error_frames
                    .fetch_add(1, Ordering::Relaxed);
                return true;
            }
            return false;
        };
        self.record(&d);
        true
    }

    fn record(&mut self, d: &Delivered<'_>) {
        match self.run.mode {
            Mode::Gateway => {
                if let Some(epoch) = d.epoch {
                    self.epochs.insert(d.topic.to_owned(), epoch.to_owned());
                }
                self.report.tracker.record(d.topic, d.seq);
            }
            Mode::Baseline => {
                let key = format!("{}/{}", d.topic, d.publisher);
                self.report.tracker.record_open(&key, d.seq);
            }
        }
        self.delivered += 1;
        if let Some(sent) = d.sent_us {
            self.latencies.push(payload::now_us().saturating_sub(sent));
        }
        if self.latencies.len() >= LATENCY_BATCH
            || self.last_flush.elapsed() >= Duration::from_millis(50)
        {
            self.flush_latencies();
        }
    }

    fn flush_latencies(&mut self) {
        self.run.delivery.record_all(&self.latencies);
        self.latencies.clear();
        self.run
            .counters
            .deliveries
            .fetch_add(self.delivered, Ordering::Relaxed);
        self.delivered = 0;
        self.last_flush = Instant::now();
    }

    fn finished(&self, expected: &[(String, u64)]) -> bool {
        self.report.tracker.complete(expected)
    }

    /// Receives until the connection ends or the run says stop.
    async fn receive(&mut self, ws: &mut Ws) -> Ended {
        let mut phase = self.run.phase.subscribe();
        let mut finish: Option<(Vec<(String, u64)>, Instant)> = None;
        let mut storm_seen = match &*phase.borrow_and_update() {
            Phase::Storm(n) => Some(*n),
            _ => None,
        };
        let mut flush = tokio::time::interval(Duration::from_millis(100));
        loop {
            let current = phase.borrow_and_update().clone();
            match &current {
                Phase::Stop => {
                    let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
                    return Ended::Done;
                }
                Phase::Storm(n) if storm_seen != Some(*n) => return Ended::Storm,
                Phase::Finish(tops, until) if finish.is_none() => {
                    let mine = expected_for(self.run.mode, &self.report.topics, tops);
                    finish = Some((mine, *until));
                }
                _ => {}
            }
            if let Some((expected, until)) = &finish
                && (self.finished(expected) || Instant::now() >= *until)
            {
                let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
                return Ended::Done;
            }
            if let Phase::Storm(n) = current {
                storm_seen = Some(n);
            }
            let until = finish.as_ref().map_or(self.run.deadline, |(_, u)| *u);
            tokio::select! {
                changed = phase.changed() => {
                    if changed.is_err() {
                        return Ended::Done;
                    }
                }
                _ = flush.tick() => self.flush_latencies(),
                _ = sleep_until(until) => {
                    if finish.is_none() {
                        return Ended::Done;
                    }
                }
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        self.on_text(text.as_str());
                    }
                    Some(Ok(Message::Close(close))) => {
                        let (code, after) = close.map_or((1005, None), |c| {
                            let after = serde_json::from_str::<Value>(c.reason.as_str())
                                .ok()
                                .and_then(|v| v["after_ms"].as_u64());
                            (u16::from(c.code), after)
                        });
                        // Send tungstenite's queued close reply before the socket is dropped.
                        let _ = timeout(Duration::from_millis(200), ws.flush()).await;
                        return Ended::Closed(code, after);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return Ended::Closed(1006, None),
                },
            }
        }
    }
}
