//! The circuit breaker in front of the hooks: after `threshold` consecutive failures it opens
//! and every call is refused at once for `cooldown`; then one trial call is let through, and
//! its outcome closes the breaker again or reopens it.
//!
//! Refusing at once is the point: a backend that is down or slow must cost clients a quick
//! `unavailable`, not a hook timeout each, and must not tie up the pod's hook slots.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One trial call is out; everyone else is refused until it reports.
    Trial,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    /// Whether a call may go out now.
    pub fn admit(&self) -> bool {
        let mut state = self.state.lock().expect("breaker lock");
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if Instant::now() >= until => {
                *state = State::Trial;
                true
            }
            State::Open { .. } | State::Trial => false,
        }
    }

    pub fn success(&self) {
        *self.state.lock().expect("breaker lock") = State::Closed { failures: 0 };
    }

    /// Records a failure; `true` when this one opened the breaker.
    pub fn failure(&self) -> bool {
        let mut state = self.state.lock().expect("breaker lock");
        let failures = match *state {
            State::Closed { failures } => failures + 1,
            // The trial failed, or a call admitted before the breaker opened: (re)open.
            State::Trial | State::Open { .. } => self.threshold,
        };
        if failures >= self.threshold {
            let was_open = matches!(*state, State::Open { .. });
            *state = State::Open {
                until: Instant::now() + self.cooldown,
            };
            !was_open
        } else {
            *state = State::Closed { failures };
            false
        }
    }

    pub fn is_open(&self) -> bool {
        !matches!(
            *self.state.lock().expect("breaker lock"),
            State::Closed { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_recovers_after_a_trial() {
        let b = Breaker::new(3, Duration::from_secs(5));
        assert!(b.admit());
        assert!(!b.failure());
        assert!(!b.failure());
        b.success();
        assert!(!b.failure());
        assert!(!b.failure());
        assert!(b.failure(), "third consecutive failure opens");
        assert!(!b.admit());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(b.admit(), "one trial after the cooldown");
        assert!(!b.admit(), "only one");
        assert!(b.failure(), "a failed trial reopens");
        assert!(!b.admit());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(b.admit());
        b.success();
        assert!(b.admit() && b.admit());
        assert!(!b.is_open());
    }
}
