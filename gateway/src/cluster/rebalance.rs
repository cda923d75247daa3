//! Rebalancing: a pod well above the fleet mean closes its excess with 1012, but only once the
//! fleet view has held still.
//!
//! Heartbeats of different pods arrive at different moments, so while clients are being placed
//! (a ramp-up, the reconnects after a drain or a shed batch) one pod's view mixes fresh counts
//! with stale ones and shows an imbalance that is not there. The rebalancer therefore works on
//! heartbeat *rounds*: a round closes when every pod in the view, this one included, has sent a
//! new beat since the previous round, and holds each pod's count from that beat. It keeps the
//! last `--rebalance-stable-beats` rounds and sheds only when they agree ([`stable`]): the same
//! pods, each pod's counts within [`slack`] of each other. After a batch it waits for a whole
//! new stable window, since the shed clients are still reconnecting.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use protocol::{CloseAdvice, CloseCode};
use rand::Rng;
use tokio::time::{Instant, MissedTickBehavior};

use super::max_age;
use crate::Shared;

/// A pod's load, as one of its heartbeats reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    pub connections: u64,
    pub draining: bool,
}

/// One heartbeat round: every pod in the view and its load.
pub type View = BTreeMap<String, Load>;

/// How far a pod's count may move between two rounds of a stable view: 1% of the count, at
/// least 1. Lag hides at most that much, well inside `--rebalance-tolerance`.
pub fn slack(connections: u64) -> u64 {
    (connections / 100).max(1)
}

/// Whether the last `beats` rounds of `views` (oldest first) form a stable view: there are that
/// many, they list the same pods, none starting or stopping a drain, and each pod's counts over
/// them stay within [`slack`] of each other (so a slow, steady trickle of clients is not mistaken
/// for a settled fleet). `beats` = 1 accepts any single round.
pub fn stable(views: &[View], beats: usize) -> bool {
    let beats = beats.max(1);
    if views.len() < beats {
        return false;
    }
    let window = &views[views.len() - beats..];
    let first = &window[0];
    first.iter().all(|(pod, load)| {
        let (mut low, mut high) = (load.connections, load.connections);
        for round in window {
            match round.get(pod) {
                Some(l) if l.draining == load.draining => {
                    low = low.min(l.connections);
                    high = high.max(l.connections);
                }
                _ => return false,
            }
        }
        high - low <= slack(high)
    }) && window.iter().all(|round| round.len() == first.len())
}

/// How many connections pod `me` holds above the mean of `view` (among pods not draining) when
/// that is worth shedding, else 0.
pub fn excess(view: &View, me: &str, tolerance: f64) -> u64 {
    let live: Vec<(&String, &Load)> = view.iter().filter(|(_, l)| !l.draining).collect();
    let Some((_, mine)) = live.iter().find(|(pod, _)| pod.as_str() == me) else {
        return 0;
    };
    if live.len() < 2 {
        return 0;
    }
    let total: u64 = live.iter().map(|(_, l)| l.connections).sum();
    let mean = total as f64 / live.len() as f64;
    let have = mine.connections as f64;
    // Shed when this pod is too far above the mean, or when another pod is too far below it
    // (a new pod after a scale-out): stopping at mean × (1 + tolerance) would leave the new pod
    // short for good. Below two connections of excess, shedding just moves the imbalance.
    let above = have > mean * (1.0 + tolerance);
    let laggard = live
        .iter()
        .any(|(_, l)| (l.connections as f64) < mean * (1.0 - tolerance));
    if !(above || laggard) || have - mean < 2.0 {
        return 0;
    }
    (have - mean).floor() as u64
}

/// How many connections pod `me` should shed now, given the last rounds (oldest first): its
/// [`excess`] in the latest round when the last `beats` rounds are [`stable`] and no pod still
/// has clients to drain, else 0.
pub fn decide(views: &[View], me: &str, beats: usize, tolerance: f64) -> u64 {
    if !stable(views, beats) {
        return 0;
    }
    let Some(latest) = views.last() else {
        return 0;
    };
    // While a pod drains its clients are moving through the fleet: wait until it is empty.
    if latest.values().any(|l| l.draining && l.connections > 0) {
        return 0;
    }
    excess(latest, me, tolerance)
}

/// The last rounds, and what closes the next one.
#[derive(Debug)]
pub struct Rounds {
    views: VecDeque<View>,
    keep: usize,
    /// Stamp of each pod's beat in the last round (or at the last restart).
    seen: HashMap<String, u64>,
}

impl Rounds {
    /// Keeps the last `keep` rounds (at least 1).
    pub fn new(keep: usize) -> Self {
        Self {
            views: VecDeque::new(),
            keep: keep.max(1),
            seen: HashMap::new(),
        }
    }

    /// Closes a round from the view's latest beats (pod → load and beat stamp) if every pod has
    /// beaten since the last round; returns whether it did. A pod new to the view counts as
    /// fresh, a pod gone from it is forgotten (both make the round differ from the last).
    pub fn observe(&mut self, latest: &BTreeMap<String, (Load, u64)>) -> bool {
        let fresh = latest
            .iter()
            .all(|(pod, (_, stamp))| self.seen.get(pod).is_none_or(|seen| stamp > seen));
        if !fresh {
            return false;
        }
        self.seen = Self::stamps(latest);
        self.views.push_back(
            latest
                .iter()
                .map(|(pod, (l, _))| (pod.clone(), *l))
                .collect(),
        );
        while self.views.len() > self.keep {
            self.views.pop_front();
        }
        true
    }

    /// Forgets every round: the next one needs a beat from every pod sent after `latest`.
    pub fn restart(&mut self, latest: &BTreeMap<String, (Load, u64)>) {
        self.views.clear();
        self.seen = Self::stamps(latest);
    }

    /// The kept rounds, oldest first.
    pub fn views(&mut self) -> &[View] {
        self.views.make_contiguous()
    }

    fn stamps(latest: &BTreeMap<String, (Load, u64)>) -> HashMap<String, u64> {
        latest
            .iter()
            .map(|(pod, (_, stamp))| (pod.clone(), *stamp))
            .collect()
    }
}

/// Sheds this pod's excess connections with 1012, paced, until shutdown.
pub async fn run_rebalancer(shared: Arc<Shared>) {
    let c = &shared.config;
    if c.rebalance_rate == 0 {
        return;
    }
    let beats = c.rebalance_stable_beats as usize;
    let pause = Duration::from_secs_f64(1.0 / f64::from(c.rebalance_rate));
    // At most one interval's budget per batch: the view is refreshed between batches.
    let budget = (c.rebalance_interval.as_secs_f64() * f64::from(c.rebalance_rate)).ceil() as u64;
    let mut rounds = Rounds::new(beats);
    // Looking twice per heartbeat closes each round soon after its last beat arrived.
    let mut look = tokio::time::interval((c.heartbeat_interval / 2).max(Duration::from_millis(1)));
    look.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut next_check = Instant::now() + c.rebalance_interval;
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = look.tick() => {}
        }
        rounds.observe(&shared.cluster.loads(max_age(&shared)));
        if Instant::now() < next_check {
            continue;
        }
        next_check = Instant::now() + c.rebalance_interval;
        if shared.drain.is_draining() {
            continue;
        }
        let shed =
            decide(rounds.views(), &shared.pod, beats, c.rebalance_tolerance).min(budget.max(1));
        if shed == 0 {
            continue;
        }
        tracing::info!(
            shed,
            "rebalancing: closing connections above the fleet mean with 1012"
        );
        for control in shared
            .connections
            .open_controls()
            .into_iter()
            .take(shed as usize)
        {
            if shared.drain.is_draining() || shared.shutdown.is_cancelled() {
                break;
            }
            let after_ms = rand::rng().random_range(0..1_000);
            control.request_close(
                CloseCode::ServiceRestart,
                CloseAdvice::reconnect(Some(after_ms)),
            );
            shared.metrics.drain.rebalance_closes.inc();
            let jitter = rand::rng().random_range(0.5..1.5);
            tokio::time::sleep(pause.mul_f64(jitter)).await;
        }
        // The shed clients are reconnecting and every count is in flux: the next batch needs a
        // stable window of rounds that all start after this one.
        rounds.restart(&shared.cluster.loads(max_age(&shared)));
        next_check = Instant::now() + c.rebalance_interval;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(pods: &[(&str, u64)]) -> View {
        pods.iter()
            .map(|(name, connections)| {
                let load = Load {
                    connections: *connections,
                    draining: false,
                };
                (name.to_string(), load)
            })
            .collect()
    }

    fn draining(mut v: View, pod: &str) -> View {
        v.get_mut(pod).expect("pod in view").draining = true;
        v
    }

    #[test]
    fn excess_over_the_mean_beyond_tolerance() {
        let fleet = view(&[("a", 150), ("b", 150), ("c", 0)]);
        assert_eq!(excess(&fleet, "a", 0.1), 50);
        assert_eq!(excess(&fleet, "c", 0.1), 0);
        let even = view(&[("a", 105), ("b", 100), ("c", 95)]);
        assert_eq!(excess(&even, "a", 0.1), 0);
        // Within tolerance of the mean itself, but the new pod is far below: keep shedding.
        let stuck = view(&[("a", 1_061), ("b", 1_100), ("c", 840)]);
        assert_eq!(excess(&stuck, "b", 0.1), 99);
        assert_eq!(excess(&stuck, "a", 0.1), 60);
        assert_eq!(excess(&stuck, "c", 0.1), 0);
        // A draining pod is not a target: its clients leave anyway.
        let drained = draining(view(&[("a", 100), ("b", 100), ("c", 0)]), "c");
        assert_eq!(excess(&drained, "a", 0.1), 0);
        assert_eq!(excess(&view(&[("a", 100)]), "a", 0.1), 0);
    }

    #[test]
    fn a_ramp_up_sheds_nothing() {
        // Clients arrive evenly, but each round catches the pods at different points of the
        // ramp: every single round looks unbalanced, none repeats the one before.
        let ramp = [
            view(&[("a", 120), ("b", 60), ("c", 30)]),
            view(&[("a", 250), ("b", 180), ("c", 140)]),
            view(&[("a", 380), ("b", 300), ("c", 270)]),
            view(&[("a", 500), ("b", 430), ("c", 400)]),
        ];
        assert!(excess(&ramp[3], "a", 0.1) > 0, "a lone round would shed");
        for n in 1..=ramp.len() {
            for pod in ["a", "b", "c"] {
                assert_eq!(decide(&ramp[..n], pod, 3, 0.1), 0, "round {n}, pod {pod}");
            }
        }
        // Once every pod has its 500 and the counts hold, there is nothing to shed either.
        let settled = [
            ramp[3].clone(),
            view(&[("a", 500), ("b", 500), ("c", 500)]),
            view(&[("a", 500), ("b", 500), ("c", 500)]),
            view(&[("a", 500), ("b", 500), ("c", 500)]),
        ];
        assert!(stable(&settled, 3));
        assert_eq!(decide(&settled, "a", 3, 0.1), 0);
    }

    #[test]
    fn a_settled_imbalance_after_a_scale_out_is_shed() {
        let rounds = [
            view(&[("a", 150), ("b", 150), ("c", 0)]),
            view(&[("a", 150), ("b", 149), ("c", 0)]),
            view(&[("a", 151), ("b", 150), ("c", 1)]),
        ];
        assert!(stable(&rounds, 3));
        assert_eq!(decide(&rounds, "a", 3, 0.1), 50);
        assert_eq!(decide(&rounds, "b", 3, 0.1), 49);
        assert_eq!(decide(&rounds, "c", 3, 0.1), 0);
        // Not yet three rounds: wait.
        assert_eq!(decide(&rounds[..2], "a", 3, 0.1), 0);
        // A count moving by more than the slack breaks the window.
        let moving = [
            rounds[0].clone(),
            view(&[("a", 150), ("b", 150), ("c", 3)]),
            rounds[2].clone(),
        ];
        assert!(!stable(&moving, 3));
        assert_eq!(decide(&moving, "a", 3, 0.1), 0);
        // One beat is enough when configured so.
        assert_eq!(decide(&rounds[..1], "a", 1, 0.1), 50);
    }

    #[test]
    fn slack_is_one_percent_and_at_least_one() {
        assert_eq!(slack(0), 1);
        assert_eq!(slack(150), 1);
        assert_eq!(slack(1_000), 10);
        let a = view(&[("a", 1_000), ("b", 0)]);
        assert!(stable(&[a.clone(), view(&[("a", 990), ("b", 1)])], 2));
        assert!(!stable(&[a.clone(), view(&[("a", 989), ("b", 0)])], 2));
        assert!(!stable(&[a.clone(), view(&[("a", 1_000), ("b", 2)])], 2));
        // The slack bounds the whole window, not just each step: a trickle is still a change.
        let trickle = [
            a.clone(),
            view(&[("a", 1_000), ("b", 1)]),
            view(&[("a", 1_000), ("b", 2)]),
        ];
        assert!(!stable(&trickle, 3));
        let jitter = [a.clone(), view(&[("a", 1_005), ("b", 1)]), a];
        assert!(stable(&jitter, 3));
    }

    #[test]
    fn a_pod_joining_or_leaving_restarts_the_window() {
        let two = view(&[("a", 300), ("b", 0)]);
        let three = view(&[("a", 300), ("b", 0), ("c", 0)]);
        let joined = [two.clone(), two.clone(), three.clone()];
        assert!(!stable(&joined, 3));
        assert_eq!(decide(&joined, "a", 3, 0.1), 0);
        let after = [three.clone(), three.clone(), three.clone()];
        assert_eq!(decide(&after, "a", 3, 0.1), 200);
        let left = [three.clone(), three.clone(), two.clone()];
        assert_eq!(decide(&left, "a", 3, 0.1), 0);
        // A pod swapped for another (same number of pods) is a change too.
        let swapped = view(&[("a", 300), ("b", 0), ("d", 0)]);
        assert_eq!(
            decide(&[three.clone(), three.clone(), swapped], "a", 3, 0.1),
            0
        );
        // So is a pod starting to drain, and while it still has clients nothing is shed.
        let drain = draining(three.clone(), "c");
        assert_eq!(
            decide(&[three.clone(), three, drain.clone()], "a", 3, 0.1),
            0
        );
        let busy = draining(view(&[("a", 300), ("b", 0), ("c", 5)]), "c");
        assert_eq!(decide(&[busy.clone(), busy.clone(), busy], "a", 3, 0.1), 0);
        // A drained pod that stays in the view, empty, does not hold rebalancing back.
        assert_eq!(
            decide(&[drain.clone(), drain.clone(), drain], "a", 3, 0.1),
            150
        );
    }

    fn latest(pods: &[(&str, u64, u64)]) -> BTreeMap<String, (Load, u64)> {
        pods.iter()
            .map(|(name, connections, stamp)| {
                let load = Load {
                    connections: *connections,
                    draining: false,
                };
                (name.to_string(), (load, *stamp))
            })
            .collect()
    }

    #[test]
    fn a_round_closes_once_every_pod_has_beaten_again() {
        let mut rounds = Rounds::new(3);
        assert!(rounds.observe(&latest(&[("a", 10, 1), ("b", 20, 2)])));
        // Only a has beaten since: b's count may be stale, no round.
        assert!(!rounds.observe(&latest(&[("a", 11, 3), ("b", 20, 2)])));
        assert!(rounds.observe(&latest(&[("a", 11, 3), ("b", 21, 4)])));
        // A new pod is fresh; the round is taken, and differs from the last.
        assert!(rounds.observe(&latest(&[("a", 11, 5), ("b", 21, 6), ("c", 0, 7)])));
        assert_eq!(rounds.views().len(), 3);
        assert!(!stable(rounds.views(), 3));
        // Only the last `keep` rounds are kept.
        assert!(rounds.observe(&latest(&[("a", 11, 8), ("b", 21, 9), ("c", 0, 10)])));
        assert!(rounds.observe(&latest(&[("a", 11, 11), ("b", 21, 12), ("c", 0, 13)])));
        assert_eq!(rounds.views().len(), 3);
        assert!(stable(rounds.views(), 3));
        // After a restart the window starts over, from beats sent after it.
        let now = latest(&[("a", 5, 14), ("b", 21, 15), ("c", 6, 16)]);
        rounds.restart(&now);
        assert!(rounds.views().is_empty());
        assert!(!rounds.observe(&now));
        assert!(rounds.observe(&latest(&[("a", 5, 17), ("b", 21, 18), ("c", 6, 19)])));
        assert_eq!(rounds.views().len(), 1);
    }
}
