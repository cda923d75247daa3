//! The lifecycle events' own metrics: what was appended (per type), delivered, retried,
//! dropped beyond the backlog bound, and how far behind delivery is.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    pub partition: u32,
}

#[derive(Debug, Default)]
pub struct EventMetrics {
    /// Events written to the log, per type.
    pub appended: Family<TypeLabel, Counter>,
    /// Events that could not be appended (the store did not answer). With Redis they stay
    /// staged and the sweeper relays them; in memory they are lost, and logged.
    pub append_failed: Family<TypeLabel, Counter>,
    /// Staged events the sweeper appended because the pod that staged them did not.
    pub relayed: Counter,
    /// Events the webhook acknowledged with a 2xx.
    pub delivered: Counter,
    /// Batch POSTs that failed (error, timeout, non-2xx) and are retried.
    pub retries: Counter,
    /// Undelivered events trimmed because a partition exceeded `--webhook-backlog-max`.
    pub dropped: Counter,
    /// Undelivered events per partition this pod delivers (read at each pass).
    pub backlog: Family<PartitionLabel, Gauge>,
    /// Age in seconds of the oldest event of the batch being delivered, per partition.
    pub lag_seconds: Family<PartitionLabel, Gauge>,
    /// Partitions whose delivery lease this pod holds.
    pub leases: Gauge,
    /// Sessions the sweeper ended because their resume window passed.
    pub expired: Counter,
}

impl EventMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "events_appended",
            "Lifecycle events written to the event log, by type",
            self.appended.clone(),
        );
        r.register(
            "events_append_failed",
            "Lifecycle events that could not be appended (store unavailable), by type",
            self.append_failed.clone(),
        );
        r.register(
            "events_relayed",
            "Staged lifecycle events the sweeper appended for a pod that did not",
            self.relayed.clone(),
        );
        r.register(
            "events_delivered",
            "Lifecycle events acknowledged by the webhook",
            self.delivered.clone(),
        );
        r.register(
            "events_retries",
            "Event batch POSTs that failed and are retried",
            self.retries.clone(),
        );
        r.register(
            "events_dropped",
            "Undelivered events trimmed beyond --webhook-backlog-max",
            self.dropped.clone(),
        );
        r.register(
            "events_backlog",
            "Undelivered events per partition delivered by this pod",
            self.backlog.clone(),
        );
        r.register(
            "events_lag_seconds",
            "Age of the oldest event being delivered, per partition",
            self.lag_seconds.clone(),
        );
        r.register(
            "events_leases",
            "Event partitions this pod delivers",
            self.leases.clone(),
        );
        r.register(
            "events_sessions_expired",
            "Sessions ended by the sweeper after their resume window",
            self.expired.clone(),
        );
    }
}
