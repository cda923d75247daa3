//! Sessions, per-topic sequences and capped history.
//!
//! Layout:
//! - this file: the [`SessionStore`] trait, its data types, and [`recover`], the one place that
//!   decides whether a client position can be recovered from a page of history.
//! - [`memory`]: the in-process implementation (embedded default, single node).
//! - [`redis`]: the Redis implementation shared by a fleet of pods (keys and scripts documented
//!   there).
//! - [`ordered`]: [`OrderedAppends`], appends kept in flight at once and applied in issue
//!   order (a publisher's pipeline).
//! - [`reverse`]: [`ReverseHistory`], reading a topic's history newest first (the `history`
//!   API's backward pages), for both stores.
//! - [`AnyStore`]: either of the two, chosen at runtime by the gateway's configuration.
//! - `conformance` (feature `conformance`): the behavioural suite both implementations pass.
//!
//! Every topic has a history: publishing assigns the next `seq` and appends to a history capped
//! by count and age, atomically. Each topic also has an [`Epoch`]; whenever the history may have
//! gone backwards (a flushed store, an expired topic, a Redis restarted from a snapshot or
//! failed over to a replica) the epoch changes, so positions from before cannot be mistaken for
//! positions in the new history. Epochs are ordered: a newer one compares greater.
//!
//! History is read in bounded pages ([`SessionStore::history`] takes a count and the store caps
//! a page's bytes at [`PAGE_BYTES`]), so no single call holds a topic's whole backlog in memory
//! or blocks Redis for long. Sessions are owned by one connection at a time: a connection
//! claims a session's next *generation* ([`SessionStore::claim_session`]) and only the latest
//! generation may save it.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use protocol::{Epoch, Payload, Position, PublishId, SessionId, Topic};
use serde::{Deserialize, Serialize};

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod memory;
pub mod ordered;
pub mod redis;
pub mod reverse;
pub mod users;

pub use memory::MemoryStore;
pub use ordered::{Issued, IssuedAppend, Lane, OrderedAppends};
pub use redis::{RedisConfig, RedisStore, RedisTls, RedisUsers};
pub use reverse::ReverseHistory;
pub use users::{AnyUsers, MemoryUsers, Revocations, Revoked, UserSessions};

/// Failures of a store call. The gateway answers `unavailable` to the client for any of them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store call timed out after {0:?}")]
    Timeout(Duration),
    #[error("corrupt record in store: {0}")]
    Corrupt(String),
}

/// Limits of every topic's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Messages kept per topic.
    pub max_len: usize,
    /// How long a message stays in history, and how long an idle topic keeps its `seq`/`epoch`.
    pub ttl: Duration,
    /// How long a publish id is remembered: a retry with the same id within it stores nothing.
    pub dedup_window: Duration,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        Self {
            max_len: 1_000,
            ttl: Duration::from_secs(600),
            dedup_window: Duration::from_secs(120),
        }
    }
}

/// History limits that differ by topic prefix (the gateway's namespaces): the longest matching
/// prefix wins; a topic that matches none gets the store's default [`HistoryLimits`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefixLimits {
    /// Longest prefix first, so the first match is the longest.
    entries: Vec<(String, HistoryLimits)>,
}

impl PrefixLimits {
    pub fn new(mut entries: Vec<(String, HistoryLimits)>) -> Self {
        entries.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Self { entries }
    }

    /// The limits of `topic`: its longest matching prefix's, else `default`.
    pub fn get(&self, topic: &Topic, default: HistoryLimits) -> HistoryLimits {
        self.entries
            .iter()
            .find(|(prefix, _)| topic.as_str().starts_with(prefix.as_str()))
            .map_or(default, |(_, limits)| *limits)
    }
}

/// Most payload bytes one history page carries (it always carries at least one message): bounds
/// the memory a reader holds and the time one Redis call takes.
pub const PAGE_BYTES: usize = 256 * 1024;

/// A message as kept in history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub seq: u64,
    pub data: Payload,
    /// The session the publisher excluded (echo suppression): a replay to that session sends a
    /// `skipped` frame in this message's place; everyone else, and every history read, gets
    /// the message.
    pub exclude: Option<SessionId>,
}

/// The result of an append: the message's `seq` and the topic's epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    pub epoch: Epoch,
    /// `true` when the publish id was seen before: `seq`/`epoch` are the first publish's, and
    /// nothing was stored (the caller must not fan it out again).
    pub duplicate: bool,
}

/// A page of a topic's messages after some `seq`, with the topic's current top.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// The latest `seq` and the epoch, read together with the messages.
    pub top: Position,
    /// Messages with `seq` above the requested one, in order, at most the requested count and
    /// about [`PAGE_BYTES`]; possibly not starting right after it when older messages were
    /// trimmed. More may follow when the last one is below `top.seq`.
    pub messages: Vec<StoredMessage>,
}

impl HistoryPage {
    /// Payload bytes in the page.
    pub fn bytes(&self) -> usize {
        self.messages.iter().map(|m| m.data.len()).sum()
    }
}

/// Who holds a session: the pod and the generation it claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub pod: String,
    pub generation: u64,
}

/// The result of [`SessionStore::claim_session`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// This claim's generation: higher than every earlier claim of the session.
    pub generation: u64,
    /// The claim before this one, if the session had one: its connection must be closed.
    pub previous: Option<Owner>,
}

/// A session as stored between connections, so any pod can resume it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: SessionId,
    /// The resume token's secret; compared in constant time by [`protocol::ResumeToken`].
    pub secret: String,
    /// The authenticated user (`sub`), if any: a session resumes only for the same user.
    pub user: Option<String>,
    /// Subscribed topics with the last position delivered to the client.
    pub subscriptions: BTreeMap<Topic, Position>,
    /// Whether the client is known to have read up to those positions: saved after a close
    /// handshake it completed (it read our close frame, which came after every message). A save
    /// while connected, or after the connection just vanished, is not confirmed: messages may
    /// still have sat unread in socket buffers, so a resume without the client's own positions
    /// cannot claim to recover from these.
    #[serde(default)]
    pub confirmed: bool,
    /// Milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// The pod that last held the session.
    pub last_pod: String,
    /// What the application's connect hook granted, so a resume (which never calls the hook)
    /// restores it. `None` for sessions whose grants come from a token or the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted: Option<HookGrant>,
    /// The session's presence `info` (from its token or the connect hook), so a resume lists
    /// the member the same way without asking again. Absent in records from before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
}

/// Grants and expiry set by the application's connect hook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookGrant {
    /// Topic patterns the user may subscribe to.
    #[serde(default)]
    pub sub: Vec<String>,
    /// Topic patterns the user may publish on.
    #[serde(default, rename = "pub")]
    pub publish: Vec<String>,
    /// Unix seconds after which the session must be refreshed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_at: Option<u64>,
}

/// What an append carries besides its message.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extras<'a> {
    /// The session that gets a `skipped` frame in the message's place (echo suppression).
    pub exclude: Option<&'a SessionId>,
    /// An event written with the message, in the same atomic step (Redis only: the memory
    /// store ignores it).
    pub stage: Option<&'a Stage>,
}

/// An event the append writes, when it stores a new message (not for a duplicate), into the
/// hash `key` (field `id`), which must be on the topic's hash slot (its hash tag is the
/// topic). Its value is `head`, the message's `seq`, then `,"epoch":<epoch>,"data":<the
/// message>}}`: `head` is an event's JSON up to `"seq":`, so the value is that event with
/// `data: {seq, epoch, data}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub key: String,
    pub id: String,
    pub head: String,
}

/// Storage of sessions, topic sequences and history. Cheap to clone and share.
pub trait SessionStore: Send + Sync + 'static {
    /// Assigns the next `seq` of `topic` and appends `data` to its history, atomically. With an
    /// `id` seen on this topic within the dedup window, stores nothing and returns the first
    /// append's result with `duplicate` set.
    fn append(
        &self,
        topic: &Topic,
        data: &Payload,
        id: Option<&PublishId>,
    ) -> impl Future<Output = Result<Appended, StoreError>> + Send {
        self.append_with(topic, data, id, Extras::default())
    }

    /// [`SessionStore::append`], with what [`Extras`] adds: `exclude` kept with the message
    /// ([`StoredMessage::exclude`]; a duplicate keeps the first append's exclusion) and an
    /// event staged in the same write.
    fn append_with(
        &self,
        topic: &Topic,
        data: &Payload,
        id: Option<&PublishId>,
        extras: Extras<'_>,
    ) -> impl Future<Output = Result<Appended, StoreError>> + Send;

    /// The latest `seq` and epoch of a topic (`seq` 0 for a topic never published to). Creates
    /// the epoch if the topic has none yet, so the answer is stable for later appends.
    fn top(&self, topic: &Topic) -> impl Future<Output = Result<Position, StoreError>> + Send;

    /// The tops of many topics in one batch (pipelined), in the order given.
    fn tops(
        &self,
        topics: &[Topic],
    ) -> impl Future<Output = Result<Vec<Position>, StoreError>> + Send;

    /// One page of the topic's history after `after` (exclusive): at most `limit` messages and
    /// about [`PAGE_BYTES`] (at least one message when there is one), and the topic's top.
    fn history(
        &self,
        topic: &Topic,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<HistoryPage, StoreError>> + Send;

    /// Moves `topic` to a new epoch (seq 0, empty history) if its epoch is still `stale`:
    /// called by a pod that finds the store behind what it already delivered in that epoch (the
    /// store went backwards without noticing). Returns the topic's top afterwards.
    fn new_epoch(
        &self,
        topic: &Topic,
        stale: &Epoch,
    ) -> impl Future<Output = Result<Position, StoreError>> + Send;

    /// Claims the next generation of session `id` for a connection on `pod`, atomically, and
    /// says who held it before. The claim lives `ttl` unless saved again.
    fn claim_session(
        &self,
        id: &SessionId,
        pod: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send;

    /// Stores a session for the connection holding `generation`; it expires `ttl` after this
    /// call unless saved again. Returns `false` (and stores nothing) when a later claim holds
    /// the session: a taken-over connection never overwrites the newer one's record.
    fn save_session(
        &self,
        session: &SessionRecord,
        generation: u64,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    fn load_session(
        &self,
        id: &SessionId,
    ) -> impl Future<Output = Result<Option<SessionRecord>, StoreError>> + Send;

    fn delete_session(&self, id: &SessionId)
    -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Whether the store answers: feeds `/readyz`.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The store the gateway runs with, picked at startup: memory without a Redis URL, else Redis.
///
/// An enum rather than a trait object because [`SessionStore`]'s methods return `impl Future`.
#[derive(Debug, Clone)]
pub enum AnyStore {
    Memory(MemoryStore),
    Redis(RedisStore),
}

impl From<MemoryStore> for AnyStore {
    fn from(store: MemoryStore) -> Self {
        Self::Memory(store)
    }
}

impl From<RedisStore> for AnyStore {
    fn from(store: RedisStore) -> Self {
        Self::Redis(store)
    }
}

/// Calls the same method on whichever store is inside.
macro_rules! delegate {
    ($self:ident, $method:ident($($arg:expr),*)) => {
        match $self {
            AnyStore::Memory(store) => store.$method($($arg),*).await,
            // Boxed: fred's futures are ~15 KB. Unboxed, they sized every future that awaits
            // the store (a connection's message handler: 28 KB, allocated and copied per
            // client message; its delivery batch: 15 KB), in memory mode too. A Redis call
            // is a round trip, so one allocation more there costs nothing that shows.
            AnyStore::Redis(store) => Box::pin(store.$method($($arg),*)).await,
        }
    };
}

impl OrderedAppends for AnyStore {
    fn issue_append_with(
        &self,
        lane: &mut Lane,
        topic: &Topic,
        data: &Payload,
        id: Option<&PublishId>,
        extras: Extras<'_>,
    ) -> IssuedAppend {
        match self {
            AnyStore::Memory(store) => store.issue_append_with(lane, topic, data, id, extras),
            AnyStore::Redis(store) => store.issue_append_with(lane, topic, data, id, extras),
        }
    }
}

impl SessionStore for AnyStore {
    async fn append_with(
        &self,
        topic: &Topic,
        data: &Payload,
        id: Option<&PublishId>,
        extras: Extras<'_>,
    ) -> Result<Appended, StoreError> {
        delegate!(self, append_with(topic, data, id, extras))
    }

    async fn top(&self, topic: &Topic) -> Result<Position, StoreError> {
        delegate!(self, top(topic))
    }

    async fn tops(&self, topics: &[Topic]) -> Result<Vec<Position>, StoreError> {
        delegate!(self, tops(topics))
    }

    async fn history(
        &self,
        topic: &Topic,
        after: u64,
        limit: usize,
    ) -> Result<HistoryPage, StoreError> {
        delegate!(self, history(topic, after, limit))
    }

    async fn new_epoch(&self, topic: &Topic, stale: &Epoch) -> Result<Position, StoreError> {
        delegate!(self, new_epoch(topic, stale))
    }

    async fn claim_session(
        &self,
        id: &SessionId,
        pod: &str,
        ttl: Duration,
    ) -> Result<Claim, StoreError> {
        delegate!(self, claim_session(id, pod, ttl))
    }

    async fn save_session(
        &self,
        session: &SessionRecord,
        generation: u64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        delegate!(self, save_session(session, generation, ttl))
    }

    async fn load_session(&self, id: &SessionId) -> Result<Option<SessionRecord>, StoreError> {
        delegate!(self, load_session(id))
    }

    async fn delete_session(&self, id: &SessionId) -> Result<(), StoreError> {
        delegate!(self, delete_session(id))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        delegate!(self, ping())
    }
}

/// What a client position resolves to against a page of history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// `true` when every message after the client's position is in `messages`.
    pub recovered: bool,
    /// The messages to send, in order (empty when not recovered).
    pub messages: Vec<StoredMessage>,
    pub top: Position,
}

/// Decides whether `since` can be recovered from `page` (the first page fetched with
/// `after = since.seq`; later pages continue from the last message).
///
/// Recovered means: same epoch, the client is not ahead of the top, and the page starts right
/// after the client's `seq` (nothing in between was trimmed).
pub fn recover(since: &Position, page: HistoryPage) -> Recovery {
    let contiguous = match page.messages.first() {
        Some(first) => first.seq == since.seq + 1,
        None => since.seq == page.top.seq,
    };
    let recovered = since.epoch == page.top.epoch && since.seq <= page.top.seq && contiguous;
    Recovery {
        recovered,
        messages: if recovered { page.messages } else { Vec::new() },
        top: page.top,
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64) -> StoredMessage {
        StoredMessage {
            seq,
            data: Payload::parse("1").unwrap(),
            exclude: None,
        }
    }

    fn pos(seq: u64, epoch: &str) -> Position {
        Position {
            seq,
            epoch: Epoch::new(epoch),
        }
    }

    #[test]
    fn a_store_call_is_a_small_future_whichever_store_runs() {
        // fred's command futures are ~15 KB. Awaited inline by `AnyStore`, they would size
        // every future that awaits the store (a connection's message handler, allocated per
        // client frame, was 28 KB), even in memory mode.
        let store = AnyStore::from(MemoryStore::default());
        let topic = Topic::new("t").unwrap();
        let id = SessionId::generate();
        let history = store.history(&topic, 0, 10);
        let load = store.load_session(&id);
        assert!(
            std::mem::size_of_val(&history) < 1024,
            "history future: {} B",
            std::mem::size_of_val(&history)
        );
        assert!(
            std::mem::size_of_val(&load) < 1024,
            "load_session future: {} B",
            std::mem::size_of_val(&load)
        );
    }

    #[test]
    fn recovery_rules() {
        let page = |msgs: Vec<u64>, top: u64| HistoryPage {
            top: pos(top, "e"),
            messages: msgs.into_iter().map(msg).collect(),
        };
        assert!(recover(&pos(2, "e"), page(vec![3, 4], 4)).recovered);
        assert!(recover(&pos(4, "e"), page(vec![], 4)).recovered);
        // Trimmed: 3 is gone.
        assert!(!recover(&pos(2, "e"), page(vec![4], 4)).recovered);
        // Another epoch.
        assert!(!recover(&pos(2, "x"), page(vec![3, 4], 4)).recovered);
        // Client ahead of the top.
        assert!(!recover(&pos(9, "e"), page(vec![], 4)).recovered);
        // History empty but messages were published since.
        assert!(!recover(&pos(2, "e"), page(vec![], 4)).recovered);
    }

    #[test]
    fn the_longest_prefix_gives_the_limits() {
        let with = |max_len| HistoryLimits {
            max_len,
            ..HistoryLimits::default()
        };
        let limits = PrefixLimits::new(vec![
            ("room.".into(), with(5)),
            ("room.vip.".into(), with(50)),
            ("".into(), with(7)),
        ]);
        let get = |t: &str| limits.get(&Topic::new(t).unwrap(), with(1)).max_len;
        assert_eq!(get("room.a"), 5);
        assert_eq!(get("room.vip.a"), 50);
        assert_eq!(get("other"), 7);
        assert_eq!(
            PrefixLimits::default()
                .get(&Topic::new("x").unwrap(), with(1))
                .max_len,
            1
        );
    }

    #[test]
    fn records_from_before_info_still_decode() {
        let old = r#"{"id":"0123456789abcdef0123456789abcdef","secret":"ab","user":"ann","subscriptions":{},"created_ms":1,"last_pod":"p"}"#;
        let record: SessionRecord = serde_json::from_str(old).expect("old record");
        assert_eq!(record.info, None);
        let with = SessionRecord {
            info: Some(serde_json::json!({"name": "Ann"})),
            ..record
        };
        let json = serde_json::to_string(&with).expect("encode");
        assert!(json.contains(r#""info":{"name":"Ann"}"#), "{json}");
        assert_eq!(
            serde_json::from_str::<SessionRecord>(&json).expect("decode"),
            with
        );
    }
}
