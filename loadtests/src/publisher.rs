//! Publishers: WebSocket clients that send `publish` frames (or baseline broadcast frames) at a
//! controlled rate, and the final "top" of every topic once publishing has stopped.
//!
//! Sending is paced by a schedule, not a sleep per message: every tick sends whatever is due
//! since the rate was set, fed as one batch and flushed once, so one publisher reaches tens of
//! thousands of messages per second and a slow tick catches up instead of losing rate.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;

use crate::net::Ws;
use crate::payload;
use crate::run::{Mode, Pool, Run};

/// A publisher's pacing tick.
const TICK: Duration = Duration::from_millis(5);
/// Sends this far behind schedule are skipped rather than burst (the server is saturated).
const MAX_BEHIND: Duration = Duration::from_secs(1);

/// What one publisher did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct PublisherReport {
    pub sent: u64,
    pub acked: u64,
    pub errors: u64,
    /// Sends skipped because the publisher fell more than a second behind its schedule.
    pub skipped: u64,
    pub reconnects: u64,
    /// Highest acknowledged `seq` per topic (gateway).
    #[serde(skip)]
    pub max_seq: HashMap<String, u64>,
    /// Messages sent per topic (the baseline's per-publisher counter).
    #[serde(skip)]
    pub counters: HashMap<String, u64>,
}

impl PublisherReport {
    pub fn add(&mut self, other: &PublisherReport) {
        self.sent += other.sent;
        self.acked += other.acked;
        self.errors += other.errors;
        self.skipped += other.skipped;
        self.reconnects += other.reconnects;
    }
}

/// Connects (retrying like a subscriber) and says `hello`.
async fn open(run: &Run) -> anyhow::Result<(Ws, usize)> {
    while !run.is_stopping() {
        let i = run.balancer.pick(Pool::Again);
        match run.net.connect(&run.balancer.targets[i]).await {
            Ok(mut ws) => {
                if run.mode == Mode::Gateway {
                    ws.send(Message::text(r#"{"type":"hello"}"#)).await?;
                    loop {
                        let frame = timeout(Duration::from_secs(10), ws.next()).await?;
                        match frame {
                            Some(Ok(Message::Text(t))) if t.as_str().contains("welcome") => break,
                            Some(Ok(_)) => {}
                            other => anyhow::bail!("publisher handshake failed: {other:?}"),
                        }
                    }
                }
                return Ok((ws, i));
            }
            Err(_) => {
                run.balancer.release(i);
                run.balancer.avoid(i, Duration::from_millis(500));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    anyhow::bail!("publisher could not connect before the deadline")
}

/// Publishes round-robin over `topics` at the rate in `rate` (messages/s; 0 pauses) until
/// `rate` says `None`, then waits briefly for outstanding acks.
pub async fn publish(
    run: Arc<Run>,
    id: u32,
    topics: Vec<String>,
    payload_bytes: usize,
    mut rate: watch::Receiver<Option<f64>>,
) -> PublisherReport {
    let mut report = PublisherReport::default();
    let Ok((mut ws, mut target)) = open(&run).await else {
        return report;
    };
    let mut next_topic = 0usize;
    let mut current = *rate.borrow_and_update();
    let (mut since, mut base) = (Instant::now(), 0u64);
    let mut tick = tokio::time::interval(TICK);
    loop {
        if run.is_stopping() {
            break;
        }
        tokio::select! {
            changed = rate.changed() => {
                if changed.is_err() {
                    break;
                }
                current = *rate.borrow_and_update();
                (since, base) = (Instant::now(), report.sent);
                if current.is_none() {
                    break;
                }
            }
            _ = tick.tick() => {
                let Some(r) = current else { break };
                let mut due = base + (since.elapsed().as_secs_f64() * r) as u64;
                let behind = due.saturating_sub(report.sent);
                let allowed = (MAX_BEHIND.as_secs_f64() * r) as u64;
                if behind > allowed.max(1) {
                    report.skipped += behind - allowed;
                    base += behind - allowed;
                    due -= behind - allowed;
                }
                let mut fed = false;
                while report.sent < due {
                    let topic = &topics[next_topic % topics.len()];
                    next_topic += 1;
                    let n = report.counters.entry(topic.clone()).or_default();
                    *n += 1;
                    let data = payload::make(id, *n, payload_bytes);
                    let text = match run.mode {
                        Mode::Gateway => format!(
                            r#"{{"type":"publish","topic":"{topic}","data":{data},"ref":{}}}"#,
                            report.sent
                        ),
                        Mode::Baseline => payload::baseline_frame(topic, &data),
                    };
                    if ws.feed(Message::text(text)).await.is_err() {
                        break;
                    }
                    report.sent += 1;
                    fed = true;
                }
                if fed && ws.flush().await.is_err() {
                    // The server closed us (drain): continue on another target.
                    run.balancer.release(target);
                    match open(&run).await {
                        Ok((new, i)) => (ws, target, report.reconnects) = (new, i, report.reconnects + 1),
                        Err(_) => break,
                    }
                }
            }
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(t))) => on_reply(&mut report, t.as_str()),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    run.balancer.release(target);
                    match open(&run).await {
                        Ok((new, i)) => (ws, target, report.reconnects) = (new, i, report.reconnects + 1),
                        Err(_) => break,
                    }
                }
            },
        }
    }
    // Acks still in flight: give them a moment, so `acked` is meaningful.
    if run.mode == Mode::Gateway {
        let until = Instant::now() + Duration::from_secs(3);
        while report.acked + report.errors < report.sent {
            match tokio::time::timeout_at(until, ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => on_reply(&mut report, t.as_str()),
                Ok(Some(Ok(_))) => {}
                _ => break,
            }
        }
    } else {
        let _ = ws.flush().await;
    }
    let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
    run.balancer.release(target);
    report
}

fn on_reply(report: &mut PublisherReport, text: &str) {
    if text.starts_with(r#"{"type":"published""#) {
        report.acked += 1;
        if let Ok(v) = serde_json::from_str::<Value>(text)
            && let (Some(topic), Some(seq)) = (v["topic"].as_str(), v["seq"].as_u64())
        {
            let max = report.max_seq.entry(topic.to_owned()).or_default();
            *max = (*max).max(seq);
        }
    } else if text.starts_with(r#"{"type":"error""#) {
        report.errors += 1;
    }
}

/// The latest `seq` of each topic, read by a fresh client (`subscribed.seq`): everything up to
/// it was published, whether or not its publisher saw the ack. Read with the project's own
/// client crate (outside the measured path): it retries the connection and confirms each topic.
pub async fn gateway_tops(run: &Run, topics: &[String]) -> anyhow::Result<Vec<(String, u64)>> {
    let target = run.balancer.pick(Pool::Again);
    let url = run.balancer.targets[target].url.clone();
    let mut config = gateway_client::ClientConfig::new([url]);
    config.backoff.initial = Duration::from_millis(100);
    config.backoff.max = Duration::from_millis(500);
    let (client, mut events) = gateway_client::connect(config);
    // The event stream is bounded: read it, or the client stops reading its socket.
    tokio::spawn(async move { while events.next().await.is_some() {} });
    let mut tops = Vec::new();
    for topic in topics {
        let position = client.subscribe(topic, None).await;
        match position {
            Ok(p) => tops.push((topic.clone(), p.seq)),
            Err(e) => {
                client.close().await;
                run.balancer.release(target);
                anyhow::bail!("reading the top of {topic}: {e}");
            }
        }
    }
    client.close().await;
    run.balancer.release(target);
    Ok(tops)
}

/// The baseline's tops: every publisher's counter per topic (`topic/publisher` keys).
pub fn baseline_tops(reports: &[PublisherReport]) -> Vec<(String, u64)> {
    let mut tops = Vec::new();
    for (id, r) in reports.iter().enumerate() {
        for (topic, n) in &r.counters {
            tops.push((format!("{topic}/{id}"), *n));
        }
    }
    tops
}
