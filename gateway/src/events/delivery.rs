//! Delivery of one partition: the pod holding the partition's lease posts its oldest
//! undelivered events in batches `{"events":[…]}`, signed like hooks (`X-Gateway-Signature`),
//! and marks them delivered only after a 2xx. A failed batch is retried, the same batch, after
//! a wait that doubles from [`FIRST_RETRY`] up to `--webhook-retry-max`, with jitter; nothing
//! is dropped for failing. The lease is renewed before every attempt: a pod that lost it (a
//! long pause) stops and leaves the batch to the new holder, which claims it first.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;

use super::Events;
use super::metrics::PartitionLabel;
use super::store::{Entry, EventQueue};
use crate::Shared;
use crate::hooks::{HookTransport, HttpTransport, signing};

/// The first wait after a failed batch.
pub const FIRST_RETRY: Duration = Duration::from_millis(200);
/// How often a pod without the lease tries to take it.
const LEASE_POLL: Duration = Duration::from_secs(1);
/// Waits of an idle holder between reads: from the first to the last, doubling.
const IDLE_MIN: Duration = Duration::from_millis(50);
const IDLE_MAX: Duration = Duration::from_millis(500);

/// The lease outlives one attempt (the POST's timeout) with room for the store calls around
/// it; a dead holder's partition waits this long at most.
pub fn lease_ttl(events: &Events) -> Duration {
    events.settings.timeout * 2 + Duration::from_secs(5)
}

/// The wait before retry number `attempt` (0 = the first retry): exponential, capped, with
/// "equal jitter" (half fixed, half random) so pods do not retry in lockstep.
pub fn backoff(attempt: u32, max: Duration) -> Duration {
    let exp = FIRST_RETRY.saturating_mul(1u32 << attempt.min(16)).min(max);
    let half = exp / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

/// The body of a batch: the stored JSON of each event, in order.
pub fn body(batch: &[Entry]) -> Bytes {
    let mut out = String::from("{\"events\":[");
    for (i, entry) in batch.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&entry.json);
    }
    out.push_str("]}");
    Bytes::from(out)
}

/// Sleeps `d` unless the pod shuts down first (`false`).
async fn pause(shared: &Shared, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = shared.shutdown.cancelled() => false,
    }
}

/// One POST of `body`; `Ok` on a 2xx.
async fn post(events: &Events, transport: &HttpTransport, body: Bytes) -> Result<(), String> {
    let signature = signing::sign(&events.settings.secret, &body);
    let call = transport.post(&events.settings.url, body, signature);
    match tokio::time::timeout(events.settings.timeout, call).await {
        Err(_) => Err(format!("timed out after {:?}", events.settings.timeout)),
        Ok(Err(e)) => Err(e),
        Ok(Ok(reply)) if (200..300).contains(&reply.status) => Ok(()),
        Ok(Ok(reply)) => Err(format!("status {}", reply.status)),
    }
}

/// What became of a batch.
enum Outcome {
    Delivered,
    /// The lease was lost, or the pod is shutting down: the batch stays for the next holder.
    Stopped,
}

/// Posts `batch` until a 2xx, renewing the lease before each attempt.
async fn deliver(
    shared: &Shared,
    events: &Events,
    transport: &HttpTransport,
    partition: u32,
    batch: &[Entry],
) -> Outcome {
    let body = body(batch);
    let ttl = lease_ttl(events);
    for attempt in 0u32.. {
        if attempt > 0 {
            let wait = backoff(attempt - 1, events.settings.retry_max);
            if !pause(shared, wait).await {
                return Outcome::Stopped;
            }
            match events.log.lease(partition, &shared.pod, ttl).await {
                Ok(true) => {}
                Ok(false) => return Outcome::Stopped,
                // The store is away: keep the batch and try again (the lease may be lost by
                // then, which the next renewal tells).
                Err(e) => {
                    tracing::debug!(partition, error = %e, "event lease not renewed");
                    continue;
                }
            }
        }
        match post(events, transport, body.clone()).await {
            Ok(()) => return Outcome::Delivered,
            Err(e) => {
                events.metrics.events.retries.inc();
                // Once per outage, then every 50th attempt: a receiver down for an hour must
                // not flood the log.
                if attempt % 50 == 0 {
                    tracing::warn!(partition, events = batch.len(), attempt, error = %e, "event batch not delivered; retrying");
                } else {
                    tracing::debug!(partition, attempt, error = %e, "event batch not delivered; retrying");
                }
            }
        }
    }
    Outcome::Stopped
}

/// The delivery task of `partition` on this pod, until shutdown (then the lease is released).
pub async fn run(shared: Arc<Shared>, transport: HttpTransport, partition: u32) {
    let Some(events) = shared.events.clone() else {
        return;
    };
    let metrics = &events.metrics.events;
    let label = PartitionLabel { partition };
    let ttl = lease_ttl(&events);
    let mut held = false;
    let mut idle = IDLE_MIN;
    while !shared.shutdown.is_cancelled() {
        let now_held = match events.log.lease(partition, &shared.pod, ttl).await {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(partition, error = %e, "event lease not taken");
                false
            }
        };
        if now_held != held {
            held = now_held;
            if held {
                metrics.leases.inc();
            } else {
                metrics.leases.dec();
                metrics.backlog.get_or_create(&label).set(0);
                metrics.lag_seconds.get_or_create(&label).set(0);
            }
        }
        if !held {
            if !pause(&shared, LEASE_POLL).await {
                break;
            }
            continue;
        }
        match events
            .log
            .bound(partition, events.settings.backlog_max)
            .await
        {
            Ok((backlog, dropped)) => {
                metrics.backlog.get_or_create(&label).set(backlog as i64);
                if dropped > 0 {
                    metrics.dropped.inc_by(dropped);
                    tracing::error!(
                        partition,
                        dropped,
                        bound = events.settings.backlog_max,
                        "undelivered events dropped: the backlog bound was reached"
                    );
                }
            }
            Err(e) => tracing::debug!(partition, error = %e, "event backlog not read"),
        }
        let batch = match events
            .log
            .next_batch(partition, &shared.pod, events.settings.batch_max)
            .await
        {
            Ok(batch) => batch,
            Err(e) => {
                tracing::debug!(partition, error = %e, "events not read");
                Vec::new()
            }
        };
        if batch.is_empty() {
            metrics.lag_seconds.get_or_create(&label).set(0);
            if !pause(&shared, idle).await {
                break;
            }
            idle = (idle * 2).min(IDLE_MAX);
            continue;
        }
        idle = IDLE_MIN;
        let oldest = batch[0].at_ms;
        let lag = session_store::now_ms().saturating_sub(oldest) / 1000;
        metrics.lag_seconds.get_or_create(&label).set(lag as i64);
        match deliver(&shared, &events, &transport, partition, &batch).await {
            Outcome::Delivered => {
                let ids: Vec<String> = batch.iter().map(|e| e.id.clone()).collect();
                // Delivered: a failed ack only means a redelivery (receivers de-duplicate).
                if let Err(e) = events.log.ack(partition, &ids).await {
                    tracing::warn!(partition, error = %e, "delivered events not acknowledged; they will be sent again");
                } else {
                    metrics.delivered.inc_by(ids.len() as u64);
                }
            }
            Outcome::Stopped => {}
        }
    }
    if held {
        metrics.leases.dec();
        let _ = events.log.release(partition, &shared.pod).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let max = Duration::from_secs(2);
        for attempt in 0..20 {
            let d = backoff(attempt, max);
            let exp = FIRST_RETRY.saturating_mul(1 << attempt.min(16)).min(max);
            assert!(d >= exp / 2 && d <= exp, "{attempt}: {d:?}");
        }
    }

    #[test]
    fn a_batch_body_is_the_events_in_order() {
        let entries: Vec<Entry> = ["{\"id\":\"a\"}", "{\"id\":\"b\"}"]
            .iter()
            .enumerate()
            .map(|(i, j)| Entry {
                id: i.to_string(),
                json: j.to_string(),
                at_ms: 0,
            })
            .collect();
        let v: serde_json::Value = serde_json::from_slice(&body(&entries)).unwrap();
        assert_eq!(v["events"][0]["id"], "a");
        assert_eq!(v["events"][1]["id"], "b");
        assert_eq!(body(&[]).as_ref(), b"{\"events\":[]}");
    }
}
