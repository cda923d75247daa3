//! Per-connection rate limits: frames per second and publish bytes per second.
//!
//! Hand-rolled rather than `governor`: a limiter lives in every connection (tens of thousands
//! per pod) and is only touched by that connection's task, so it needs no atomics, no shared
//! clock and no allocation. Each bucket is GCRA (a token bucket expressed as a "theoretical
//! arrival time"), one `u64` of nanoseconds; the whole limiter is under 100 bytes.

use std::time::{Duration, Instant};

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Over the rate: drop the frame and answer `rate_limited`.
    Limited,
    /// Over the rate persistently (more than `abuse_threshold` limited frames within
    /// `abuse_window`): close the connection with 1008.
    Abusive,
}

/// The limits of one connection. A rate of 0 disables that limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    pub frames_per_sec: u32,
    /// Frames accepted at once above the steady rate.
    pub frame_burst: u32,
    pub publish_bytes_per_sec: u32,
    /// Publish bytes accepted at once; at least the largest message, or it could never pass.
    pub publish_burst_bytes: u32,
    /// Limited frames tolerated within `abuse_window`; one more is abuse. 0: never abusive.
    pub abuse_threshold: u32,
    pub abuse_window: Duration,
}

impl FrameLimits {
    /// Limits from the two rates: a burst of two seconds' worth of frames, a byte burst of one
    /// second or one largest message (whichever is more), and abuse at more than
    /// max(rate, 10) limited frames within 10 s.
    pub fn new(frames_per_sec: u32, publish_bytes_per_sec: u32, max_message_size: usize) -> Self {
        let max_message = u32::try_from(max_message_size).unwrap_or(u32::MAX);
        Self {
            frames_per_sec,
            frame_burst: frames_per_sec.saturating_mul(2).max(1),
            publish_bytes_per_sec,
            publish_burst_bytes: publish_bytes_per_sec.max(max_message).max(1),
            abuse_threshold: frames_per_sec.max(10),
            abuse_window: Duration::from_secs(10),
        }
    }

    /// No limit at all.
    pub fn unlimited() -> Self {
        Self::new(0, 0, 0)
    }
}

/// One connection's limiter. Owned by the connection task: `&mut self`, no locking.
#[derive(Debug, Clone)]
pub struct FrameLimiter {
    limits: FrameLimits,
    base: Instant,
    /// Theoretical arrival times, in nanoseconds since `base`.
    frame_tat: u64,
    byte_tat: u64,
    /// Start of the current abuse window (nanoseconds since `base`) and limited frames in it.
    window_start: u64,
    limited: u32,
}

impl FrameLimiter {
    pub fn new(limits: FrameLimits) -> Self {
        Self::starting_at(limits, Instant::now())
    }

    pub fn starting_at(limits: FrameLimits, now: Instant) -> Self {
        Self {
            limits,
            base: now,
            frame_tat: 0,
            byte_tat: 0,
            window_start: 0,
            limited: 0,
        }
    }

    /// Counts one incoming frame (of any type).
    pub fn check_frame(&mut self) -> Verdict {
        self.check_frame_at(Instant::now())
    }

    /// Counts `bytes` of publish payload (call after [`Self::check_frame`] allowed the frame).
    pub fn check_publish(&mut self, bytes: usize) -> Verdict {
        self.check_publish_at(bytes, Instant::now())
    }

    pub fn check_frame_at(&mut self, now: Instant) -> Verdict {
        let now = self.nanos(now);
        let (rate, burst) = (self.limits.frames_per_sec, self.limits.frame_burst);
        if gcra(&mut self.frame_tat, now, 1, rate, burst) {
            Verdict::Allow
        } else {
            self.limited_at(now)
        }
    }

    pub fn check_publish_at(&mut self, bytes: usize, now: Instant) -> Verdict {
        let now = self.nanos(now);
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        let (rate, burst) = (
            self.limits.publish_bytes_per_sec,
            self.limits.publish_burst_bytes,
        );
        if gcra(&mut self.byte_tat, now, bytes, rate, burst) {
            Verdict::Allow
        } else {
            self.limited_at(now)
        }
    }

    fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    fn limited_at(&mut self, now: u64) -> Verdict {
        let window = u64::try_from(self.limits.abuse_window.as_nanos()).unwrap_or(u64::MAX);
        if now.saturating_sub(self.window_start) > window {
            self.window_start = now;
            self.limited = 0;
        }
        self.limited = self.limited.saturating_add(1);
        if self.limits.abuse_threshold > 0 && self.limited > self.limits.abuse_threshold {
            Verdict::Abusive
        } else {
            Verdict::Limited
        }
    }
}

/// GCRA: admits `cost` units at `now` (ns) under `rate` units/s with a burst of `burst` units,
/// advancing `tat` when admitted. A rate of 0 admits everything.
pub(crate) fn gcra(tat: &mut u64, now: u64, cost: u64, rate: u32, burst: u32) -> bool {
    if rate == 0 {
        return true;
    }
    let per_unit = |units: u64| -> u64 {
        let ns = u128::from(units) * 1_000_000_000 / u128::from(rate);
        u64::try_from(ns).unwrap_or(u64::MAX)
    };
    let start = (*tat).max(now);
    let next = start.saturating_add(per_unit(cost));
    if next - now > per_unit(u64::from(burst)) {
        return false;
    }
    *tat = next;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn frames_are_allowed_up_to_the_burst_then_at_the_rate() {
        let base = Instant::now();
        let limits = FrameLimits::new(10, 0, 1024);
        assert_eq!(limits.frame_burst, 20);
        let mut l = FrameLimiter::starting_at(limits, base);
        for i in 0..20 {
            assert_eq!(l.check_frame_at(base), Verdict::Allow, "frame {i}");
        }
        assert_eq!(l.check_frame_at(base), Verdict::Limited);
        // One frame per 100 ms comes back.
        assert_eq!(l.check_frame_at(at(base, 100)), Verdict::Allow);
        assert_eq!(l.check_frame_at(at(base, 100)), Verdict::Limited);
        // At the steady rate, nothing is limited.
        for i in 2..50 {
            assert_eq!(l.check_frame_at(at(base, i * 100)), Verdict::Allow, "{i}");
        }
        // A long pause refills the burst, not more.
        let later = at(base, 60_000);
        for _ in 0..20 {
            assert_eq!(l.check_frame_at(later), Verdict::Allow);
        }
        assert_eq!(l.check_frame_at(later), Verdict::Limited);
    }

    #[test]
    fn sustained_flooding_becomes_abusive() {
        let base = Instant::now();
        let limits = FrameLimits::new(10, 0, 1024);
        assert_eq!(limits.abuse_threshold, 10);
        let mut l = FrameLimiter::starting_at(limits, base);
        let mut verdicts = Vec::new();
        for i in 0..40 {
            verdicts.push(l.check_frame_at(at(base, i)));
        }
        assert_eq!(verdicts[..20], [Verdict::Allow; 20]);
        assert_eq!(verdicts[20..30], [Verdict::Limited; 10]);
        assert_eq!(verdicts[30], Verdict::Abusive);
    }

    #[test]
    fn occasional_overruns_are_forgiven_after_the_window() {
        let base = Instant::now();
        let mut l = FrameLimiter::starting_at(FrameLimits::new(10, 0, 1024), base);
        // Every 11 s: a burst of 25 frames, 5 over the limit, never more than 10 in a window.
        for round in 0..5 {
            let t = at(base, round * 11_000);
            let limited = (0..25)
                .map(|_| l.check_frame_at(t))
                .filter(|v| *v != Verdict::Allow)
                .inspect(|v| assert_eq!(*v, Verdict::Limited))
                .count();
            assert_eq!(limited, 5);
        }
    }

    #[test]
    fn publish_bytes_are_limited_separately() {
        let base = Instant::now();
        let limits = FrameLimits::new(0, 1000, 4000);
        assert_eq!(limits.publish_burst_bytes, 4000);
        let mut l = FrameLimiter::starting_at(limits, base);
        // Frames are unlimited.
        for _ in 0..10_000 {
            assert_eq!(l.check_frame_at(base), Verdict::Allow);
        }
        // One message of the largest size passes at once, then the rate applies.
        assert_eq!(l.check_publish_at(4000, base), Verdict::Allow);
        assert_eq!(l.check_publish_at(1, base), Verdict::Limited);
        assert_eq!(l.check_publish_at(500, at(base, 500)), Verdict::Allow);
        assert_eq!(l.check_publish_at(600, at(base, 500)), Verdict::Limited);
        // Larger than the burst: never allowed.
        assert_eq!(
            l.check_publish_at(4001, at(base, 100_000)),
            Verdict::Limited
        );
    }

    #[test]
    fn zero_rates_disable_limits() {
        let base = Instant::now();
        let mut l = FrameLimiter::starting_at(FrameLimits::unlimited(), base);
        for _ in 0..100_000 {
            assert_eq!(l.check_frame_at(base), Verdict::Allow);
            assert_eq!(l.check_publish_at(1 << 20, base), Verdict::Allow);
        }
        // Clock going backwards (an Instant before the base) does not panic.
        let mut l = FrameLimiter::starting_at(FrameLimits::new(1, 1, 1), at(base, 1000));
        let _ = l.check_frame_at(base);
        let _ = l.check_publish_at(usize::MAX, base);
    }

    #[test]
    fn limiter_is_small() {
        assert!(std::mem::size_of::<FrameLimiter>() <= 96);
    }
}
