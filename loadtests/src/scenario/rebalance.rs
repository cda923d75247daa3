//! `rebalance`: clients on a fleet, a new pod joins (its admin URL given); the report says how
//! long until every pod is within ±tolerance of the mean, and whether anything was lost.
//!
//! Clients closed with 1012 reconnect with "least connections" over `--url` plus `--new-url`,
//! counted from the connections `wsload` holds, as HAProxy's `balance leastconn` would.
//! The new pod may be started before or after `wsload`: the clock starts when every client is
//! connected and the new pod is in the fleet view.

use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Args;
use serde_json::json;
use tokio::time::Instant;

use super::common::{self, Common};
use crate::admin::Admin;
use crate::report::{self, r3};

#[derive(Debug, Clone, Args)]
pub struct RebalanceArgs {
    #[command(flatten)]
    pub common: Common,
    /// Public WebSocket URL of the new pod (reconnects may go there).
    #[arg(long)]
    pub new_url: String,
    /// Admin URL of the new pod; its `/admin/cluster` is the fleet view that is watched.
    #[arg(long)]
    pub new_admin: String,
    #[arg(long, default_value_t = 1_000)]
    pub clients: usize,
    #[arg(long, default_value_t = 10)]
    pub topics: usize,
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// Balanced means every live pod within this fraction of the mean.
    #[arg(long, default_value_t = 0.1)]
    pub tolerance: f64,
    /// Longest wait for convergence, in seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Seconds of publishing after convergence.
    #[arg(long, default_value_t = 2)]
    pub tail: u64,
}

pub async fn run(args: RebalanceArgs) -> anyhow::Result<serde_json::Value> {
    let c = &args.common;
    let admin = Admin::new(&args.new_admin, c.admin_token.clone())?;
    let mut again = c.urls.clone();
    again.push(args.new_url.clone());
    let run = c.run(&again, true)?;
    let topics = common::topic_names(args.topics);
    let started = common::connect_sessions(&run, c, args.clients, &topics)
        .await?
        .require_any()?;
    let (rate_tx, pubs) = common::start_publishers(
        &run,
        args.publishers,
        &topics,
        args.payload_bytes,
        args.rate,
    );

    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let pods_expected = c.urls.len() + 1;
    let bar = report::progress(args.timeout, "waiting for the new pod and balance");
    let mut t0: Option<Instant> = None;
    let mut converged_after = None;
    let mut last_view = None;
    while Instant::now() < deadline && !run.is_stopping() {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Ok(view) = admin.cluster().await else {
            continue;
        };
        let live = view.live();
        let total: u64 = live.iter().map(|p| p.connections).sum();
        let new_pod_in = live.iter().any(|p| p.pod == view.pod);
        if t0.is_none() && new_pod_in && live.len() >= pods_expected {
            t0 = Some(Instant::now());
        }
        bar.set_position(t0.map_or(0, |t| t.elapsed().as_secs()));
        bar.set_message(format!(
            "{:?}",
            live.iter().map(|p| p.connections).collect::<Vec<_>>()
        ));
        // Heartbeats lag: only a view that accounts for every client counts as balanced.
        let complete = total >= started.ready;
        let balanced = t0.is_some() && complete && view.balanced(args.tolerance);
        last_view = Some(view);
        if balanced {
            converged_after = t0.map(|t| t.elapsed());
            break;
        }
    }
    bar.finish_and_clear();
    tokio::time::sleep(Duration::from_secs(args.tail)).await;
    let reports = common::stop_publishers(rate_tx, pubs).await;
    let outcome = common::finish(&run, c, &topics, &reports, started.handles).await?;
    let closes_1012 = run
        .closes
        .lock()
        .expect("closes lock")
        .get(&1012)
        .copied()
        .unwrap_or(0);
    let lat = run.reconnect.summary();
    let pods: Vec<_> = last_view.map(|v| v.pods).unwrap_or_default();
    println!(
        "rebalance: {} clients; new pod seen: {}; converged within ±{:.0}%: {}",
        started.ready,
        t0.is_some(),
        args.tolerance * 100.0,
        converged_after.map_or("NO (timeout)".to_owned(), |d| format!(
            "after {:.2} s",
            d.as_secs_f64()
        ))
    );
    println!(
        "  final fleet: {:?}",
        pods.iter()
            .map(|p| (p.pod.as_str(), p.connections))
            .collect::<Vec<_>>()
    );
    println!("  1012 closes {closes_1012}; reconnect time: {lat}");
    common::print_outcome(&outcome);
    Ok(json!({
        "scenario": "rebalance",
        "clients": started.ready,
        "new_pod_seen": t0.is_some(),
        "converged": converged_after.is_some(),
        "convergence_s": converged_after.map(|d| r3(d.as_secs_f64())),
        "tolerance": args.tolerance,
        "final_pods": pods,
        "closes_1012": closes_1012,
        "reconnect": lat,
        "unrecovered_topics": run.counters.unrecovered.load(Ordering::Relaxed),
        "totals": outcome.totals,
        "pods_first": outcome.pods_first,
        "pods_last": outcome.pods_last,
        "failed_sessions": outcome.failed_sessions,
    }))
}
