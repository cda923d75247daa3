//! `throughput`: how many messages per second go *into* the system. Publisher connections
//! (spread round-robin over `--url`) each keep `--window` publishes in flight without waiting
//! (the protocol answers them in frame order), over `--topics` topics, until `--messages` are
//! acknowledged or `--duration` is up. Reports acknowledged publishes per second, errors, and
//! the Redis CPU each publish cost (from `INFO cpu` deltas of every `--redis` node), and with
//! `--store-limit` (what `redis-benchmark` got running the same append script on the same
//! Redis) the ratio to it: how close the gateway gets to the store's own limit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::common::HARD_MAX_DURATION;
use crate::report::r3;

#[derive(Debug, Clone, Args)]
pub struct ThroughputArgs {
    /// Gateway WebSocket URLs (loopback only); publishers are spread over them round-robin.
    #[arg(long = "url", required = true)]
    pub urls: Vec<String>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Publisher connections.
    #[arg(long, default_value_t = 32)]
    pub publishers: usize,
    /// Publishes each connection keeps in flight (at most the gateway's
    /// `--max-publishes-in-flight` are read at once; more wait in the socket).
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// Topics the publishes are spread over (`<prefix><run>-<n>`).
    #[arg(long, default_value_t = 1)]
    pub topics: usize,
    /// The topics' name prefix: names a namespace of the gateway's `--config`, e.g. an
    /// ephemeral one (`history = false`) to compare with history topics.
    #[arg(long, default_value = "tp-")]
    pub topic_prefix: String,
    /// Publishes to acknowledge in total, at most.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// How long to publish, in seconds (at most 300).
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Payload bytes (a JSON string).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Redis nodes (`host:port`, loopback) whose `INFO cpu` is read before and after: every
    /// master of a Cluster.
    #[arg(long = "redis")]
    pub redis: Vec<SocketAddr>,
    /// Gateway PIDs whose CPU time is read before and after.
    #[arg(long = "gateway-pid")]
    pub gateway_pids: Vec<u32>,
    /// The store's own limit in appends per second (`redis-benchmark` with the append script
    /// on the same Redis, in the same sitting), to report the ratio to it.
    #[arg(long)]
    pub store_limit: Option<f64>,
    /// Redis CPU microseconds per append that run of `redis-benchmark` cost, for the record.
    #[arg(long)]
    pub store_cpu_us: Option<f64>,
    /// A label for the report (e.g. `single` or `cluster-3`).
    #[arg(long, default_value = "")]
    pub label: String,
}

#[derive(Debug, Default)]
struct Counts {
    acked: AtomicU64,
    errors: AtomicU64,
    sent: AtomicU64,
}

pub async fn run(args: ThroughputArgs) -> anyhow::Result<serde_json::Value> {
    for url in &args.urls {
        crate::net::Target::parse(url)?;
    }
    anyhow::ensure!(
        args.publishers > 0 && args.window > 0,
        "--publishers and --window must be > 0"
    );
    anyhow::ensure!(args.topics > 0, "--topics must be > 0");
    let duration = Duration::from_secs(args.duration).min(HARD_MAX_DURATION);
    let run_id = format!("{:x}", rand::random::<u32>());
    let topics: Arc<Vec<String>> = Arc::new(
        (0..args.topics)
            .map(|n| format!("{}{run_id}-{n}", args.topic_prefix))
            .collect(),
    );
    let payload: Arc<str> = serde_json::to_string(&"x".repeat(args.payload))?.into();
    let counts = Arc::new(Counts::default());

    // Every publisher connects and says hello first, so connecting is not measured.
    let mut sockets = Vec::new();
    for i in 0..args.publishers {
        let url = &args.urls[i % args.urls.len()];
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .with_context(|| format!("connecting to {url}"))?;
        ws.send(Message::text(r#"{"type":"hello"}"#)).await?;
        loop {
            match ws.next().await.context("closed before welcome")?? {
                Message::Text(t) if t.contains(r#""welcome""#) => break,
                Message::Text(t) => anyhow::bail!("expected welcome, got {t}"),
                _ => {}
            }
        }
        sockets.push(ws);
    }
    let redis_before = redis_cpu(&args.redis).await?;
    let gateway_before = gateway_cpu(&args.gateway_pids);
    let started = Instant::now();
    let deadline = started + duration;
    let quota = Arc::new(AtomicU64::new(args.messages));
    let mut tasks = Vec::new();
    for (i, ws) in sockets.into_iter().enumerate() {
        let (topics, payload, counts, quota) = (
            topics.clone(),
            payload.clone(),
            counts.clone(),
            quota.clone(),
        );
        let window = args.window;
        tasks.push(tokio::spawn(async move {
            publish(ws, i, window, deadline, &topics, &payload, &counts, &quota).await
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let redis_cpu_s = redis_cpu(&args.redis).await? - redis_before;
    let gateway_cpu_s = gateway_cpu(&args.gateway_pids) - gateway_before;
    let acked = counts.acked.load(Ordering::Relaxed);
    let errors = counts.errors.load(Ordering::Relaxed);
    let rate = acked as f64 / elapsed.max(1e-9);
    let per_publish_us = |cpu: f64| {
        if acked > 0 {
            cpu * 1e6 / acked as f64
        } else {
            0.0
        }
    };
    let ratio = args.store_limit.map(|limit| rate / limit.max(1e-9));
    println!(
        "throughput [{}]: {} pods, {} topics, {} publishers x {} in flight: {acked} acked in {elapsed:.2} s = {rate:.0} publishes/s, {errors} errors",
        args.label,
        args.urls.len(),
        args.topics,
        args.publishers,
        args.window
    );
    println!(
        "  redis CPU {redis_cpu_s:.2} s ({:.1} us/publish, {:.0}% of one core); gateway CPU {gateway_cpu_s:.2} s ({:.1} us/publish)",
        per_publish_us(redis_cpu_s),
        100.0 * redis_cpu_s / elapsed.max(1e-9),
        per_publish_us(gateway_cpu_s)
    );
    if let (Some(limit), Some(ratio)) = (args.store_limit, ratio) {
        let cpu = args
            .store_cpu_us
            .map(|us| format!(", {us:.1} us Redis CPU/append"))
            .unwrap_or_default();
        println!(
            "  store limit (redis-benchmark, same script): {limit:.0}/s{cpu}; ratio {ratio:.2}x"
        );
    }
    Ok(json!({
        "scenario": "throughput",
        "label": args.label,
        "pods": args.urls.len(),
        "topics": args.topics,
        "publishers": args.publishers,
        "window": args.window,
        "payload_bytes": args.payload,
        "acked": acked,
        "errors": errors,
        "sent": counts.sent.load(Ordering::Relaxed),
        "elapsed_s": r3(elapsed),
        "publishes_per_s": r3(rate),
        "redis_cpu_s": r3(redis_cpu_s),
        "redis_cpu_us_per_publish": r3(per_publish_us(redis_cpu_s)),
        "redis_busy": r3(redis_cpu_s / elapsed.max(1e-9)),
        "gateway_cpu_s": r3(gateway_cpu_s),
        "gateway_cpu_us_per_publish": r3(per_publish_us(gateway_cpu_s)),
        "store_limit_per_s": args.store_limit,
        "store_limit_redis_cpu_us": args.store_cpu_us,
        "ratio_to_store_limit": ratio.map(r3),
    }))
}

/// One publisher connection: keeps `window` publishes in flight until the deadline or the
/// shared quota runs out, then collects the replies still due.
#[allow(clippy::too_many_arguments)]
async fn publish(
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    index: usize,
    window: usize,
    deadline: Instant,
    topics: &[String],
    payload: &str,
    counts: &Counts,
    quota: &AtomicU64,
) -> anyhow::Result<()> {
    let (mut tx, mut rx) = ws.split();
    let mut outstanding = 0usize;
    let mut n = index as u64;
    let take = || {
        quota
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| q.checked_sub(1))
            .is_ok()
    };
    loop {
        // Fill the window, then wait for one reply.
        let mut stopping = Instant::now() >= deadline;
        while !stopping && outstanding < window {
            if !take() {
                stopping = true;
                break;
            }
            let topic = &topics[(n as usize) % topics.len()];
            n += 7_919;
            let frame = format!(r#"{{"type":"publish","topic":"{topic}","data":{payload}}}"#);
            tx.feed(Message::text(frame)).await?;
            outstanding += 1;
            counts.sent.fetch_add(1, Ordering::Relaxed);
        }
        tx.flush().await?;
        if outstanding == 0 {
            break;
        }
        let reply = tokio::time::timeout(Duration::from_secs(30), rx.next())
            .await
            .context("no reply within 30 s")?
            .context("connection closed")??;
        if let Message::Text(t) = reply {
            if t.starts_with(r#"{"type":"published""#) {
                outstanding -= 1;
                counts.acked.fetch_add(1, Ordering::Relaxed);
            } else if t.starts_with(r#"{"type":"error""#) {
                outstanding -= 1;
                counts.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let _ = tx.send(Message::Close(None)).await;
    Ok(())
}

/// Sum of `used_cpu_sys` + `used_cpu_user` over `nodes`, in seconds.
async fn redis_cpu(nodes: &[SocketAddr]) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for node in nodes {
        anyhow::ensure!(
            node.ip().is_loopback(),
            "--redis {node} is not a loopback address"
        );
        let mut conn = tokio::net::TcpStream::connect(node)
            .await
            .with_context(|| format!("connecting to redis {node}"))?;
        conn.write_all(b"INFO cpu\r\n").await?;
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        // A bulk reply: `$<len>\r\n<text>\r\n`; read until all of it is in.
        loop {
            let read = conn.read(&mut buf).await?;
            anyhow::ensure!(read > 0, "redis {node} closed during INFO");
            reply.extend_from_slice(&buf[..read]);
            let text = String::from_utf8_lossy(&reply);
            if let Some((head, body)) = text.split_once("\r\n") {
                let len: usize = head.trim_start_matches('$').parse().context("INFO reply")?;
                if body.len() >= len {
                    total += parse_cpu(&body[..len]);
                    break;
                }
            }
        }
    }
    Ok(total)
}

fn parse_cpu(info: &str) -> f64 {
    info.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            matches!(k, "used_cpu_sys" | "used_cpu_user").then(|| v.trim().parse::<f64>().ok())?
        })
        .sum()
}

fn gateway_cpu(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|&pid| crate::admin::cpu_seconds(pid).ok())
        .sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_lines_are_summed() {
        let info = "# CPU\r\nused_cpu_sys:1.5\r\nused_cpu_user:2.25\r\nused_cpu_sys_children:9\r\n";
        assert_eq!(super::parse_cpu(info), 3.75);
    }
}
