//! Reading history backwards: the newest messages of a topic, and pages before a `seq`.
//!
//! A separate trait from [`SessionStore`] because nothing on the delivery path needs it: the
//! gateway reads forwards to recover a client, and backwards only to answer `history` requests
//! (a page rendering a topic's latest messages, or scrolling up). Same bounds as forward reads:
//! at most the requested count and about [`PAGE_BYTES`](crate::PAGE_BYTES) per call.

use std::future::Future;

use protocol::Topic;

use crate::{AnyStore, HistoryPage, MemoryStore, RedisStore, StoreError};

/// Backward reads of a topic's history.
pub trait ReverseHistory: Send + Sync + 'static {
    /// One page of the topic's messages with `seq` below `before` (`None`: from the newest),
    /// **newest first**: at most `limit` messages and about `PAGE_BYTES` (at least one when
    /// there is one), contiguous, and the topic's top read together with them. More may
    /// precede the page when its last (oldest) message is above the oldest kept.
    fn history_before(
        &self,
        topic: &Topic,
        before: Option<u64>,
        limit: usize,
    ) -> impl Future<Output = Result<HistoryPage, StoreError>> + Send;
}

impl ReverseHistory for MemoryStore {
    async fn history_before(
        &self,
        topic: &Topic,
        before: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, StoreError> {
        Ok(self.page_before(topic, before.unwrap_or(u64::MAX), limit.max(1)))
    }
}

impl ReverseHistory for RedisStore {
    async fn history_before(
        &self,
        topic: &Topic,
        before: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, StoreError> {
        // Entry ids are `<seq>-1`: every id below `<before>-0` has a seq below `before`.
        let end = match before {
            Some(before) => format!("({before}-0"),
            None => "+".to_owned(),
        };
        self.page_before(topic, end, limit.max(1)).await
    }
}

impl ReverseHistory for AnyStore {
    async fn history_before(
        &self,
        topic: &Topic,
        before: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, StoreError> {
        match self {
            Self::Memory(store) => store.history_before(topic, before, limit).await,
            Self::Redis(store) => Box::pin(store.history_before(topic, before, limit)).await,
        }
    }
}
