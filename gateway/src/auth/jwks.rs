//! JWKS key sets: loaded from a file, fetched from a URL at startup and refreshed in the
//! background, keeping the last good copy when the URL is down.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::keys::{self, Key};
use super::{AuthConfig, AuthError, Authenticator, fetch};

/// How long one JWKS fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// A token with an unknown `kid` triggers a JWKS fetch, at most this often (and at most every
/// tenth of the refresh interval).
const MIN_REFETCH: Duration = Duration::from_secs(30);

/// A JWKS key set, replaced whole on each successful fetch.
pub(super) struct Jwks {
    pub(super) url: Option<String>,
    pub(super) keys: RwLock<Arc<Vec<Key>>>,
    pub(super) refresh: Duration,
    /// Woken by a token with an unknown `kid`.
    pub(super) wake: Notify,
}

impl Jwks {
    pub(super) fn snapshot(&self) -> Arc<Vec<Key>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn replace(&self, keys: Vec<Key>) {
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
    }

    /// The key set of the configuration (`None` without a JWKS file or URL): the file's keys, or
    /// none until the URL first answers.
    pub(super) fn from_config(config: &AuthConfig) -> Result<Option<Self>, AuthError> {
        if config.jwks_url.is_none() && config.jwks_file.is_none() {
            return Ok(None);
        }
        if let Some(url) = &config.jwks_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(AuthError::Config(format!(
                "JWKS URL {url:?} must start with https:// or http://"
            )));
        }
        if config.jwks_refresh.is_zero() {
            return Err(AuthError::Config(
                "the JWKS refresh interval must be above zero".into(),
            ));
        }
        let initial = match &config.jwks_file {
            Some(path) => {
                let name = path.display().to_string();
                let json = std::fs::read(path).map_err(|e| AuthError::KeyFile {
                    path: name.clone(),
                    reason: e.to_string(),
                })?;
                keys::parse_jwks(&json, &name)?
            }
            None => Vec::new(),
        };
        Ok(Some(Self {
            url: config.jwks_url.clone(),
            keys: RwLock::new(Arc::new(initial)),
            refresh: config.jwks_refresh,
            wake: Notify::new(),
        }))
    }
}

impl Authenticator {
    /// Starts the background JWKS refresh when a URL is configured: an immediate fetch, then one
    /// every refresh interval (sooner, but at most every 30 s or tenth of the interval, when a
    /// token names an unknown `kid`). A failed fetch keeps the last good key set and is retried
    /// with backoff (1 s doubling up to 60 s).
    pub fn spawn_jwks_refresh(&self, cancel: CancellationToken) -> Option<JoinHandle<()>> {
        let jwks = self.inner.jwks.as_ref()?;
        jwks.url.as_ref()?;
        let this = self.clone();
        Some(tokio::spawn(async move { this.refresh_loop(cancel).await }))
    }

    async fn refresh_loop(self, cancel: CancellationToken) {
        let Some(jwks) = self.inner.jwks.as_ref() else {
            return;
        };
        let min_refetch = MIN_REFETCH.min(jwks.refresh / 10);
        let mut backoff = Duration::from_secs(1).min(jwks.refresh);
        loop {
            let attempted = tokio::time::Instant::now();
            let wait = match self.refresh_jwks().await {
                Ok(_) => {
                    backoff = Duration::from_secs(1).min(jwks.refresh);
                    jwks.refresh
                }
                Err(_) => {
                    let wait = backoff;
                    backoff = (backoff * 2).min(jwks.refresh).min(Duration::from_secs(60));
                    wait
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = jwks.wake.notified() => {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep_until(attempted + min_refetch) => {}
                    }
                }
            }
        }
    }

    /// Fetches the JWKS URL once; on success replaces the key set and returns its size, on
    /// failure keeps the last good set.
    pub async fn refresh_jwks(&self) -> Result<usize, AuthError> {
        let Some(jwks) = &self.inner.jwks else {
            return Ok(0);
        };
        let Some(url) = &jwks.url else {
            return Ok(jwks.snapshot().len());
        };
        let fetched = fetch::get(url, FETCH_TIMEOUT)
            .await
            .map_err(|reason| AuthError::Jwks {
                origin: url.clone(),
                reason,
            })
            .and_then(|body| keys::parse_jwks(&body, url));
        match fetched {
            Ok(keys) => {
                let n = keys.len();
                let kids: Vec<&str> = keys.iter().filter_map(|k| k.kid.as_deref()).collect();
                tracing::debug!(jwks = %url, keys = n, ?kids, "JWKS refreshed");
                jwks.replace(keys);
                Ok(n)
            }
            Err(e) => {
                let kept = jwks.snapshot().len();
                tracing::warn!(error = %e, kept, "JWKS refresh failed; keeping the last good key set");
                Err(e)
            }
        }
    }
}
