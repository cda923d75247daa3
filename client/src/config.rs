//! How a client connects: URLs, token or token source, backoff and timeouts.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

/// The error a token source may return.
pub type TokenError = Box<dyn std::error::Error + Send + Sync>;

type TokenFuture = Pin<Box<dyn Future<Output = Result<String, TokenError>> + Send>>;

/// Fetches a fresh token: called for the first `hello` when no token was given, after the
/// gateway closed with `token_expired`, and before `exp` to send `refresh`.
#[derive(Clone)]
pub struct TokenSource(Arc<dyn Fn() -> TokenFuture + Send + Sync>);

impl TokenSource {
    pub fn new<F, Fut>(fetch: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, TokenError>> + Send + 'static,
    {
        TokenSource(Arc::new(move || Box::pin(fetch())))
    }

    pub(crate) async fn fetch(&self) -> Result<String, TokenError> {
        (self.0)().await
    }
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSource(..)")
    }
}

/// Full-jitter exponential backoff: attempt `n` waits a uniformly random time in
/// `[0, min(max, initial * 2^n)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The upper bound of attempt `attempt`'s delay (attempts count from 0).
    pub fn cap(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.min(30);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// A delay for attempt `attempt`, drawn uniformly from `[0, cap(attempt)]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let cap = self.cap(attempt).as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(0..=cap))
    }
}

/// The configuration of a [`Client`](crate::Client).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Gateway WebSocket URLs (`ws://…/ws`, `wss://…/ws`), tried in turn on each reconnect.
    pub urls: Vec<String>,
    /// The token for the first `hello`.
    pub token: Option<String>,
    /// A resume token saved from an earlier run ([`Client::resume_token`](crate::Client::resume_token)):
    /// the first `hello` resumes that session while the gateway still holds it.
    pub resume: Option<String>,
    /// Where new tokens come from (on `token_expired`, and before `exp`).
    pub token_source: Option<TokenSource>,
    /// Send `refresh` with a token from `token_source` this long before the token's `exp`
    /// (half the remaining lifetime for short-lived tokens). `None`: never refresh in place.
    pub refresh_before: Option<Duration>,
    pub backoff: Backoff,
    /// An upper bound on the server's `after_ms`.
    pub max_after: Duration,
    /// How long the WebSocket upgrade plus `welcome` may take.
    pub connect_timeout: Duration,
    /// An app-level `ping` this often; no frame at all for `pong_timeout` after it abandons
    /// the connection (a pod that died without a close frame). `None`: no pings.
    pub ping_interval: Option<Duration>,
    pub pong_timeout: Duration,
    /// A connection that stayed up this long resets the backoff.
    pub stable_after: Duration,
}

impl ClientConfig {
    /// A configuration with the defaults for one or more URLs.
    pub fn new<I, S>(urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientConfig {
            urls: urls.into_iter().map(Into::into).collect(),
            token: None,
            resume: None,
            token_source: None,
            refresh_before: Some(Duration::from_secs(60)),
            backoff: Backoff::default(),
            max_after: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
            ping_interval: Some(Duration::from_secs(20)),
            pong_timeout: Duration::from_secs(10),
            stable_after: Duration::from_secs(5),
        }
    }

    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Resume the session of an earlier run (its [`Client::resume_token`](crate::Client::resume_token)).
    pub fn resume(mut self, token: impl Into<String>) -> Self {
        self.resume = Some(token.into());
        self
    }

    /// Fetch tokens with `fetch` (an async closure returning `Result<String, TokenError>`).
    pub fn token_source<F, Fut>(mut self, fetch: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, TokenError>> + Send + 'static,
    {
        self.token_source = Some(TokenSource::new(fetch));
        self
    }

    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff = Backoff { initial, max };
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_grows() {
        let b = Backoff {
            initial: Duration::from_millis(40),
            max: Duration::from_millis(200),
        };
        let caps: Vec<u64> = (0..6).map(|n| b.cap(n).as_millis() as u64).collect();
        assert_eq!(caps, [40, 80, 160, 200, 200, 200]);
        assert_eq!(b.cap(1000), Duration::from_millis(200));
        for n in 0..50 {
            assert!(b.delay(n % 8) <= b.cap(n % 8));
        }
        let at_cap: std::collections::HashSet<_> = (0..50).map(|_| b.delay(10)).collect();
        assert!(at_cap.len() > 1, "delays at the cap are jittered");
    }
}
