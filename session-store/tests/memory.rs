//! The conformance suite against the in-process store.

use std::time::Duration;

use session_store::conformance::Harness;
use session_store::{HistoryLimits, MemoryStore};

struct Memory;

impl Harness for Memory {
    type Store = MemoryStore;

    async fn store(&self, limits: HistoryLimits) -> MemoryStore {
        MemoryStore::new(limits)
    }

    /// The memory store forgets a topic once it has been idle for the ttl.
    async fn lose_history(&self, _store: &MemoryStore, limits: HistoryLimits) {
        tokio::time::sleep(limits.ttl + Duration::from_millis(200)).await;
    }
}

async fn memory() -> Memory {
    Memory
}

session_store::conformance_tests!(memory);
