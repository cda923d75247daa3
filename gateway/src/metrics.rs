//! Prometheus metrics (OpenMetrics text on the admin port's `/metrics`).
//!
//! Each component owns a struct of its metrics with a `register` method; [`Metrics`] gathers
//! them into one registry under the `gateway_` prefix. Names follow design §6; counters get the
//! `_total` suffix from the encoder.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
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
    /// Upgrade attempts by outcome: `accepted`, `capacity`, `draining`, `origin`.
    pub total: Family<OutcomeLabel, Counter>,
    pub closes: Family<CodeLabel, Counter>,
    pub subscriptions: Gauge,
    pub received: Counter,
    pub delivered: Counter,
    pub delivery_latency: Histogram,
}

impl ConnectionMetrics {
    pub fn new() -> Self {
        Self {
            active: Gauge::default(),
            capacity: Gauge::default(),
            total: Family::default(),
            closes: Family::default(),
            subscriptions: Gauge::default(),
            received: Counter::default(),
            delivered: Counter::default(),
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
            "WebSocket upgrade attempts by outcome",
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
}

impl DrainMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register("draining", "1 while this pod drains", self.draining.clone());
        r.register(
            "rebalance_closes",
            "Connections closed with 1012 to even out the fleet",
            self.rebalance_closes.clone(),
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
    registry: Registry,
}

impl Metrics {
    pub fn new() -> Self {
        let conn = ConnectionMetrics::new();
        let hub = HubMetrics::default();
        let publish = PublishMetrics::default();
        let store = StoreMetrics::default();
        let drain = DrainMetrics::default();
        let mut registry = Registry::with_prefix("gateway");
        conn.register(&mut registry);
        hub.register(&mut registry);
        publish.register(&mut registry);
        store.register(&mut registry);
        drain.register(&mut registry);
        Self {
            conn,
            hub,
            publish,
            store,
            drain,
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
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
