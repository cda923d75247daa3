//! `gateway drain-peer`: the preStop hook of a load balancer (HAProxy) pod. Every gateway sees
//! that pod as the TCP peer of the tunnels it carries (PROXY v2 gives the client's address, the
//! socket the balancer's), so each is asked to close those connections with 1001, paced like a
//! drain; the clients resume through another balancer pod, and the pod stops with no tunnel
//! left to cut.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Deserialize;

use super::{OpsError, TargetArgs, http_call};

#[derive(Debug, Clone, Args)]
pub struct DrainPeerArgs {
    /// The load balancer pod's address, as the gateways see it (e.g. `$(POD_IP)`).
    #[arg(long, env = "GATEWAY_DRAIN_PEER")]
    pub peer: IpAddr,
    /// Admin base URLs of the gateways; repeat or comma-separate.
    #[arg(
        long,
        value_delimiter = ',',
        required_unless_present = "targets_from_dns"
    )]
    pub url: Vec<String>,
    /// `HOST:PORT` resolving to every gateway's admin port (a headless Service, e.g.
    /// `gateway-headless.gateway.svc.cluster.local:9090`).
    #[arg(long, env = "GATEWAY_DRAIN_PEER_TARGETS")]
    pub targets_from_dns: Option<String>,
    /// Give up (exit 1) when connections from the peer are left by then. Keep it below the
    /// balancer pod's grace period minus what it needs after the hook.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// How often progress is polled and printed.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub poll: Duration,
    /// The operator token (file or value), as for `gateway drain`.
    #[command(flatten)]
    pub token: TokenArgs,
}

/// The token flags of [`TargetArgs`], without its target.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// File holding the gateways' operator token.
    #[arg(long, env = "GATEWAY_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<std::path::PathBuf>,
    /// The operator token itself (prefer `--admin-token-file`).
    #[arg(long, env = "GATEWAY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

impl TokenArgs {
    fn token(&self) -> Result<Option<String>, OpsError> {
        TargetArgs {
            local: false,
            url: None,
            pod: None,
            namespace: None,
            admin_port: 0,
            admin_listen: ([127, 0, 0, 1], 0).into(),
            admin_token_file: self.admin_token_file.clone(),
            admin_token: self.admin_token.clone(),
        }
        .token()
    }
}

#[derive(Debug, Deserialize)]
struct PeerReport {
    pod: String,
    connections: u64,
}

/// Every target's admin base URL: `--url`s, then what `--targets-from-dns` resolves to.
async fn targets(args: &DrainPeerArgs) -> Result<Vec<String>, OpsError> {
    let mut urls: BTreeSet<String> = args
        .url
        .iter()
        .map(|u| u.trim_end_matches('/').to_owned())
        .collect();
    if let Some(name) = &args.targets_from_dns {
        let addrs = tokio::net::lookup_host(name.as_str())
            .await
            .map_err(|e| OpsError::Http(format!("cannot resolve {name}: {e}")))?;
        urls.extend(addrs.map(|a| format!("http://{a}")));
    }
    if urls.is_empty() {
        return Err(OpsError::Http(
            "no gateway to ask: --url or --targets-from-dns".into(),
        ));
    }
    Ok(urls.into_iter().collect())
}

/// Asks every gateway to drain `--peer`, then follows until none has a connection from it.
/// A gateway that cannot be reached is reported and skipped (it may be stopping itself); the
/// command then exits 1 at the end.
pub async fn drain_peer(args: &DrainPeerArgs, out: &mut impl Write) -> Result<(), OpsError> {
    let token = args.token.token()?;
    let token = token.as_deref();
    let urls = targets(args).await?;
    let body = serde_json::json!({"peer": args.peer}).to_string();
    let started = Instant::now();
    let mut live = Vec::new();
    let mut failed = 0;
    for url in &urls {
        let endpoint = format!("{url}/admin/drain-peer");
        let call = http_call("POST", &endpoint, token, Some(body.clone()));
        match call
            .await
            .and_then(|b| Ok(serde_json::from_str::<PeerReport>(&b)?))
        {
            Ok(report) => {
                writeln!(
                    out,
                    "{url} ({}): {} connections from {}",
                    report.pod, report.connections, args.peer
                )?;
                live.push(url.clone());
            }
            Err(e) => {
                writeln!(out, "{url}: {e}")?;
                failed += 1;
            }
        }
    }
    loop {
        let mut left = 0;
        for url in &live {
            let path = format!("{url}/admin/drain-peer?peer={}", args.peer);
            match http_call("GET", &path, token, None).await {
                Ok(b) => left += serde_json::from_str::<PeerReport>(&b)?.connections,
                // Gone meanwhile (stopping, rolled): it has no connection from us any more.
                Err(OpsError::Http(_)) => {}
                Err(e) => return Err(e),
            }
        }
        writeln!(
            out,
            "{:>6.1}s  connections from {} left on {} gateways: {left}",
            started.elapsed().as_secs_f64(),
            args.peer,
            live.len()
        )?;
        if left == 0 {
            break;
        }
        if started.elapsed() >= args.timeout {
            return Err(OpsError::Timeout {
                left,
                waited: args.timeout,
            });
        }
        tokio::time::sleep(args.poll).await;
    }
    if failed > 0 {
        return Err(OpsError::Http(format!(
            "{failed} of {} gateways could not be asked",
            urls.len()
        )));
    }
    writeln!(
        out,
        "drained {} from {} gateways in {:.1}s",
        args.peer,
        live.len(),
        started.elapsed().as_secs_f64()
    )?;
    Ok(())
}
