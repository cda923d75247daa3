//! Configuration of a gateway pod: every flag also reads a `GATEWAY_*` environment variable.
//!
//! Defaults are the embedded default: loopback listeners, in-memory store and backplane, auth
//! off, every origin allowed. [`Config::validate`] rejects contradictions before anything binds,
//! so a bad deployment fails at once with a message instead of misbehaving later.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

mod app;
mod backends;
mod events;
pub mod namespaces;
mod security;
mod tls;

pub use app::{AppConfig, AppConfigError};
pub use backends::{BackendConfig, BackendConfigError};
pub use events::{EventsConfig, EventsConfigError};
pub use namespaces::{Namespace, Namespaces, PublishPolicy, TopicHook};
pub use security::{ProxyConfigError, SecurityConfig};

/// Flags of `gateway serve` (the default command).
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Public address: `/ws`, `/healthz`, `/readyz`.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Public address for the load balancer: the same routes as `--listen`, but every
    /// connection must come from `--trusted-proxies` (others are closed before a byte is read)
    /// and start with a PROXY protocol v2 header, whose client address then counts. `--listen`
    /// never reads PROXY headers, so probes and direct clients keep using it. Unset = none.
    #[arg(long, env = "GATEWAY_PROXY_LISTEN")]
    pub proxy_listen: Option<SocketAddr>,

    /// Admin address: `/metrics`, `/scaler`, `/admin/*`, `/api/publish`. Keep it private.
    #[arg(long, env = "GATEWAY_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,

    /// HAProxy agent-check address: answers each TCP connection with this pod's weight, or
    /// `drain` while draining or full. Unset = no agent-check listener.
    #[arg(long, env = "GATEWAY_AGENT_LISTEN")]
    pub agent_listen: Option<SocketAddr>,

    /// File holding the operator token (trailing newline stripped): required by every admin
    /// endpoint as `Authorization: Bearer …` (drain, undrain, publish, the server API) and
    /// accepted by the read-only ones too. Required when `--admin-listen` is not loopback.
    #[arg(long, env = "GATEWAY_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// File holding the read-only token: `GET /metrics`, `GET /scaler` and `GET /admin/cluster`
    /// only (403 elsewhere), for Prometheus and KEDA. Needs an operator token.
    #[arg(long, env = "GATEWAY_METRICS_TOKEN_FILE")]
    pub metrics_token_file: Option<PathBuf>,

    /// The operator token itself, for local runs and tests; prefer `--admin-token-file` (a
    /// value in the environment is visible to anything that can read the process's env).
    #[arg(
        long,
        env = "GATEWAY_ADMIN_TOKEN",
        hide_env_values = true,
        conflicts_with = "admin_token_file"
    )]
    pub admin_token: Option<String>,

    /// Log lines on stderr: `text` for people, `json` (one object per line) for log pipelines.
    /// The level comes from `RUST_LOG` (default `info`).
    #[arg(long, env = "GATEWAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Serve the demo page (built on the JS SDK) at `/` on the public port.
    #[arg(long, env = "GATEWAY_DEMO")]
    pub demo: bool,

    /// Redis URL for sessions and history (`redis://`, `redis-sentinel://`, `redis-cluster://`;
    /// TLS: `rediss://`, `rediss-sentinel://`, `rediss-cluster://`). Unset = in-memory store.
    #[arg(long, env = "GATEWAY_REDIS_URL")]
    pub redis_url: Option<String>,

    /// NATS server URLs for cross-pod fan-out, comma-separated (`nats://`, `tls://` for TLS).
    /// Unset = in-process backplane.
    #[arg(long, env = "GATEWAY_NATS_URL", value_delimiter = ',')]
    pub nats_url: Vec<String>,

    /// Prefix of Redis keys and NATS subjects, so several gateways can share servers.
    #[arg(long, env = "GATEWAY_KEY_PREFIX", default_value = "gw")]
    pub key_prefix: String,

    /// Upper bound of every session store call; a slower store counts as unavailable.
    #[arg(long, env = "GATEWAY_STORE_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub store_timeout: Duration,

    /// How often Redis and NATS are checked in the background (`gateway_backend_up`, `/readyz`).
    #[arg(long, env = "GATEWAY_BACKEND_CHECK_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub backend_check_interval: Duration,

    /// `/readyz` fails once a backend that answered before has been down this long (one that
    /// never answered keeps the pod unready from the start). Long enough to ride out a Redis
    /// failover or a NATS reconnect, which hit every pod at once.
    #[arg(long, env = "GATEWAY_UNREADY_AFTER_BACKEND_DOWN", default_value = "10s", value_parser = humantime::parse_duration)]
    pub unready_after_backend_down: Duration,

    /// The public address other pods and the fleet page show for this pod (e.g.
    /// `$(POD_IP):8080` in Kubernetes). Default: the bound `--listen` address.
    #[arg(long, env = "GATEWAY_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,

    /// This pod's name (reported in `welcome`, heartbeats, metrics). Default: `POD_NAME`, else
    /// the hostname.
    #[arg(long, env = "GATEWAY_POD_NAME")]
    pub pod_name: Option<String>,

    /// Largest accepted message payload (the `data` JSON text), in bytes: a larger publish is
    /// refused with `too_large` (HTTP 413 on `/api/publish`). A WebSocket message above this
    /// plus 512 bytes closes the connection with 1009. Use the same value on every pod.
    #[arg(long, env = "GATEWAY_MAX_MESSAGE_SIZE", default_value_t = 64 * 1024)]
    pub max_message_size: usize,

    /// Time a new connection has to send `hello` before it is closed with 1008.
    #[arg(long, env = "GATEWAY_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

    /// Interval of server WebSocket pings.
    #[arg(long, env = "GATEWAY_PING_INTERVAL", default_value = "25s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,

    /// A connection from which nothing (not even a pong) arrives for this long is dropped.
    #[arg(long, env = "GATEWAY_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// Messages queued for one connection. When full, the connection's next messages are not
    /// queued: it reads them from history once it has written the queue (it is closed only if
    /// history no longer has them, and then resumes with `recovered: false`).
    #[arg(long, env = "GATEWAY_OUTBOUND_QUEUE", default_value_t = 1024)]
    pub outbound_queue: usize,

    /// Payload bytes queued for one connection, the byte bound of `--outbound-queue`.
    #[arg(long, env = "GATEWAY_OUTBOUND_QUEUE_BYTES", default_value_t = 4 << 20)]
    pub outbound_queue_bytes: usize,

    /// Payload bytes one `hello` may replay across its topics; a topic whose missed messages
    /// would go past it is answered `recovered: false` instead of being replayed.
    #[arg(long, env = "GATEWAY_REPLAY_BUDGET", default_value_t = 16 << 20)]
    pub replay_budget: usize,

    /// A write to a client that makes no progress for this long closes the connection.
    #[arg(long, env = "GATEWAY_WRITE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub write_timeout: Duration,

    /// Connections this pod accepts; above it upgrades get HTTP 503 with `Retry-After`.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Publishes one connection may have in flight (appended or fanned out, not yet answered).
    /// At the bound the connection reads no more frames until the oldest completes; `1` waits
    /// for each publish before reading the next frame.
    #[arg(long, env = "GATEWAY_MAX_PUBLISHES_IN_FLIGHT", default_value_t = 32)]
    pub max_publishes_in_flight: usize,

    /// Publishes the whole pod may have in flight, WebSocket and `/api/publish` together; past
    /// it publishers wait (a connection stops reading frames) until one completes.
    #[arg(
        long,
        env = "GATEWAY_MAX_POD_PUBLISHES_IN_FLIGHT",
        default_value_t = 8192
    )]
    pub max_pod_publishes_in_flight: usize,

    /// Subscriptions one connection may hold (`limit_reached` above it).
    #[arg(long, env = "GATEWAY_MAX_SUBSCRIPTIONS", default_value_t = 100)]
    pub max_subscriptions: usize,

    /// Allowed `Origin` headers, comma-separated (e.g. `https://app.example.com`). Empty = any
    /// origin, the embedded default; set it in production. Requests without `Origin` (non-browser
    /// clients) are allowed.
    #[arg(long, env = "GATEWAY_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// How long a disconnected session can be resumed.
    #[arg(long, env = "GATEWAY_RESUME_WINDOW", default_value = "120s", value_parser = humantime::parse_duration)]
    pub resume_window: Duration,

    /// Messages kept per topic for recovery (the default namespace's `history_size`).
    #[arg(long, env = "GATEWAY_HISTORY_SIZE", default_value_t = 1_000)]
    pub history_size: usize,

    /// How long messages stay in a topic's history (the default namespace's `history_ttl`).
    #[arg(long, env = "GATEWAY_HISTORY_TTL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub history_ttl: Duration,

    /// How long a publish `id` is remembered per topic: a retry with the same id within it
    /// returns the first `seq` and stores nothing.
    #[arg(long, env = "GATEWAY_DEDUP_WINDOW", default_value = "2m", value_parser = humantime::parse_duration)]
    pub dedup_window: Duration,

    /// Redis replicas that must acknowledge each append (`WAIT`) before `published` is sent, so
    /// a failover cannot lose an acknowledged message. 0 = don't wait.
    #[arg(long, env = "GATEWAY_REDIS_MIN_REPLICAS", default_value_t = 0)]
    pub redis_min_replicas: u32,

    /// How long an arrival ahead of a gap is held before the gap is filled from history.
    #[arg(long, env = "GATEWAY_GAP_TIMEOUT", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub gap_timeout: Duration,

    /// How often each topic with local subscribers re-reads history to catch a trailing message
    /// the backplane dropped.
    #[arg(long, env = "GATEWAY_TOPIC_RESYNC_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub topic_resync_interval: Duration,

    /// tungstenite read buffer per connection, in bytes. Small keeps idle connections cheap.
    #[arg(long, env = "GATEWAY_READ_BUFFER_SIZE", default_value_t = 1024)]
    pub read_buffer_size: usize,

    /// Bytes buffered per connection before a write goes to the socket; writes are batched up to
    /// this size and flushed once per batch.
    #[arg(long, env = "GATEWAY_WRITE_BUFFER_SIZE", default_value_t = 32 * 1024)]
    pub write_buffer_size: usize,

    /// Upper bound of the drain window: on SIGTERM or a drain command, close frames 1001 are
    /// spread over min(this, connections / drain rate).
    #[arg(long, env = "GATEWAY_DRAIN_WINDOW", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_window: Duration,

    /// Close frames per second a drain sends at least (a small pod drains quickly).
    #[arg(long, env = "GATEWAY_DRAIN_RATE", default_value_t = 500)]
    pub drain_rate: u32,

    /// Interval of this pod's heartbeats on the backplane (its load, for the fleet view).
    #[arg(long, env = "GATEWAY_HEARTBEAT_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,

    /// Rebalancing: a pod sheds connections when above the fleet mean by more than this fraction.
    #[arg(long, env = "GATEWAY_REBALANCE_TOLERANCE", default_value_t = 0.1)]
    pub rebalance_tolerance: f64,

    /// Rebalancing budget: connections closed with 1012 per second at most (0 disables).
    #[arg(long, env = "GATEWAY_REBALANCE_RATE", default_value_t = 20)]
    pub rebalance_rate: u32,

    /// How often a pod compares itself with the fleet mean.
    #[arg(long, env = "GATEWAY_REBALANCE_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub rebalance_interval: Duration,

    /// Rebalancing acts only on a stable view: this many consecutive heartbeat rounds listing the
    /// same pods with the same counts (within 1%, at least 1). 1 acts on the latest round alone.
    #[arg(long, env = "GATEWAY_REBALANCE_STABLE_BEATS", default_value_t = 3)]
    pub rebalance_stable_beats: u32,

    /// After the last close frame, how long to wait for clients' close handshakes before exit.
    #[arg(long, env = "GATEWAY_CLOSE_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub close_grace: Duration,

    #[command(flatten)]
    pub security: SecurityConfig,

    /// TLS and credentials of the Redis and NATS connections.
    #[command(flatten)]
    pub backends: BackendConfig,

    /// Namespaces and the application's hooks.
    #[command(flatten)]
    pub app: AppConfig,

    /// Lifecycle events delivered to the application's webhook.
    #[command(flatten)]
    pub events: EventsConfig,
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--{flag} must be greater than zero")]
    Zero { flag: &'static str },
    #[error("--idle-timeout ({idle:?}) must be longer than --ping-interval ({ping:?})")]
    IdleNotAbovePing { idle: Duration, ping: Duration },
    #[error("--max-message-size ({0}) must be between 128 bytes and 16 MiB")]
    MessageSize(usize),
    #[error("--rebalance-tolerance ({0}) must be between 0 and 10")]
    Tolerance(f64),
    #[error("--{0} and --{1} are both {2}")]
    SameAddress(&'static str, &'static str, SocketAddr),
    #[error("--allowed-origins entry {0:?} must look like scheme://host[:port]")]
    Origin(String),
    #[error(
        "--admin-listen {0} is not loopback: set --admin-token-file (GATEWAY_ADMIN_TOKEN_FILE), \
         or --admin-insecure for development only"
    )]
    AdminExposed(SocketAddr),
    #[error(
        "--metrics-token-file needs --admin-token-file: without an operator token, drain and \
         publish would be open to anyone who reaches the admin port"
    )]
    MetricsTokenAlone,
    #[error(transparent)]
    AdminToken(#[from] crate::admin::TokenError),
    #[error("--max-handshakes must be greater than zero")]
    Handshakes,
    #[error("--key-prefix {0:?} may only contain A-Z a-z 0-9 _ -")]
    KeyPrefix(String),
    #[error(
        "--redis-min-replicas needs a single primary (redis:// or redis-sentinel://): with \
         redis-cluster:// WAIT would go to an arbitrary node"
    )]
    MinReplicasOnCluster,
    #[error(transparent)]
    Backend(#[from] BackendConfigError),
    #[error(transparent)]
    Proxies(#[from] ProxyConfigError),
    #[error(transparent)]
    App(#[from] AppConfigError),
    #[error(transparent)]
    Events(#[from] EventsConfigError),
}

impl Config {
    /// Rejects settings that cannot work, with a message naming the flag.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let nonzero = [
            ("outbound-queue", self.outbound_queue),
            ("max-connections", self.max_connections),
            ("max-subscriptions", self.max_subscriptions),
            ("max-publishes-in-flight", self.max_publishes_in_flight),
            (
                "max-pod-publishes-in-flight",
                self.max_pod_publishes_in_flight,
            ),
            ("read-buffer-size", self.read_buffer_size),
            ("outbound-queue-bytes", self.outbound_queue_bytes),
            ("drain-rate", self.drain_rate as usize),
            (
                "rebalance-stable-beats",
                self.rebalance_stable_beats as usize,
            ),
        ];
        for (flag, value) in nonzero {
            if value == 0 {
                return Err(ConfigError::Zero { flag });
            }
        }
        let durations = [
            ("handshake-timeout", self.handshake_timeout),
            ("ping-interval", self.ping_interval),
            ("resume-window", self.resume_window),
            ("history-ttl", self.history_ttl),
            ("write-timeout", self.write_timeout),
            ("topic-resync-interval", self.topic_resync_interval),
            ("store-timeout", self.store_timeout),
            ("backend-check-interval", self.backend_check_interval),
            ("dedup-window", self.dedup_window),
            ("heartbeat-interval", self.heartbeat_interval),
            ("rebalance-interval", self.rebalance_interval),
        ];
        for (flag, value) in durations {
            if value.is_zero() {
                return Err(ConfigError::Zero { flag });
            }
        }
        if self.idle_timeout <= self.ping_interval {
            return Err(ConfigError::IdleNotAbovePing {
                idle: self.idle_timeout,
                ping: self.ping_interval,
            });
        }
        if !(0.0..=10.0).contains(&self.rebalance_tolerance) {
            return Err(ConfigError::Tolerance(self.rebalance_tolerance));
        }
        if !(128..=16 << 20).contains(&self.max_message_size) {
            return Err(ConfigError::MessageSize(self.max_message_size));
        }
        let addresses = [
            ("listen", Some(self.listen)),
            ("proxy-listen", self.proxy_listen),
            ("admin-listen", Some(self.admin_listen)),
            ("agent-listen", self.agent_listen),
        ];
        for (i, (a, x)) in addresses.iter().enumerate() {
            for (b, y) in &addresses[i + 1..] {
                if let (Some(x), Some(y)) = (x, y)
                    && x == y
                    && x.port() != 0
                {
                    return Err(ConfigError::SameAddress(a, b, *x));
                }
            }
        }
        self.security
            .validate_proxies(self.proxy_listen.is_some())?;
        for origin in &self.allowed_origins {
            if !origin.contains("://") || origin.ends_with('/') {
                return Err(ConfigError::Origin(origin.clone()));
            }
        }
        let operator_token = self.admin_token.is_some() || self.admin_token_file.is_some();
        if !self.admin_listen.ip().is_loopback() && !operator_token && !self.security.admin_insecure
        {
            return Err(ConfigError::AdminExposed(self.admin_listen));
        }
        if self.metrics_token_file.is_some() && !operator_token {
            return Err(ConfigError::MetricsTokenAlone);
        }
        if self.redis_min_replicas > 0
            && self
                .redis_url
                .as_deref()
                .is_some_and(|u| u.starts_with("redis-cluster") || u.starts_with("rediss-cluster"))
        {
            return Err(ConfigError::MinReplicasOnCluster);
        }
        self.backends
            .validate(self.redis_url.as_deref(), &self.nats_url)?;
        if self.security.max_handshakes == 0 {
            return Err(ConfigError::Handshakes);
        }
        if self.key_prefix.is_empty()
            || !self
                .key_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(ConfigError::KeyPrefix(self.key_prefix.clone()));
        }
        self.app.validate()?;
        self.events.validate()?;
        Ok(())
    }

    /// Every namespace (the default one from the flags, the others from `--config`), read and
    /// checked: a bad file fails the start naming the key.
    pub fn namespaces(&self) -> Result<Namespaces, ConfigError> {
        Ok(self.app.namespaces(self.history_limits())?)
    }

    /// The pod name: the flag, else `POD_NAME`, else the hostname, else `gateway`.
    pub fn pod_name(&self) -> String {
        self.pod_name
            .clone()
            .or_else(|| std::env::var("POD_NAME").ok())
            .filter(|s| !s.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|s| s.trim().to_owned())
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "gateway".to_owned())
    }

    /// Every topic's history limits, as the store applies them.
    pub fn history_limits(&self) -> session_store::HistoryLimits {
        session_store::HistoryLimits {
            max_len: self.history_size,
            ttl: self.history_ttl,
            dedup_window: self.dedup_window,
        }
    }

    /// The defaults, as `gateway serve` with no flags and no environment would have them.
    pub fn embedded_default() -> Self {
        #[derive(clap::Parser)]
        struct Parse {
            #[command(flatten)]
            config: Config,
        }
        <Parse as clap::Parser>::parse_from(["gateway"]).config
    }
}

#[cfg(test)]
mod tests;
