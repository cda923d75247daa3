//! The NATS backplane: one `async-nats` client per pod, shared by every subscription.
//!
//! Layout:
//! - this file: [`NatsConfig`], [`NatsBackplane`] (connect, publish, subscribe, connection
//!   state) and the connection monitor that turns client events into [`Backplane::reconnects`]
//!   ticks;
//! - [`subjects`]: how [`Subject`]s map to NATS subjects and the `~XX` name encoding;
//! - [`security`]: TLS and authentication ([`NatsAuth`]).
//!
//! Behaviour worth knowing:
//! - **Startup never waits for NATS.** The client connects in the background
//!   (`retry_on_initial_connect`) and reconnects forever, cycling through every configured
//!   server. Until it is connected, [`Backplane::is_connected`] is false (so `/readyz` fails) and
//!   publishes return [`BackplaneError::Unavailable`].
//! - **Publishes are at most once.** A publish is handed to the client's outgoing queue; if the
//!   connection drops just then, async-nats may send it after reconnecting or lose it with the
//!   old socket's buffer. A publish never waits longer than the request timeout.
//! - **A subscription is live when `subscribe` returns.** Flushing the SUBSCRIBE only proves it
//!   left this process; the server handles each connection separately, so another pod's publish
//!   could still overtake it. `subscribe` therefore ends with a round trip through the server on
//!   the same connection (a probe message to a private `{p}.rtt.<nonce>` subject, received
//!   back): the server handles one connection's commands in order, so once the probe returns,
//!   the subscription is registered. Pods therefore need publish and subscribe permission on
//!   `{p}.>`, and echo must stay enabled.
//! - **Subscribing while disconnected succeeds.** The subscription is sent with the others when
//!   the connection comes back, and `reconnects()` ticks only after that, so the caller re-reads
//!   history at the right moment instead of retrying.
//! - **Reconnects tick after resubscription.** async-nats re-sends every subscription on
//!   reconnect, after announcing the connection. The monitor runs the same round trip before
//!   bumping the counter, so whoever re-reads history on the tick cannot race the resubscription.
//!   The first connection counts too: it always happens after [`NatsBackplane::connect`] returned.
//! - **Payloads are bounded by the server.** A publish above the server's `max_payload`
//!   (1 MiB unless configured) fails; [`Backplane::max_payload`] reports the limit so the
//!   caller can refuse such a message before doing anything else with it.
//! - **Slow consumers drop.** Each subscription buffers up to `subscription_capacity` messages;
//!   beyond that the client drops messages for it (counted in
//!   [`NatsBackplane::slow_consumer_drops`]) and the gateway fills the gap from history.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, Event, ServerAddr};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::{Backplane, BackplaneError, Subject, Subscription};

pub mod security;
pub mod subjects;

pub use security::NatsAuth;
pub use subjects::{decode_token, encode_token};

/// How often the client pings an idle server: bounds how long a silently dead connection (no
/// RST, e.g. a vanished node) goes unnoticed to a few intervals.
const PING_INTERVAL: Duration = Duration::from_secs(10);

/// How to reach NATS and name things there.
#[derive(Clone)]
pub struct NatsConfig {
    /// Servers of one cluster (`nats://host:4222`, `host:4222`, `tls://…`); the client connects
    /// to one of them and moves to another when it fails. Servers the cluster advertises are
    /// added automatically.
    pub urls: Vec<String>,
    /// First tokens of every subject, e.g. `gw` or `prod.gw` (tokens of `[A-Za-z0-9_-]`).
    pub subject_prefix: String,
    /// Client name shown by the server's monitoring (the pod name).
    pub name: String,
    /// Upper bound on publishing and on making a subscription live.
    pub request_timeout: Duration,
    /// Messages buffered per subscription before the client drops for it.
    pub subscription_capacity: usize,
    /// How the client authenticates (default: no credentials, or the URL's).
    pub auth: NatsAuth,
    /// Use TLS with every server, even with `nats://` URLs (a `tls://` or `wss://` URL implies
    /// it). A server that does not offer TLS is then refused, never talked to in plaintext.
    pub require_tls: bool,
    /// rustls configuration for the TLS connections (trusted roots, client certificate);
    /// default: the system's roots. Refused unless TLS is required.
    pub tls: Option<Arc<async_nats::rustls::ClientConfig>>,
}

/// URLs may carry a password, and `auth` is a secret: never print them.
impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|u| protocol::redact_url(u)).collect();
        f.debug_struct("NatsConfig")
            .field("urls", &urls)
            .field("subject_prefix", &self.subject_prefix)
            .field("name", &self.name)
            .field("request_timeout", &self.request_timeout)
            .field("subscription_capacity", &self.subscription_capacity)
            .field("auth", &self.auth)
            .field("require_tls", &self.require_tls)
            .field("tls", &self.tls.as_ref().map(|_| "custom"))
            .finish()
    }
}

impl NatsConfig {
    /// A configuration for `urls` with the defaults for everything else.
    pub fn new(urls: impl IntoIterator<Item = impl Into<String>>, name: impl Into<String>) -> Self {
        Self {
            urls: urls.into_iter().map(Into::into).collect(),
            name: name.into(),
            ..Self::default()
        }
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            urls: vec!["nats://127.0.0.1:4222".to_owned()],
            subject_prefix: "gw".to_owned(),
            name: "gateway".to_owned(),
            request_timeout: Duration::from_secs(5),
            // async-nats's own default: generous, because every drop costs a history read.
            subscription_capacity: 65_536,
            auth: NatsAuth::None,
            require_tls: false,
            tls: None,
        }
    }
}

/// A [`Backplane`] over NATS. Cheap to clone; the connection closes when the last clone and
/// the last [`Subscription`] are gone.
#[derive(Debug, Clone)]
pub struct NatsBackplane {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: Client,
    prefix: String,
    timeout: Duration,
    reconnects: Arc<watch::Sender<u64>>,
    slow_consumer_drops: Arc<AtomicU64>,
    _monitor: AbortOnDrop,
}

/// Stops the monitor with the backplane: it holds a client clone that would otherwise keep the
/// connection open forever.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn unavailable(err: impl std::fmt::Display) -> BackplaneError {
    BackplaneError::Unavailable(err.to_string())
}

impl NatsBackplane {
    /// Starts connecting in the background and returns at once (see the module docs). Fails
    /// only on an invalid configuration.
    pub async fn connect(config: NatsConfig) -> Result<Self, BackplaneError> {
        subjects::validate_prefix(&config.subject_prefix)?;
        if config.urls.is_empty() {
            return Err(BackplaneError::Invalid("no NATS server URL".into()));
        }
        if config.request_timeout.is_zero() {
            return Err(BackplaneError::Invalid(
                "request timeout must be positive".into(),
            ));
        }
        let addrs = config
            .urls
            .iter()
            .map(|u| {
                u.parse::<ServerAddr>().map_err(|e| {
                    BackplaneError::Invalid(format!("NATS URL {}: {e}", protocol::redact_url(u)))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;

        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let drops = Arc::new(AtomicU64::new(0));
        let callback_drops = Arc::clone(&drops);
        let options = ConnectOptions::new()
            .name(&config.name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .ping_interval(PING_INTERVAL)
            .subscription_capacity(config.subscription_capacity.max(1))
            .request_timeout(Some(config.request_timeout))
            .event_callback(move |event| {
                // Runs on async-nats's event task, whose queue silently drops events when full:
                // stay fast, and keep per-message slow-consumer events out of the monitor's way.
                match event {
                    Event::SlowConsumer(sid) => {
                        let total = callback_drops.fetch_add(1, Ordering::Relaxed) + 1;
                        if total.is_power_of_two() {
                            warn!(sid, total, "backplane slow consumer: dropped messages");
                        }
                    }
                    other => {
                        let _ = events_tx.send(other);
                    }
                }
                std::future::ready(())
            });
        let options = security::apply(&config, &addrs, options)?;
        let client = options.connect(addrs).await.map_err(unavailable)?;

        let reconnects = Arc::new(watch::Sender::new(0));
        let monitor = tokio::spawn(monitor(
            client.clone(),
            config.subject_prefix.clone(),
            config.request_timeout,
            events_rx,
            Arc::clone(&reconnects),
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                prefix: config.subject_prefix,
                timeout: config.request_timeout,
                reconnects,
                slow_consumer_drops: drops,
                _monitor: AbortOnDrop(monitor),
            }),
        })
    }

    /// The NATS subject `subject` is carried on (for logs and debugging with `nats sub`).
    pub fn nats_subject(&self, subject: &Subject) -> Result<String, BackplaneError> {
        subjects::nats_subject(&self.inner.prefix, subject)
    }

    /// Messages dropped so far because a subscription's buffer was full.
    pub fn slow_consumer_drops(&self) -> u64 {
        self.inner.slow_consumer_drops.load(Ordering::Relaxed)
    }

    /// The underlying client, for diagnostics (e.g. `statistics()`).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }
}

impl Backplane for NatsBackplane {
    async fn publish(&self, subject: &Subject, payload: Bytes) -> Result<(), BackplaneError> {
        let subject = self.nats_subject(subject)?;
        // Refuse rather than queue while known to be down: the caller reports `unavailable` at
        // once instead of waiting for a timeout, and nothing piles up in the client.
        if !self.is_connected() {
            return Err(BackplaneError::Unavailable("not connected to NATS".into()));
        }
        // The client only waits when its outgoing queue is full, e.g. a connection that just
        // dropped: bounded by the timeout, never forever.
        tokio::time::timeout(
            self.inner.timeout,
            self.inner.client.publish(subject, payload),
        )
        .await
        .map_err(|_| BackplaneError::Timeout)?
        .map_err(unavailable)
    }

    async fn subscribe(&self, subject: &Subject) -> Result<Subscription, BackplaneError> {
        let name = self.nats_subject(subject)?;
        let client = &self.inner.client;
        let connected_before = self.is_connected();
        let subscriber = tokio::time::timeout(self.inner.timeout, client.subscribe(name))
            .await
            .map_err(|_| BackplaneError::Timeout)?
            .map_err(unavailable)?;
        // Disconnected before and after queueing the SUBSCRIBE: the monitor's round trip for the
        // next connection is queued after it (it waits for the connected state first), so the
        // coming `reconnects()` tick covers this subscription.
        if connected_before || self.is_connected() {
            let probe = round_trip(client, &self.inner.prefix);
            match tokio::time::timeout(self.inner.timeout, probe).await {
                Ok(Ok(())) => {}
                // Lost the connection meanwhile: same as above, the tick will cover it.
                _ if !self.is_connected() => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(BackplaneError::Timeout),
            }
        }
        Ok(Subscription::new(subscriber.map(|m| m.payload)))
    }

    fn reconnects(&self) -> watch::Receiver<u64> {
        self.inner.reconnects.subscribe()
    }

    fn is_connected(&self) -> bool {
        self.inner.client.connection_state() == State::Connected
    }

    /// The `max_payload` of the server the client last connected to (async-nats's default of
    /// 1 MiB, the server's default too, before the first connection).
    fn max_payload(&self) -> Option<usize> {
        Some(self.inner.client.max_payload())
    }
}

/// Returns once the server has handled every command this client sent before the call: a
/// probe published to a private subject comes back only after everything queued before it.
async fn round_trip(client: &Client, prefix: &str) -> Result<(), BackplaneError> {
    let inbox = client.new_inbox();
    let nonce = inbox.rsplit('.').next().unwrap_or(&inbox);
    let subject = format!("{prefix}.rtt.{}", encode_token(nonce));
    let mut probe = client
        .subscribe(subject.clone())
        .await
        .map_err(unavailable)?;
    client
        .publish(subject, Bytes::new())
        .await
        .map_err(unavailable)?;
    match probe.next().await {
        Some(_) => Ok(()),
        None => Err(BackplaneError::Unavailable("NATS client closed".into())),
    }
}

/// After a connection: waits until the client reports it (only then is a command queued after
/// the resubscriptions), runs a round trip, then ticks `reconnects`.
async fn settle(client: &Client, prefix: &str) -> Result<(), BackplaneError> {
    while client.connection_state() != State::Connected {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    round_trip(client, prefix).await
}

async fn monitor(
    client: Client,
    prefix: String,
    timeout: Duration,
    mut events: mpsc::UnboundedReceiver<Event>,
    reconnects: Arc<watch::Sender<u64>>,
) {
    // Failed connection attempts repeat every few seconds: warn once per outage, then debug.
    let mut warned_failing = false;
    while let Some(event) = events.recv().await {
        match event {
            Event::Connected => {
                info!("backplane connected to NATS");
                warned_failing = false;
                match tokio::time::timeout(timeout, settle(&client, &prefix)).await {
                    Ok(Ok(())) => {}
                    // Disconnected again or overloaded: tick anyway (a spurious re-read is
                    // harmless); the next connection ticks again.
                    Ok(Err(e)) => debug!(error = %e, "round trip after connecting failed"),
                    Err(_) => debug!("round trip after connecting timed out"),
                }
                reconnects.send_modify(|n| *n += 1);
            }
            Event::Disconnected => warn!("backplane lost its NATS connection; reconnecting"),
            Event::ClientError(e) if !warned_failing => {
                warned_failing = true;
                warn!(error = %e, "cannot reach NATS yet; retrying in the background");
            }
            Event::ClientError(e) => debug!(error = %e, "NATS client error"),
            Event::ServerError(e) => warn!(error = %e, "NATS server error"),
            Event::LameDuckMode => info!("NATS server is shutting down; will move to another"),
            Event::Draining | Event::Closed | Event::SlowConsumer(_) => {}
        }
    }
}
