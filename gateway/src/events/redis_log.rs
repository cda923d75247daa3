//! The event log in Redis: one stream per partition, `<prefix>:events:{<N>}` (field `e`: the
//! event's JSON), read by the consumer group `webhook` with one consumer per pod. A partition is
//! delivered by the holder of `<prefix>:events-lease:{<N>}` (`SET NX PX`, renewed while
//! delivering), so its events go out in stream order; the holder first claims every entry
//! pending for any consumer (`XAUTOCLAIM` from `0-0`: a dead pod's, or its own failed batch),
//! then reads new ones (`XREADGROUP >`). Delivered entries are acknowledged and deleted
//! (`XACK` + `XDEL`), so a stream holds only what is undelivered; `XTRIM MAXLEN` bounds it.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fred::interfaces::ClientLike;
use fred::prelude::LuaInterface;
use fred::types::{ClusterHash, CustomCommand, Value};
use session_store::RedisStore;

use super::EventError;
use super::store::{Entry, EventLog, EventQueue};

/// The consumer group every pod reads through.
const GROUP: &str = "webhook";

/// Renews a lease only for its holder.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0";

/// Deletes a lease only for its holder.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

/// A Lua script run with EVALSHA, loaded on first use and sent again on `NOSCRIPT`.
#[derive(Debug, Clone)]
pub(super) struct Script {
    source: &'static str,
    sha: Arc<OnceLock<String>>,
}

impl Script {
    pub(super) fn new(source: &'static str) -> Self {
        Self {
            source,
            sha: Arc::default(),
        }
    }

    pub(super) async fn run(
        &self,
        client: &fred::prelude::Client,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Value, fred::error::Error> {
        let sha = match self.sha.get() {
            Some(sha) => sha.clone(),
            None => {
                let sha: String = client.script_load(self.source).await?;
                self.sha.get_or_init(|| sha).clone()
            }
        };
        match client.evalsha(sha, keys.clone(), args.clone()).await {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                client.eval(self.source, keys, args).await
            }
            other => other,
        }
    }
}

/// A store call bounded by the store's timeout.
pub(super) async fn bounded<T>(
    store: &RedisStore,
    op: impl Future<Output = Result<T, fred::error::Error>>,
) -> Result<T, EventError> {
    let timeout = store.call_timeout();
    tokio::time::timeout(timeout, op)
        .await
        .map_err(|_| EventError::Unavailable(format!("timed out after {timeout:?}")))?
        .map_err(|e| EventError::Unavailable(e.to_string()))
}

pub(super) fn corrupt(what: &str) -> EventError {
    EventError::Corrupt(what.to_owned())
}

#[derive(Debug, Clone)]
pub struct RedisLog {
    store: RedisStore,
    renew: Script,
    release: Script,
    /// Partitions whose consumer group exists (created once per process).
    grouped: Arc<std::sync::Mutex<std::collections::HashSet<u32>>>,
}

impl RedisLog {
    pub fn new(store: RedisStore) -> Self {
        Self {
            store,
            renew: Script::new(RENEW),
            release: Script::new(RELEASE),
            grouped: Arc::default(),
        }
    }

    fn stream(&self, partition: u32) -> String {
        format!("{}:events:{{{partition}}}", self.store.key_prefix())
    }

    fn lease_key(&self, partition: u32) -> String {
        format!("{}:events-lease:{{{partition}}}", self.store.key_prefix())
    }

    /// A command whose first argument is its key.
    async fn command(&self, name: &'static str, args: Vec<String>) -> Result<Value, EventError> {
        self.command_at(name, 0, args).await
    }

    /// A command whose key is argument `key_at` (for the cluster slot).
    async fn command_at(
        &self,
        name: &'static str,
        key_at: usize,
        args: Vec<String>,
    ) -> Result<Value, EventError> {
        let command = CustomCommand::new(name, ClusterHash::Offset(key_at), false);
        bounded(&self.store, self.store.pool().next().custom(command, args)).await
    }

    /// Creates the group (and the stream) once; `BUSYGROUP` means another pod did.
    async fn ensure_group(&self, partition: u32) -> Result<(), EventError> {
        if self.grouped.lock().expect("lock").contains(&partition) {
            return Ok(());
        }
        let args = vec![
            "CREATE".into(),
            self.stream(partition),
            GROUP.into(),
            "0".into(),
            "MKSTREAM".into(),
        ];
        match self.command_at("XGROUP", 1, args).await {
            Ok(_) => {}
            Err(EventError::Unavailable(e)) if e.contains("BUSYGROUP") => {}
            Err(e) => return Err(e),
        }
        self.grouped.lock().expect("lock").insert(partition);
        Ok(())
    }
}

impl EventLog for RedisLog {
    async fn append(&self, partition: u32, json: &str) -> Result<(), EventError> {
        let args = vec![
            self.stream(partition),
            "*".into(),
            "e".into(),
            json.to_owned(),
        ];
        self.command("XADD", args).await.map(|_| ())
    }
}

impl EventQueue for RedisLog {
    async fn lease(&self, partition: u32, holder: &str, ttl: Duration) -> Result<bool, EventError> {
        let keys = vec![self.lease_key(partition)];
        let args = vec![holder.to_owned(), ttl.as_millis().max(1).to_string()];
        let client = self.store.pool().next();
        let held = bounded(&self.store, self.renew.run(client, keys, args)).await?;
        Ok(held.as_i64() == Some(1))
    }

    async fn release(&self, partition: u32, holder: &str) -> Result<(), EventError> {
        let keys = vec![self.lease_key(partition)];
        let client = self.store.pool().next();
        bounded(
            &self.store,
            self.release.run(client, keys, vec![holder.to_owned()]),
        )
        .await?;
        Ok(())
    }

    async fn next_batch(
        &self,
        partition: u32,
        holder: &str,
        max: usize,
    ) -> Result<Vec<Entry>, EventError> {
        match self.read_batch(partition, holder, max).await {
            // The stream and its group are gone (a restarted Redis without persistence, a
            // flush): create them again on the next pass.
            Err(EventError::Unavailable(e)) if e.contains("NOGROUP") => {
                self.grouped.lock().expect("lock").remove(&partition);
                Ok(Vec::new())
            }
            other => other,
        }
    }

    async fn ack(&self, partition: u32, ids: &[String]) -> Result<(), EventError> {
        self.ack_and_delete(partition, ids).await
    }

    async fn bound(&self, partition: u32, max: u64) -> Result<(u64, u64), EventError> {
        self.trim(partition, max).await
    }
}

impl RedisLog {
    async fn read_batch(
        &self,
        partition: u32,
        holder: &str,
        max: usize,
    ) -> Result<Vec<Entry>, EventError> {
        self.ensure_group(partition).await?;
        let stream = self.stream(partition);
        // Pending first, whoever read them: the lease makes this pod the only deliverer, so
        // claiming without an idle time is safe, and keeps the stream's order.
        let claimed = self
            .command(
                "XAUTOCLAIM",
                vec![
                    stream.clone(),
                    GROUP.into(),
                    holder.to_owned(),
                    "0".into(),
                    "0-0".into(),
                    "COUNT".into(),
                    max.to_string(),
                ],
            )
            .await?;
        let Value::Array(mut parts) = claimed else {
            return Err(corrupt("XAUTOCLAIM reply"));
        };
        if parts.len() < 2 {
            return Err(corrupt("XAUTOCLAIM reply"));
        }
        let pending = entries(parts.swap_remove(1))?;
        if !pending.is_empty() {
            return Ok(pending);
        }
        let read = self
            .command_at(
                "XREADGROUP",
                6,
                vec![
                    "GROUP".into(),
                    GROUP.into(),
                    holder.to_owned(),
                    "COUNT".into(),
                    max.to_string(),
                    "STREAMS".into(),
                    stream,
                    ">".into(),
                ],
            )
            .await;
        match read? {
            Value::Null => Ok(Vec::new()),
            Value::Array(streams) => {
                let Some(Value::Array(mut stream)) = streams.into_iter().next() else {
                    return Ok(Vec::new());
                };
                if stream.len() < 2 {
                    return Err(corrupt("XREADGROUP reply"));
                }
                entries(stream.swap_remove(1))
            }
            Value::Map(map) => match map.inner().into_iter().next() {
                Some((_, v)) => entries(v),
                None => Ok(Vec::new()),
            },
            _ => Err(corrupt("XREADGROUP reply")),
        }
    }

    async fn ack_and_delete(&self, partition: u32, ids: &[String]) -> Result<(), EventError> {
        if ids.is_empty() {
            return Ok(());
        }
        let stream = self.stream(partition);
        let mut args = vec![stream.clone(), GROUP.into()];
        args.extend(ids.iter().cloned());
        self.command("XACK", args).await?;
        let mut args = vec![stream];
        args.extend(ids.iter().cloned());
        self.command("XDEL", args).await?;
        Ok(())
    }

    async fn trim(&self, partition: u32, max: u64) -> Result<(u64, u64), EventError> {
        let stream = self.stream(partition);
        let len = self
            .command("XLEN", vec![stream.clone()])
            .await?
            .as_u64()
            .ok_or_else(|| corrupt("XLEN reply"))?;
        if len <= max {
            return Ok((len, 0));
        }
        let dropped = self
            .command("XTRIM", vec![stream, "MAXLEN".into(), max.to_string()])
            .await?
            .as_u64()
            .ok_or_else(|| corrupt("XTRIM reply"))?;
        Ok((len, dropped))
    }
}

/// Stream entries `[[id, [field, value, …]], …]`; entries deleted meanwhile (`nil` fields) are
/// skipped.
fn entries(value: Value) -> Result<Vec<Entry>, EventError> {
    let Value::Array(items) = value else {
        return match value {
            Value::Null => Ok(Vec::new()),
            _ => Err(corrupt("stream entries")),
        };
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(mut pair) = item else {
            return Err(corrupt("stream entry"));
        };
        if pair.len() != 2 {
            return Err(corrupt("stream entry"));
        }
        let fields = pair.pop().expect("two");
        let id = pair
            .pop()
            .expect("two")
            .into_string()
            .ok_or_else(|| corrupt("entry id"))?;
        let json = match fields {
            Value::Array(fields) => fields
                .into_iter()
                .nth(1)
                .and_then(Value::into_string)
                .ok_or_else(|| corrupt("entry fields"))?,
            Value::Map(map) => map
                .inner()
                .into_iter()
                .next()
                .and_then(|(_, v)| v.into_string())
                .ok_or_else(|| corrupt("entry fields"))?,
            Value::Null => continue,
            _ => return Err(corrupt("entry fields")),
        };
        let at_ms = id
            .split('-')
            .next()
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(0);
        out.push(Entry { id, json, at_ms });
    }
    Ok(out)
}
