//! The Redis store (over `fred`): what a fleet of gateway pods shares.
//!
//! # Keys (prefix `p`, default `gw`)
//! - `p:seq:{topic}`: the topic's latest `seq` (string integer).
//! - `p:hist:{topic}`: the topic's history, a stream capped exactly at `max_len` entries. Entry
//!   ids are `<seq>-1`; fields `d` (the payload's JSON text, byte for byte), `t` (Redis server
//!   time in ms when appended, used for age trimming) and, only on a message published with echo
//!   suppression, `x` (the excluded session's id). History replies carry `id, data, exclude`
//!   triples (`""` for none).
//! - `p:epoch:{topic}`: the topic's epoch and the incarnation that wrote it,
//!   `<epoch>|<master_replid>`.
//! - `p:ack:{topic}`: with `min_replicas` > 0, the last `seq` enough replicas acknowledged.
//! - `p:pid:{topic}:<id>`: a publish id seen within the dedup window, `<seq>|<epoch>`.
//! - `p:session:<id>`: a session, a hash: `r` the record as JSON, `g` the generation of the
//!   latest claim, `o` the pod that claimed it. Claiming and saving are Lua scripts, so only the
//!   latest claim's connection can write the record.
//!
//! The braces are literal: `{topic}` is a Redis Cluster hash tag, so a topic's keys live in one
//! slot and one Lua script can touch them all. Topic names cannot contain braces, and the prefix
//! is refused if it does.
//!
//! All topic keys carry the history ttl, refreshed on every append, so an idle topic disappears
//! after the ttl; so does a topic whose keys were flushed or evicted. A topic is valid only while
//! both its `seq` and `epoch` keys exist **and** its epoch was written under an incarnation that
//! can still be trusted. The incarnation is the server's replication id (`master_replid`, read by
//! the script itself, so no restart goes unnoticed between two checks), which changes on every
//! restart and every promotion of a replica. The scripts (in `lua/`) start a new history with a
//! later epoch and `seq` 0 as soon as a key is missing or the incarnation changed: a restart from
//! a snapshot or an AOF, a failover to a replica or a restored backup brings back data that looks
//! valid but may be older than what clients were sent, and the new epoch makes every position
//! from before unrecoverable (`recovered: false`) instead of silently reusing `seq` numbers. It
//! also changes on a restart that lost nothing: the store cannot tell, and a visible break is
//! the safe side. `top` and `history` create that state for an unknown topic, so the epoch they
//! report is the one later appends use.
//!
//! With `min_replicas` > 0 ("lineage" mode) a failover keeps the epochs: every append waits until
//! that many replicas have it (`WAIT`), and only then becomes readable (`p:ack:{topic}`) and goes
//! out on the backplane. A promoted replica (whose second replication id is the old primary's id)
//! therefore holds everything anyone was sent, and its topics carry their epochs over. What it may
//! lack was never acknowledged nor read. A restart from files still starts new epochs.
//!
//! # Connection behaviour
//! [`RedisStore::connect`] accepts any URL `fred` parses (`redis://`, `redis-cluster://`,
//! `redis-sentinel://...?sentinelServiceName=..`, and each with TLS: `rediss://`,
//! `rediss-cluster://`, `rediss-sentinel://`). TLS is rustls with the ring provider, configured
//! by [`RedisConfig::tls`] (default: the system's roots); a TLS URL never falls back to
//! plaintext, and TLS settings with a plaintext URL are refused. It waits up to the
//! call timeout for a first connection and then returns **even if Redis is unreachable**: the
//! clients keep reconnecting in the background forever (exponential backoff, 100 ms to 2 s), and
//! calls fail with [`StoreError::Timeout`] or [`StoreError::Unavailable`] until Redis answers.
//! A pod therefore starts (and reports not-ready through
//! [`SessionStore::ping`](crate::SessionStore::ping)) without Redis, and recovers without a
//! restart when Redis comes back. Only a malformed URL or prefix fails.
//! A TLS handshake that fails (unknown issuer, wrong name, a plaintext server) is a connection
//! failure like any other: retried, logged, and the store stays unavailable.
//!
//! Every call is bounded by `call_timeout`: `fred`'s own command timeout marks an expired command
//! so it is never written late after a reconnect, and an outer timeout bounds the whole call.
//! Commands are written at most once (no replay after a dropped connection) because `append` is
//! not idempotent without a publish id; the gateway decides whether to retry.
//!
//! In a Redis Cluster, fred 10 counts following a `MOVED` or `ASK` redirection as a second write,
//! so with one attempt allowed a command that meets a redirection (after a failover or while a
//! slot moves) fails with [`StoreError::Unavailable`] instead; fred refreshes its slot table on
//! `MOVED`, so the next call goes to the right node. The idempotent calls (`top`, `history`,
//! `new_epoch`, `save_session`, `load_session`) are retried once on that error; `append` and
//! `claim_session` are not. While a slot migrates (`ASK`), every call on its keys fails until
//! the migration ends. fred also needs every master listed by the cluster to accept a
//! connection before it serves any command after losing one: while a dead master is not yet
//! replaced, calls on *every* slot wait and time out.
//!
//! With `min_replicas` > 0 an append also waits (`WAIT`, on the same connection, bounded by the
//! call timeout) until that many replicas have it; fewer acknowledgements fail the call with
//! [`StoreError::Unavailable`] (the message *is* stored, but unreadable until acknowledged: a
//! retry with the same publish id waits again and makes it readable, without storing it twice).
//! The retry succeeds only once the replicas have the first append: its script rewrites the
//! id's key, so `WAIT` covers the stream up to the first append even when that ran on another
//! connection or pod.
//!
//! # Layout
//! This file: the configuration, connecting, and the keys. `calls` (bounded calls, script
//! evaluation, error mapping), `appends` (the append script and the replica wait), `replies`
//! (parsing script replies), `session_store` (the [`SessionStore`](crate::SessionStore)
//! implementation), `scripts` (loading the Lua scripts), `ordered` (pipelined appends in issue
//! order), `users` and `tls`.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::{Builder, ClientLike, EventInterface, Pool, ReconnectPolicy};
use fred::types::ConnectHandle;
use fred::types::config::UnresponsiveConfig;
use protocol::{SessionId, Topic, redact_url};

mod appends;
mod calls;
mod ordered;
mod replies;
mod scripts;
mod session_store;
mod tls;
mod users;

pub use users::RedisUsers;

pub use tls::RedisTls;

use calls::{corrupt, millis};
use scripts::{NoScript, Retry, Script};

use crate::{HistoryLimits, PrefixLimits, StoreError};

/// Added to the call timeout for the outer bound, so `fred`'s per-command timeout (which also
/// cancels a queued command) normally fires first.
const TIMEOUT_GRACE: Duration = Duration::from_millis(50);

const PRELUDE: &str = include_str!("lua/prelude.lua");
const APPEND_LUA: &str = include_str!("lua/append.lua");
const TOP_LUA: &str = include_str!("lua/top.lua");
const HISTORY_LUA: &str = include_str!("lua/history.lua");
const HISTORY_BEFORE_LUA: &str = include_str!("lua/history_before.lua");
const NEW_EPOCH_LUA: &str = include_str!("lua/new_epoch.lua");
const CLAIM_SESSION_LUA: &str = include_str!("lua/claim_session.lua");
const SAVE_SESSION_LUA: &str = include_str!("lua/save_session.lua");
const ACK_LUA: &str = include_str!("lua/ack.lua");

/// Topics whose tops are read concurrently in one batch: fred pipelines them on the pool.
const TOPS_BATCH: usize = 256;

/// How to reach Redis and how to lay out keys.
#[derive(Clone)]
pub struct RedisConfig {
    /// A `fred` URL: single server, Sentinel or Cluster.
    pub url: String,
    /// Prefix of every key (default `gw`); lets several deployments share one Redis.
    pub key_prefix: String,
    pub limits: HistoryLimits,
    /// Limits of topics under some prefixes, instead of `limits` (default: none).
    pub prefix_limits: PrefixLimits,
    /// Upper bound of every store call (default 2 s).
    pub call_timeout: Duration,
    /// Connections in the round-robin pool (default 4; at least 1).
    pub pool_size: usize,
    /// Replicas that must acknowledge an append before it succeeds (`WAIT`; default 0).
    pub min_replicas: u32,
    /// ACL user name, instead of the URL's (default: the URL's, else `default`).
    pub username: Option<String>,
    /// Password, instead of the URL's. Never printed.
    pub password: Option<String>,
    /// TLS settings for a TLS URL (default: the system's roots). Refused with a plaintext URL.
    pub tls: Option<RedisTls>,
}

impl RedisConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            key_prefix: "gw".to_owned(),
            limits: HistoryLimits::default(),
            prefix_limits: PrefixLimits::default(),
            call_timeout: Duration::from_secs(2),
            pool_size: 4,
            min_replicas: 0,
            username: None,
            password: None,
            tls: None,
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self::new("redis://127.0.0.1:6379")
    }
}

/// The URL may carry a password, and `password` is one: never print them.
impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("limits", &self.limits)
            .field("prefix_limits", &self.prefix_limits)
            .field("call_timeout", &self.call_timeout)
            .field("pool_size", &self.pool_size)
            .field("min_replicas", &self.min_replicas)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("tls", &self.tls)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: Pool,
    prefix: String,
    limits: HistoryLimits,
    prefix_limits: PrefixLimits,
    call_timeout: Duration,
    min_replicas: u32,
    append: Script,
    top: Script,
    history: Script,
    history_before: Script,
    new_epoch: Script,
    ack: Script,
    claim_session: Script,
    save_session: Script,
    /// Per pool client: the servers known to hold the append script (see [`ordered`]).
    script_caches: Vec<Arc<ordered::ScriptCache>>,
    tasks: Vec<ConnectHandle>,
}

impl Drop for Inner {
    /// The connection tasks reconnect forever; stop them once nobody can use the pool.
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl RedisStore {
    /// Builds the pool and starts connecting. Returns once connected or after `call_timeout`,
    /// whichever comes first: an unreachable Redis is not an error (see the module docs). Must be
    /// called inside a Tokio runtime.
    pub async fn connect(config: RedisConfig) -> Result<Self, StoreError> {
        if config.key_prefix.contains(['{', '}']) {
            return Err(StoreError::Unavailable(
                "redis key prefix must not contain braces (they delimit cluster hash tags)".into(),
            ));
        }
        let mut fred_config = tls::fred_config(&config.url, config.tls.as_ref())?;
        if let Some(username) = &config.username {
            fred_config.username = Some(username.clone());
        }
        if let Some(password) = &config.password {
            fred_config.password = Some(password.clone());
        }
        // Retry the first connection like any later one instead of failing the pod's startup.
        fred_config.fail_fast = false;

        let call_timeout = config.call_timeout.max(Duration::from_millis(1));
        let connect_timeout = call_timeout.max(Duration::from_secs(1));
        let pool = Builder::from_config(fred_config)
            .with_performance_config(|perf| perf.default_command_timeout = call_timeout)
            .with_connection_config(|conn| {
                conn.connection_timeout = connect_timeout;
                conn.internal_command_timeout = connect_timeout;
                // Written at most once: replaying an append after a dropped connection could
                // store it twice.
                conn.max_command_attempts = 1;
                // A silently dead connection (no RST, e.g. a partition) is dropped and redialled.
                let unresponsive = (call_timeout * 2).max(Duration::from_secs(2));
                conn.unresponsive = UnresponsiveConfig {
                    max_timeout: Some(unresponsive),
                    interval: unresponsive / 4,
                };
            })
            // max_attempts 0 = forever; 100 ms doubling to 2 s, plus fred's default jitter.
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build_pool(config.pool_size.max(1))
            .map_err(|e| StoreError::Unavailable(format!("redis client: {}", e.details())))?;
        let mut tasks = pool.connect_pool();
        tasks.extend(log_connection_errors(&pool, &config.url));
        let script_caches = ordered::track_script_caches(&pool, &mut tasks);

        if tokio::time::timeout(call_timeout, pool.wait_for_connect())
            .await
            .is_err()
            && !pool.clients().iter().any(|c| c.is_connected())
        {
            tracing::warn!(
                url = %redact_url(&config.url),
                "redis is not reachable yet; retrying in the background"
            );
        }

        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                prefix: config.key_prefix,
                limits: config.limits,
                prefix_limits: config.prefix_limits,
                call_timeout,
                min_replicas: config.min_replicas,
                append: Script::new(APPEND_LUA),
                top: Script::new(TOP_LUA),
                history: Script::new(HISTORY_LUA),
                history_before: Script::new(HISTORY_BEFORE_LUA),
                new_epoch: Script::new(NEW_EPOCH_LUA),
                ack: Script::new(ACK_LUA),
                claim_session: Script::standalone(CLAIM_SESSION_LUA),
                save_session: Script::standalone(SAVE_SESSION_LUA),
                script_caches,
                tasks,
            }),
        })
    }

    /// The connection pool, for the gateway's other Redis state (fleet-wide counters, presence):
    /// one set of connections per pod, with this store's TLS, credentials and reconnects. Valid
    /// while this store (or a clone) lives.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// The key prefix every key of this store starts with.
    pub fn key_prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The timeout of one call.
    pub fn call_timeout(&self) -> Duration {
        self.inner.call_timeout
    }

    /// The history limits this store applies to topics outside `prefix_limits`.
    pub fn limits(&self) -> HistoryLimits {
        self.inner.limits
    }

    /// The history limits of `topic`.
    pub fn limits_of(&self, topic: &Topic) -> HistoryLimits {
        self.inner.prefix_limits.get(topic, self.inner.limits)
    }

    /// The key of a session (exposed for operators and tests).
    pub fn session_key(&self, id: &SessionId) -> String {
        format!("{}:session:{}", self.inner.prefix, id)
    }

    /// The key of a topic's last acknowledged `seq` (used with `min_replicas`).
    fn ack_key(&self, topic: &Topic) -> String {
        format!("{}:ack:{{{}}}", self.inner.prefix, topic.as_str())
    }

    /// The keys every topic script gets: seq, history, epoch, acknowledged seq.
    fn script_keys(&self, topic: &Topic) -> Vec<String> {
        let mut keys = self.topic_keys(topic).to_vec();
        keys.push(self.ack_key(topic));
        keys
    }

    /// The dedup key of publish `id` on `topic` (in the topic's slot).
    fn publish_id_key(&self, topic: &Topic, id: &str) -> String {
        format!("{}:pid:{{{}}}:{id}", self.inner.prefix, topic.as_str())
    }

    /// The `seq`, history and epoch keys of a topic, in the order the scripts expect.
    pub fn topic_keys(&self, topic: &Topic) -> [String; 3] {
        let (p, t) = (&self.inner.prefix, topic.as_str());
        [
            format!("{p}:seq:{{{t}}}"),
            format!("{p}:hist:{{{t}}}"),
            format!("{p}:epoch:{{{t}}}"),
        ]
    }

    fn ttl_ms(&self, topic: &Topic) -> u64 {
        millis(self.limits_of(topic).ttl)
    }
}

/// Logs why connections fail (a refused connection, a TLS handshake that fails verification,
/// `WRONGPASS`): once at warn per outage, then at debug until a connection succeeds again.
fn log_connection_errors(pool: &Pool, url: &str) -> Vec<ConnectHandle> {
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let url: Arc<str> = redact_url(url).into();
    let mut tasks = Vec::new();
    for client in pool.clients() {
        let (on_error, url) = (Arc::clone(&failing), Arc::clone(&url));
        tasks.push(client.on_error(move |(error, _server)| {
            if on_error.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::debug!(%url, error = %error.details(), "redis connection failed");
            } else {
                tracing::warn!(%url, error = %error.details(), "redis connection failed; retrying");
            }
            std::future::ready(Ok(()))
        }));
        let on_reconnect = Arc::clone(&failing);
        tasks.push(client.on_reconnect(move |_| {
            on_reconnect.store(false, std::sync::atomic::Ordering::Relaxed);
            std::future::ready(Ok(()))
        }));
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_credentials_are_redacted() {
        assert_eq!(
            redact_url("redis://user:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        let debug = format!("{:?}", RedisConfig::new("redis://:pw@h:1"));
        assert!(!debug.contains("pw"), "{debug}");
    }

    #[test]
    fn scripts_include_the_prelude() {
        let script = Script::new(APPEND_LUA);
        assert!(script.source.contains("local function topic_state()"));
        assert!(script.source.ends_with(APPEND_LUA));
    }
}
