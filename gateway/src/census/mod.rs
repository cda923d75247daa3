//! Subscribers per topic, fleet-wide: what `GET /api/topics/{topic}` reports.
//!
//! Each pod reports its own count of connected subscribers per topic, in batches once per
//! heartbeat interval (only the topics whose count changed, plus every topic every
//! [`REFRESH_BEATS`] beats so the entries do not expire). A reader sums the counts of the pods
//! in the fleet view: a pod that died drops out of the sum by the view's rule (three missed
//! heartbeats), and its entries expire from the store after [`ENTRY_TTL`]. This pod's own count
//! is read from its hub directly, so a subscriber is counted here at once.
//!
//! Layout: this file (the [`Census`] trait, [`AnyCensus`], the reporting task and the fleet
//! sum); [`memory`] (in-process, the embedded default); [`redis`] (a hash per topic, one field
//! per pod, under the topic's hash tag).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use protocol::Topic;

use crate::{Shared, Store};

pub mod memory;
pub mod redis;

/// Every this many heartbeats a pod reports all its topics, not only the changed ones.
pub const REFRESH_BEATS: u32 = 10;
/// How long a pod's report of a topic lives in the store without being refreshed.
pub const ENTRY_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CensusError {
    #[error("census unavailable: {0}")]
    Unavailable(String),
}

/// Per-pod subscriber counts of topics. Cheap to clone.
pub trait Census: Send + Sync + 'static {
    /// Sets `pod`'s count of each topic (0 removes the pod's entry).
    fn report(
        &self,
        pod: &str,
        counts: &[(Topic, usize)],
    ) -> impl Future<Output = Result<(), CensusError>> + Send;

    /// Every pod's reported count of `topic`.
    fn counts(
        &self,
        topic: &Topic,
    ) -> impl Future<Output = Result<HashMap<String, usize>, CensusError>> + Send;
}

/// The census of the store the pod runs with: in Redis when the store is, else in process.
#[derive(Debug, Clone)]
pub enum AnyCensus {
    Memory(memory::MemoryCensus),
    Redis(redis::RedisCensus),
}

impl AnyCensus {
    pub fn for_store(store: &Store) -> Self {
        match store {
            Store::Memory(_) => Self::Memory(memory::MemoryCensus::default()),
            Store::Redis(store) => Self::Redis(redis::RedisCensus::new(store.clone())),
        }
    }
}

impl Census for AnyCensus {
    async fn report(&self, pod: &str, counts: &[(Topic, usize)]) -> Result<(), CensusError> {
        match self {
            Self::Memory(c) => c.report(pod, counts).await,
            Self::Redis(c) => Box::pin(c.report(pod, counts)).await,
        }
    }

    async fn counts(&self, topic: &Topic) -> Result<HashMap<String, usize>, CensusError> {
        match self {
            Self::Memory(c) => c.counts(topic).await,
            Self::Redis(c) => Box::pin(c.counts(topic)).await,
        }
    }
}

/// Connected subscribers of `topic` on every live pod.
pub async fn subscribers(shared: &Shared, topic: &Topic) -> Result<usize, CensusError> {
    let live: HashSet<String> = shared
        .cluster
        .pods(crate::cluster::max_age(shared))
        .into_iter()
        .map(|p| p.beat.pod)
        .collect();
    let others: usize = shared
        .census
        .counts(topic)
        .await?
        .into_iter()
        .filter(|(pod, _)| *pod != shared.pod && live.contains(pod))
        .map(|(_, n)| n)
        .sum();
    Ok(others + shared.hub.local_count(topic))
}

/// Reports this pod's counts once per heartbeat interval until shutdown, then removes them.
pub async fn run(shared: Arc<Shared>) {
    let mut reported: HashMap<Topic, usize> = HashMap::new();
    let mut tick = tokio::time::interval(shared.config.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut beat = 0u32;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.shutdown.cancelled() => break,
        }
        let now = shared.hub.local_counts();
        let refresh = beat.is_multiple_of(REFRESH_BEATS);
        beat = beat.wrapping_add(1);
        let changes = changed(&reported, &now, refresh);
        if changes.is_empty() {
            continue;
        }
        match shared.census.report(&shared.pod, &changes).await {
            Ok(()) => reported = now,
            // Reported again next beat: `reported` still holds what the store has.
            Err(e) => tracing::debug!(error = %e, "subscriber counts not reported"),
        }
    }
    // The pod is gone: remove its entries rather than wait for the view to forget it.
    let gone: Vec<(Topic, usize)> = reported.into_keys().map(|t| (t, 0)).collect();
    if !gone.is_empty() {
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            shared.census.report(&shared.pod, &gone),
        )
        .await;
    }
}

/// What to report: topics whose count differs from the last report (gone ones as 0), or, on a
/// refresh beat, every current topic too.
fn changed(
    reported: &HashMap<Topic, usize>,
    now: &HashMap<Topic, usize>,
    refresh: bool,
) -> Vec<(Topic, usize)> {
    let mut out: Vec<(Topic, usize)> = now
        .iter()
        .filter(|(t, n)| refresh || reported.get(*t) != Some(n))
        .map(|(t, n)| (t.clone(), *n))
        .collect();
    out.extend(
        reported
            .keys()
            .filter(|t| !now.contains_key(*t))
            .map(|t| (t.clone(), 0)),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> Topic {
        Topic::new(name).unwrap()
    }

    #[test]
    fn only_changes_are_reported_between_refreshes() {
        let before = HashMap::from([(t("a"), 1), (t("b"), 2), (t("c"), 3)]);
        let now = HashMap::from([(t("a"), 1), (t("b"), 5)]);
        let mut changes = changed(&before, &now, false);
        changes.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(changes, vec![(t("b"), 5), (t("c"), 0)]);
        let mut all = changed(&before, &now, true);
        all.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(all, vec![(t("a"), 1), (t("b"), 5), (t("c"), 0)]);
        assert!(changed(&now, &now, false).is_empty());
    }
}
