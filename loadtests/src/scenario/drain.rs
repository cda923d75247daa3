//! `drain`: subscribers under continuous publishing, then `POST /admin/drain` on one pod.
//! Clients closed with 1001 reconnect (to `--reconnect-url`, e.g. the other pods or an HAProxy
//! address), resume with their token and positions, and carry on; the report says how many
//! 1001s arrived, how long reconnects took, the peak reconnect rate, and whether anything was
//! lost or duplicated.

use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Args;
use serde_json::json;
use tokio::time::Instant;

use super::common::{self, Common};
use crate::admin::Admin;
use crate::report::{self, r3};

#[derive(Debug, Clone, Args)]
pub struct DrainArgs {
    #[command(flatten)]
    pub common: Common,
    /// Where clients reconnect to (repeat; default: --url). A draining pod answers 503, and
    /// the client tries another.
    #[arg(long = "reconnect-url")]
    pub reconnect_urls: Vec<String>,
    /// Admin URL of the pod to drain, e.g. `http://127.0.0.1:9090`.
    #[arg(long)]
    pub admin: String,
    #[arg(long, default_value_t = 1_000)]
    pub clients: usize,
    #[arg(long, default_value_t = 10)]
    pub topics: usize,
    #[arg(long, default_value_t = 2)]
    pub publishers: usize,
    /// Messages published per second (all publishers); publishers use --reconnect-url.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// Seconds of publishing before the drain.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Seconds of publishing after every drained client is back.
    #[arg(long, default_value_t = 2)]
    pub tail: u64,
    /// Longest wait for the drain and the reconnects, in seconds.
    #[arg(long, default_value_t = 90)]
    pub drain_timeout: u64,
}

pub async fn run(args: DrainArgs) -> anyhow::Result<serde_json::Value> {
    let c = &args.common;
    let admin = Admin::new(&args.admin, c.admin_token.clone())?;
    let run = c.run(&args.reconnect_urls, false)?;
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
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;

    let drain_at = run.elapsed();
    let t0 = Instant::now();
    let first = admin.drain().await?;
    let to_drain = first.connections;
    let bar = report::progress(to_drain, &format!("draining {}", first.pod));
    let deadline = t0 + Duration::from_secs(args.drain_timeout);
    let mut drained_after = None;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let status = admin.drain_status().await.ok();
        let (goaways, back) = goaways_and_back(&run);
        bar.set_position(back);
        bar.set_message(format!("1001s {goaways}, resumed {back}"));
        let empty = status.as_ref().is_none_or(|s| s.connections == 0);
        if empty && drained_after.is_none() {
            drained_after = Some(t0.elapsed());
        }
        if (empty && back >= goaways) || Instant::now() >= deadline || run.is_stopping() {
            break;
        }
    }
    bar.finish_and_clear();
    tokio::time::sleep(Duration::from_secs(args.tail)).await;
    let reports = common::stop_publishers(rate_tx, pubs).await;
    let outcome = common::finish(&run, c, &topics, &reports, started.handles).await?;

    let events: Vec<_> = run
        .events
        .lock()
        .expect("events lock")
        .iter()
        .filter(|e| e.code == 1001)
        .cloned()
        .collect();
    let goaways = events.len() as u64;
    let resumed = events.iter().filter(|e| e.welcomed_at.is_some()).count() as u64;
    let rel = |d: Duration| d.saturating_sub(drain_at).as_secs_f64();
    let first_close = events.iter().map(|e| e.closed_at).min();
    let last_close = events.iter().map(|e| e.closed_at).max();
    let last_back = events.iter().filter_map(|e| e.welcomed_at).max();
    let welcomes: Vec<Duration> = events.iter().filter_map(|e| e.welcomed_at).collect();
    let peak = report::peak_rate_per_s(&welcomes);
    let window = match (first_close, last_close) {
        (Some(a), Some(b)) => b.saturating_sub(a).as_secs_f64(),
        _ => 0.0,
    };
    // The target: everyone resumed within the drain window (as observed: first to last 1001,
    // measured from the drain request) plus 5 s.
    let all_back_s = last_back.map(rel);
    let within =
        all_back_s.is_some_and(|b| b <= last_close.map_or(0.0, rel) + 5.0) && resumed == goaways;
    let lat = run.reconnect.summary();
    let pubs_sent: u64 = reports.iter().map(|r| r.sent).sum();
    let unrecovered = run.counters.unrecovered.load(Ordering::Relaxed);
    println!(
        "drain of {} ({} connections at the request): {goaways} clients got 1001, {resumed} resumed",
        first.pod, to_drain
    );
    println!(
        "  1001s spread over {window:.2} s; last client back {:.2} s after the request (target: within the window + 5 s: {})",
        all_back_s.unwrap_or(f64::NAN),
        if within { "met" } else { "NOT met" }
    );
    println!("  reconnect time (1001 to welcome, after_ms included): {lat}");
    println!(
        "  peak reconnect rate {peak:.0}/s; refused upgrades {}; unrecovered topics {unrecovered}",
        run.counters.refused.load(Ordering::Relaxed)
    );
    println!("  published {pubs_sent} messages during the run");
    common::print_outcome(&outcome);
    Ok(json!({
        "scenario": "drain",
        "pod": first.pod,
        "clients": started.ready,
        "connections_at_request": to_drain,
        "goaways_1001": goaways,
        "resumed": resumed,
        "drain_window_observed_s": r3(window),
        "pod_empty_after_s": drained_after.map(|d| r3(d.as_secs_f64())),
        "all_resumed_after_s": all_back_s.map(r3),
        "resumed_within_window_plus_5s": within,
        "reconnect": lat,
        "peak_reconnects_per_s": peak,
        "refused_upgrades": run.counters.refused.load(Ordering::Relaxed),
        "unrecovered_topics": unrecovered,
        "published": pubs_sent,
        "totals": outcome.totals,
        "pods_first": outcome.pods_first,
        "pods_last": outcome.pods_last,
        "failed_sessions": outcome.failed_sessions,
        "closes": *run.closes.lock().expect("closes lock"),
    }))
}

/// 1001s received so far, and how many of those clients have their `welcome` again.
fn goaways_and_back(run: &crate::run::Run) -> (u64, u64) {
    let events = run.events.lock().expect("events lock");
    let goaways = run
        .closes
        .lock()
        .expect("closes lock")
        .get(&1001)
        .copied()
        .unwrap_or(0);
    let back = events
        .iter()
        .filter(|e| e.code == 1001 && e.welcomed_at.is_some())
        .count() as u64;
    (goaways, back)
}
