//! `connect`: N idle sessions (hello + one subscribe each) at a bounded rate. Reports the
//! handshake rate and, given the gateway's PID, its RSS per session and handshakes per CPU
//! second of the gateway (its cost per core, whatever else runs on the machine).
//!
//! Above `--per-worker` sessions the scenario re-executes `wsload` as worker processes (one
//! process may hold 20,000 open files here): each worker opens its share, prints a JSON line
//! when ready, holds its sessions until its stdin closes, and the parent measures meanwhile.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::time::Instant;

use super::common::{self, Common};
use crate::admin;
use crate::report::r3;
use crate::run::Phase;

#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub common: Common,
    /// Sessions to open (at most 100,000 over workers).
    #[arg(long, default_value_t = 1_000)]
    pub clients: usize,
    /// Topics the sessions subscribe to (session i takes topic i mod T).
    #[arg(long, default_value_t = 100)]
    pub topics: usize,
    /// PID of the gateway: RSS and CPU time are read from /proc before and after.
    #[arg(long)]
    pub gateway_pid: Option<u32>,
    /// Seconds to hold the sessions open before reading RSS (lets allocations settle).
    #[arg(long, default_value_t = 3)]
    pub hold: u64,
    /// Sessions per process; more are spread over worker processes.
    #[arg(long, default_value_t = 15_000)]
    pub per_worker: usize,
    /// Internal: run as a worker of a parent `wsload connect`.
    #[arg(long, hide = true)]
    pub worker: bool,
}

/// What a worker reports once its sessions are ready.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct WorkerReady {
    ready: u64,
    failed: u64,
    elapsed_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    first_error: Option<String>,
}

pub async fn run(args: ConnectArgs) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(args.clients <= 100_000, "--clients is capped at 100,000");
    let pid = args.gateway_pid;
    let before = pid.map(admin::rss_bytes).transpose()?;
    let cpu_before = pid.map(admin::cpu_seconds).transpose()?;
    let started = Instant::now();
    let workers = args.clients.div_ceil(args.per_worker.max(1));
    let (ready, failed, elapsed, p50, p99, first_error, holder) = if args.worker || workers <= 1 {
        let run = args.common.run(&[], false)?;
        let topics = common::topic_names(args.topics);
        let s = common::connect_sessions(&run, &args.common, args.clients, &topics).await?;
        let h = run.handshake.summary();
        let ready = WorkerReady {
            ready: s.ready,
            failed: s.failed,
            elapsed_s: s.elapsed.as_secs_f64(),
            p50_ms: h.p50_ms,
            p99_ms: h.p99_ms,
            first_error: s.first_error.clone(),
        };
        if args.worker {
            // Tell the parent, then hold the sessions until it closes our stdin.
            println!("{}", serde_json::to_string(&ready)?);
            let mut line = String::new();
            let _ = BufReader::new(tokio::io::stdin())
                .read_line(&mut line)
                .await;
            run.set_phase(Phase::Stop);
            for h in s.handles {
                let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
            }
            return Ok(json!({}));
        }
        let holder = Holder::Local(run, s.handles);
        (
            s.ready,
            s.failed,
            s.elapsed,
            h.p50_ms,
            h.p99_ms,
            s.first_error,
            holder,
        )
    } else {
        spawn_workers(&args, workers).await?
    };
    let cpu_after = pid.map(admin::cpu_seconds).transpose()?;
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    let after = pid.map(admin::rss_bytes).transpose()?;
    let total_s = started.elapsed().as_secs_f64();
    holder.release().await;

    let rate = ready as f64 / elapsed.as_secs_f64().max(1e-9);
    let per_session = match (before, after) {
        (Some(b), Some(a)) if ready > 0 => Some(a.saturating_sub(b) as f64 / ready as f64),
        _ => None,
    };
    let gateway_cpu = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) => Some(a - b),
        _ => None,
    };
    println!(
        "connect ({:?}): {ready} sessions ready, {failed} failed, in {:.2} s over {workers} process(es)",
        args.common.target,
        elapsed.as_secs_f64()
    );
    println!(
        "  handshake rate {rate:.0} sessions/s; time to subscribed p50 {p50:.2} ms, p99 {p99:.2} ms"
    );
    if let Some(e) = &first_error {
        println!("  first failure: {e}");
    }
    if let (Some(b), Some(a), Some(per)) = (before, after, per_session) {
        println!(
            "  gateway RSS {:.1} MiB -> {:.1} MiB: {:.0} bytes ({:.2} KiB) per session",
            b as f64 / 1048576.0,
            a as f64 / 1048576.0,
            per,
            per / 1024.0
        );
    }
    if let Some(cpu) = gateway_cpu {
        println!(
            "  gateway CPU {cpu:.2} s for the handshakes: {:.0} sessions per gateway CPU second",
            ready as f64 / cpu.max(0.01)
        );
    }
    Ok(json!({
        "scenario": "connect",
        "target": args.common.target,
        "clients": args.clients,
        "workers": workers,
        "ready": ready,
        "failed": failed,
        "first_error": first_error,
        "connect_seconds": r3(elapsed.as_secs_f64()),
        "handshakes_per_s": r3(rate),
        "handshake_p50_ms": p50,
        "handshake_p99_ms": p99,
        "gateway_rss_before": before,
        "gateway_rss_after": after,
        "gateway_rss_per_session_bytes": per_session.map(r3),
        "gateway_cpu_seconds": gateway_cpu.map(r3),
        "sessions_per_gateway_cpu_second": gateway_cpu.map(|c| r3(ready as f64 / c.max(0.01))),
        "total_seconds": r3(total_s),
    }))
}

/// Who holds the sessions while the parent measures.
enum Holder {
    Local(
        std::sync::Arc<crate::run::Run>,
        Vec<tokio::task::JoinHandle<crate::session::SessionReport>>,
    ),
    Workers(Vec<tokio::process::Child>),
}

impl Holder {
    async fn release(self) {
        match self {
            Holder::Local(run, handles) => {
                run.set_phase(Phase::Stop);
                for h in handles {
                    let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
                }
            }
            Holder::Workers(children) => {
                for mut child in children {
                    // Closing stdin tells the worker to close its sessions and exit.
                    drop(child.stdin.take());
                    if tokio::time::timeout(Duration::from_secs(30), child.wait())
                        .await
                        .is_err()
                    {
                        let _ = child.kill().await;
                    }
                }
            }
        }
    }
}

type Gathered = (u64, u64, Duration, f64, f64, Option<String>, Holder);

/// Re-executes this binary `n` times as workers with a share of the sessions each.
async fn spawn_workers(args: &ConnectArgs, n: usize) -> anyhow::Result<Gathered> {
    let exe = std::env::current_exe().context("locating the wsload binary")?;
    let c = &args.common;
    let mut children = Vec::new();
    for w in 0..n {
        let share = args.clients / n + usize::from(w < args.clients % n);
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg("connect").arg("--worker");
        for url in &c.urls {
            cmd.arg("--url").arg(url);
        }
        cmd.args(["--target", &format!("{:?}", c.target).to_lowercase()])
            .args(["--clients", &share.to_string()])
            .args(["--topics", &args.topics.to_string()])
            .args(["--sources", &c.sources.to_string()])
            .args(["--max-duration", &c.max_duration.to_string()])
            .args(["--connect-rate", &(c.connect_rate / n as f64).to_string()])
            .args([
                "--connect-concurrency",
                &(c.connect_concurrency / n).max(1).to_string(),
            ])
            .args(["--per-worker", &share.max(1).to_string()])
            .args(c.hello_subscribe.then_some("--hello-subscribe"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        children.push(cmd.spawn().context("spawning a wsload worker")?);
    }
    let (mut ready, mut failed, mut p50, mut p99, mut first_error) = (0, 0, 0.0f64, 0.0f64, None);
    let mut elapsed = 0.0f64;
    for child in &mut children {
        let stdout = child.stdout.take().context("worker stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).await?;
        let r: WorkerReady =
            serde_json::from_str(line.trim()).with_context(|| format!("worker report {line:?}"))?;
        ready += r.ready;
        failed += r.failed;
        elapsed = elapsed.max(r.elapsed_s);
        // Percentiles cannot be merged exactly from summaries: the worst worker's is reported.
        p50 = p50.max(r.p50_ms);
        p99 = p99.max(r.p99_ms);
        if first_error.is_none() {
            first_error = r.first_error;
        }
    }
    for child in &mut children {
        if let Some(stdin) = child.stdin.as_mut() {
            let _ = stdin.flush().await;
        }
    }
    Ok((
        ready,
        failed,
        Duration::from_secs_f64(elapsed),
        p50,
        p99,
        first_error,
        Holder::Workers(children),
    ))
}
