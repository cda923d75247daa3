//! What the scenarios share: the common flags, starting sessions at a bounded rate, starting
//! publishers, and finishing a run (tops, settle, totals, per-pod distribution).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::net::{self, Net};
use crate::publisher::{self, PublisherReport};
use crate::report;
use crate::run::{Balancer, Mode, Phase, Run, expected_for};
use crate::session::{Session, SessionReport};
use crate::tracker::Totals;

/// No scenario may run longer than this, whatever `--max-duration` says.
pub const HARD_MAX_DURATION: Duration = Duration::from_secs(300);
/// No scenario opens more client sessions than this in one process.
pub const MAX_CLIENTS_PER_PROCESS: usize = 18_000;

/// Flags every scenario takes.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Target WebSocket URL (loopback only), e.g. `ws://127.0.0.1:8080/ws`; repeat for a fleet
    /// (clients are spread round-robin) or give an HAProxy address.
    #[arg(long = "url", required = true)]
    pub urls: Vec<String>,
    /// Which server the URLs are.
    #[arg(long, value_enum, default_value = "gateway")]
    pub target: Mode,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Source addresses 127.0.0.1..=127.0.0.N that client sockets are spread over.
    #[arg(long, default_value_t = 16)]
    pub sources: u32,
    /// Hard limit of the whole scenario, in seconds (at most 300).
    #[arg(long, default_value_t = 240)]
    pub max_duration: u64,
    /// New sessions opened per second at most.
    #[arg(long, default_value_t = 2_000.0)]
    pub connect_rate: f64,
    /// Handshakes in flight at most.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// How long subscribers may take to receive everything once publishing stops (seconds).
    #[arg(long, default_value_t = 15)]
    pub settle: u64,
    /// Bearer token of the admin endpoints, if they require one.
    #[arg(long, env = "GATEWAY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Fresh sessions name their topics in `hello.subscribe` (one round trip: `welcome`, then a
    /// `subscribed` per topic) instead of sending a `subscribe` for each after `welcome`.
    #[arg(long)]
    pub hello_subscribe: bool,
}

impl Common {
    /// A run over `--url` (first connections) and `again` (reconnects; empty = `--url`).
    pub fn run(&self, again: &[String], least_conn: bool) -> anyhow::Result<Arc<Run>> {
        let initial = net::targets(&self.urls)?;
        let again = if again.is_empty() {
            Vec::new()
        } else {
            net::targets(again)?
        };
        let max = Duration::from_secs(self.max_duration).min(HARD_MAX_DURATION);
        Ok(Run::new(
            self.target,
            Net::new(self.sources),
            Balancer::new(&initial, &again, least_conn),
            max,
            self.hello_subscribe,
        ))
    }
}

/// Topic names unique to this run, so history left in Redis by an earlier run is not counted.
pub fn topic_names(n: usize) -> Vec<String> {
    let run: u32 = rand::random::<u32>() % 1_000_000;
    (0..n.max(1)).map(|i| format!("lt{run}.t{i}")).collect()
}

/// Sessions started by [`connect_sessions`].
#[derive(Debug)]
pub struct Started {
    pub handles: Vec<JoinHandle<SessionReport>>,
    pub ready: u64,
    pub failed: u64,
    /// From the first attempt to the last session ready.
    pub elapsed: Duration,
    pub first_error: Option<String>,
}

impl Started {
    /// Fails the scenario when not a single session could connect (nothing to measure).
    pub fn require_any(self) -> anyhow::Result<Self> {
        anyhow::ensure!(
            self.ready > 0,
            "no client could connect: {}",
            self.first_error.as_deref().unwrap_or("no error reported")
        );
        Ok(self)
    }
}

/// Opens `n` sessions (session `i` subscribes to `topics[i % len]`), at most `rate` per second
/// and `concurrency` handshakes at a time, and waits until each is ready or has failed.
pub async fn connect_sessions(
    run: &Arc<Run>,
    common: &Common,
    n: usize,
    topics: &[String],
) -> anyhow::Result<Started> {
    anyhow::ensure!(
        n <= MAX_CLIENTS_PER_PROCESS,
        "{n} clients exceed {MAX_CLIENTS_PER_PROCESS} per process (20,000 open files); use workers"
    );
    let bar = report::progress(n as u64, "sessions ready");
    let sem = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
    let started = Instant::now();
    let pause = Duration::from_secs_f64(1.0 / common.connect_rate.max(1.0));
    let mut handles = Vec::with_capacity(n);
    let mut readies = Vec::with_capacity(n);
    for i in 0..n {
        if run.is_stopping() {
            break;
        }
        tokio::time::sleep_until(started + pause * i as u32).await;
        let permit = sem.clone().acquire_owned().await?;
        let (tx, rx) = oneshot::channel();
        let session = Session::new(run.clone(), vec![topics[i % topics.len()].clone()]);
        handles.push(tokio::spawn(session.run(tx)));
        let bar = bar.clone();
        readies.push(tokio::spawn(async move {
            let r = rx.await.unwrap_or_else(|_| Err("session ended".into()));
            drop(permit);
            bar.inc(1);
            r
        }));
    }
    let (mut ready, mut failed, mut first_error) = (0, 0, None);
    for r in readies {
        match r.await? {
            Ok(()) => ready += 1,
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    bar.finish_and_clear();
    Ok(Started {
        handles,
        ready,
        failed,
        elapsed: started.elapsed(),
        first_error,
    })
}

/// Publishers `0..count`, splitting `rate` evenly; each publishes over every topic.
pub fn start_publishers(
    run: &Arc<Run>,
    count: usize,
    topics: &[String],
    payload_bytes: usize,
    rate: f64,
) -> (watch::Sender<Option<f64>>, Vec<JoinHandle<PublisherReport>>) {
    let count = count.max(1);
    let (tx, rx) = watch::channel(Some(rate / count as f64));
    let handles = (0..count)
        .map(|id| {
            tokio::spawn(publisher::publish(
                run.clone(),
                id as u32,
                topics.to_vec(),
                payload_bytes,
                rx.clone(),
            ))
        })
        .collect();
    (tx, handles)
}

/// Stops the publishers and collects their reports, in publisher order.
pub async fn stop_publishers(
    tx: watch::Sender<Option<f64>>,
    handles: Vec<JoinHandle<PublisherReport>>,
) -> Vec<PublisherReport> {
    tx.send_replace(None);
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap_or_default());
    }
    out
}

/// The outcome of a run's subscribers.
#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    pub totals: Totals,
    pub tops: Vec<(String, u64)>,
    /// Subscribers per pod (from `welcome`), at first connection and at the end.
    pub pods_first: BTreeMap<String, u64>,
    pub pods_last: BTreeMap<String, u64>,
    pub failed_sessions: u64,
    pub first_failure: Option<String>,
}

/// Learns every stream's top, lets the subscribers catch up (bounded by `--settle`), stops
/// them and adds up their bookkeeping.
pub async fn finish(
    run: &Arc<Run>,
    common: &Common,
    topics: &[String],
    publishers: &[PublisherReport],
    handles: Vec<JoinHandle<SessionReport>>,
) -> anyhow::Result<Outcome> {
    let tops = match run.mode {
        Mode::Baseline => publisher::baseline_tops(publishers),
        Mode::Gateway => {
            let mut tops = publisher::gateway_tops(run, topics).await?;
            // An ack can only be at or below the top; a lower top means the read was stale.
            for (topic, top) in &mut tops {
                for p in publishers {
                    *top = (*top).max(p.max_seq.get(topic).copied().unwrap_or(0));
                }
            }
            tops
        }
    };
    let settle = Instant::now() + Duration::from_secs(common.settle);
    run.set_phase(Phase::Finish(
        Arc::new(tops.clone()),
        settle.min(run.deadline),
    ));
    let mut out = Outcome {
        tops,
        ..Outcome::default()
    };
    for h in handles {
        let report = h.await?;
        let expected = expected_for(run.mode, &report.topics, &out.tops);
        out.totals.add(&report.tracker.totals(&expected));
        if !report.first_pod.is_empty() {
            *out.pods_first.entry(report.first_pod.clone()).or_default() += 1;
            *out.pods_last.entry(report.pod.clone()).or_default() += 1;
        }
        if let Some(e) = report.failed {
            out.failed_sessions += 1;
            out.first_failure.get_or_insert(e);
        }
    }
    run.set_phase(Phase::Stop);
    Ok(out)
}

/// Prints the delivery accounting lines every publishing scenario shows.
pub fn print_outcome(o: &Outcome) {
    let t = &o.totals;
    println!(
        "  deliveries: expected {}, delivered {}, lost {}, duplicates {}, order violations {}",
        t.expected, t.delivered, t.lost, t.duplicates, t.order_violations
    );
    println!("  subscribers per pod: {:?}", o.pods_first);
    if o.failed_sessions > 0 {
        println!(
            "  failed sessions: {} (first: {})",
            o.failed_sessions,
            o.first_failure.as_deref().unwrap_or("?")
        );
    }
}
