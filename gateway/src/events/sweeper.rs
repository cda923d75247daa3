//! The sweeper: every heartbeat interval each pod marks itself alive; the holder of the
//! sweeper lease (one pod at a time) then detaches the sessions of pods whose liveness mark is
//! gone (killed with -9: they never recorded a detach), with a deadline one resume window from
//! now, ends detached sessions whose deadline passed (`session.ended {why:"expired"}` and a
//! `topic.vacated` for each topic it was the last session of), and appends the events pods
//! staged but never appended (see [`super::outbox`]).

use std::sync::Arc;
use std::time::Duration;

use session_store::now_ms;

use super::store::Tracker;
use super::{Event, Kind, Why, hooks};
use crate::Shared;

/// Expired sessions ended per sweep at most; the rest wait for the next one.
const SWEEP_MAX: usize = 1_000;

/// How long a pod's liveness mark lasts without renewal: five heartbeats, at least 3 s, so a
/// busy pod is not taken for dead.
pub fn alive_ttl(shared: &Shared) -> Duration {
    (shared.config.heartbeat_interval * 5).max(Duration::from_secs(3))
}

async fn sweep(shared: &Shared) {
    let Some(events) = &shared.events else { return };
    let tracker = &events.tracker;
    let deadline = now_ms() + shared.config.resume_window.as_millis() as u64;
    match tracker.dead_pods().await {
        Ok(dead) => {
            for pod in dead.into_iter().filter(|p| *p != shared.pod) {
                match tracker.detach_pod(&pod, deadline).await {
                    Ok(n) => {
                        tracing::info!(%pod, sessions = n, "events: sessions of a dead pod detached")
                    }
                    Err(e) => tracing::debug!(%pod, error = %e, "dead pod's sessions not detached"),
                }
            }
        }
        Err(e) => tracing::debug!(error = %e, "dead pods not read"),
    }
    let expired = match tracker.expired(now_ms(), SWEEP_MAX).await {
        Ok(expired) => expired,
        Err(e) => return tracing::debug!(error = %e, "expired sessions not read"),
    };
    match events.relay_stranded().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(events = n, "events: staged events relayed"),
        Err(e) => tracing::debug!(error = %e, "staged events not relayed"),
    }
    for session in expired {
        let event = Event::new(Kind::SessionEnded)
            .session(&session)
            .data(serde_json::json!({"why": Why::Expired.as_str()}));
        match tracker.end(&session, true, &event).await {
            Ok(Some(ended)) => {
                if ended.ended.is_some() {
                    events.metrics.events.expired.inc();
                }
                hooks::record_ended(events, &session, &ended).await;
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(%session, error = %e, "expired session not ended"),
        }
    }
}

/// The pod's sweeper task, until shutdown.
pub async fn run(shared: Arc<Shared>) {
    let Some(events) = shared.events.clone() else {
        return;
    };
    let interval = shared.config.heartbeat_interval;
    let lease = interval * 3 + Duration::from_secs(2);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.shutdown.cancelled() => break,
        }
        if let Err(e) = events.tracker.alive(&shared.pod, alive_ttl(&shared)).await {
            tracing::debug!(error = %e, "pod not marked alive");
        }
        match events.tracker.sweeper_lease(&shared.pod, lease).await {
            Ok(true) => sweep(&shared).await,
            Ok(false) => {}
            Err(e) => tracing::debug!(error = %e, "sweeper lease not taken"),
        }
    }
}
