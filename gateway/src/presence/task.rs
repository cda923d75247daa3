//! The pod's presence task: one batch of changes every heartbeat interval, refreshes of the
//! attached members, sweeps of expired members, and what happens to the events the store made.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use protocol::Topic;

use super::{Change, Event, PresenceStore, SWEEP_BEATS, events};
use crate::Shared;

/// The live pods of the fleet view, this one included.
pub fn live_pods(shared: &Shared) -> HashSet<String> {
    let mut live: HashSet<String> = shared
        .cluster
        .pods(crate::cluster::max_age(shared))
        .into_iter()
        .map(|p| p.beat.pod)
        .collect();
    live.insert(shared.pod.clone());
    live
}

/// Counts the events (metrics) and logs them; the store made each one exactly once. Logged
/// ones (join/leave topics) go out to the topic's subscribers on every pod.
pub(super) async fn record(shared: &Shared, topic: &Topic, events: &[Event]) {
    for event in events {
        shared.metrics.presence.event(event.join, event.user_edge);
        tracing::debug!(%topic, join = event.join, session = %event.member.session, pseq = ?event.logged.as_ref().map(|l| l.pseq), "presence");
    }
    events::announce(shared, topic, events).await;
}

/// Writes one beat's batch (and, on `refresh`, registers the topics for sweeps).
async fn flush(shared: &Shared, refresh: bool) {
    let ttl = shared.config.resume_window;
    let registry = &shared.presence_registry;
    let batch = registry.batch(refresh);
    let mut topics: Vec<Topic> = std::mem::take(&mut *registry.new_topics.lock().expect("lock"))
        .into_iter()
        .collect();
    if refresh {
        topics.extend(batch.keys().cloned());
    }
    if !topics.is_empty()
        && let Err(e) = shared.presence.register(&topics).await
    {
        tracing::debug!(error = %e, "presence topics not registered");
        registry.new_topics.lock().expect("lock").extend(topics);
    }
    for (topic, changes) in batch {
        match shared
            .presence
            .apply(&topic, &shared.pod, ttl, &changes)
            .await
        {
            Ok(events) => {
                record(shared, &topic, &events).await;
                crate::events::hooks::presence(shared, &topic, &events).await;
            }
            Err(e) => {
                // Retried at the next beat (attaches and detaches alike, in order).
                tracing::debug!(%topic, error = %e, "presence batch not written");
                let mut pending = shared.presence_registry.pending.lock().expect("lock");
                let retry: Vec<(Topic, Change)> =
                    changes.into_iter().map(|c| (topic.clone(), c)).collect();
                pending.splice(0..0, retry);
            }
        }
    }
}

/// Removes expired members of every presence topic. Only the first live pod (by name) sweeps:
/// a sweep reads each topic's whole member hash, so one sweeper keeps the cost independent of
/// the fleet's size. (Pods whose views differ may both sweep; the store removes each member
/// once.)
async fn sweep(shared: &Shared) {
    let live = live_pods(shared);
    if live.iter().min() != Some(&shared.pod) {
        return;
    }
    let topics = match shared.presence.topics().await {
        Ok(topics) => topics,
        Err(e) => return tracing::debug!(error = %e, "presence topics not read"),
    };
    let live: Vec<String> = live.into_iter().collect();
    for topic in topics {
        match shared.presence.sweep(&topic, &live).await {
            Ok(events) => {
                record(shared, &topic, &events).await;
                crate::events::hooks::presence(shared, &topic, &events).await;
            }
            Err(e) => tracing::debug!(%topic, error = %e, "presence not swept"),
        }
    }
}

/// The pod's presence task: a batch every heartbeat interval, refreshes every third of the
/// resume window, sweeps every [`SWEEP_BEATS`] beats; a last batch at shutdown.
pub async fn run(shared: Arc<Shared>) {
    let interval = shared.config.heartbeat_interval;
    let refresh_beats =
        ((shared.config.resume_window / 3).as_millis() / interval.as_millis().max(1)).max(1) as u64;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut beat = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.shutdown.cancelled() => break,
        }
        beat += 1;
        flush(&shared, beat.is_multiple_of(refresh_beats)).await;
        if beat.is_multiple_of(u64::from(SWEEP_BEATS)) {
            sweep(&shared).await;
        }
    }
    // The connections are closed by now (drain first, then shutdown): write their detaches, so
    // the members expire with their sessions' resume windows rather than linger as this pod's.
    let _ = tokio::time::timeout(Duration::from_secs(2), flush(&shared, false)).await;
}
