//! Process metrics in the names every Prometheus client uses (`process_open_fds`,
//! `process_max_fds`, `process_resident_memory_bytes`, `process_virtual_memory_bytes`,
//! `process_cpu_seconds_total`), read from `/proc/self` at each scrape. The maintained
//! collectors are written for the `metrics` crate, not for `prometheus-client`, and the reads
//! are a few lines. Where `/proc` is missing (not Linux) nothing is reported.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// `/proc/[pid]/stat` reports CPU time in clock ticks of `USER_HZ`, which Linux fixes at 100
/// for user space on every architecture (`sysconf(_SC_CLK_TCK)`).
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug, Default)]
pub struct ProcessCollector;

/// What one scrape reads.
#[derive(Debug, Default, PartialEq)]
struct Sample {
    open_fds: Option<i64>,
    max_fds: Option<i64>,
    resident_bytes: Option<i64>,
    virtual_bytes: Option<i64>,
    cpu_seconds: Option<f64>,
}

/// `VmRSS:   1234 kB` → bytes.
fn status_kib(status: &str, key: &str) -> Option<i64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: i64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// utime + stime from `/proc/self/stat`: fields 14 and 15, counted after the `(comm)` field,
/// which may itself contain spaces and parentheses.
fn cpu_seconds(stat: &str) -> Option<f64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // `after_comm` starts at field 3 (state).
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SECOND)
}

/// The soft limit of `Max open files` in `/proc/self/limits`.
fn max_fds(limits: &str) -> Option<i64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn read() -> Sample {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    Sample {
        open_fds: std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as i64),
        max_fds: max_fds(&limits),
        resident_bytes: status_kib(&status, "VmRSS:"),
        virtual_bytes: status_kib(&status, "VmSize:"),
        cpu_seconds: cpu_seconds(&stat),
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: Option<i64>,
) -> Result<(), std::fmt::Error> {
    let Some(value) = value else {
        return Ok(());
    };
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = read();
        let e = &mut encoder;
        gauge(
            e,
            "process_open_fds",
            "Open file descriptors",
            None,
            s.open_fds,
        )?;
        gauge(
            e,
            "process_max_fds",
            "Limit of open file descriptors (soft)",
            None,
            s.max_fds,
        )?;
        let bytes = Unit::Bytes;
        gauge(
            e,
            "process_resident_memory",
            "Resident memory size",
            Some(&bytes),
            s.resident_bytes,
        )?;
        gauge(
            e,
            "process_virtual_memory",
            "Virtual memory size",
            Some(&bytes),
            s.virtual_bytes,
        )?;
        if let Some(cpu) = s.cpu_seconds {
            let metric = ConstCounter::new(cpu);
            let seconds = Unit::Seconds;
            let help = "User and system CPU time spent";
            let metric_encoder =
                e.encode_descriptor("process_cpu", help, Some(&seconds), metric.metric_type())?;
            metric.encode(metric_encoder)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        let stat = "4242 (gate way) (x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 130 0 0 20 0 9 0 100 2000000 3000";
        assert_eq!(cpu_seconds(stat), Some(3.8));
        assert_eq!(cpu_seconds("garbage"), None);
        let status = "Name:\tgateway\nVmSize:\t  204800 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(10_485_760));
        assert_eq!(status_kib(status, "VmSize:"), Some(209_715_200));
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1048576              1048576              files\n";
        assert_eq!(max_fds(limits), Some(1_048_576));
        // On this (Linux) machine every value is there.
        let live = read();
        assert!(live.open_fds.unwrap() > 0 && live.max_fds.unwrap() > 0);
        assert!(live.resident_bytes.unwrap() > 0 && live.cpu_seconds.is_some());
    }
}
