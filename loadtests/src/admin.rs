//! The gateway's admin endpoints over a minimal HTTP/1.1 client, and process readings from
//! `/proc` (RSS, CPU time) for memory-per-session and handshakes-per-core figures.
//!
//! A hand-written client keeps `wsload` free of an HTTP stack: it only ever sends a handful of
//! requests (`POST /admin/drain`, `GET /admin/cluster`) to loopback.

use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::net::Target;

/// An admin endpoint of one pod, e.g. `http://127.0.0.1:9090`.
#[derive(Debug, Clone)]
pub struct Admin {
    target: Target,
    token: Option<String>,
}

impl Admin {
    pub fn new(url: &str, token: Option<String>) -> anyhow::Result<Self> {
        let target = Target::parse(url)?;
        Ok(Self { target, token })
    }

    /// Sends one request and returns the status and body.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: &str,
    ) -> anyhow::Result<(u16, String)> {
        let exchange = async {
            let mut s = TcpStream::connect(self.target.addr).await?;
            let auth = self
                .token
                .as_ref()
                .map(|t| format!("Authorization: Bearer {t}\r\n"))
                .unwrap_or_default();
            let req = format!(
                "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{auth}\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                self.target.addr,
                body.len()
            );
            s.write_all(req.as_bytes()).await?;
            let mut out = Vec::new();
            s.read_to_end(&mut out).await?;
            anyhow::Ok(out)
        };
        let out = tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .context("admin request timed out")??;
        parse_response(&String::from_utf8_lossy(&out))
    }

    pub async fn get_json<T: for<'de> Deserialize<'de>>(&self, path: &str) -> anyhow::Result<T> {
        let (status, body) = self.request("GET", path, "").await?;
        if status != 200 {
            bail!("GET {path}: HTTP {status}: {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("GET {path}: unexpected body {body}"))
    }

    /// Starts a drain of this pod (`POST /admin/drain`).
    pub async fn drain(&self) -> anyhow::Result<DrainStatus> {
        let (status, body) = self.request("POST", "/admin/drain", "").await?;
        if status / 100 != 2 {
            bail!("POST /admin/drain: HTTP {status}: {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    pub async fn drain_status(&self) -> anyhow::Result<DrainStatus> {
        self.get_json("/admin/drain").await
    }

    pub async fn cluster(&self) -> anyhow::Result<ClusterView> {
        self.get_json("/admin/cluster").await
    }
}

fn parse_response(text: &str) -> anyhow::Result<(u16, String)> {
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .context("malformed HTTP response")?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Ok((status, if chunked { dechunk(body) } else { body.into() }))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// `GET/POST /admin/drain`.
#[derive(Debug, Clone, Deserialize)]
pub struct DrainStatus {
    pub pod: String,
    pub draining: bool,
    pub connections: u64,
    pub closed: u64,
}

/// `GET /admin/cluster`: the fleet as one pod sees it.
#[derive(Debug, Clone, Deserialize)]
pub struct ClusterView {
    pub pod: String,
    pub pods: Vec<PodEntry>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct PodEntry {
    pub pod: String,
    #[serde(default)]
    pub addr: String,
    pub connections: u64,
    #[serde(default)]
    pub draining: bool,
}

impl ClusterView {
    /// Live (not draining) pods.
    pub fn live(&self) -> Vec<&PodEntry> {
        self.pods.iter().filter(|p| !p.draining).collect()
    }

    /// Whether every live pod is within `tolerance` (a fraction) of the live mean.
    pub fn balanced(&self, tolerance: f64) -> bool {
        let live = self.live();
        if live.is_empty() {
            return false;
        }
        let mean = live.iter().map(|p| p.connections as f64).sum::<f64>() / live.len() as f64;
        live.iter()
            .all(|p| (p.connections as f64 - mean).abs() <= tolerance * mean)
    }
}

/// A process's resident set size in bytes (`VmRSS` of `/proc/PID/status`).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .context("no VmRSS in /proc status")
}

/// A process's CPU time (user + system) in seconds, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let after = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|s| s.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    // USER_HZ is 100 on every Linux this runs on.
    Ok(ticks as f64 / 100.0)
}

/// The summed CPU seconds of several processes (a fleet's pods).
pub fn cpu_seconds_of(pids: &[u32]) -> anyhow::Result<f64> {
    pids.iter().map(|&pid| cpu_seconds(pid)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_plain_and_chunked() {
        let (s, b) =
            parse_response("HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((s, b.as_str()), (202, "{}"));
        let (s, b) = parse_response(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((s, b.as_str()), (200, "abcde"));
    }

    #[test]
    fn balance_is_within_tolerance_of_the_mean() {
        let view = |counts: &[u64]| ClusterView {
            pod: "a".into(),
            pods: counts
                .iter()
                .enumerate()
                .map(|(i, &c)| PodEntry {
                    pod: format!("p{i}"),
                    addr: String::new(),
                    connections: c,
                    draining: false,
                })
                .collect(),
        };
        assert!(view(&[100, 105, 95]).balanced(0.1));
        assert!(!view(&[110, 110, 80]).balanced(0.1));
    }

    #[test]
    fn own_process_readings() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).unwrap() > 0);
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
    }
}
