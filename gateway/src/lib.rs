//! The gateway pod: WebSocket clients in, topics fanned out across pods, sessions resumable on
//! any pod.
//!
//! Layout, along the data path:
//! - [`config`]: flags and environment (`GATEWAY_*`), validated before anything binds, and the
//!   `--config` file of namespaces (per-prefix history, ephemeral topics, hooks).
//! - `http`: the public routers (`/ws` upgrade with admission, `/healthz`, `/readyz`) on
//!   `--listen` and, behind PROXY v2, `--proxy-listen`.
//! - [`admin`]: the admin router with its two token scopes (read: `/metrics`, `/scaler`,
//!   `/admin/cluster`; operator: drain, undrain, drain-peer, `/api/*`).
//! - `connection`: one task per socket: reads frames, writes replies and batched deliveries.
//! - `session`: `hello`, resume and per-topic recovery for a connection; `saving` stores it.
//! - `access`: who the token says the client is, rate limits, publishing, `refresh`.
//! - [`hooks`]: the application's HTTP hooks (signed, bounded, behind a breaker); `application`
//!   is what a connection asks them (connect, subscribe, resubscribe, publish, rpc).
//! - `server_api` and `fleet`: the admin port's `/api/*` commands and their fleet-wide
//!   delivery; `server_side` is what they do to a connection.
//! - `history`: the `history` frame and `subscribe {last}`: reading a topic's history.
//! - `topics_api`: the admin port's `GET /api/topics/{topic}` and `.../history`.
//! - `census`: connected subscribers per topic, fleet-wide, reported once per heartbeat.
//! - `presence`: members of topics keyed on the session, surviving drains; `presence` frames.
//! - `events`: lifecycle events (sessions, topic occupancy, presence, publishes) appended to a
//!   partitioned log and delivered at least once to the `--webhook-url`.
//! - [`sizes`]: the message size limit, checked at the door, and the buffers derived from it.
//! - `publish`: append then fan out; a connection's publishes in flight, in frame order.
//! - `hub`: topic → local subscribers, restoring `seq` order with `sequencer`.
//! - `envelope`: the payload of topic messages on the backplane.
//! - `control`: closing a connection from outside its task; the pod's connection table.
//! - `outbound`: a connection's queue of deliveries, bounded in messages and bytes.
//! - `cluster`: heartbeats, the fleet view, pod-to-pod control, rebalancing with 1012.
//! - `drain`: paced 1001 closes on SIGTERM or an operator's request.
//! - `agent`: HAProxy agent-check answers (weight, `drain`).
//! - `metrics`: each component's metrics, one registry.
//! - [`ops`]: the operator's `gateway drain` and `gateway status`.
//!
//! [`run`] takes bound listeners and a shutdown future, so a test runs a real server on port 0.

#![forbid(unsafe_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use backplane::{Backplane, Subject};
use protocol::{Payload, SessionId, Topic};
use session_store::{HistoryLimits, SessionStore};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod abuse;
mod access;
pub mod admin;
mod agent;
mod application;
pub mod assets;
pub mod auth;
mod census;
pub mod client;
mod cluster;
pub mod config;
mod connection;
mod control;
mod drain;
mod envelope;
mod events;
mod fleet;
mod health;
mod history;
pub mod hooks;
mod http;
mod hub;
mod metrics;
pub mod ops;
mod outbound;
mod presence;
mod publish;
mod replay;
mod saving;
mod sequencer;
mod server_api;
mod server_side;
mod session;
pub mod sizes;
mod topics_api;

pub use config::{Config, ConfigError, Namespaces};

use crate::control::Connections;
use crate::drain::Drain;
use crate::hub::{Hub, HubConfig};
use crate::metrics::Metrics;

/// The session store: memory (embedded default) or Redis, chosen from the configuration.
pub(crate) type Store = session_store::AnyStore;
/// The backplane: in-process (embedded default) or NATS, chosen from the configuration.
pub(crate) type Bus = backplane::AnyBackplane;

/// Why the gateway could not run.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
    #[error("session store: {0}")]
    Store(#[from] session_store::StoreError),
    #[error("backplane: {0}")]
    Backplane(#[from] backplane::BackplaneError),
    #[error("authentication: {0}")]
    Auth(#[from] auth::AuthError),
    #[error("hooks: {0}")]
    Hooks(String),
}

/// The sockets a gateway serves on, bound by the caller.
#[derive(Debug)]
pub struct Listeners {
    pub public: TcpListener,
    /// `--proxy-listen`: the public routes behind a PROXY-v2-speaking load balancer.
    pub proxy: Option<TcpListener>,
    pub admin: TcpListener,
    /// HAProxy agent-check port, when configured.
    pub agent: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses of `config`.
    pub async fn bind(config: &Config) -> std::io::Result<Self> {
        Ok(Self {
            public: bind_with_backlog(config.listen)?,
            proxy: config.proxy_listen.map(bind_with_backlog).transpose()?,
            admin: TcpListener::bind(config.admin_listen).await?,
            agent: match config.agent_listen {
                Some(addr) => Some(TcpListener::bind(addr).await?),
                None => None,
            },
        })
    }
}

/// Binds with a deep accept queue: after a drain or a restart thousands of clients reconnect
/// within a second, and the default backlog (128) turns that into SYN retries of 1 s and 3 s.
fn bind_with_backlog(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// What every part of a running gateway shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: Config,
    /// Per-topic-prefix options (`--config`), with the default namespace from the flags.
    pub namespaces: Namespaces,
    /// The application's hooks, when any hook URL is configured.
    pub hooks: Option<hooks::Hooks>,
    /// Lifecycle events, when `--webhook-url` is set.
    pub events: Option<events::Events>,
    pub pod: String,
    pub store: Store,
    /// Who each user's sessions are, and revocations (the server API's disconnect and revoke).
    pub users: session_store::AnyUsers,
    pub backplane: Bus,
    pub hub: Hub,
    pub metrics: Arc<Metrics>,
    pub connections: Connections,
    pub drain: Drain,
    /// Cached backend health, for `/readyz`.
    pub health: health::BackendHealth,
    /// Cancelled last, when every connection is gone: stops topic tasks and servers.
    pub shutdown: CancellationToken,
    /// Holds a token per live connection task.
    pub tasks: TaskTracker,
    /// The public address, reported in heartbeats.
    pub public_addr: SocketAddr,
    pub cluster: cluster::ClusterView,
    /// Subscribers per topic on every pod.
    pub census: census::AnyCensus,
    /// Members of topics with presence, fleet-wide, and this pod's share of them.
    pub presence: presence::AnyPresence,
    pub presence_registry: presence::Registry,
    pub auth: auth::Authenticator,
    pub ip_limiter: abuse::IpLimiter,
    pub handshakes: abuse::HandshakeLimiter,
    /// Connections admitted (upgrades in flight included), bounded by `--max-connections`.
    pub slots: AtomicUsize,
    /// Publishes in flight on this pod, WebSocket and HTTP (`--max-pod-publishes-in-flight`).
    pub publish_permits: Arc<tokio::sync::Semaphore>,
}

/// The application's side of a pod: namespaces and, when configured, how to call its hooks.
#[derive(Debug, Clone)]
pub(crate) struct AppSetup {
    pub namespaces: Namespaces,
    pub hooks: Option<(hooks::HookSettings, hooks::AnyTransport)>,
    /// Lifecycle event delivery, with its secret read.
    pub events: Option<events::Settings>,
}

impl AppSetup {
    /// Reads the namespaces file and the hook secret, and builds the HTTP hook client: a bad
    /// file or a missing secret fails the start.
    fn from_config(config: &Config) -> Result<Self, GatewayError> {
        let namespaces = config.namespaces()?;
        let events = events::Settings::from_config(config)?;
        let app = &config.app;
        let any_url = app.hook_url.is_some() || namespaces.any_topic_hooks().next().is_some();
        if !any_url {
            return Ok(Self {
                namespaces,
                hooks: None,
                events,
            });
        }
        let secret = app
            .hook_secret()
            .map_err(ConfigError::from)?
            .ok_or(ConfigError::App(config::AppConfigError::HookSecretMissing))?;
        let transport = hooks::HttpTransport::new().map_err(GatewayError::Hooks)?;
        let settings = hooks::HookSettings {
            base_url: app.hook_url.clone(),
            secret,
            timeout: app.hook_timeout,
            concurrency: app.hook_concurrency,
            breaker_failures: app.hook_breaker_failures,
            breaker_cooldown: app.hook_breaker_cooldown,
        };
        Ok(Self {
            namespaces,
            hooks: Some((settings, hooks::AnyTransport::Http(transport))),
            events,
        })
    }
}

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PublishError {
    #[error("history unavailable: {0}")]
    Store(#[from] session_store::StoreError),
    /// Refused before the append: the payload could not be delivered (see [`sizes`]).
    #[error("message of {size} bytes is above the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    /// An ephemeral message (no history to catch up from) could not be handed to the backplane.
    #[error("backplane unavailable: {0}")]
    Backplane(#[from] backplane::BackplaneError),
}

impl PublishError {
    /// The `error` frame code for the publisher.
    pub fn code(&self) -> protocol::ErrorCode {
        match self {
            Self::Store(_) | Self::Backplane(_) => protocol::ErrorCode::Unavailable,
            Self::TooLarge { .. } => protocol::ErrorCode::TooLarge,
        }
    }
}

impl Shared {
    /// Everything a pod shares, around its store, backplane and authenticator: metrics, the
    /// hub (whose topic tasks stop with `shutdown`), the connection table, drain and limits.
    pub fn new(
        config: Config,
        app: AppSetup,
        pod: String,
        store: Store,
        backplane: Bus,
        auth: auth::Authenticator,
        public_addr: SocketAddr,
    ) -> Arc<Self> {
        let metrics = Arc::new(Metrics::new());
        metrics.conn.capacity.set(config.max_connections as i64);
        let AppSetup {
            namespaces,
            hooks,
            events,
        } = app;
        let events = events.map(|settings| events::Events::new(settings, &store, metrics.clone()));
        let hooks = hooks
            .map(|(settings, transport)| hooks::Hooks::new(settings, transport, metrics.clone()));
        let shutdown = CancellationToken::new();
        let hub = Hub::new(
            store.clone(),
            backplane.clone(),
            metrics.clone(),
            HubConfig::from_config(&config, &namespaces),
            shutdown.clone(),
        );
        let users = match &store {
            Store::Memory(_) => session_store::AnyUsers::Memory(Default::default()),
            Store::Redis(redis) => session_store::AnyUsers::Redis(redis.users()),
        };
        Arc::new(Self {
            pod,
            census: census::AnyCensus::for_store(&store),
            presence: presence::AnyPresence::for_store(
                &store,
                presence::EventLog::new(
                    namespaces.clone(),
                    config.app.presence_log_size,
                    config.resume_window,
                ),
                events.as_ref().and_then(|e| e.outbox.clone()),
            ),
            presence_registry: presence::Registry::default(),
            users,
            store,
            backplane,
            hub,
            metrics,
            connections: Connections::default(),
            drain: Drain::new(),
            health: health::BackendHealth::new(
                config.redis_url.is_some(),
                !config.nats_url.is_empty(),
            ),
            shutdown,
            tasks: TaskTracker::new(),
            slots: AtomicUsize::new(0),
            auth,
            ip_limiter: abuse::IpLimiter::new(config.security.ip_limits()),
            handshakes: abuse::HandshakeLimiter::new(config.security.max_handshakes),
            public_addr,
            publish_permits: Arc::new(tokio::sync::Semaphore::new(
                config.max_pod_publishes_in_flight,
            )),
            cluster: cluster::ClusterView::default(),
            config,
            namespaces,
            hooks,
            events,
        })
    }
}

impl Shared {
    /// Publishes on an ephemeral topic (a namespace with `history = false`): straight to the
    /// backplane, no store call, no `seq`. At-most-once: a message the backplane drops, or one
    /// sent while a subscriber is between connections, is not delivered to it, and nothing
    /// tells it so (these topics promise no recovery; `subscribed` says `recovered: false`).
    /// `exclude`: a session not to deliver it to (there is no position to keep for it).
    pub async fn publish_ephemeral(
        &self,
        topic: &Topic,
        data: Payload,
        exclude: Option<&SessionId>,
    ) -> Result<(), PublishError> {
        self.check_publishable(topic, &data)?;
        let started = std::time::Instant::now();
        let sent = self
            .backplane
            .publish(
                &Subject::Topic(topic.clone()),
                envelope::Envelope::ephemeral(data, exclude.cloned()).encode(),
            )
            .await;
        self.metrics
            .hub
            .backplane_publish
            .observe(started.elapsed().as_secs_f64());
        sent?;
        self.metrics.hub.ephemeral_published.inc();
        Ok(())
    }
}

/// The Redis configuration when a URL is configured: credential and TLS files are read here,
/// so a bad one fails the start before anything connects.
fn redis_config(
    config: &Config,
    limits: HistoryLimits,
    prefix_limits: &session_store::PrefixLimits,
) -> Result<Option<session_store::RedisConfig>, ConfigError> {
    let Some(url) = &config.redis_url else {
        return Ok(None);
    };
    let mut redis = session_store::RedisConfig {
        key_prefix: config.key_prefix.clone(),
        limits,
        prefix_limits: prefix_limits.clone(),
        call_timeout: config.store_timeout,
        min_replicas: config.redis_min_replicas,
        ..session_store::RedisConfig::new(url.clone())
    };
    config.backends.redis(&mut redis)?;
    Ok(Some(redis))
}

/// The NATS configuration when URLs are configured, files read as for [`redis_config`].
fn nats_config(config: &Config, pod: &str) -> Result<Option<backplane::NatsConfig>, ConfigError> {
    if config.nats_url.is_empty() {
        return Ok(None);
    }
    let mut nats = backplane::NatsConfig {
        subject_prefix: config.key_prefix.clone(),
        ..backplane::NatsConfig::new(config.nats_url.clone(), pod)
    };
    config.backends.nats(&mut nats)?;
    Ok(Some(nats))
}

/// Redis when configured, else memory. An unreachable Redis is not an error here, nor is a
/// TLS handshake or a login that fails: the store keeps reconnecting (logging why), and the pod
/// stays unready until Redis answers.
async fn connect_store(
    redis: Option<session_store::RedisConfig>,
    limits: HistoryLimits,
    prefix_limits: session_store::PrefixLimits,
) -> Result<Store, GatewayError> {
    let Some(redis) = redis else {
        return Ok(Store::Memory(
            session_store::MemoryStore::with_prefix_limits(limits, prefix_limits),
        ));
    };
    tracing::info!(
        url = %protocol::redact_url(&redis.url),
        tls = redis.tls.is_some(),
        user = redis.username.as_deref().unwrap_or("(from the URL or default)"),
        password_file = redis.password.is_some(),
        "session store: redis"
    );
    let store = session_store::RedisStore::connect(redis).await?;
    if let Err(e) = store.ping().await {
        tracing::warn!(error = %e, "Redis is not reachable yet; staying unready and retrying");
    }
    Ok(Store::Redis(store))
}

/// NATS when configured, else in-process. An unreachable NATS is not an error here either
/// (nor a failing TLS handshake or login): the client keeps reconnecting, and the pod stays
/// unready until it is connected.
async fn connect_backplane(nats: Option<backplane::NatsConfig>) -> Result<Bus, GatewayError> {
    let Some(nats) = nats else {
        return Ok(Bus::Memory(backplane::MemoryBackplane::new()));
    };
    let urls: Vec<String> = nats.urls.iter().map(|u| protocol::redact_url(u)).collect();
    tracing::info!(
        ?urls,
        tls = nats.tls.is_some(),
        auth = nats.auth.kind(),
        "backplane: nats"
    );
    Ok(Bus::Nats(backplane::NatsBackplane::connect(nats).await?))
}

/// Runs a gateway on `listeners` until `shutdown` resolves, then drains: new upgrades are
/// refused, every client gets a 1001 close paced over the drain window, and `run` returns once
/// they are gone (or the window and the close grace have passed).
pub async fn run(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    config.validate()?;
    let admin_tokens = Arc::new(admin::AdminTokens::load(&config).map_err(ConfigError::from)?);
    let pod = config.pod_name();
    let limits = config.history_limits();
    let app = AppSetup::from_config(&config)?;
    let prefix_limits = app.namespaces.prefix_limits();
    let authenticator = auth::Authenticator::new(config.security.auth_config())?;
    let redis = redis_config(&config, limits, &prefix_limits)?;
    let nats = nats_config(&config, &pod)?;
    let store = connect_store(redis, limits, prefix_limits).await?;
    let backplane = connect_backplane(nats).await?;
    let public_addr = listeners.public.local_addr()?;
    let admin_addr = listeners.admin.local_addr()?;
    let shared = Shared::new(
        config,
        app,
        pod.clone(),
        store,
        backplane,
        authenticator.clone(),
        public_addr,
    );
    let root = shared.shutdown.clone();
    // Before any client: mark this pod alive and detach what a previous run under this name
    // left attached, so its sessions expire rather than linger.
    events::start(&shared).await;
    tracing::info!(%pod, %public_addr, %admin_addr, "gateway listening");

    // Listen on our control subject before taking clients: a takeover sent by another pod
    // right after a client resumed there must not be missed. (With NATS down this returns at
    // once and the subscription goes live on reconnect.)
    let control = shared
        .backplane
        .subscribe(&Subject::Control(pod.clone()))
        .await
        .map_err(|e| tracing::warn!(error = %e, "control subject not subscribed yet; retrying"))
        .ok();
    let fleet = shared
        .backplane
        .subscribe(&Subject::Fleet)
        .await
        .map_err(|e| tracing::warn!(error = %e, "fleet subject not subscribed yet; retrying"))
        .ok();
    let public = tokio::spawn(http::serve_public(
        listeners.public,
        http::Ingress::Direct,
        shared.clone(),
    ));
    let proxied = listeners.proxy.map(|listener| {
        tracing::info!(addr = ?listener.local_addr(), "PROXY v2 listener for the load balancer");
        tokio::spawn(http::serve_public(
            listener,
            http::Ingress::Proxied,
            shared.clone(),
        ))
    });
    let admin = tokio::spawn(admin::serve(listeners.admin, shared.clone(), admin_tokens));
    if let Some(agent) = listeners.agent {
        tokio::spawn(agent::serve(agent, shared.clone()));
    }
    if let Err(e) = authenticator.refresh_jwks().await {
        tracing::warn!(error = %e, "JWKS not loaded yet; retrying in the background");
    }
    authenticator.spawn_jwks_refresh(root.clone());
    tokio::spawn(cluster::run_heartbeats(shared.clone()));
    tokio::spawn(census::run(shared.clone()));
    tokio::spawn(presence::run(shared.clone()));
    tokio::spawn(cluster::run_control(shared.clone(), control));
    tokio::spawn(fleet::run(shared.clone(), fleet));
    tokio::spawn(cluster::run_rebalancer(shared.clone()));
    tokio::spawn(sizes::watch_backplane_limit(shared.clone()));
    tokio::spawn(health::run_checks(shared.clone()));

    // Either a signal (the caller's future) or an operator's drain request starts the drain;
    // only the caller's future ends the process.
    shutdown.await;
    tracing::info!("shutting down: draining connections");
    shared.drain.terminate();
    drain::drain(&shared).await;
    root.cancel();
    shared.tasks.close();
    let _ = tokio::time::timeout(shared.config.close_grace, shared.tasks.wait()).await;
    for server in [public, admin].into_iter().chain(proxied) {
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "server ended with an error"),
            Err(e) => tracing::warn!(error = %e, "server task failed"),
        }
    }
    tracing::info!("gateway stopped");
    Ok(())
}
