//! `storm`: N sessions connect, then all drop their sockets at the same instant and reconnect
//! at once, resuming (a pod crash or a network blip as the fleet sees it). Reports the accept
//! rate and the time from the storm to each `welcome`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Args;
use serde_json::json;
use tokio::time::Instant;

use super::common::{self, Common};
use crate::report::{self, r3};
use crate::run::Phase;

#[derive(Debug, Clone, Args)]
pub struct StormArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 1_000)]
    pub clients: usize,
    #[arg(long, default_value_t = 10)]
    pub topics: usize,
    /// Longest wait for everyone to be back, in seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

pub async fn run(args: StormArgs) -> anyhow::Result<serde_json::Value> {
    let c = &args.common;
    let run = c.run(&[], false)?;
    let topics = common::topic_names(args.topics);
    let started = common::connect_sessions(&run, c, args.clients, &topics)
        .await?
        .require_any()?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let storm = Instant::now();
    let storm_at = run.elapsed();
    *run.storm_at.lock().expect("storm lock") = Some(storm);
    run.set_phase(Phase::Storm(1));
    let bar = report::progress(started.ready, "reconnecting");
    let deadline = storm + Duration::from_secs(args.timeout);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let back = run.counters.reconnects.load(Ordering::Relaxed);
        bar.set_position(back);
        if back >= started.ready || Instant::now() >= deadline || run.is_stopping() {
            break;
        }
    }
    bar.finish_and_clear();
    let events: Vec<_> = run
        .events
        .lock()
        .expect("events lock")
        .iter()
        .filter(|e| e.code == 0)
        .cloned()
        .collect();
    let back: Vec<Duration> = events.iter().filter_map(|e| e.welcomed_at).collect();
    let accepted = back.len() as u64;
    let last = back
        .iter()
        .max()
        .map_or(0.0, |d| d.saturating_sub(storm_at).as_secs_f64());
    let rate = accepted as f64 / last.max(1e-9);
    let peak = report::peak_rate_per_s(&back);
    let lat = run.reconnect.summary();
    let outcome = common::finish(&run, c, &topics, &[], started.handles).await?;
    println!(
        "storm: {} sessions dropped at once; {accepted} back in {last:.2} s: {rate:.0} accepts/s (peak {peak:.0}/s)",
        started.ready
    );
    println!("  time to welcome: {lat}");
    println!(
        "  refused upgrades {}, connect failures {}, unrecovered topics {}",
        run.counters.refused.load(Ordering::Relaxed),
        run.counters.connect_failures.load(Ordering::Relaxed),
        run.counters.unrecovered.load(Ordering::Relaxed)
    );
    common::print_outcome(&outcome);
    Ok(json!({
        "scenario": "storm",
        "target": c.target,
        "clients": started.ready,
        "accepted": accepted,
        "all_back_s": r3(last),
        "accepts_per_s": r3(rate),
        "peak_accepts_per_s": peak,
        "time_to_welcome": lat,
        "refused_upgrades": run.counters.refused.load(Ordering::Relaxed),
        "connect_failures": run.counters.connect_failures.load(Ordering::Relaxed),
        "unrecovered_topics": run.counters.unrecovered.load(Ordering::Relaxed),
        "totals": outcome.totals,
        "failed_sessions": outcome.failed_sessions,
    }))
}
