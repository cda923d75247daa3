//! The outbox: with Redis, an event is *staged* by the same script that makes the decision
//! causing it, so a decision is never made without its event being kept. The script writes
//! the event's JSON into `<prefix>:ev-outbox:{<tag>}` (a hash, field: the event id), the tag
//! being the hash tag of the key it decided on (the session, or the topic), so the decision and
//! the staged event are one atomic write on one hash slot, on Redis Cluster too.
//!
//! The pod then appends the event to its user's partition and removes it from the outbox. If
//! it dies in between, or Redis fails it, the event stays staged, and the sweeper appends it
//! later (*relays* it): at least once, with the same id, and possibly after that user's later
//! events (the receiver orders by `at`, de-duplicates by `id`).
//!
//! How the sweeper finds staged events without scanning the keyspace: before a pod stages into
//! an outbox it *covers* it, adding the outbox to `<prefix>:ev-outboxes` (a sorted set) with a
//! score of Redis's clock plus the cover (ten heartbeats, 1 to 60 s); a pod covers each outbox
//! at most once per cover, from a local cache, and again a sixth of a cover before its own
//! ends. An outbox whose cover ended more than [`RedisOutbox::stale`] ago (Redis's clock again,
//! so pods' clocks do not matter) can only hold events whose pod gave up on them: the sweeper
//! relays them and forgets the outbox, unless it was covered again meanwhile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::interfaces::ClientLike;
use fred::types::{ClusterHash, CustomCommand, Value};
use futures_util::{StreamExt, TryStreamExt};
use session_store::RedisStore;

use super::EventError;
use super::redis_log::{Script, bounded, corrupt};

/// Outboxes read per call at most (one index read, then their hashes, concurrently).
pub const SWEEP_MAX: usize = 500;
/// Outbox reads or forgets in flight at once.
const CONCURRENT: usize = 32;

/// Covers an outbox until Redis's clock plus ARGV[2] ms (never shortening a cover).
const COVER_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], 'GT', now + tonumber(ARGV[2]), ARGV[1])
return 0";

/// The outboxes whose cover ended more than ARGV[1] ms ago (by Redis's clock), at most
/// ARGV[2], with their scores.
const STALE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]), 'WITHSCORES',
  'LIMIT', 0, tonumber(ARGV[2]))";

/// Forgets an outbox only if its cover is the one the sweeper read.
const FORGET_SCRIPT: &str = r"
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0";

/// An outbox left with staged events: its key, the cover read, and the events (id, JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stranded {
    pub key: String,
    pub score: String,
    pub events: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct RedisOutbox {
    store: RedisStore,
    cover_for: Duration,
    /// Outbox key → until when (locally) this pod's cover holds.
    covered: Arc<Mutex<HashMap<String, Instant>>>,
    cover: Script,
    stale: Script,
    forget: Script,
}

impl RedisOutbox {
    /// Outboxes on `store`, each covered for `cover` at a time.
    pub fn new(store: RedisStore, cover: Duration) -> Self {
        Self {
            store,
            cover_for: cover.max(Duration::from_millis(600)),
            covered: Arc::default(),
            cover: Script::new(COVER_SCRIPT),
            stale: Script::new(STALE_SCRIPT),
            forget: Script::new(FORGET_SCRIPT),
        }
    }

    /// The cover of a pod's heartbeat interval: ten heartbeats, 1 to 60 s.
    pub fn cover_of(heartbeat: Duration) -> Duration {
        (heartbeat * 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }

    /// How long after its cover ended an outbox is swept: longer than a pod's append and
    /// remove take (each bounded by the store's call timeout), so the sweeper does not relay
    /// what a live pod is about to append (if it did, the event would arrive twice, one id).
    pub fn stale(&self) -> Duration {
        self.store.call_timeout() * 3 + Duration::from_secs(1)
    }

    /// The outbox of the keys with hash tag `tag`.
    pub fn key(&self, tag: &str) -> String {
        format!("{}:ev-outbox:{{{tag}}}", self.store.key_prefix())
    }

    fn index(&self) -> String {
        format!("{}:ev-outboxes", self.store.key_prefix())
    }

    /// Makes sure the outbox `key` is covered before something is staged into it: one script
    /// call per outbox per cover at most.
    pub async fn cover(&self, key: &str) -> Result<(), EventError> {
        let now = Instant::now();
        {
            let mut covered = self.covered.lock().expect("outbox lock");
            if covered.get(key).is_some_and(|until| *until > now) {
                return Ok(());
            }
            // Bounded by what was covered within one cover: drop what has lapsed.
            if covered.len() >= 4_096 {
                covered.retain(|_, until| *until > now);
            }
        }
        let args = vec![key.to_owned(), self.cover_for.as_millis().to_string()];
        let client = self.store.pool().next();
        bounded(
            &self.store,
            self.cover.run(client, vec![self.index()], args),
        )
        .await?;
        let until = now + self.cover_for - self.cover_for / 6;
        self.covered
            .lock()
            .expect("outbox lock")
            .insert(key.to_owned(), until);
        Ok(())
    }

    /// Removes appended events from the outbox `key`.
    pub async fn settle(&self, key: &str, ids: &[&str]) -> Result<(), EventError> {
        let mut args = vec![key.to_owned()];
        args.extend(ids.iter().map(|id| (*id).to_owned()));
        self.command("HDEL", args).await.map(|_| ())
    }

    /// Outboxes whose cover ended more than [`Self::stale`] ago, with the events still in them.
    pub async fn stranded(&self) -> Result<Vec<Stranded>, EventError> {
        let args = vec![self.stale().as_millis().to_string(), SWEEP_MAX.to_string()];
        let client = self.store.pool().next();
        let reply = bounded(
            &self.store,
            self.stale.run(client, vec![self.index()], args),
        )
        .await?;
        let Value::Array(items) = reply else {
            return Ok(Vec::new());
        };
        let mut covers = Vec::with_capacity(items.len() / 2);
        let mut items = items.into_iter();
        while let (Some(key), Some(score)) = (items.next(), items.next()) {
            let key = key.into_string().ok_or_else(|| corrupt("outbox key"))?;
            let score = score.into_string().ok_or_else(|| corrupt("outbox score"))?;
            covers.push((key, score));
        }
        // Most are empty (their events were appended at once): read them concurrently.
        futures_util::stream::iter(covers)
            .map(|(key, score)| async move {
                let events = match self.command("HGETALL", vec![key.clone()]).await? {
                    Value::Array(fields) => pairs(fields)?,
                    Value::Map(map) => map
                        .inner()
                        .into_iter()
                        .map(|(k, v)| {
                            let id = k.as_str().ok_or_else(|| corrupt("outbox id"))?;
                            Ok((id.to_owned(), text(v)?))
                        })
                        .collect::<Result<_, EventError>>()?,
                    _ => Vec::new(),
                };
                Ok(Stranded { key, score, events })
            })
            .buffer_unordered(CONCURRENT)
            .try_collect()
            .await
    }

    /// Forgets an emptied outbox, unless a pod covered it again since it was read.
    pub async fn forget(&self, stranded: &Stranded) -> Result<(), EventError> {
        let args = vec![stranded.key.clone(), stranded.score.clone()];
        let client = self.store.pool().next();
        bounded(
            &self.store,
            self.forget.run(client, vec![self.index()], args),
        )
        .await?;
        Ok(())
    }

    async fn command(&self, name: &'static str, args: Vec<String>) -> Result<Value, EventError> {
        let command = CustomCommand::new(name, ClusterHash::FirstKey, false);
        bounded(&self.store, self.store.pool().next().custom(command, args)).await
    }
}

fn text(v: Value) -> Result<String, EventError> {
    v.into_string().ok_or_else(|| corrupt("not text"))
}

fn pairs(fields: Vec<Value>) -> Result<Vec<(String, String)>, EventError> {
    let mut out = Vec::with_capacity(fields.len() / 2);
    let mut fields = fields.into_iter();
    while let (Some(id), Some(json)) = (fields.next(), fields.next()) {
        out.push((text(id)?, text(json)?));
    }
    Ok(out)
}
