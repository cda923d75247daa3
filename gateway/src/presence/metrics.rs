//! Presence metrics: joins and leaves as the store decided them (each counted once, on the pod
//! whose call caused it).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    /// `join` or `leave`.
    pub kind: &'static str,
    /// `true` on a user's first join or last leave.
    pub user_edge: bool,
}

#[derive(Debug, Default)]
pub struct PresenceMetrics {
    pub events: Family<EventLabel, Counter>,
}

impl PresenceMetrics {
    pub fn event(&self, join: bool, user_edge: bool) {
        let kind = if join { "join" } else { "leave" };
        self.events
            .get_or_create(&EventLabel { kind, user_edge })
            .inc();
    }

    pub fn register(&self, r: &mut Registry) {
        r.register(
            "presence_events",
            "Presence joins and leaves this pod's store calls made",
            self.events.clone(),
        );
    }
}
