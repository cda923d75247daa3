//! Drain: stop taking connections, then close every client with 1001, paced.
//!
//! Closing thousands of clients at once would send them all to the rest of the fleet in the same
//! second; instead the closes are spread over a window sized from the connection count (at
//! least `--drain-rate` per second, at most `--drain-window`), and each close carries a small
//! random `after_ms` so even clients closed together reconnect apart. A drain is idempotent: a
//! second request (SIGTERM after the preStop hook's drain) joins the first.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use protocol::{CloseAdvice, CloseCode};
use rand::Rng;
use tokio::sync::Mutex;

use crate::Shared;

/// Largest `after_ms` given to a drained client: reconnects spread over this on top of pacing.
const MAX_AFTER_MS: u64 = 1_000;

#[derive(Debug, Default)]
pub struct Drain {
    draining: AtomicBool,
    /// Set when the process was told to stop (SIGTERM): its drain ends in exit, not undone.
    terminating: AtomicBool,
    /// Peers (load balancer pods) whose connections are being closed by `drain-peer`.
    peers: std::sync::Mutex<HashSet<IpAddr>>,
    /// Close frames sent by the drain so far.
    closed: AtomicU64,
    /// Held while a drain runs, so a second request waits for it instead of starting another.
    running: Mutex<()>,
}

impl Drain {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn closed(&self) -> u64 {
        self.closed.load(Ordering::Relaxed)
    }

    /// Marks the drain that follows as the process's last: it cannot be undone.
    pub fn terminate(&self) {
        self.terminating.store(true, Ordering::Release);
    }

    /// Undoes an operator's drain: the pod takes connections again (readiness, agent-check and
    /// upgrades follow at once) and a drain still closing connections stops at its next close.
    /// Refused once the process is stopping. Returns whether the pod was draining.
    pub fn undrain(&self) -> Result<bool, Terminating> {
        if self.terminating.load(Ordering::Acquire) {
            return Err(Terminating);
        }
        Ok(self.draining.swap(false, Ordering::AcqRel))
    }

    /// Peers being drained now.
    pub fn peer_draining(&self, peer: IpAddr) -> bool {
        self.peers.lock().expect("peer drains lock").contains(&peer)
    }
}

/// The pod is stopping (SIGTERM): its drain cannot be undone.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the pod is stopping (SIGTERM): its drain cannot be undone")]
pub struct Terminating;

/// The pacing of a drain of `connections` clients: the window and the pause between closes.
pub fn pacing(connections: usize, rate: u32, max_window: Duration) -> (Duration, Duration) {
    if connections == 0 {
        return (Duration::ZERO, Duration::ZERO);
    }
    let at_rate = Duration::from_secs_f64(connections as f64 / f64::from(rate.max(1)));
    let window = at_rate.min(max_window);
    (window, window / connections as u32)
}

/// Drains the pod and returns once every connection is closed or the close grace has passed
/// after the last close frame. New upgrades are refused from the first moment.
pub async fn drain(shared: &Shared) {
    shared.drain.draining.store(true, Ordering::Release);
    shared.metrics.drain.draining.set(1);
    let _running = shared.drain.running.lock().await;

    // Connections still opening while the first batch is closed are caught by later rounds.
    loop {
        let controls = shared.connections.open_controls();
        if controls.is_empty() {
            break;
        }
        let (window, pause) = pacing(
            controls.len(),
            shared.config.drain_rate,
            shared.config.drain_window,
        );
        tracing::info!(
            connections = controls.len(),
            ?window,
            "closing clients with 1001"
        );
        for control in controls {
            if !shared.drain.is_draining() {
                tracing::info!(left = shared.connections.len(), "drain undone");
                return;
            }
            let after_ms = rand::rng().random_range(0..MAX_AFTER_MS);
            control.request_close(CloseCode::GoingAway, CloseAdvice::reconnect(Some(after_ms)));
            shared.drain.closed.fetch_add(1, Ordering::Relaxed);
            // A relative pause: after a stall the drain slows down rather than bursting to
            // catch up, so the rate never exceeds the plan.
            tokio::time::sleep(pause).await;
        }
    }
    let deadline = tokio::time::Instant::now() + shared.config.close_grace;
    while !shared.connections.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(left = shared.connections.len(), "drain finished");
}

/// Closes with 1001, paced as a drain, every connection whose socket peer is `peer` (a load
/// balancer pod about to stop), in rounds until none is left or the drain window and the close
/// grace have passed; returns how many close frames it requested. Other connections and the
/// pod's readiness are untouched. A second request for the same peer joins the first (0).
pub async fn drain_peer(shared: &Shared, peer: IpAddr) -> u64 {
    if !shared
        .drain
        .peers
        .lock()
        .expect("peer drains lock")
        .insert(peer)
    {
        return 0;
    }
    shared.metrics.drain.peer_drains.inc();
    let deadline =
        tokio::time::Instant::now() + shared.config.drain_window + shared.config.close_grace;
    let mut closed = 0;
    loop {
        // Connections already asked to close are finishing their close handshake: they are
        // neither asked again nor counted again, and cost the round no pause.
        let controls: Vec<_> = shared
            .connections
            .open_controls_from(peer)
            .into_iter()
            .filter(|c| !c.is_closing())
            .collect();
        if controls.is_empty() || tokio::time::Instant::now() >= deadline {
            break;
        }
        let (window, pause) = pacing(
            controls.len(),
            shared.config.drain_rate,
            shared.config.drain_window,
        );
        tracing::info!(%peer, connections = controls.len(), ?window, "closing the peer's connections with 1001");
        for control in controls {
            let after_ms = rand::rng().random_range(0..MAX_AFTER_MS);
            control.request_close(CloseCode::GoingAway, CloseAdvice::reconnect(Some(after_ms)));
            shared.metrics.drain.peer_drain_closes.inc();
            closed += 1;
            tokio::time::sleep(pause).await;
        }
    }
    // Until the close handshakes are done, so that `connections` reaches 0 for the caller.
    while shared.connections.count_from(peer) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shared
        .drain
        .peers
        .lock()
        .expect("peer drains lock")
        .remove(&peer);
    shared.metrics.drain.peer_drains.dec();
    tracing::info!(%peer, closed, left = shared.connections.count_from(peer), "peer drain finished");
    closed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_is_bounded_by_rate_and_window() {
        let w = Duration::from_secs(30);
        assert_eq!(pacing(0, 500, w), (Duration::ZERO, Duration::ZERO));
        let (window, pause) = pacing(1_000, 500, w);
        assert_eq!(window, Duration::from_secs(2));
        assert_eq!(pause, Duration::from_millis(2));
        let (window, _) = pacing(100_000, 500, w);
        assert_eq!(window, w);
    }
}
