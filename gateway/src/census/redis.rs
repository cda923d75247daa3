//! The census in Redis: `<prefix>:subs:{<topic>}`, a hash with one field per pod (its count),
//! in the topic's hash slot. Each write refreshes the key's ttl ([`super::ENTRY_TTL`]); the
//! reporting task rewrites every topic often enough that a live pod's entries never expire.

use std::collections::HashMap;

use fred::prelude::{HashesInterface, KeysInterface};
use protocol::Topic;
use session_store::RedisStore;

use super::{Census, CensusError, ENTRY_TTL};

/// Topics written concurrently (fred pipelines them on the pool's connections).
const BATCH: usize = 256;

#[derive(Debug, Clone)]
pub struct RedisCensus {
    store: RedisStore,
}

impl RedisCensus {
    pub fn new(store: RedisStore) -> Self {
        Self { store }
    }

    fn key(&self, topic: &Topic) -> String {
        format!("{}:subs:{{{}}}", self.store.key_prefix(), topic.as_str())
    }

    async fn write(&self, pod: &str, topic: &Topic, n: usize) -> Result<(), fred::error::Error> {
        let pool = self.store.pool();
        let key = self.key(topic);
        if n == 0 {
            pool.hdel::<(), _, _>(&key, pod).await
        } else {
            pool.hset::<(), _, _>(&key, (pod, n as u64)).await?;
            pool.pexpire::<(), _>(&key, ENTRY_TTL.as_millis() as i64, None)
                .await
        }
    }
}

fn unavailable(e: fred::error::Error) -> CensusError {
    CensusError::Unavailable(e.to_string())
}

impl Census for RedisCensus {
    async fn report(&self, pod: &str, counts: &[(Topic, usize)]) -> Result<(), CensusError> {
        let timeout = self.store.call_timeout();
        for batch in counts.chunks(BATCH) {
            let writes = batch.iter().map(|(t, n)| self.write(pod, t, *n));
            let results = tokio::time::timeout(timeout, futures_util::future::join_all(writes))
                .await
                .map_err(|_| CensusError::Unavailable(format!("timed out after {timeout:?}")))?;
            for result in results {
                result.map_err(unavailable)?;
            }
        }
        Ok(())
    }

    async fn counts(&self, topic: &Topic) -> Result<HashMap<String, usize>, CensusError> {
        let timeout = self.store.call_timeout();
        let read = self
            .store
            .pool()
            .hgetall::<HashMap<String, u64>, _>(self.key(topic));
        let counts = tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| CensusError::Unavailable(format!("timed out after {timeout:?}")))?
            .map_err(unavailable)?;
        Ok(counts
            .into_iter()
            .map(|(pod, n)| (pod, n as usize))
            .collect())
    }
}
