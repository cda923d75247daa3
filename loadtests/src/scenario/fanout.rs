//! `fanout`: S subscribers over T topics, P publishers at a rate for a duration; or, with
//! `--step`, the publish rate raised step by step until p99 passes `--max-p99-ms`.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;

use super::common::{self, Common};
use crate::publisher::PublisherReport;
use crate::report::{self, LatencySummary, r3};
use crate::run::Run;

#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    /// Subscribing sessions.
    #[arg(long, default_value_t = 1_000)]
    pub subscribers: usize,
    /// Topics; subscriber i takes topic i mod T.
    #[arg(long, default_value_t = 1)]
    pub topics: usize,
    /// Publishing connections.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Messages published per second, all publishers together (the first step with --step).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of publishing (per step with --step).
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// Raise the rate by --step-factor each step until p99 exceeds --max-p99-ms, deliveries
    /// fall behind, or --max-rate is passed.
    #[arg(long)]
    pub step: bool,
    #[arg(long, default_value_t = 1.5)]
    pub step_factor: f64,
    #[arg(long, default_value_t = 50.0)]
    pub max_p99_ms: f64,
    #[arg(long, default_value_t = 100_000.0)]
    pub max_rate: f64,
    /// Take the rate from an earlier `fanout --step` report instead: --rate-factor times the
    /// best publish rate it held within its p99 bound (e.g. twice the baseline's capacity).
    #[arg(long)]
    pub rate_from: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 2.0)]
    pub rate_factor: f64,
    /// PID of the server (repeat for a fleet's pods: their CPU is summed): its CPU time while
    /// publishing (and delivering what was published) is read from /proc, and reported per
    /// delivery.
    #[arg(long)]
    pub gateway_pid: Vec<u32>,
    /// PID of a backend (Redis, NATS; repeatable): its CPU time is reported per delivery
    /// beside the servers', not added to it.
    #[arg(long)]
    pub backend_pid: Vec<u32>,
}

/// The summed CPU seconds of `pids` (`None` for none).
fn cpu_of(pids: &[u32]) -> anyhow::Result<Option<f64>> {
    if pids.is_empty() {
        return Ok(None);
    }
    crate::admin::cpu_seconds_of(pids).map(Some)
}

/// The CPU seconds `pids` used since [`cpu_of`] read `before`.
fn cpu_since(pids: &[u32], before: Option<f64>) -> anyhow::Result<Option<f64>> {
    Ok(before
        .zip(cpu_of(pids)?)
        .map(|(before, after)| after - before))
}

/// The best publish rate of a `fanout --step` report within its p99 bound.
pub fn best_rate(report: &serde_json::Value) -> anyhow::Result<f64> {
    let bound = report["max_p99_ms"].as_f64().unwrap_or(f64::INFINITY);
    let best = report["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["latency"]["p99_ms"].as_f64().is_some_and(|p| p <= bound))
        .filter_map(|s| s["publish_rate"].as_f64())
        .fold(0.0, f64::max);
    anyhow::ensure!(best > 0.0, "the report has no step within its p99 bound");
    Ok(best)
}

/// One rate step.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub publish_rate: f64,
    pub deliveries_per_s: f64,
    /// Deliveries the rate asks for per second (rate × subscribers per topic).
    pub offered_per_s: f64,
    pub latency: LatencySummary,
}

/// Runs the scenario, prints a summary, and returns the JSON report.
pub async fn run(mut args: FanoutArgs) -> anyhow::Result<serde_json::Value> {
    if let Some(path) = &args.rate_from {
        let text = std::fs::read_to_string(path)?;
        args.rate = args.rate_factor * best_rate(&serde_json::from_str(&text)?)?;
        println!(
            "rate {:.1} msg/s: {}x the best of {}",
            args.rate,
            args.rate_factor,
            path.display()
        );
    }
    anyhow::ensure!(
        args.rate > 0.0 && args.duration > 0,
        "--rate and --duration must be > 0"
    );
    anyhow::ensure!(args.step_factor > 1.0, "--step-factor must be above 1");
    let c = &args.common;
    let run = c.run(&[], false)?;
    let topics = common::topic_names(args.topics);
    let started = common::connect_sessions(&run, c, args.subscribers, &topics)
        .await?
        .require_any()?;
    // Subscribers per topic, for the offered load.
    let per_topic = started.ready as f64 / topics.len() as f64;
    let (rate_tx, pubs) = common::start_publishers(
        &run,
        args.publishers,
        &topics,
        args.payload_bytes,
        args.rate,
    );
    let mut steps = Vec::new();
    let cpu_before = cpu_of(&args.gateway_pid)?;
    let backend_before = cpu_of(&args.backend_pid)?;
    let deliveries_before = run.deliveries();
    let publishing = Instant::now();
    let mut rate = args.rate;
    loop {
        rate_tx.send_replace(Some(rate / args.publishers.max(1) as f64));
        let step = measure(&run, rate, per_topic, Duration::from_secs(args.duration)).await;
        println!(
            "  rate {:>9.1} msg/s -> {:>10.0} deliveries/s (offered {:.0}), {}",
            step.publish_rate, step.deliveries_per_s, step.offered_per_s, step.latency
        );
        let saturated = step.latency.p99_ms > args.max_p99_ms
            || step.deliveries_per_s < 0.9 * step.offered_per_s;
        steps.push(step);
        rate *= args.step_factor;
        let out_of_time = run.elapsed() + Duration::from_secs(args.duration + c.settle + 5)
            > run.deadline.duration_since(run.started);
        if !args.step || saturated || rate > args.max_rate || out_of_time {
            break;
        }
    }
    let publish_secs = publishing.elapsed().as_secs_f64();
    let reports: Vec<PublisherReport> = common::stop_publishers(rate_tx, pubs).await;
    let mut pubs_total = PublisherReport::default();
    for r in &reports {
        pubs_total.add(r);
    }
    // Each step resets the histogram: this is the last step's latency.
    let last_latency = run.delivery.summary();
    let outcome = common::finish(&run, c, &topics, &reports, started.handles).await?;
    // Everything published was delivered (or counted lost) by now: the server's CPU time for
    // the whole publishing phase, per delivery.
    let cpu = cpu_since(&args.gateway_pid, cpu_before)?;
    let backend_cpu = cpu_since(&args.backend_pid, backend_before)?;
    let delivered = run.deliveries().saturating_sub(deliveries_before);
    let per_delivery = |s: f64| r3(s * 1e9 / delivered.max(1) as f64);
    let cpu_ns_per_delivery = cpu.map(per_delivery);
    let backend_ns_per_delivery = backend_cpu.map(per_delivery);
    // Best sustained throughput within the latency bound (the step comparison's figure).
    let best = steps
        .iter()
        .filter(|s| s.latency.p99_ms <= args.max_p99_ms)
        .map(|s| s.deliveries_per_s)
        .fold(0.0, f64::max);
    println!(
        "fanout ({:?}): {} subscribers over {} topics, {} publishers, {} payload bytes",
        c.target,
        started.ready,
        topics.len(),
        args.publishers,
        args.payload_bytes
    );
    println!(
        "  published {} (acked {}, errors {}, skipped {}); best within p99 <= {} ms: {:.0} deliveries/s",
        pubs_total.sent,
        pubs_total.acked,
        pubs_total.errors,
        pubs_total.skipped,
        args.max_p99_ms,
        best
    );
    common::print_outcome(&outcome);
    if let (Some(s), Some(ns)) = (cpu, cpu_ns_per_delivery) {
        println!("  server CPU {s:.2} s for {delivered} deliveries: {ns:.0} ns per delivery");
    }
    if let (Some(s), Some(ns)) = (backend_cpu, backend_ns_per_delivery) {
        println!("  backends' CPU {s:.2} s: {ns:.0} ns per delivery");
    }
    Ok(json!({
        "server_cpu_seconds": cpu.map(r3),
        "server_cpu_ns_per_delivery": cpu_ns_per_delivery,
        "backend_cpu_seconds": backend_cpu.map(r3),
        "backend_cpu_ns_per_delivery": backend_ns_per_delivery,
        "scenario": "fanout",
        "target": c.target,
        "subscribers": started.ready,
        "subscribers_failed": started.failed,
        "topics": topics.len(),
        "publishers": args.publishers,
        "payload_bytes": args.payload_bytes,
        "publish_seconds": r3(publish_secs),
        "steps": steps,
        "best_deliveries_per_s_within_p99": r3(best),
        "max_p99_ms": args.max_p99_ms,
        "latency_last_step": last_latency,
        "published": pubs_total,
        "totals": outcome.totals,
        "pods": outcome.pods_first,
        "failed_sessions": outcome.failed_sessions,
        "unrecovered": run.counters.unrecovered.load(std::sync::atomic::Ordering::Relaxed),
        "closes": *run.closes.lock().expect("closes lock"),
    }))
}

/// Runs one step: a second of warm-up (the previous step's backlog drains), then `d` measured.
async fn measure(run: &Arc<Run>, rate: f64, per_topic: f64, d: Duration) -> Step {
    let bar = report::progress(d.as_secs(), &format!("publishing {rate:.0} msg/s"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    run.delivery.reset();
    let d0 = run.deliveries();
    let t0 = Instant::now();
    for _ in 0..d.as_secs() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        bar.inc(1);
        bar.set_message(format!(
            "publishing {rate:.0} msg/s, {:.0} deliveries/s",
            (run.deliveries() - d0) as f64 / t0.elapsed().as_secs_f64()
        ));
    }
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    Step {
        publish_rate: r3(rate),
        deliveries_per_s: r3((run.deliveries() - d0) as f64 / secs),
        offered_per_s: r3(rate * per_topic),
        latency: run.delivery.summary(),
    }
}
