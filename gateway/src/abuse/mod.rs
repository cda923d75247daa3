//! Abuse limits: what one connection, one client address, or everyone together may cost.
//!
//! - [`FrameLimiter`]: frames/s and publish bytes/s per connection (`rate_limited`, then 1008
//!   when sustained).
//! - [`IpLimiter`]: concurrent and new connections per client address (HTTP 429 with
//!   `Retry-After`).
//! - [`client_ip`] and [`parse_proxy_v2`]: the client address behind trusted proxies
//!   (`X-Forwarded-For`, HAProxy PROXY protocol v2).
//! - [`HandshakeLimiter`]: a global cap on connections between accept and `hello`, so a flood
//!   of slow handshakes cannot take all the memory or CPU.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub mod client_ip;
pub mod ip;
pub mod proxy;
pub mod rate;

pub use client_ip::{client_ip, parse_trusted_proxy};
pub use ip::{IpGuard, IpLimiter, IpLimits, Refusal, RefusalReason, canonical};
pub use proxy::{ProxyError, ProxyHeader, encode_proxy_v2, parse_proxy_v2, read_proxy_v2};
pub use rate::{FrameLimiter, FrameLimits, Verdict};

/// Caps the handshakes in flight. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct HandshakeLimiter {
    permits: Arc<Semaphore>,
    max: usize,
}

/// One handshake in flight; dropping it frees the place.
#[derive(Debug)]
pub struct HandshakePermit {
    _permit: OwnedSemaphorePermit,
}

impl HandshakeLimiter {
    /// At most `max` handshakes at once; 0 means no cap.
    pub fn new(max: usize) -> Self {
        let max = if max == 0 {
            Semaphore::MAX_PERMITS
        } else {
            max.min(Semaphore::MAX_PERMITS)
        };
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// A place, or `None` when all are taken (refuse: HTTP 503 with `Retry-After`, or close).
    pub fn try_acquire(&self) -> Option<HandshakePermit> {
        self.permits
            .clone()
            .try_acquire_owned()
            .ok()
            .map(|permit| HandshakePermit { _permit: permit })
    }

    /// Handshakes in flight now.
    pub fn in_flight(&self) -> usize {
        self.max - self.permits.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshakes_are_capped_and_released() {
        let l = HandshakeLimiter::new(2);
        let a = l.try_acquire().unwrap();
        let b = l.clone().try_acquire().unwrap();
        assert!(l.try_acquire().is_none());
        assert_eq!(l.in_flight(), 2);
        drop(a);
        assert_eq!(l.in_flight(), 1);
        let _c = l.try_acquire().unwrap();
        drop(b);
        assert_eq!(l.in_flight(), 1);
    }

    #[test]
    fn zero_means_no_cap() {
        let l = HandshakeLimiter::new(0);
        let permits: Vec<_> = (0..10_000).map(|_| l.try_acquire().unwrap()).collect();
        assert_eq!(l.in_flight(), 10_000);
        drop(permits);
        assert_eq!(l.in_flight(), 0);
    }
}
