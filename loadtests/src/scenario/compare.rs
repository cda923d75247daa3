//! `compare`: a measured run against its reference run of the same sitting (the raw baseline,
//! or the embedded gateway for the cluster), read from their JSON reports: the ratio, and
//! whether the target of docs/benchmarks.md is met.
//!
//! Benchmarks on a shared machine vary by tens of percent between sittings; the ratio of two
//! runs made one after the other under the same conditions is the figure that means something.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde::Serialize;
use serde_json::{Value, json};

use crate::report::r3;

/// The targets (docs/benchmarks.md).
pub const MAX_IDLE_BYTES: f64 = 6_144.0;
pub const MIN_FANOUT_RATIO: f64 = 0.9;
pub const MIN_HANDSHAKE_RATIO: f64 = 1.0;
pub const MIN_CLUSTER_RATIO: f64 = 0.7;
/// Under overload, the share of subscribers that may be closed with 1013: the slowest few,
/// never a large part of the fleet.
pub const MAX_OVERLOAD_1013_SHARE: f64 = 0.05;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    /// `connect` reports: RSS per idle subscribed session (target: at most 6,144 B).
    IdleMemory,
    /// `fanout --step` reports: best deliveries/s within the p99 bound, without loss
    /// (target: at least 0.9x the reference).
    MaxFanout,
    /// Fixed-rate `fanout` reports above capacity: deliveries/s, p99, 1013s and loss (target:
    /// nothing lost, at most 5 % of the subscribers closed with 1013).
    Overload,
    /// `connect` reports: sessions per server CPU second (target: at least the reference's).
    Handshakes,
    /// `fanout --step` reports of a cluster (measured) and the embedded gateway (reference):
    /// best deliveries/s within the p99 bound (target: at least 0.7x).
    ClusterFanout,
}

#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    #[arg(long, value_enum)]
    pub metric: Metric,
    /// The measured run's JSON report (`--json` of its scenario). Repeat it, with
    /// `--reference` as often, for runs made in pairs: the verdict is the median pair's.
    #[arg(long, required = true)]
    pub measured: Vec<PathBuf>,
    /// The reference run's JSON report, from the same sitting (the `n`th one is paired with
    /// the `n`th `--measured`, the run made next to it).
    #[arg(long, required = true)]
    pub reference: Vec<PathBuf>,
    /// A label for the measured commit or build, copied into the output.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Also write the comparison as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn load(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn number(report: &Value, pointer: &str) -> anyhow::Result<f64> {
    report
        .pointer(pointer)
        .and_then(Value::as_f64)
        .with_context(|| format!("the report has no number at {pointer}"))
}

/// Closes with `code` the subscribers of a `fanout` report received.
fn closes(report: &Value, code: u16) -> f64 {
    report
        .pointer(&format!("/closes/{code}"))
        .and_then(Value::as_f64)
        .unwrap_or(0.0)
}

/// The server's CPU per delivery of a `fanout` report, when it was measured.
fn cpu_note(m: &Value, r: &Value) -> String {
    match (
        m["server_cpu_ns_per_delivery"].as_f64(),
        r["server_cpu_ns_per_delivery"].as_f64(),
    ) {
        (Some(a), Some(b)) if b > 0.0 => {
            format!(
                "; server CPU per delivery {a:.0} ns vs {b:.0} ns ({:.2}x)",
                a / b
            )
        }
        _ => String::new(),
    }
}

/// Deliveries lost, plus resumes answered `recovered: false`, in a `fanout` report.
fn lost(report: &Value) -> f64 {
    report
        .pointer("/totals/lost")
        .and_then(Value::as_f64)
        .unwrap_or(0.0)
        + report
            .pointer("/unrecovered")
            .and_then(Value::as_f64)
            .unwrap_or(0.0)
}

/// Compares, prints one line per figure and the verdict, and returns the JSON.
pub fn run(args: &CompareArgs) -> anyhow::Result<Value> {
    anyhow::ensure!(
        args.measured.len() == args.reference.len(),
        "--measured is given {} times and --reference {}: one of each per pair of runs",
        args.measured.len(),
        args.reference.len()
    );
    let mut pairs = Vec::new();
    for (m, r) in args.measured.iter().zip(&args.reference) {
        pairs.push(compare(args.metric, &load(m)?, &load(r)?)?);
    }
    if pairs.len() > 1 {
        for (i, pair) in pairs.iter().enumerate() {
            println!(
                "  pair {}: measured {} / reference {} = {:.2}x",
                i + 1,
                pair["measured"],
                pair["reference"],
                pair["ratio"].as_f64().unwrap_or(0.0)
            );
        }
    }
    let out = median_pair(pairs);
    println!(
        "{:?}{}{}: measured {} / reference {} = {:.2}x; target {}: {}",
        args.metric,
        if args.label.is_empty() {
            String::new()
        } else {
            format!(" ({})", args.label)
        },
        match out["pairs"].as_array() {
            Some(pairs) => format!(", the median of {} pairs", pairs.len()),
            None => String::new(),
        },
        out["measured"],
        out["reference"],
        out["ratio"].as_f64().unwrap_or(0.0),
        out["target"].as_str().unwrap_or(""),
        if out["met"].as_bool() == Some(true) {
            "met"
        } else {
            "NOT met"
        },
    );
    if let Some(notes) = out["notes"].as_str() {
        println!("  {notes}");
    }
    let mut out = out;
    out["label"] = json!(args.label);
    Ok(out)
}

/// The comparison of the pair with the median ratio (the lower of the two middle ones for an
/// even count: the verdict does not round up), with every pair's ratio in `pairs`, in run
/// order. A loss in any pair fails the verdict: one lossless median does not excuse it.
pub fn median_pair(pairs: Vec<Value>) -> Value {
    let ratio = |v: &Value| v["ratio"].as_f64().unwrap_or(0.0);
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.sort_by(|&a, &b| ratio(&pairs[a]).total_cmp(&ratio(&pairs[b])));
    let Some(&middle) = order.get(pairs.len().saturating_sub(1) / 2) else {
        return json!({});
    };
    let lossless = pairs.iter().all(|p| p["lossless"] != false);
    let mut out = pairs[middle].clone();
    if pairs.len() > 1 {
        out["pairs"] = pairs.iter().map(|p| p["ratio"].clone()).collect();
        out["met"] = json!(out["met"] == true && lossless);
    }
    out
}

/// The comparison of `m` (measured) with `r` (reference) for `metric`.
pub fn compare(metric: Metric, m: &Value, r: &Value) -> anyhow::Result<Value> {
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    Ok(match metric {
        Metric::IdleMemory => {
            let (a, b) = (
                number(m, "/gateway_rss_per_session_bytes")?,
                number(r, "/gateway_rss_per_session_bytes")?,
            );
            json!({"metric": metric, "unit": "bytes per idle session", "measured": r3(a),
                "reference": r3(b), "ratio": r3(ratio(a, b)),
                "target": format!("at most {MAX_IDLE_BYTES} B"), "met": a <= MAX_IDLE_BYTES,
                "notes": format!("{} and {} sessions", m["ready"], r["ready"])})
        }
        Metric::MaxFanout | Metric::ClusterFanout => {
            let (a, b) = (
                number(m, "/best_deliveries_per_s_within_p99")?,
                number(r, "/best_deliveries_per_s_within_p99")?,
            );
            let min = if metric == Metric::MaxFanout {
                MIN_FANOUT_RATIO
            } else {
                MIN_CLUSTER_RATIO
            };
            let lossless = lost(m) == 0.0;
            json!({"metric": metric, "unit": "deliveries/s within p99", "measured": r3(a),
                "reference": r3(b), "ratio": r3(ratio(a, b)),
                "target": format!("at least {min}x, nothing lost"),
                "met": ratio(a, b) >= min && lossless, "lossless": lossless,
                "notes": format!("p99 bound {} ms; measured lost {}, 1013s {}; reference lost {}{}",
                    m["max_p99_ms"], lost(m), closes(m, 1013), lost(r), cpu_note(m, r))})
        }
        Metric::Overload => {
            let last = |v: &Value| -> anyhow::Result<(f64, f64, f64)> {
                let steps = v["steps"].as_array().context("the report has no steps")?;
                let s = steps.last().context("the report has no steps")?;
                Ok((
                    number(s, "/publish_rate")?,
                    number(s, "/deliveries_per_s")?,
                    number(s, "/latency/p99_ms")?,
                ))
            };
            let ((rate, a, p99_m), (_, b, p99_r)) = (last(m)?, last(r)?);
            let subscribers = number(m, "/subscribers")?.max(1.0);
            let share = closes(m, 1013) / subscribers;
            json!({"metric": metric, "unit": "deliveries/s above capacity", "measured": r3(a),
                "reference": r3(b), "ratio": r3(ratio(a, b)),
                "target": format!("nothing lost, at most {}% closed 1013", MAX_OVERLOAD_1013_SHARE * 100.0),
                "met": lost(m) == 0.0 && share <= MAX_OVERLOAD_1013_SHARE,
                "lossless": lost(m) == 0.0,
                "notes": format!("offered {rate} msg/s; p99 {p99_m} ms vs {p99_r} ms; 1013s: {} of {subscribers} (reference {}); lost {} (reference {}){}",
                    closes(m, 1013), closes(r, 1013), lost(m), lost(r), cpu_note(m, r))})
        }
        Metric::Handshakes => {
            let (a, b) = (
                number(m, "/sessions_per_gateway_cpu_second")?,
                number(r, "/sessions_per_gateway_cpu_second")?,
            );
            let (wa, wb) = (
                number(m, "/handshakes_per_s")?,
                number(r, "/handshakes_per_s")?,
            );
            json!({"metric": metric, "unit": "sessions per server CPU second", "measured": r3(a),
                "reference": r3(b), "ratio": r3(ratio(a, b)),
                "target": format!("at least {MIN_HANDSHAKE_RATIO}x"), "met": ratio(a, b) >= MIN_HANDSHAKE_RATIO,
                "notes": format!("wall clock: {wa:.0} vs {wb:.0} sessions/s ({:.2}x)", ratio(wa, wb))})
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_and_verdicts() {
        let fan = |best: f64, lost: u64| {
            json!({"best_deliveries_per_s_within_p99": best, "max_p99_ms": 250.0,
                "totals": {"lost": lost}, "unrecovered": 0, "closes": {}})
        };
        let c = compare(Metric::MaxFanout, &fan(950.0, 0), &fan(1000.0, 0)).unwrap();
        assert_eq!(c["ratio"], 0.95);
        assert_eq!(c["met"], true);
        let c = compare(Metric::MaxFanout, &fan(950.0, 3), &fan(1000.0, 0)).unwrap();
        assert_eq!(c["met"], false, "a loss fails the target");
        let c = compare(Metric::ClusterFanout, &fan(600.0, 0), &fan(1000.0, 0)).unwrap();
        assert_eq!(c["met"], false);

        let over = |closed: u64| {
            json!({"subscribers": 1000, "totals": {"lost": 0}, "unrecovered": 0,
                "closes": {"1013": closed},
                "steps": [{"publish_rate": 3000.0, "deliveries_per_s": 1.5e6,
                    "latency": {"p99_ms": 900.0}}]})
        };
        assert_eq!(
            compare(Metric::Overload, &over(10), &over(0)).unwrap()["met"],
            true
        );
        assert_eq!(
            compare(Metric::Overload, &over(500), &over(0)).unwrap()["met"],
            false
        );

        // Pairs: the median ratio decides, and a loss in any pair fails.
        let pairs = |runs: &[(f64, u64)]| {
            median_pair(
                runs.iter()
                    .map(|&(best, lost)| {
                        compare(Metric::MaxFanout, &fan(best, lost), &fan(1000.0, 0)).unwrap()
                    })
                    .collect(),
            )
        };
        let c = pairs(&[(800.0, 0), (1200.0, 0), (950.0, 0)]);
        assert_eq!(
            (c["ratio"].clone(), c["met"].clone()),
            (json!(0.95), json!(true))
        );
        assert_eq!(c["pairs"], json!([0.8, 1.2, 0.95]));
        let c = pairs(&[(800.0, 0), (1200.0, 0), (850.0, 0), (1300.0, 0)]);
        assert_eq!(
            (c["ratio"].clone(), c["met"].clone()),
            (json!(0.85), json!(false))
        );
        let c = pairs(&[(800.0, 0), (1200.0, 0), (950.0, 0), (1300.0, 2)]);
        assert_eq!(c["met"], false, "a loss in any pair fails");
        assert_eq!(pairs(&[(950.0, 0)]).get("pairs"), None);

        let mem = |bytes: f64| json!({"gateway_rss_per_session_bytes": bytes, "ready": 10000});
        let c = compare(Metric::IdleMemory, &mem(6000.0), &mem(7000.0)).unwrap();
        assert_eq!(c["met"], true);
        assert!(compare(Metric::IdleMemory, &json!({}), &mem(1.0)).is_err());
    }
}
