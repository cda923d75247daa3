//! The behavioural suite every [`SessionStore`] must pass, so the memory and Redis stores give the
//! gateway the same guarantees.
//!
//! Each behaviour is an async function generic over a [`Harness`] (which makes fresh stores and
//! knows how to make one lose its history). [`conformance_tests!`](crate::conformance_tests)
//! expands to one `#[tokio::test]` per behaviour for a given harness, so adding a behaviour here
//! and to the macro's list runs it against every backend.
//!
//! The tests run in real time with short ttls (1–3 s) rather than paused Tokio time, because
//! Redis expires keys on its own clock. Compiled for this crate's tests and behind the
//! `conformance` feature (which the crate's own integration tests enable); it panics on failure
//! like any test code.
//!
//! The behaviours live in modules by concern: `appends` (seqs, payloads, tops), `history`,
//! `epochs`, `sessions` and `extras` (publish ids and exclusions), re-exported here, where the
//! macro finds them; the harness and the helpers they share are in this file.

use std::future::Future;
use std::time::Duration;

use protocol::{Epoch, Payload, Position, Topic};

use crate::{HistoryLimits, HistoryPage, ReverseHistory, SessionStore};

/// Makes stores for the suite.
pub trait Harness: Send + Sync + 'static {
    type Store: SessionStore + ReverseHistory + crate::OrderedAppends + Clone;

    /// A store applying `limits`. Each test gets its own harness, so the backend starts empty.
    fn store(&self, limits: HistoryLimits) -> impl Future<Output = Self::Store> + Send;

    /// Makes `store` lose every topic's state (Redis: FLUSHALL; memory: wait out the ttl).
    fn lose_history(
        &self,
        store: &Self::Store,
        limits: HistoryLimits,
    ) -> impl Future<Output = ()> + Send;
}

/// Generates one `#[tokio::test]` per behaviour; `$make` is an async fn returning a [`Harness`].
#[macro_export]
macro_rules! conformance_tests {
    ($make:path) => {
        $crate::conformance_tests!(@each $make;
            seq_starts_at_one_and_is_contiguous,
            concurrent_appends_get_unique_contiguous_seqs,
            history_after_returns_later_messages_in_order,
            history_is_capped_by_max_len,
            zero_max_len_keeps_no_history,
            history_drops_messages_older_than_ttl,
            epoch_is_stable_and_changes_when_history_is_lost,
            idle_topic_expires_after_ttl,
            top_of_unknown_topic_is_zero_with_stable_epoch,
            history_of_unknown_topic_is_empty_with_stable_epoch,
            topics_are_independent,
            sessions_save_load_delete,
            sessions_expire_after_ttl,
            payloads_round_trip_exactly,
            ping_succeeds,
            epochs_only_move_forward,
            history_is_read_in_bounded_pages,
            history_reads_backwards_in_bounded_pages,
            backward_reads_stop_at_trimmed_and_aged_messages,
            publish_ids_deduplicate,
            new_epoch_replaces_only_the_stale_epoch,
            tops_are_read_in_one_batch,
            session_claims_fence_older_generations,
            a_rolled_back_session_still_saves_and_claims_stay_ahead,
            exclusions_are_kept_with_their_messages,
        );
    };
    (@each $make:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let harness = $make().await;
                $crate::conformance::$name(&harness).await;
            }
        )*
    };
}

mod appends;
mod epochs;
mod extras;
mod history;
mod sessions;

// The macro names every behaviour as `conformance::<name>`.
pub use appends::*;
pub use epochs::*;
pub use extras::*;
pub use history::*;
pub use sessions::*;

const LONG: Duration = Duration::from_secs(60);

fn limits(max_len: usize, ttl: Duration) -> HistoryLimits {
    HistoryLimits {
        max_len,
        ttl,
        ..HistoryLimits::default()
    }
}

fn topic(name: &str) -> Topic {
    Topic::new(name).expect("valid topic name")
}

fn json(text: &str) -> Payload {
    Payload::parse(text).expect("valid JSON")
}

fn pos(seq: u64, epoch: &Epoch) -> Position {
    Position {
        seq,
        epoch: epoch.clone(),
    }
}

fn seqs(page: &HistoryPage) -> Vec<u64> {
    page.messages.iter().map(|m| m.seq).collect()
}

async fn append_n<S: SessionStore>(store: &S, t: &Topic, n: u64) -> Epoch {
    let mut epoch = None;
    for i in 0..n {
        let appended = store
            .append(t, &json(&format!("{{\"i\":{i}}}")), None)
            .await
            .expect("append");
        let first = epoch.get_or_insert_with(|| appended.epoch.clone());
        assert_eq!(&appended.epoch, first, "epoch changed between appends");
    }
    epoch.expect("appended at least once")
}
