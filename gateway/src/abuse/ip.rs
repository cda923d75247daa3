//! Per-client-IP admission: concurrent connections and new connections per second.
//!
//! IPv6 clients are counted per /64: one host usually holds a whole /64, so counting single
//! addresses would let it open unlimited connections. IPv4-mapped IPv6 addresses count as IPv4.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::rate::gcra;

/// Entries at most in the table; past it new addresses are refused (after a sweep).
pub const MAX_TRACKED: usize = 1 << 20;

/// How often idle entries are swept out (on the next admission after this long).
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// `Retry-After` when an address holds too many connections: one has to close first.
const RETRY_WHEN_FULL_SECS: u32 = 5;

/// Limits per client address. 0 disables a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpLimits {
    pub max_conns_per_ip: u32,
    pub new_conns_per_sec: u32,
    /// New connections accepted at once above the rate.
    pub new_conns_burst: u32,
}

impl IpLimits {
    /// Limits with a burst of two seconds' worth of new connections (at least 10).
    pub fn new(max_conns_per_ip: u32, new_conns_per_sec: u32) -> Self {
        Self {
            max_conns_per_ip,
            new_conns_per_sec,
            new_conns_burst: new_conns_per_sec.saturating_mul(2).max(10),
        }
    }
}

/// Why an address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// It holds `max_conns_per_ip` connections already.
    TooManyConnections,
    /// It opens connections faster than `new_conns_per_sec`.
    TooFast,
}

impl RefusalReason {
    /// A metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::TooManyConnections => "ip_connections",
            RefusalReason::TooFast => "ip_rate",
        }
    }
}

/// A refused admission: answer HTTP 429 with `Retry-After: retry_after_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub retry_after_secs: u32,
    pub reason: RefusalReason,
}

/// Counts connections per client address. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct IpLimiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    limits: IpLimits,
    base: Instant,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<IpAddr, Entry>,
    /// Nanoseconds since `base` of the last sweep.
    last_sweep: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Entry {
    active: u32,
    /// GCRA state of the new-connection rate, nanoseconds since `base`.
    tat: u64,
}

impl Entry {
    fn idle(&self, now: u64) -> bool {
        self.active == 0 && self.tat <= now
    }
}

/// One admitted connection of an address; dropping it releases the place.
#[derive(Debug)]
pub struct IpGuard {
    inner: Arc<Inner>,
    key: IpAddr,
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        let now = self.inner.nanos(Instant::now());
        let mut table = self.inner.lock();
        if let Some(entry) = table.entries.get_mut(&self.key) {
            entry.active = entry.active.saturating_sub(1);
            if entry.idle(now) {
                table.entries.remove(&self.key);
            }
        }
    }
}

impl IpLimiter {
    pub fn new(limits: IpLimits) -> Self {
        Self {
            inner: Arc::new(Inner {
                limits,
                base: Instant::now(),
                table: Mutex::new(Table::default()),
            }),
        }
    }

    pub fn limits(&self) -> IpLimits {
        self.inner.limits
    }

    /// Admits a connection from `ip`, or says when to retry.
    pub fn admit(&self, ip: IpAddr) -> Result<IpGuard, Refusal> {
        self.admit_at(ip, Instant::now())
    }

    pub fn admit_at(&self, ip: IpAddr, now: Instant) -> Result<IpGuard, Refusal> {
        let limits = self.inner.limits;
        let now = self.inner.nanos(now);
        let key = limit_key(ip);
        let mut table = self.inner.lock();
        if now.saturating_sub(table.last_sweep) >= SWEEP_EVERY.as_nanos() as u64
            || table.entries.len() >= MAX_TRACKED
        {
            table.entries.retain(|_, e| !e.idle(now));
            table.last_sweep = now;
        }
        if table.entries.len() >= MAX_TRACKED && !table.entries.contains_key(&key) {
            return Err(Refusal {
                retry_after_secs: 1,
                reason: RefusalReason::TooFast,
            });
        }
        let entry = table.entries.entry(key).or_default();
        if limits.max_conns_per_ip > 0 && entry.active >= limits.max_conns_per_ip {
            return Err(Refusal {
                retry_after_secs: RETRY_WHEN_FULL_SECS,
                reason: RefusalReason::TooManyConnections,
            });
        }
        let (rate, burst) = (limits.new_conns_per_sec, limits.new_conns_burst);
        if !gcra(&mut entry.tat, now, 1, rate, burst) {
            // The earliest moment one more fits: when `tat + 1/rate - burst/rate` is reached.
            let step = 1_000_000_000 / u64::from(rate.max(1));
            let fits_at = entry
                .tat
                .saturating_add(step)
                .saturating_sub(step.saturating_mul(u64::from(burst)));
            let wait = fits_at.saturating_sub(now).div_ceil(1_000_000_000);
            let fresh = entry.idle(now);
            if fresh {
                table.entries.remove(&key);
            }
            return Err(Refusal {
                retry_after_secs: u32::try_from(wait).unwrap_or(u32::MAX).max(1),
                reason: RefusalReason::TooFast,
            });
        }
        entry.active += 1;
        Ok(IpGuard {
            inner: self.inner.clone(),
            key,
        })
    }

    /// Connections currently admitted for `ip` (its /64 for IPv6).
    pub fn active(&self, ip: IpAddr) -> u32 {
        self.inner
            .lock()
            .entries
            .get(&limit_key(ip))
            .map_or(0, |e| e.active)
    }

    /// Addresses tracked now (bounded: idle ones are swept out).
    pub fn tracked(&self) -> usize {
        self.inner.lock().entries.len()
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// IPv4-mapped IPv6 as IPv4; everything else unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The key an address is counted under: IPv4 as is, IPv6 by its /64.
fn limit_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn concurrent_connections_are_capped_and_released() {
        let l = IpLimiter::new(IpLimits::new(2, 0));
        let a = ip("192.0.2.1");
        let g1 = l.admit(a).unwrap();
        let g2 = l.admit(a).unwrap();
        let refusal = l.admit(a).unwrap_err();
        assert_eq!(refusal.reason, RefusalReason::TooManyConnections);
        assert_eq!(refusal.retry_after_secs, RETRY_WHEN_FULL_SECS);
        // Others are not affected.
        let _other = l.admit(ip("192.0.2.2")).unwrap();
        assert_eq!(l.active(a), 2);
        drop(g1);
        assert_eq!(l.active(a), 1);
        let g3 = l.admit(a).unwrap();
        drop((g2, g3));
        assert_eq!(l.active(a), 0);
        // Entries go away with their last connection (no rate state to keep).
        assert_eq!(l.tracked(), 1);
    }

    #[test]
    fn new_connection_rate_is_limited_with_retry_after() {
        let l = IpLimiter::new(IpLimits {
            max_conns_per_ip: 0,
            new_conns_per_sec: 2,
            new_conns_burst: 4,
        });
        let a = ip("198.51.100.7");
        let t0 = Instant::now();
        let mut guards = Vec::new();
        for _ in 0..4 {
            guards.push(l.admit_at(a, t0).unwrap());
        }
        let refusal = l.admit_at(a, t0).unwrap_err();
        assert_eq!(refusal.reason, RefusalReason::TooFast);
        assert_eq!(refusal.retry_after_secs, 1);
        // Half a second later one more fits.
        guards.push(l.admit_at(a, t0 + Duration::from_millis(500)).unwrap());
        assert!(l.admit_at(a, t0 + Duration::from_millis(500)).is_err());
        // Closing connections does not reset the rate.
        guards.clear();
        assert!(l.admit_at(a, t0 + Duration::from_millis(600)).is_err());
        assert!(l.admit_at(a, t0 + Duration::from_secs(3)).is_ok());
    }

    #[test]
    fn retry_after_covers_the_wait() {
        let l = IpLimiter::new(IpLimits {
            max_conns_per_ip: 0,
            new_conns_per_sec: 1,
            new_conns_burst: 1,
        });
        let a = ip("203.0.113.9");
        let t0 = Instant::now();
        let _g = l.admit_at(a, t0).unwrap();
        let r = l.admit_at(a, t0).unwrap_err();
        assert_eq!(r.retry_after_secs, 1);
        let later = t0 + Duration::from_secs(u64::from(r.retry_after_secs));
        assert!(l.admit_at(a, later).is_ok());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let l = IpLimiter::new(IpLimits::new(1, 0));
        let _g = l.admit(ip("2001:db8:1:2::1")).unwrap();
        assert!(l.admit(ip("2001:db8:1:2::ffff")).is_err());
        assert!(l.admit(ip("2001:db8:1:3::1")).is_ok());
        let _v4 = l.admit(ip("192.0.2.10")).unwrap();
        assert!(l.admit(ip("::ffff:192.0.2.10")).is_err());
    }

    #[test]
    fn idle_entries_are_swept() {
        let l = IpLimiter::new(IpLimits::new(0, 1));
        let t0 = Instant::now();
        for i in 0..1000u32 {
            let a = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000u32 + i));
            drop(l.admit_at(a, t0).unwrap());
        }
        // Rate state keeps them for a moment...
        assert_eq!(l.tracked(), 1000);
        // ...and the first admission after the sweep interval drops them all.
        let _g = l
            .admit_at(ip("192.0.2.1"), t0 + SWEEP_EVERY + Duration::from_secs(1))
            .unwrap();
        assert_eq!(l.tracked(), 1);
    }

    #[test]
    fn unlimited_admits_everything() {
        let l = IpLimiter::new(IpLimits {
            max_conns_per_ip: 0,
            new_conns_per_sec: 0,
            new_conns_burst: 0,
        });
        let guards: Vec<_> = (0..10_000)
            .map(|_| l.admit(ip("192.0.2.1")).unwrap())
            .collect();
        assert_eq!(l.active(ip("192.0.2.1")), 10_000);
        drop(guards);
        assert_eq!(l.tracked(), 0);
    }
}
