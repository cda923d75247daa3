//! What every client of one scenario run shares: the phase, the balancer over targets, the
//! measurements and the event log.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, atomic::AtomicI64};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::net::{Net, Target};
use crate::report::Latency;

/// Which server the clients speak to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The gateway's JSON protocol (hello, subscribe, publish, seq).
    Gateway,
    /// `wsload baseline-server`: `sub <topic>` then broadcast frames, numbered in the payload.
    Baseline,
}

/// What subscribers are asked to do; every session watches it.
#[derive(Debug, Clone)]
pub enum Phase {
    /// Receive and record.
    Run,
    /// Publishing is over: read until every expected stream reaches its top (key, top), or
    /// until the instant, then close.
    Finish(Arc<Vec<(String, u64)>>, Instant),
    /// Drop the socket now and reconnect at once with resume (the `storm` scenario); the
    /// number tells storms apart.
    Storm(u32),
    /// Close and stop now.
    Stop,
}

/// Which targets a connection is picked from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// First connections: round-robin over `--url`.
    Initial,
    /// Reconnects after a close.
    Again,
}

/// Picks targets like a load balancer would, from the connections `wsload` itself holds.
///
/// `least_conn` mimics HAProxy's `balance leastconn`: wsload is the only client, so its own
/// count of live connections per target is exactly what the balancer would see.
#[derive(Debug)]
pub struct Balancer {
    pub targets: Vec<Target>,
    initial: Vec<usize>,
    again: Vec<usize>,
    least_conn: bool,
    next: AtomicU64,
    live: Vec<AtomicI64>,
    avoid: Mutex<Vec<Option<Instant>>>,
}

impl Balancer {
    /// `initial` and `again` are URL lists (the same URL in both is one target).
    pub fn new(initial: &[Target], again: &[Target], least_conn: bool) -> Self {
        let mut targets: Vec<Target> = Vec::new();
        let mut index = |t: &Target| match targets.iter().position(|x| x.addr == t.addr) {
            Some(i) => i,
            None => {
                targets.push(t.clone());
                targets.len() - 1
            }
        };
        let initial: Vec<usize> = initial.iter().map(&mut index).collect();
        let again: Vec<usize> = if again.is_empty() {
            initial.clone()
        } else {
            again.iter().map(&mut index).collect()
        };
        let n = targets.len();
        Self {
            targets,
            initial,
            again,
            least_conn,
            next: AtomicU64::new(0),
            live: (0..n).map(|_| AtomicI64::new(0)).collect(),
            avoid: Mutex::new(vec![None; n]),
        }
    }

    pub fn pick(&self, pool: Pool) -> usize {
        let candidates = match pool {
            Pool::Initial => &self.initial,
            Pool::Again => &self.again,
        };
        let now = Instant::now();
        let avoid = self.avoid.lock().expect("balancer lock");
        let usable: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&i| avoid[i].is_none_or(|until| until <= now))
            .collect();
        let usable = if usable.is_empty() {
            candidates.clone()
        } else {
            usable
        };
        if self.least_conn && pool == Pool::Again {
            let pick = *usable
                .iter()
                .min_by_key(|&&i| self.live[i].load(Ordering::Relaxed))
                .expect("at least one target");
            // Count it now, so concurrent reconnects spread instead of all picking one target.
            self.live[pick].fetch_add(1, Ordering::Relaxed);
            return pick;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed) as usize;
        let pick = usable[n % usable.len()];
        self.live[pick].fetch_add(1, Ordering::Relaxed);
        pick
    }

    /// A connection picked with [`pick`](Self::pick) ended or never opened.
    pub fn release(&self, i: usize) {
        self.live[i].fetch_sub(1, Ordering::Relaxed);
    }

    /// Stops picking target `i` for a while (it refused an upgrade, e.g. 503 while draining).
    pub fn avoid(&self, i: usize, d: Duration) {
        self.avoid.lock().expect("balancer lock")[i] = Some(Instant::now() + d);
    }

    /// Live connections per target URL.
    pub fn distribution(&self) -> BTreeMap<String, i64> {
        self.targets
            .iter()
            .zip(&self.live)
            .map(|(t, n)| (t.url.clone(), n.load(Ordering::Relaxed)))
            .collect()
    }
}

/// Counters every client updates.
#[derive(Debug, Default, Serialize)]
pub struct Counters {
    pub sessions_ready: AtomicU64,
    /// `message` frames received (duplicates included), for progress and rates.
    pub deliveries: AtomicU64,
    pub reconnects: AtomicU64,
    pub connect_failures: AtomicU64,
    /// Upgrades answered with an HTTP status (503 draining or full, 429).
    pub refused: AtomicU64,
    /// Topics a resume or re-subscribe reported `recovered: false` for.
    pub unrecovered: AtomicU64,
    pub error_frames: AtomicU64,
}

/// A close or drop a client saw, and when it was connected again.
#[derive(Debug, Clone, Serialize)]
pub struct Reconnect {
    /// Close code, or 1006 for a connection dropped without a close frame, 0 for a storm.
    pub code: u16,
    pub closed_at: Duration,
    /// When `welcome` arrived on the new connection (`None`: never reconnected).
    pub welcomed_at: Option<Duration>,
    pub resumed: bool,
}

/// Shared state of one scenario run.
#[derive(Debug)]
pub struct Run {
    pub mode: Mode,
    pub net: Net,
    pub balancer: Balancer,
    pub started: Instant,
    /// Nothing runs past this instant, whatever happens.
    pub deadline: Instant,
    pub phase: watch::Sender<Phase>,
    pub stopping: AtomicBool,
    pub counters: Counters,
    /// Publish to delivery.
    pub delivery: Latency,
    /// New connection to `welcome` (and, for `connect`, the first `subscribed`).
    pub handshake: Latency,
    /// Close received to `welcome` on the new connection.
    pub reconnect: Latency,
    pub events: Mutex<Vec<Reconnect>>,
    pub closes: Mutex<BTreeMap<u16, u64>>,
    /// When the current storm started.
    pub storm_at: Mutex<Option<Instant>>,
    /// Fresh sessions subscribe in their `hello` (see `--hello-subscribe`).
    pub hello_subscribe: bool,
}

impl Run {
    pub fn new(
        mode: Mode,
        net: Net,
        balancer: Balancer,
        max_duration: Duration,
        hello_subscribe: bool,
    ) -> Arc<Self> {
        let started = Instant::now();
        let (phase, _) = watch::channel(Phase::Run);
        Arc::new(Self {
            mode,
            net,
            balancer,
            started,
            deadline: started + max_duration,
            phase,
            stopping: AtomicBool::new(false),
            counters: Counters::default(),
            delivery: Latency::new(),
            handshake: Latency::new(),
            reconnect: Latency::new(),
            events: Mutex::new(Vec::new()),
            closes: Mutex::new(BTreeMap::new()),
            storm_at: Mutex::new(None),
            hello_subscribe,
        })
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn set_phase(&self, phase: Phase) {
        if matches!(phase, Phase::Stop) {
            self.stopping.store(true, Ordering::Release);
        }
        self.phase.send_replace(phase);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire) || Instant::now() >= self.deadline
    }

    pub fn count_close(&self, code: u16) {
        *self
            .closes
            .lock()
            .expect("closes lock")
            .entry(code)
            .or_default() += 1;
    }

    pub fn deliveries(&self) -> u64 {
        self.counters.deliveries.load(Ordering::Relaxed)
    }
}

/// The expected (key, top) pairs of a subscriber of `topics`: the topic itself for the gateway,
/// every `topic/publisher` stream for the baseline.
pub fn expected_for(mode: Mode, topics: &[String], tops: &[(String, u64)]) -> Vec<(String, u64)> {
    tops.iter()
        .filter(|(key, _)| match mode {
            Mode::Gateway => topics.iter().any(|t| t == key),
            Mode::Baseline => key
                .split_once('/')
                .is_some_and(|(t, _)| topics.iter().any(|x| x == t)),
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(port: u16) -> Target {
        Target::parse(&format!("ws://127.0.0.1:{port}/ws")).unwrap()
    }

    #[test]
    fn round_robin_then_least_conn() {
        let b = Balancer::new(&[t(1), t(2)], &[t(2), t(3)], true);
        assert_eq!(b.targets.len(), 3);
        let firsts: Vec<usize> = (0..4).map(|_| b.pick(Pool::Initial)).collect();
        assert_eq!(firsts, [0, 1, 0, 1]);
        // Target 1 (port 2) has 2 live connections, target 2 (port 3) none: reconnects go
        // to port 3 until it catches up.
        assert_eq!(b.pick(Pool::Again), 2);
        assert_eq!(b.pick(Pool::Again), 2);
        b.avoid(2, Duration::from_secs(5));
        assert_eq!(b.pick(Pool::Again), 1);
        b.release(0);
        assert_eq!(b.distribution()["ws://127.0.0.1:1/ws"], 1);
    }

    #[test]
    fn expected_streams_per_mode() {
        let tops = vec![("a".to_owned(), 3), ("b".to_owned(), 4)];
        assert_eq!(
            expected_for(Mode::Gateway, &["b".into()], &tops),
            vec![("b".to_owned(), 4)]
        );
        let tops = vec![
            ("a/0".to_owned(), 3),
            ("a/1".to_owned(), 5),
            ("b/0".to_owned(), 1),
        ];
        assert_eq!(expected_for(Mode::Baseline, &["a".into()], &tops).len(), 2);
    }
}
