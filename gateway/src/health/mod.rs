//! Backend health, checked in the background and cached, so that `/readyz` never waits on a
//! backend and a blip never makes the fleet unready at once.
//!
//! Every `--backend-check-interval` one task pings Redis (bounded by `--store-timeout`) and
//! reads the NATS client's connection state. `/readyz` reads the cache: a backend that has
//! never answered keeps the pod unready (it cannot create sessions), one that answered before
//! makes it unready only once it has been down for `--unready-after-backend-down`. A Redis
//! failover or a NATS reconnect takes seconds, and every pod sees it at the same moment: if
//! each went unready on the first failed check, the balancer would have no server left and
//! refuse every upgrade for the length of the blip, while the open connections carried on.
//! Why a backend is down goes to the log, never to the public port.

use std::sync::Mutex;
use std::time::Duration;

use backplane::Backplane;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use session_store::SessionStore;
use tokio::time::Instant;

use crate::Shared;

/// The backends a pod depends on, as metric labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    pub backend: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Redis,
    Nats,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Redis => "redis",
            Backend::Nats => "nats",
        }
    }
}

/// `gateway_backend_up{backend}`: 1 while the last check succeeded.
#[derive(Debug, Default)]
pub struct HealthMetrics {
    pub up: Family<BackendLabel, Gauge>,
}

impl HealthMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "backend_up",
            "1 while the backend answered its last health check (checked in the background)",
            self.up.clone(),
        );
    }
}

#[derive(Debug)]
struct State {
    up: bool,
    /// When `up` last changed (or the pod started).
    since: Instant,
    /// Whether the backend ever answered since the pod started.
    ever_up: bool,
}

/// The cached health of each configured backend (memory ones are not listed: always up).
#[derive(Debug)]
pub struct BackendHealth {
    backends: Vec<(Backend, Mutex<State>)>,
}

/// Why the pod may not take a new connection because of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable(pub Backend);

impl BackendHealth {
    pub fn new(redis: bool, nats: bool) -> Self {
        let state = || {
            Mutex::new(State {
                up: false,
                since: Instant::now(),
                ever_up: false,
            })
        };
        let mut backends = Vec::new();
        if redis {
            backends.push((Backend::Redis, state()));
        }
        if nats {
            backends.push((Backend::Nats, state()));
        }
        Self { backends }
    }

    /// The first backend that keeps the pod unready: never up, or down longer than `grace`.
    pub fn unavailable(&self, grace: Duration) -> Option<Unavailable> {
        self.backends.iter().find_map(|(backend, state)| {
            let s = state.lock().expect("health lock");
            let down = !s.up && (!s.ever_up || s.since.elapsed() >= grace);
            down.then_some(Unavailable(*backend))
        })
    }

    /// Records a check; returns whether the state changed.
    fn record(&self, backend: Backend, up: bool) -> bool {
        let Some((_, state)) = self.backends.iter().find(|(b, _)| *b == backend) else {
            return false;
        };
        let mut s = state.lock().expect("health lock");
        s.ever_up |= up;
        if s.up == up {
            return false;
        }
        s.up = up;
        s.since = Instant::now();
        true
    }

    fn has(&self, backend: Backend) -> bool {
        self.backends.iter().any(|(b, _)| *b == backend)
    }
}

/// Checks the backends until shutdown.
pub async fn run_checks(shared: std::sync::Arc<Shared>) {
    let health = &shared.health;
    let every = shared.config.backend_check_interval;
    loop {
        if health.has(Backend::Redis) {
            let result =
                tokio::time::timeout(shared.config.store_timeout, shared.store.ping()).await;
            let error = match result {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!(
                    "no answer within --store-timeout {:?}",
                    shared.config.store_timeout
                )),
            };
            report(&shared, Backend::Redis, error);
        }
        if health.has(Backend::Nats) {
            let error = (!shared.backplane.is_connected()).then(|| "not connected".to_owned());
            report(&shared, Backend::Nats, error);
        }
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

fn report(shared: &Shared, backend: Backend, error: Option<String>) {
    let up = error.is_none();
    shared
        .metrics
        .health
        .up
        .get_or_create(&BackendLabel {
            backend: backend.name(),
        })
        .set(i64::from(up));
    if shared.health.record(backend, up) {
        match error {
            None => tracing::info!(backend = backend.name(), "backend up"),
            Some(error) => tracing::warn!(
                backend = backend.name(),
                %error,
                unready_after = ?shared.config.unready_after_backend_down,
                "backend down"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_blip_shorter_than_the_grace_keeps_the_pod_ready() {
        let grace = Duration::from_secs(10);
        let h = BackendHealth::new(true, true);
        // Never answered: unready from the start, whatever the grace.
        assert_eq!(h.unavailable(grace), Some(Unavailable(Backend::Redis)));
        h.record(Backend::Redis, true);
        assert_eq!(h.unavailable(grace), Some(Unavailable(Backend::Nats)));
        h.record(Backend::Nats, true);
        assert_eq!(h.unavailable(grace), None);
        // Down: still ready through the grace, then unready.
        assert!(h.record(Backend::Redis, false));
        assert!(!h.record(Backend::Redis, false));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(h.unavailable(grace), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(h.unavailable(grace), Some(Unavailable(Backend::Redis)));
        // Back: ready at once.
        h.record(Backend::Redis, true);
        assert_eq!(h.unavailable(grace), None);
        // Memory backends are not checked.
        assert_eq!(BackendHealth::new(false, false).unavailable(grace), None);
    }
}
