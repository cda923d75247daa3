//! The fleet as one pod sees it: heartbeats, the load view, control messages and rebalancing.
//!
//! Every pod publishes a [`Heartbeat`] each `--heartbeat-interval` on the backplane and keeps
//! the latest one of every pod; an entry missing three beats is dropped. The view feeds
//! `/admin/cluster`, `/scaler` and rebalancing: a pod above the fleet mean by more than
//! `--rebalance-tolerance` closes its excess with 1012 at `--rebalance-rate` per second, with
//! jitter, so after a scale-out the new pods fill up without a reconnect storm.
//!
//! Pods also address each other on their control subject (`session_taken_over` when a session
//! resumes on another pod while its old socket is still open).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backplane::{Backplane, Subject};
use bytes::Bytes;
use futures_util::StreamExt;
use protocol::{CloseAdvice, CloseCode, SessionId};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::Shared;

/// What a pod says about itself every heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub pod: String,
    /// The public address the pod listens on.
    pub addr: String,
    pub connections: u64,
    pub capacity: u64,
    pub draining: bool,
}

/// Messages on a pod's control subject.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ControlMessage {
    /// Close the connection holding `session` if it holds a generation older than
    /// `generation`: the session was claimed again on another pod.
    Takeover { session: SessionId, generation: u64 },
}

/// The latest heartbeat of every live pod.
#[derive(Debug, Default)]
pub struct ClusterView {
    pods: Mutex<HashMap<String, (Heartbeat, Instant)>>,
}

/// One pod in the fleet view, as the admin endpoints report it.
#[derive(Debug, Clone, Serialize)]
pub struct PodView {
    #[serde(flatten)]
    pub beat: Heartbeat,
    /// Share of the fleet's connections, in percent.
    pub share: f64,
    pub heartbeat_age_ms: u64,
}

impl ClusterView {
    fn record(&self, beat: Heartbeat) {
        self.pods
            .lock()
            .expect("cluster view lock")
            .insert(beat.pod.clone(), (beat, Instant::now()));
    }

    /// Live pods, sorted by name, entries older than `max_age` dropped.
    pub fn pods(&self, max_age: Duration) -> Vec<PodView> {
        let now = Instant::now();
        let mut pods = self.pods.lock().expect("cluster view lock");
        pods.retain(|_, (_, at)| now.duration_since(*at) <= max_age);
        let total: u64 = pods.values().map(|(b, _)| b.connections).sum();
        let mut out: Vec<PodView> = pods
            .values()
            .map(|(beat, at)| PodView {
                share: if total == 0 {
                    0.0
                } else {
                    beat.connections as f64 * 100.0 / total as f64
                },
                heartbeat_age_ms: now.duration_since(*at).as_millis() as u64,
                beat: beat.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.beat.pod.cmp(&b.beat.pod));
        out
    }
}

/// This pod's heartbeat, now.
pub fn heartbeat(shared: &Shared) -> Heartbeat {
    Heartbeat {
        pod: shared.pod.clone(),
        addr: shared
            .config
            .advertise_addr
            .clone()
            .unwrap_or_else(|| shared.public_addr.to_string()),
        connections: shared.connections.len() as u64,
        capacity: shared.config.max_connections as u64,
        draining: shared.drain.is_draining(),
    }
}

/// How long a pod stays in the view without a heartbeat: three missed beats.
pub fn max_age(shared: &Shared) -> Duration {
    shared.config.heartbeat_interval * 3
}

/// Publishes heartbeats and records everyone's, until shutdown.
pub async fn run_heartbeats(shared: Arc<Shared>) {
    let mut beats = loop {
        match shared.backplane.subscribe(&Subject::Heartbeat).await {
            Ok(sub) => break sub,
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to heartbeats; retrying");
                tokio::select! {
                    _ = shared.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let mut tick = tokio::time::interval(shared.config.heartbeat_interval);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {
                let beat = heartbeat(&shared);
                // Our own view must not depend on the backplane echoing our beat back.
                shared.cluster.record(beat.clone());
                let payload = Bytes::from(serde_json::to_vec(&beat).expect("heartbeat serializes"));
                if let Err(e) = shared.backplane.publish(&Subject::Heartbeat, payload).await {
                    tracing::debug!(error = %e, "heartbeat not published");
                }
            }
            Some(bytes) = beats.next() => match serde_json::from_slice::<Heartbeat>(&bytes) {
                Ok(beat) => shared.cluster.record(beat),
                Err(e) => tracing::warn!(error = %e, "malformed heartbeat"),
            },
        }
    }
}

/// Handles this pod's control subject until shutdown.
pub async fn run_control(shared: Arc<Shared>, ready: Option<backplane::Subscription>) {
    let subject = Subject::Control(shared.pod.clone());
    let mut sub = if let Some(sub) = ready {
        sub
    } else {
        loop {
            match shared.backplane.subscribe(&subject).await {
                Ok(sub) => break sub,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot subscribe to control subject; retrying");
                    tokio::select! {
                        _ = shared.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    };
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            msg = sub.next() => {
                let Some(bytes) = msg else { return };
                match serde_json::from_slice::<ControlMessage>(&bytes) {
                    Ok(ControlMessage::Takeover { session, generation }) => {
                        shared.connections.take_over_older(&session, generation);
                    }
                    Err(e) => tracing::warn!(error = %e, "malformed control message"),
                }
            }
        }
    }
}

/// Asks `pod` to close its connection of `session` if that one holds a generation older than
/// `generation`.
pub async fn send_takeover(shared: &Shared, pod: &str, session: &SessionId, generation: u64) {
    let msg = ControlMessage::Takeover {
        session: session.clone(),
        generation,
    };
    let payload = Bytes::from(serde_json::to_vec(&msg).expect("control message serializes"));
    if let Err(e) = shared
        .backplane
        .publish(&Subject::Control(pod.to_owned()), payload)
        .await
    {
        tracing::warn!(%pod, error = %e, "takeover not sent");
    }
}

/// How many connections this pod should shed now: its excess over the fleet mean (among pods
/// not draining) when above `mean × (1 + tolerance)`, else 0.
pub fn excess(pods: &[PodView], me: &str, tolerance: f64) -> u64 {
    let live: Vec<&PodView> = pods.iter().filter(|p| !p.beat.draining).collect();
    let Some(mine) = live.iter().find(|p| p.beat.pod == me) else {
        return 0;
    };
    if live.len() < 2 {
        return 0;
    }
    let total: u64 = live.iter().map(|p| p.beat.connections).sum();
    let mean = total as f64 / live.len() as f64;
    let have = mine.beat.connections as f64;
    // Shed when this pod is too far above the mean, or when another pod is too far below it
    // (a new pod after a scale-out): stopping at mean × (1 + tolerance) would leave the new pod
    // short for good. Below two connections of excess, shedding just moves the imbalance.
    let above = have > mean * (1.0 + tolerance);
    let laggard = live
        .iter()
        .any(|p| (p.beat.connections as f64) < mean * (1.0 - tolerance));
    if !(above || laggard) || have - mean < 2.0 {
        return 0;
    }
    (have - mean).floor() as u64
}

/// Sheds this pod's excess connections with 1012, paced, until shutdown.
pub async fn run_rebalancer(shared: Arc<Shared>) {
    let c = &shared.config;
    if c.rebalance_rate == 0 {
        return;
    }
    let pause = Duration::from_secs_f64(1.0 / f64::from(c.rebalance_rate));
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(c.rebalance_interval) => {}
        }
        if shared.drain.is_draining() {
            continue;
        }
        let pods = shared.cluster.pods(max_age(&shared));
        // While a pod drains its clients are moving through the fleet: counts are in flux and
        // shedding now would only add reconnects. Wait until it is empty.
        if pods
            .iter()
            .any(|p| p.beat.draining && p.beat.connections > 0)
        {
            continue;
        }
        // Every count, ours included, comes from the same round of heartbeats: mixing our live
        // count with the others' older ones would shed while the fleet is still filling up.
        let mut shed = excess(&pods, &shared.pod, c.rebalance_tolerance);
        // At most one interval's budget per round: the view is refreshed between rounds.
        let budget =
            (c.rebalance_interval.as_secs_f64() * f64::from(c.rebalance_rate)).ceil() as u64;
        shed = shed.min(budget.max(1));
        if shed == 0 {
            continue;
        }
        tracing::info!(
            shed,
            "rebalancing: closing connections above the fleet mean with 1012"
        );
        for control in shared
            .connections
            .open_controls()
            .into_iter()
            .take(shed as usize)
        {
            if shared.drain.is_draining() || shared.shutdown.is_cancelled() {
                break;
            }
            let after_ms = rand::rng().random_range(0..1_000);
            control.request_close(
                CloseCode::ServiceRestart,
                CloseAdvice::reconnect(Some(after_ms)),
            );
            shared.metrics.drain.rebalance_closes.inc();
            let jitter = rand::rng().random_range(0.5..1.5);
            tokio::time::sleep(pause.mul_f64(jitter)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, connections: u64, draining: bool) -> PodView {
        PodView {
            beat: Heartbeat {
                pod: name.into(),
                addr: String::new(),
                connections,
                capacity: 1000,
                draining,
            },
            share: 0.0,
            heartbeat_age_ms: 0,
        }
    }

    #[test]
    fn excess_over_the_mean_beyond_tolerance() {
        let fleet = [
            pod("a", 150, false),
            pod("b", 150, false),
            pod("c", 0, false),
        ];
        assert_eq!(excess(&fleet, "a", 0.1), 50);
        assert_eq!(excess(&fleet, "c", 0.1), 0);
        let even = [
            pod("a", 105, false),
            pod("b", 100, false),
            pod("c", 95, false),
        ];
        assert_eq!(excess(&even, "a", 0.1), 0);
        // Within tolerance of the mean itself, but the new pod is far below: keep shedding.
        let stuck = [
            pod("a", 1_061, false),
            pod("b", 1_100, false),
            pod("c", 840, false),
        ];
        assert_eq!(excess(&stuck, "b", 0.1), 99);
        assert_eq!(excess(&stuck, "a", 0.1), 60);
        assert_eq!(excess(&stuck, "c", 0.1), 0);
        // A draining pod is not a target: its clients leave anyway.
        let draining = [
            pod("a", 100, false),
            pod("b", 100, false),
            pod("c", 0, true),
        ];
        assert_eq!(excess(&draining, "a", 0.1), 0);
        assert_eq!(excess(&[pod("a", 100, false)], "a", 0.1), 0);
    }
}
