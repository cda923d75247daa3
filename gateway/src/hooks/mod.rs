//! Hooks: the application's backend in the loop, over HTTP (design §10, `docs/backend.md`).
//!
//! Layout:
//! - this file: [`Hooks`], the gate every call passes (a per-pod concurrency bound, the
//!   breaker, the timeout), and the four calls with their typed answers.
//! - `transport`: where requests go (HTTP(S) with a pooled client, or an in-process function).
//! - `breaker`: opens after consecutive failures, so a dead backend costs clients an instant
//!   `unavailable` instead of a timeout each.
//! - `signing`: the `X-Gateway-Signature` HMAC.
//! - `wire`: the JSON bodies.
//!
//! A call never queues: when `--hook-concurrency` calls are in flight the next one is refused
//! at once (`unavailable`), so a slow backend cannot pile up memory or stall the pod; everything
//! not waiting for a hook (deliveries, other connections) goes on as before.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

mod breaker;
pub mod signing;
pub mod transport;
pub mod wire;

pub use transport::{AnyTransport, FnTransport, HookTransport, HttpTransport, Reply};

use breaker::Breaker;

/// The hooks of design §10.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HookLabel {
    pub hook: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookOutcomeLabel {
    pub hook: &'static str,
    /// `ok`, `refused` (the application said no), `failed` (error, bad status or answer),
    /// `timeout`, `busy` (every slot taken), `breaker_open`.
    pub outcome: &'static str,
}

/// The hooks' own metrics.
#[derive(Debug)]
pub struct HookMetrics {
    pub calls: Family<HookOutcomeLabel, Counter>,
    pub seconds: Family<HookLabel, Histogram>,
    pub in_flight: Gauge,
    pub breaker_open: Gauge,
}

impl Default for HookMetrics {
    fn default() -> Self {
        Self {
            calls: Family::default(),
            seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_5, 2.0, 14))
            }),
            in_flight: Gauge::default(),
            breaker_open: Gauge::default(),
        }
    }
}

impl HookMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "hook_calls",
            "Hook calls by hook and outcome",
            self.calls.clone(),
        );
        r.register_with_unit(
            "hook",
            "Hook round trips that got an answer",
            Unit::Seconds,
            self.seconds.clone(),
        );
        r.register(
            "hook_in_flight",
            "Hook calls in flight on this pod",
            self.in_flight.clone(),
        );
        r.register(
            "hook_breaker_open",
            "1 while the hook breaker refuses calls",
            self.breaker_open.clone(),
        );
    }

    fn count(&self, hook: &'static str, outcome: &'static str) {
        self.calls
            .get_or_create(&HookOutcomeLabel { hook, outcome })
            .inc();
    }
}

/// Why a hook gave no answer: the client gets `unavailable`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    #[error("application backend busy: {0} hook calls in flight")]
    Busy(usize),
    #[error("application backend unavailable (breaker open)")]
    BreakerOpen,
    #[error("application backend did not answer within {0:?}")]
    Timeout(Duration),
    #[error("application backend failed: {0}")]
    Failed(String),
}

/// How hooks are called on this pod.
#[derive(Debug, Clone)]
pub struct HookSettings {
    /// `--hook-url`: the base of `connect` and `rpc`, and of topic hooks without their own.
    pub base_url: Option<String>,
    pub secret: Vec<u8>,
    pub timeout: Duration,
    pub concurrency: usize,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
}

/// The pod's hook client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Hooks {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    base_url: Option<String>,
    secret: Vec<u8>,
    timeout: Duration,
    concurrency: usize,
    slots: Semaphore,
    breaker: Breaker,
    transport: AnyTransport,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Hooks {
    pub fn new(
        settings: HookSettings,
        transport: AnyTransport,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                base_url: settings
                    .base_url
                    .map(|u| u.trim_end_matches('/').to_owned()),
                secret: settings.secret,
                timeout: settings.timeout,
                concurrency: settings.concurrency,
                slots: Semaphore::new(settings.concurrency),
                breaker: Breaker::new(settings.breaker_failures, settings.breaker_cooldown),
                transport,
                metrics,
            }),
        }
    }

    /// Whether `connect` and `rpc` are called (`--hook-url` is set).
    pub fn has_base(&self) -> bool {
        self.inner.base_url.is_some()
    }

    /// `POST {base}/connect`; `None` when no `--hook-url` is set.
    pub async fn connect(
        &self,
        body: &wire::ConnectRequest<'_>,
    ) -> Option<Result<wire::ConnectAnswer, HookError>> {
        let base = self.inner.base_url.as_deref()?;
        Some(self.call("connect", base, body).await)
    }

    /// `POST {base}/subscribe`, `base` being the namespace's hook URL or `--hook-url`.
    pub async fn subscribe(
        &self,
        base: Option<&str>,
        body: &wire::SubscribeRequest<'_>,
    ) -> Result<wire::SubscribeAnswer, HookError> {
        self.call("subscribe", self.base(base)?, body).await
    }

    /// `POST {base}/resubscribe`, on a resume.
    pub async fn resubscribe(
        &self,
        base: Option<&str>,
        body: &wire::ResubscribeRequest<'_>,
    ) -> Result<wire::ResubscribeAnswer, HookError> {
        self.call("resubscribe", self.base(base)?, body).await
    }

    /// `POST {base}/publish`, before the append.
    pub async fn publish(
        &self,
        base: Option<&str>,
        body: &wire::PublishRequest<'_>,
    ) -> Result<wire::DataAnswer, HookError> {
        self.call("publish", self.base(base)?, body).await
    }

    /// `POST {base}/rpc`; `None` when no `--hook-url` is set.
    pub async fn rpc(
        &self,
        body: &wire::RpcRequest<'_>,
    ) -> Option<Result<wire::DataAnswer, HookError>> {
        let base = self.inner.base_url.as_deref()?;
        Some(self.call("rpc", base, body).await)
    }

    fn base<'a>(&'a self, namespace: Option<&'a str>) -> Result<&'a str, HookError> {
        namespace
            .or(self.inner.base_url.as_deref())
            .ok_or_else(|| HookError::Failed("no hook URL configured".into()))
    }

    /// One call through the gate: a free slot (else `Busy` at once), a closed breaker (else
    /// `BreakerOpen` at once), the timeout; a 2xx answer parsed as `A`.
    async fn call<A: DeserializeOwned>(
        &self,
        hook: &'static str,
        base: &str,
        body: &impl Serialize,
    ) -> Result<A, HookError> {
        let inner = &*self.inner;
        let metrics = &inner.metrics.hooks;
        // The slot first: a breaker trial admitted without a slot would never report back.
        let Ok(_slot) = inner.slots.try_acquire() else {
            metrics.count(hook, "busy");
            return Err(HookError::Busy(inner.concurrency));
        };
        if !inner.breaker.admit() {
            metrics.count(hook, "breaker_open");
            return Err(HookError::BreakerOpen);
        }
        metrics.in_flight.inc();
        let body = Bytes::from(serde_json::to_vec(body).expect("hook bodies serialize"));
        let signature = signing::sign(&inner.secret, &body);
        let url = format!("{base}/{hook}");
        let started = std::time::Instant::now();
        let sent = tokio::time::timeout(inner.timeout, inner.transport.post(&url, body, signature));
        let result = match sent.await {
            Err(_) => Err(("timeout", HookError::Timeout(inner.timeout))),
            Ok(Err(e)) => Err(("failed", HookError::Failed(e))),
            Ok(Ok(reply)) if !(200..300).contains(&reply.status) => Err((
                "failed",
                HookError::Failed(format!("HTTP status {}", reply.status)),
            )),
            Ok(Ok(reply)) => serde_json::from_slice::<A>(&reply.body)
                .map_err(|e| ("failed", HookError::Failed(format!("bad answer: {e}")))),
        };
        metrics.in_flight.dec();
        match result {
            Ok(answer) => {
                inner.breaker.success();
                metrics.breaker_open.set(0);
                metrics
                    .seconds
                    .get_or_create(&HookLabel { hook })
                    .observe(started.elapsed().as_secs_f64());
                metrics.count(hook, "ok");
                Ok(answer)
            }
            Err((outcome, e)) => {
                if inner.breaker.failure() {
                    tracing::warn!(hook, error = %e, "hook breaker open: answering unavailable");
                }
                metrics.breaker_open.set(i64::from(inner.breaker.is_open()));
                metrics.count(hook, outcome);
                tracing::debug!(hook, error = %e, "hook call failed");
                Err(e)
            }
        }
    }

    /// Counts an answer that refused (for the metrics; the call itself succeeded).
    pub fn refused(&self, hook: &'static str) {
        self.inner.metrics.hooks.count(hook, "refused");
    }
}

/// The `error` frame code for an application's refusal: its `code` when it is one of ours,
/// else `forbidden`.
pub fn refusal_code(refusal: &wire::Refusal) -> protocol::ErrorCode {
    use protocol::ErrorCode as C;
    [
        C::BadRequest,
        C::Unauthorized,
        C::Forbidden,
        C::NotSubscribed,
        C::RateLimited,
        C::LimitReached,
        C::TooLarge,
        C::Unavailable,
        C::Internal,
    ]
    .into_iter()
    .find(|c| c.as_str() == refusal.code)
    .unwrap_or(C::Forbidden)
}

/// The application's message, bounded so an answer cannot blow up an `error` frame.
pub fn refusal_message(refusal: &wire::Refusal, fallback: &str) -> String {
    let mut message = if refusal.message.is_empty() {
        fallback.to_owned()
    } else {
        refusal.message.clone()
    };
    if message.len() > 200 {
        let mut cut = 200;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    message
}

#[cfg(test)]
mod tests;
