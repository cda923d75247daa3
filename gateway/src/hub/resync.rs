//! Finding topics whose store top is ahead of what this pod released.
//!
//! The backplane is at-most-once: a message it drops is noticed by the next arrival of the same
//! topic (a gap), but a dropped *last* message is followed by nothing. So every
//! `--topic-resync-interval` (jittered, so pods do not read in step), and at once after the
//! backplane reconnects, this task reads the tops of all local topics in one pipelined batch and
//! wakes only the topic tasks whose top differs from what they released. Those catch up from
//! history a few at a time (the hub's catch-up semaphore), so a reconnect of a pod with
//! thousands of topics is a handful of pipelined reads, not thousands of history reads at once.

use std::sync::Arc;

use backplane::Backplane;
use rand::Rng;
use session_store::SessionStore;

use super::HubInner;

pub(super) async fn run(hub: Arc<HubInner>) {
    let mut reconnects = hub.backplane.reconnects();
    reconnects.borrow_and_update();
    let mut watching = true;
    let interval = hub.config.resync_interval;
    loop {
        let pause = interval.mul_f64(rand::rng().random_range(0.75..1.25));
        tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
            changed = reconnects.changed(), if watching => {
                // An error means the backplane is gone (shutdown): keep the timer only.
                watching = changed.is_ok();
                tracing::debug!("backplane reconnected: checking every topic against the store");
            }
        }
        check(&hub).await;
    }
}

/// One round: wakes every topic whose store top is not what it released.
async fn check(hub: &HubInner) {
    let entries: Vec<_> = hub
        .topics
        .lock()
        .expect("hub lock")
        .iter()
        .filter(|(_, e)| !e.ephemeral)
        .map(|(t, e)| (t.clone(), e.clone()))
        .collect();
    if entries.is_empty() {
        return;
    }
    let topics: Vec<_> = entries.iter().map(|(t, _)| t.clone()).collect();
    let started = std::time::Instant::now();
    let tops = match hub.store.tops(&topics).await {
        Ok(tops) => tops,
        Err(e) => {
            tracing::debug!(error = %e, "resync: tops not read; next round retries");
            return;
        }
    };
    hub.metrics.store.observe("tops", started);
    for ((_, entry), top) in entries.iter().zip(tops) {
        let released = entry.released.lock().expect("released lock").clone();
        if released.as_ref() != Some(&top) {
            entry.behind.notify_one();
        }
    }
}
