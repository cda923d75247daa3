//! Prometheus metrics (OpenMetrics text on the admin port's `/metrics`, or the Prometheus text
//! format for scrapers that do not ask for OpenMetrics).
//!
//! Each component owns a struct of its metrics with a `register` method; [`Metrics`] gathers
//! them into one registry under the `gateway_` prefix, next to `gateway_build_info` and the
//! unprefixed `process_*` metrics. Names follow design §6; counters get the `_total` suffix
//! from the encoder.

mod process;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

/// Latency buckets from 100 µs to ~6.5 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 2.0, 17))
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: &'static str,
}

/// Connections and what flows over them.
#[derive(Debug)]
pub struct ConnectionMetrics {
    pub active: Gauge,
    pub capacity: Gauge,
    /// Connections by outcome: `accepted` (upgraded) and each refusal under its own label
    /// (`draining`, `capacity`, `handshakes`, `origin`, `ip_connections`, `ip_rate`,
    /// `untrusted_proxy`, `proxy_header`, `peer_draining`), so a rate of accepted connections never counts refusals.
    pub total: Family<OutcomeLabel, Counter>,
    pub closes: Family<CodeLabel, Counter>,
    pub subscriptions: Gauge,
    pub received: Counter,
    pub delivered: Counter,
    /// `skipped` frames written in place of messages that excluded the connection's session.
    pub skipped: Counter,
    pub delivery_latency: Histogram,
}

impl ConnectionMetrics {
    /// Counts one connection under `outcome`.
    pub fn outcome(&self, outcome: &'static str) {
        self.total.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    pub fn new() -> Self {
        Self {
            active: Gauge::default(),
            capacity: Gauge::default(),
            total: Family::default(),
            closes: Family::default(),
            subscriptions: Gauge::default(),
            received: Counter::default(),
            delivered: Counter::default(),
            skipped: Counter::default(),
            delivery_latency: latency_histogram(),
        }
    }

    pub fn register(&self, r: &mut Registry) {
        r.register(
            "connections_active",
            "Open WebSocket connections",
            self.active.clone(),
        );
        r.register(
            "connections_capacity",
            "Connections this pod accepts",
            self.capacity.clone(),
        );
        r.register(
            "connections",
            "Connections by outcome: accepted, or the refusal's reason",
            self.total.clone(),
        );
        r.register(
            "closes",
            "Close frames sent, by close code",
            self.closes.clone(),
        );
        r.register(
            "subscriptions_active",
            "Topic subscriptions of open connections",
            self.subscriptions.clone(),
        );
        r.register(
            "messages_received",
            "Frames received from clients",
            self.received.clone(),
        );
        r.register(
            "messages_delivered",
            "Messages written to client sockets",
            self.delivered.clone(),
        );
        r.register(
            "messages_skipped",
            "Skipped frames written in place of messages that excluded the session",
            self.skipped.clone(),
        );
        r.register_with_unit(
            "delivery_latency",
            "Publish to local socket write",
            Unit::Seconds,
            self.delivery_latency.clone(),
        );
    }
}

/// The local fan-out hub.
#[derive(Debug)]
pub struct HubMetrics {
    pub topics: Gauge,
    /// Messages not delivered, by reason: `duplicate`, `stale_epoch`, `gap_unfillable`, `malformed`,
    /// `too_large`.
    pub dropped: Family<ReasonLabel, Counter>,
    pub backplane_publish: Histogram,
    pub gap_fills: Counter,
    /// Topics moved to a new epoch as this pod saw it, by reason: `new_epoch` (the store or an
    /// arrival had a newer one), `store_behind` (history's top below what was delivered).
    pub epoch_changes: Family<ReasonLabel, Counter>,
    /// Messages a subscriber's full queue had no room for: it reads them from history.
    pub lagged: Counter,
    /// Messages released to this pod's subscribers by the task of the publish that stored them,
    /// not by the topic's task (see `hub::topic`).
    pub released_locally: Counter,
    /// Messages published on ephemeral topics (straight to the backplane).
    pub ephemeral_published: Counter,
}

impl Default for HubMetrics {
    fn default() -> Self {
        Self {
            topics: Gauge::default(),
            dropped: Family::default(),
            backplane_publish: latency_histogram(),
            gap_fills: Counter::default(),
            epoch_changes: Family::default(),
            lagged: Counter::default(),
            released_locally: Counter::default(),
            ephemeral_published: Counter::default(),
        }
    }
}

impl HubMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "topics_active",
            "Topics with local subscribers",
            self.topics.clone(),
        );
        r.register(
            "messages_dropped",
            "Messages not delivered, by reason",
            self.dropped.clone(),
        );
        r.register_with_unit(
            "backplane_publish",
            "Backplane publish calls",
            Unit::Seconds,
            self.backplane_publish.clone(),
        );
        r.register(
            "gap_fills",
            "Gaps in a topic's sequence filled from history",
            self.gap_fills.clone(),
        );
        r.register(
            "topic_epoch_changes",
            "Topics moved to a new epoch, by reason",
            self.epoch_changes.clone(),
        );
        r.register(
            "subscriber_lagged",
            "Messages a full subscriber queue had no room for, read from history instead",
            self.lagged.clone(),
        );
        r.register(
            "messages_released_locally",
            "Messages this pod published, released to its subscribers by the publish itself",
            self.released_locally.clone(),
        );
        r.register(
            "ephemeral_published",
            "Messages published on ephemeral topics (no history, at-most-once)",
            self.ephemeral_published.clone(),
        );
    }

    pub fn epoch_change(&self, reason: &'static str) {
        self.epoch_changes
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn drop(&self, reason: &'static str) {
        self.dropped.get_or_create(&ReasonLabel { reason }).inc();
    }
}

/// Publishes (WebSocket and `/api/publish`) refused before anything was stored.
#[derive(Debug, Default)]
pub struct PublishMetrics {
    /// By reason: `max_message_size` (above `--max-message-size`), `backplane_max_payload`
    /// (above what the backplane carries).
    pub refused: Family<ReasonLabel, Counter>,
    /// Publishes appended or being fanned out, not yet answered (bounded by
    /// `--max-pod-publishes-in-flight`).
    pub in_flight: Gauge,
}

impl PublishMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "publishes_refused",
            "Publishes refused before the append, by reason",
            self.refused.clone(),
        );
        r.register(
            "publishes_in_flight",
            "Publishes appended or being fanned out, not yet answered",
            self.in_flight.clone(),
        );
    }

    pub fn refuse(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabel { reason }).inc();
    }
}

/// Calls to the session store.
#[derive(Debug)]
pub struct StoreMetrics {
    pub seconds: Family<OpLabel, Histogram, fn() -> Histogram>,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        Self {
            seconds: Family::new_with_constructor(latency_histogram),
        }
    }
}

impl StoreMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register_with_unit(
            "session_store",
            "Session store calls by operation",
            Unit::Seconds,
            self.seconds.clone(),
        );
    }

    pub fn observe(&self, op: &'static str, started: std::time::Instant) {
        self.seconds
            .get_or_create(&OpLabel { op })
            .observe(started.elapsed().as_secs_f64());
    }
}

/// Drain and rebalancing.
#[derive(Debug, Default)]
pub struct DrainMetrics {
    pub draining: Gauge,
    pub rebalance_closes: Counter,
    /// `drain-peer` runs in progress (a load balancer pod stopping).
    pub peer_drains: Gauge,
    /// Connections closed with 1001 because their load balancer pod was stopping.
    pub peer_drain_closes: Counter,
}

impl DrainMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register("draining", "1 while this pod drains", self.draining.clone());
        r.register(
            "rebalance_closes",
            "Connections closed with 1012 to even out the fleet",
            self.rebalance_closes.clone(),
        );
        r.register(
            "peer_drains_active",
            "drain-peer runs in progress (a load balancer pod stopping)",
            self.peer_drains.clone(),
        );
        r.register(
            "peer_drain_closes",
            "Connections closed with 1001 because their load balancer pod was stopping",
            self.peer_drain_closes.clone(),
        );
    }
}

/// Every component's metrics and the registry that exposes them.
#[derive(Debug)]
pub struct Metrics {
    pub conn: ConnectionMetrics,
    pub hub: HubMetrics,
    pub publish: PublishMetrics,
    pub store: StoreMetrics,
    pub drain: DrainMetrics,
    pub health: crate::health::HealthMetrics,
    pub presence: crate::presence::metrics::PresenceMetrics,
    pub hooks: crate::hooks::HookMetrics,
    pub events: crate::events::EventMetrics,
    registry: Registry,
}

impl Metrics {
    pub fn new() -> Self {
        let conn = ConnectionMetrics::new();
        let hub = HubMetrics::default();
        let publish = PublishMetrics::default();
        let store = StoreMetrics::default();
        let drain = DrainMetrics::default();
        let health = crate::health::HealthMetrics::default();
        let presence = crate::presence::metrics::PresenceMetrics::default();
        let hooks = crate::hooks::HookMetrics::default();
        let events = crate::events::EventMetrics::default();
        let mut registry = Registry::default();
        registry.register_collector(Box::new(process::ProcessCollector));
        let gateway = registry.sub_registry_with_prefix("gateway");
        gateway.register(
            "build",
            "The running build: crate version and source commit (`unknown` when not known)",
            Info::new(vec![("version", VERSION), ("commit", COMMIT)]),
        );
        conn.register(gateway);
        hub.register(gateway);
        publish.register(gateway);
        store.register(gateway);
        drain.register(gateway);
        health.register(gateway);
        presence.register(gateway);
        hooks.register(gateway);
        events.register(gateway);
        Self {
            conn,
            hub,
            publish,
            store,
            drain,
            health,
            presence,
            hooks,
            events,
            registry,
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The same in the Prometheus text format 0.0.4 (see [`to_prometheus_text`]).
    pub fn encode_prometheus_text(&self) -> String {
        to_prometheus_text(&self.encode())
    }
}

/// The crate version, `gateway_build_info{version}`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The source commit the build script found (`GATEWAY_BUILD_COMMIT` or `git`), else `unknown`.
pub const COMMIT: &str = env!("GATEWAY_COMMIT");

/// The Prometheus text format (0.0.4) of prometheus-client's OpenMetrics output, for scrapers
/// and linters that do not speak OpenMetrics (`promtool check metrics`, older agents):
/// OpenMetrics names a counter family without its `_total` and an info family without its
/// `_info`, where the older format names families after their samples and has no info type
/// (a gauge of 1 instead); `# UNIT` and `# EOF` are left out. Prometheus itself asks for
/// OpenMetrics and gets it unchanged. (prometheus-client has no such encoder yet.)
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut suffixes = std::collections::HashMap::new();
    for line in openmetrics.lines() {
        if let Some((name, kind)) = line
            .strip_prefix("# TYPE ")
            .and_then(|r| r.rsplit_once(' '))
        {
            match kind {
                "counter" => suffixes.insert(name, "_total"),
                "info" => suffixes.insert(name, "_info"),
                _ => None,
            };
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].into_iter().find_map(|prefix| {
            let (name, rest) = line.strip_prefix(prefix)?.split_once(' ')?;
            let suffix = suffixes.get(name)?;
            let rest = if prefix == "# TYPE " && rest == "info" {
                "gauge"
            } else {
                rest
            };
            Some(format!("{prefix}{name}{suffix} {rest}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prometheus_text_names_families_after_their_samples() {
        let m = Metrics::new();
        m.conn.outcome("accepted");
        let open = m.encode();
        assert!(
            open.contains("# TYPE gateway_connections counter\n"),
            "{open}"
        );
        assert!(open.contains("# TYPE gateway_build info\n"), "{open}");
        assert!(open.contains("# TYPE process_open_fds gauge\n"), "{open}");
        let text = m.encode_prometheus_text();
        for line in [
            "# HELP gateway_connections_total Connections by outcome",
            "# TYPE gateway_connections_total counter",
            "gateway_connections_total{outcome=\"accepted\"} 1",
            "# TYPE gateway_build_info gauge",
            "# TYPE process_cpu_seconds_total counter",
            "# TYPE gateway_delivery_latency_seconds histogram",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(text.contains(&format!("commit=\"{COMMIT}\"")), "{text}");
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
    }
}
