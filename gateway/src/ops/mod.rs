//! The operator's commands: `gateway drain`, `gateway undrain`, `gateway status`, (in
//! [`peer`]) `gateway drain-peer`, and the server API's `gateway disconnect` and `gateway revoke`
//! (see `api`).
//!
//! The first three talk to one pod's admin port, reached three ways: `--local` (the preStop hook, inside the
//! pod), `--url` (outside Kubernetes), or `--pod NAME` through the Kubernetes API's pod proxy
//! (`kube`), which needs RBAC `pods get` and `pods/proxy create`. The API server drops the
//! `Authorization` header on proxied requests, so the admin token also travels as
//! `X-Gateway-Admin-Token`.

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;

mod api;
pub mod peer;

pub use api::{DisconnectArgs, RevokeArgs, disconnect, revoke};
pub use peer::DrainPeerArgs;

/// Where the pod's admin port is.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// The pod this command runs in (preStop hook): the admin address from GATEWAY_ADMIN_LISTEN.
    #[arg(long, conflicts_with_all = ["url", "pod"])]
    pub local: bool,
    /// The admin base URL of a pod, e.g. http://127.0.0.1:9090.
    #[arg(long, conflicts_with = "pod")]
    pub url: Option<String>,
    /// A pod name, reached through the Kubernetes API (kubeconfig or in-cluster credentials).
    #[arg(long)]
    pub pod: Option<String>,
    /// Namespace of `--pod`; default: the kubeconfig's namespace.
    #[arg(long, short)]
    pub namespace: Option<String>,
    /// Admin port of `--pod`.
    #[arg(long, default_value_t = 9090)]
    pub admin_port: u16,
    /// Admin listen address used by `--local`.
    #[arg(
        long,
        env = "GATEWAY_ADMIN_LISTEN",
        default_value = "127.0.0.1:9090",
        hide = true
    )]
    pub admin_listen: std::net::SocketAddr,
    /// File holding the pod's operator token (the pod's own GATEWAY_ADMIN_TOKEN_FILE, so the
    /// preStop hook finds it).
    #[arg(long, env = "GATEWAY_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<std::path::PathBuf>,
    /// The operator token itself (prefer `--admin-token-file`).
    #[arg(long, env = "GATEWAY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

impl TargetArgs {
    /// The operator token: the file's content less trailing line breaks, else `--admin-token`.
    pub fn token(&self) -> Result<Option<String>, OpsError> {
        let Some(path) = &self.admin_token_file else {
            return Ok(self.admin_token.clone());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| OpsError::TokenFile(format!("{}: {e}", path.display())))?;
        Ok(Some(text.trim_end_matches(['\n', '\r']).to_owned()))
    }
}

#[derive(Debug, Clone, Args)]
pub struct DrainArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Give up (exit 1) when the pod has not drained by then. Keep it below the pod's
    /// terminationGracePeriodSeconds when used as a preStop hook.
    #[arg(long, env = "GATEWAY_DRAIN_TIMEOUT", default_value = "110s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// How often progress is polled and printed.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub poll: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct UndrainArgs {
    #[command(flatten)]
    pub target: TargetArgs,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Exit 1 when a pod's connection count is more than this fraction from the mean.
    #[arg(long, default_value_t = 0.1)]
    pub tolerance: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("say which pod: --local, --url URL or --pod NAME")]
    NoTarget,
    #[error("pod {pod} not found in namespace {namespace}")]
    PodNotFound { pod: String, namespace: String },
    #[error(
        "forbidden by the Kubernetes API ({0}); the operator needs RBAC pods get and pods/proxy create (deploy/base/operator-rbac.yaml)"
    )]
    Forbidden(String),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("admin port answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("cannot reach the admin port: {0}")]
    Http(String),
    #[error("unexpected answer from the admin port: {0}")]
    Body(#[from] serde_json::Error),
    #[error("the pod still had {left} connections after {waited:?}")]
    Timeout { left: u64, waited: Duration },
    #[error("output: {0}")]
    Io(#[from] std::io::Error),
    #[error("--admin-token-file {0}")]
    TokenFile(String),
}

/// A pod's admin port, however it is reached.
#[derive(Clone)]
pub enum Target {
    Http {
        base: String,
        token: Option<String>,
    },
    Pod {
        client: kube::Client,
        namespace: String,
        pod: String,
        port: u16,
        token: Option<String>,
    },
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Http { base, .. } => write!(f, "{base}"),
            Target::Pod { namespace, pod, .. } => write!(f, "pod {namespace}/{pod}"),
        }
    }
}

impl Target {
    pub async fn from_args(args: &TargetArgs) -> Result<Self, OpsError> {
        let token = args.token()?;
        if args.local {
            let mut addr = args.admin_listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            return Ok(Target::Http {
                base: format!("http://{addr}"),
                token,
            });
        }
        if let Some(url) = &args.url {
            return Ok(Target::Http {
                base: url.trim_end_matches('/').to_owned(),
                token,
            });
        }
        let Some(pod) = &args.pod else {
            return Err(OpsError::NoTarget);
        };
        let client = kube::Client::try_default().await?;
        let namespace = args
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        Ok(Target::Pod {
            client,
            namespace,
            pod: pod.clone(),
            port: args.admin_port,
            token,
        })
    }

    /// Checks that the pod exists (with a clear error when not, or when RBAC forbids it).
    pub async fn check(&self) -> Result<(), OpsError> {
        if let Target::Pod {
            client,
            namespace,
            pod,
            ..
        } = self
        {
            let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), namespace);
            pods.get(pod)
                .await
                .map_err(|e| kube_error(e, namespace, pod))?;
        }
        Ok(())
    }

    async fn call(&self, method: &str, path: &str) -> Result<String, OpsError> {
        self.call_with(method, path, None).await
    }

    /// [`Target::call`] with a JSON body.
    async fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<String, OpsError> {
        match self {
            Target::Http { base, token } => {
                http_call(method, &format!("{base}{path}"), token.as_deref(), body).await
            }
            Target::Pod {
                client,
                namespace,
                pod,
                port,
                token,
            } => {
                let uri = format!("/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy{path}");
                let mut req = axum::http::Request::builder().method(method).uri(uri);
                if let Some(t) = token {
                    req = req.header("X-Gateway-Admin-Token", t);
                }
                if body.is_some() {
                    req = req.header("Content-Type", "application/json");
                }
                let req = req
                    .body(body.map(String::into_bytes).unwrap_or_default())
                    .map_err(|e| OpsError::Http(e.to_string()))?;
                client
                    .request_text(req)
                    .await
                    .map_err(|e| kube_error(e, namespace, pod))
            }
        }
    }
}

fn kube_error(e: kube::Error, namespace: &str, pod: &str) -> OpsError {
    match e {
        kube::Error::Api(status) if status.code == 404 => OpsError::PodNotFound {
            pod: pod.to_owned(),
            namespace: namespace.to_owned(),
        },
        kube::Error::Api(status) if status.code == 403 => {
            OpsError::Forbidden(status.message.clone())
        }
        other => OpsError::Kube(other),
    }
}

/// One admin call; `json` is sent as the body with its content type.
async fn http_call(
    method: &str,
    url: &str,
    token: Option<&str>,
    json: Option<String>,
) -> Result<String, OpsError> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut req = axum::http::Request::builder().method(method).uri(url);
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    if json.is_some() {
        req = req.header("Content-Type", "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(json.unwrap_or_default())))
        .map_err(|e| OpsError::Http(e.to_string()))?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| OpsError::Http(format!("{url}: timed out")))?
        .map_err(|e| OpsError::Http(format!("{url}: {e}")))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| OpsError::Http(e.to_string()))?
        .to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    if !(200..300).contains(&status) {
        return Err(OpsError::Status { status, body });
    }
    Ok(body)
}

#[derive(Debug, Deserialize)]
struct DrainReport {
    pod: String,
    draining: bool,
    connections: u64,
    closed: u64,
}

/// Starts a drain and follows it until the pod has no connections; prints progress to `out`.
pub async fn drain(
    target: &Target,
    args: &DrainArgs,
    out: &mut impl Write,
) -> Result<(), OpsError> {
    target.check().await?;
    let started = Instant::now();
    let report: DrainReport = serde_json::from_str(&target.call("POST", "/admin/drain").await?)?;
    writeln!(
        out,
        "draining {} ({}): {} connections",
        report.pod,
        if report.draining {
            "drain started"
        } else {
            "not draining"
        },
        report.connections
    )?;
    let mut last = (Instant::now(), report.closed);
    loop {
        let report: DrainReport = serde_json::from_str(&target.call("GET", "/admin/drain").await?)?;
        let elapsed = last.0.elapsed().as_secs_f64().max(0.001);
        let rate = report.closed.saturating_sub(last.1) as f64 / elapsed;
        last = (Instant::now(), report.closed);
        writeln!(
            out,
            "{:>6.1}s  connections left {:>6}  closed {:>6}  {:>7.0}/s",
            started.elapsed().as_secs_f64(),
            report.connections,
            report.closed,
            rate
        )?;
        if report.connections == 0 {
            writeln!(
                out,
                "drained {} in {:.1}s",
                report.pod,
                started.elapsed().as_secs_f64()
            )?;
            return Ok(());
        }
        if started.elapsed() >= args.timeout {
            return Err(OpsError::Timeout {
                left: report.connections,
                waited: args.timeout,
            });
        }
        tokio::time::sleep(args.poll).await;
    }
}

/// Undoes an operator's drain; prints the pod's state. Fails (409) on a pod drained by SIGTERM.
pub async fn undrain(target: &Target, out: &mut impl Write) -> Result<(), OpsError> {
    target.check().await?;
    let report: DrainReport = serde_json::from_str(&target.call("POST", "/admin/undrain").await?)?;
    writeln!(
        out,
        "undrained {}: taking connections again ({} connections, {} closed by the drain)",
        report.pod, report.connections, report.closed
    )?;
    Ok(())
}

#[derive(Debug, Deserialize)]
struct ClusterReport {
    pods: Vec<PodRow>,
}

#[derive(Debug, Deserialize)]
struct PodRow {
    pod: String,
    connections: u64,
    capacity: u64,
    draining: bool,
    share: f64,
    heartbeat_age_ms: u64,
}

/// Prints the fleet table; returns whether the fleet is even (within `tolerance` of the mean).
pub async fn status(
    target: &Target,
    args: &StatusArgs,
    out: &mut impl Write,
) -> Result<bool, OpsError> {
    target.check().await?;
    let report: ClusterReport = serde_json::from_str(&target.call("GET", "/admin/cluster").await?)?;
    writeln!(
        out,
        "{:<28} {:>11} {:>7} {:>9} {:>9} {:>9}",
        "POD", "CONNECTIONS", "SHARE", "CAPACITY", "DRAINING", "HEARTBEAT"
    )?;
    for p in &report.pods {
        let bar = "#".repeat((p.share / 5.0).round() as usize);
        writeln!(
            out,
            "{:<28} {:>11} {:>6.1}% {:>9} {:>9} {:>7}ms  {bar}",
            p.pod,
            p.connections,
            p.share,
            p.capacity,
            if p.draining { "yes" } else { "no" },
            p.heartbeat_age_ms
        )?;
    }
    let live: Vec<&PodRow> = report.pods.iter().filter(|p| !p.draining).collect();
    let total: u64 = live.iter().map(|p| p.connections).sum();
    let mean = total as f64 / live.len().max(1) as f64;
    let uneven: Vec<&str> = live
        .iter()
        .filter(|p| mean > 0.0 && (p.connections as f64 - mean).abs() > mean * args.tolerance)
        .map(|p| p.pod.as_str())
        .collect();
    writeln!(
        out,
        "{} pods, {} connections, mean {:.1} per live pod",
        report.pods.len(),
        total,
        mean
    )?;
    if uneven.is_empty() {
        writeln!(
            out,
            "even: every live pod within ±{:.0}% of the mean",
            args.tolerance * 100.0
        )?;
    } else {
        writeln!(
            out,
            "UNEVEN: {} outside ±{:.0}% of the mean",
            uneven.join(", "),
            args.tolerance * 100.0
        )?;
    }
    Ok(uneven.is_empty())
}
