//! Sessions and topic occupancy in Redis, each key changed by single-key commands or scripts
//! (so it works on Redis Cluster too):
//! - `<prefix>:ev-session:{<session>}` hash: `pod` and `conn` (the holder; `pod` empty once
//!   detached), `user`,
//!   and a field `t:<topic>` per subscribed topic. It decides: a session ends once, when
//!   the script that deletes it finds it (detached, for the sweeper).
//! - `<prefix>:ev-topic:{<topic>}` set of the sessions subscribed: `topic.occupied` when a
//!   session makes it one, `topic.vacated` when the last one leaves.
//! - `<prefix>:ev-pod:{<pod>}` sessions a pod holds, and `<prefix>:ev-pods` the pods that hold
//!   some; `<prefix>:ev-alive:{<pod>}` (PX) says the pod is running.
//! - `<prefix>:ev-deadlines` sorted set: detached sessions by deadline (Unix ms). It is an index
//!   only: the session hash says whether the session is still detached when the deadline comes.
//! - `<prefix>:ev-sweeper` the sweeper's lease.
//!
//! The scripts that decide an event stage it in the outbox of the key they decide on (see
//! [`super::outbox`]). Where a change takes several calls, they are ordered so that a pod dying
//! between two leaves nothing that is never finished: an index is written before the state it
//! indexes (a stale index entry is checked against the state and dropped), a topic is vacated
//! before the session forgets it, and a session being ended stays, marked, until its topics
//! are vacated.

use std::time::Duration;

use fred::interfaces::ClientLike;
use fred::types::{ClusterHash, CustomCommand, Value};
use protocol::Topic;
use session_store::{RedisStore, now_ms};

use super::outbox::RedisOutbox;
use super::redis_log::{Script, bounded, corrupt};
use super::store::{Ended, Tracker};
use super::{Event, EventError};

/// Sessions of a dead pod detached per `SPOP`, and such rounds per sweep at most.
const DETACH_BATCH: usize = 500;
const DETACH_ROUNDS: usize = 200;

/// KEYS: session hash, its outbox. ARGV: pod, has user, user, conn, event id ('' for none),
/// event JSON (staged only for a session the tracker did not know).
const ATTACH: &str = r"
local new = redis.call('EXISTS', KEYS[1]) == 0
redis.call('HSET', KEYS[1], 'pod', ARGV[1], 'conn', ARGV[4])
if ARGV[2] == '1' then redis.call('HSET', KEYS[1], 'user', ARGV[3]) end
if new and ARGV[5] ~= '' then redis.call('HSET', KEYS[2], ARGV[5], ARGV[6]) end
return new and 1 or 0";

const DETACH: &str = r"
if redis.call('HGET', KEYS[1], 'pod') == ARGV[1]
   and (ARGV[2] == '*' or redis.call('HGET', KEYS[1], 'conn') == ARGV[2]) then
  redis.call('HSET', KEYS[1], 'pod', '')
  return 1
end
return 0";

const SUBSCRIBED: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], ARGV[1], '1') end
return 0";

/// KEYS: topic set, its outbox. ARGV: session, event id, event JSON (staged when it occupies).
const OCCUPY: &str = r"
if redis.call('SADD', KEYS[1], ARGV[1]) == 1 and redis.call('SCARD', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
  return 1
end
return 0";

/// As OCCUPY, staged when it vacates.
const VACATE: &str = r"
if redis.call('SREM', KEYS[1], ARGV[1]) == 1 and redis.call('SCARD', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
  return 1
end
return 0";

/// KEYS: session hash, its outbox. ARGV: only detached ('1'), event id, event JSON without
/// the user (added here from the hash). Marks the session ending (`pod` = '~'), staging its
/// `session.ended` once; an ending session is returned again, so a second call finishes what
/// a failed one began. Returns nil, or '1' (staged now) or '0' (staged before) followed by the
/// hash's fields; the caller deletes the hash once its topics are vacated.
const END: &str = r#"
local pod = redis.call('HGET', KEYS[1], 'pod')
if not pod then return false end
if ARGV[1] == '1' and pod ~= '' and pod ~= '~' then return false end
local first = pod ~= '~'
if first then
  redis.call('HSET', KEYS[1], 'pod', '~')
  local user = redis.call('HGET', KEYS[1], 'user')
  local json = ARGV[3]
  if user then json = '{"user":' .. cjson.encode(user) .. ',' .. string.sub(json, 2) end
  redis.call('HSET', KEYS[2], ARGV[2], json)
end
local all = redis.call('HGETALL', KEYS[1])
table.insert(all, 1, first and '1' or '0')
return all"#;

const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0";

#[derive(Debug, Clone)]
pub struct RedisTracker {
    store: RedisStore,
    attach: Script,
    detach: Script,
    subscribed: Script,
    occupy: Script,
    vacate: Script,
    end: Script,
    renew: Script,
    outbox: RedisOutbox,
}

impl RedisTracker {
    pub fn new(store: RedisStore, outbox: RedisOutbox) -> Self {
        Self {
            store,
            outbox,
            attach: Script::new(ATTACH),
            detach: Script::new(DETACH),
            subscribed: Script::new(SUBSCRIBED),
            occupy: Script::new(OCCUPY),
            vacate: Script::new(VACATE),
            end: Script::new(END),
            renew: Script::new(RENEW),
        }
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}:{kind}:{{{name}}}", self.store.key_prefix())
    }

    fn session_key(&self, session: &str) -> String {
        self.key("ev-session", session)
    }

    fn global(&self, name: &str) -> String {
        format!("{}:{name}", self.store.key_prefix())
    }

    async fn script(
        &self,
        script: &Script,
        key: String,
        args: Vec<String>,
    ) -> Result<Value, EventError> {
        let client = self.store.pool().next();
        bounded(&self.store, script.run(client, vec![key], args)).await
    }

    async fn command(&self, name: &'static str, args: Vec<String>) -> Result<Value, EventError> {
        let command = CustomCommand::new(name, ClusterHash::FirstKey, false);
        bounded(&self.store, self.store.pool().next().custom(command, args)).await
    }

    async fn flag(
        &self,
        script: &Script,
        key: String,
        args: Vec<String>,
    ) -> Result<bool, EventError> {
        Ok(self.script(script, key, args).await?.as_i64() == Some(1))
    }

    /// Runs a script that may stage `event` in the outbox of `tag`, covered first.
    async fn staging(
        &self,
        script: &Script,
        key: String,
        tag: &str,
        mut args: Vec<String>,
        event: Option<&Event>,
    ) -> Result<Value, EventError> {
        let outbox = self.outbox.key(tag);
        match event {
            Some(event) => {
                self.outbox.cover(&outbox).await?;
                args.push(event.id.clone());
                args.push(event.json());
            }
            None => args.extend([String::new(), String::new()]),
        }
        let client = self.store.pool().next();
        bounded(&self.store, script.run(client, vec![key, outbox], args)).await
    }

    /// The topic's `VACATE`, staging `vacated`.
    async fn vacate(
        &self,
        session: &str,
        topic: &Topic,
        vacated: &Event,
    ) -> Result<bool, EventError> {
        let key = self.key("ev-topic", topic.as_str());
        let args = vec![session.to_owned()];
        let reply = self
            .staging(&self.vacate, key, topic.as_str(), args, Some(vacated))
            .await?;
        Ok(reply.as_i64() == Some(1))
    }
}

fn texts(value: Value) -> Result<Vec<String>, EventError> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .into_iter()
            .map(|v| v.into_string().ok_or_else(|| corrupt("not text")))
            .collect(),
        _ => Err(corrupt("not a list")),
    }
}

impl Tracker for RedisTracker {
    async fn attach(
        &self,
        session: &str,
        user: Option<&str>,
        pod: &str,
        conn: u64,
        started: Option<&Event>,
    ) -> Result<bool, EventError> {
        // Indexed under its pod first: a pod dying after the script still has it detached.
        self.command("SADD", vec![self.key("ev-pod", pod), session.to_owned()])
            .await?;
        self.command("SADD", vec![self.global("ev-pods"), pod.to_owned()])
            .await?;
        let args = vec![
            pod.to_owned(),
            if user.is_some() { "1" } else { "0" }.to_owned(),
            user.unwrap_or("").to_owned(),
            conn.to_string(),
        ];
        let reply = self
            .staging(
                &self.attach,
                self.session_key(session),
                session,
                args,
                started,
            )
            .await?;
        self.command(
            "ZREM",
            vec![self.global("ev-deadlines"), session.to_owned()],
        )
        .await?;
        Ok(reply.as_i64() == Some(1))
    }

    async fn detach(
        &self,
        session: &str,
        pod: &str,
        conn: Option<u64>,
        deadline_ms: u64,
    ) -> Result<(), EventError> {
        let conn = conn.map_or_else(|| "*".to_owned(), |c| c.to_string());
        // The deadline first: a pod dying after the script still has the session expire. A
        // deadline left for a session another connection holds ends nothing (it is attached).
        let args = vec![
            self.global("ev-deadlines"),
            deadline_ms.to_string(),
            session.to_owned(),
        ];
        self.command("ZADD", args).await?;
        let detached = self
            .flag(
                &self.detach,
                self.session_key(session),
                vec![pod.to_owned(), conn],
            )
            .await?;
        if detached {
            self.command("SREM", vec![self.key("ev-pod", pod), session.to_owned()])
                .await?;
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        session: &str,
        topic: &Topic,
        occupied: &Event,
    ) -> Result<bool, EventError> {
        let field = format!("t:{topic}");
        self.script(&self.subscribed, self.session_key(session), vec![field])
            .await?;
        let key = self.key("ev-topic", topic.as_str());
        let args = vec![session.to_owned()];
        let reply = self
            .staging(&self.occupy, key, topic.as_str(), args, Some(occupied))
            .await?;
        Ok(reply.as_i64() == Some(1))
    }

    async fn unsubscribe(
        &self,
        session: &str,
        topic: &Topic,
        vacated: &Event,
    ) -> Result<bool, EventError> {
        // Vacated before the session forgets the topic: the other order could leave the
        // session in the topic's set for ever.
        let last = self.vacate(session, topic, vacated).await?;
        let field = format!("t:{topic}");
        self.command("HDEL", vec![self.session_key(session), field])
            .await?;
        Ok(last)
    }

    async fn end(
        &self,
        session: &str,
        only_detached: bool,
        ended: &Event,
    ) -> Result<Option<Ended>, EventError> {
        // Indexed by deadline first, so an end that fails halfway is finished by the sweeper.
        let args = vec![
            self.global("ev-deadlines"),
            now_ms().to_string(),
            session.to_owned(),
        ];
        self.command("ZADD", args).await?;
        let args = vec![if only_detached { "1" } else { "0" }.to_owned()];
        let key = self.session_key(session);
        let mut staged = ended.clone();
        staged.user = None;
        let reply = self
            .staging(&self.end, key.clone(), session, args, Some(&staged))
            .await?;
        let mut fields = texts(reply)?.into_iter();
        let Some(first) = fields.next() else {
            // Attached (resumed) or ended already: this deadline is settled.
            self.command(
                "ZREM",
                vec![self.global("ev-deadlines"), session.to_owned()],
            )
            .await?;
            return Ok(None);
        };
        let fields: Vec<String> = fields.collect();
        let mut user = None;
        let mut topics = Vec::new();
        for pair in fields.chunks(2) {
            let [name, value] = pair else {
                return Err(corrupt("session hash"));
            };
            match name.as_str() {
                "user" => user = Some(value.clone()),
                "pod" if !value.is_empty() && value != "~" => {
                    self.command("SREM", vec![self.key("ev-pod", value), session.to_owned()])
                        .await?;
                }
                "pod" | "conn" => {}
                other => {
                    if let Some(topic) = other.strip_prefix("t:").and_then(|t| Topic::new(t).ok()) {
                        topics.push(topic);
                    }
                }
            }
        }
        topics.sort();
        let mut vacated = Vec::new();
        for topic in topics {
            let event = Event::vacated(&topic);
            if self.vacate(session, &topic, &event).await? {
                vacated.push(event);
            }
        }
        self.command("DEL", vec![key]).await?;
        self.command(
            "ZREM",
            vec![self.global("ev-deadlines"), session.to_owned()],
        )
        .await?;
        let ended = (first == "1").then(|| staged.user(user.as_deref()));
        Ok(Some(Ended {
            user,
            ended,
            vacated,
        }))
    }

    async fn expired(&self, now_ms: u64, max: usize) -> Result<Vec<String>, EventError> {
        let args = vec![
            self.global("ev-deadlines"),
            "-inf".into(),
            now_ms.to_string(),
            "LIMIT".into(),
            "0".into(),
            max.to_string(),
        ];
        texts(self.command("ZRANGEBYSCORE", args).await?)
    }

    async fn alive(&self, pod: &str, ttl: Duration) -> Result<(), EventError> {
        let args = vec![
            self.key("ev-alive", pod),
            "1".into(),
            "PX".into(),
            ttl.as_millis().max(1).to_string(),
        ];
        self.command("SET", args).await.map(|_| ())
    }

    async fn dead_pods(&self) -> Result<Vec<String>, EventError> {
        let pods = texts(
            self.command("SMEMBERS", vec![self.global("ev-pods")])
                .await?,
        )?;
        let mut dead = Vec::new();
        for pod in pods {
            let alive = self
                .command("EXISTS", vec![self.key("ev-alive", &pod)])
                .await?;
            if alive.as_i64() == Some(0) {
                dead.push(pod);
            }
        }
        Ok(dead)
    }

    async fn detach_pod(&self, pod: &str, deadline_ms: u64) -> Result<u64, EventError> {
        let set = self.key("ev-pod", pod);
        let mut detached = 0;
        for _ in 0..DETACH_ROUNDS {
            let sessions = texts(
                self.command("SPOP", vec![set.clone(), DETACH_BATCH.to_string()])
                    .await?,
            )?;
            if sessions.is_empty() {
                // Nothing left: forget the pod (a session attached meanwhile re-adds it).
                self.command("SREM", vec![self.global("ev-pods"), pod.to_owned()])
                    .await?;
                break;
            }
            for session in sessions {
                self.detach(&session, pod, None, deadline_ms).await?;
                detached += 1;
            }
        }
        Ok(detached)
    }

    async fn sweeper_lease(&self, holder: &str, ttl: Duration) -> Result<bool, EventError> {
        let args = vec![holder.to_owned(), ttl.as_millis().max(1).to_string()];
        self.flag(&self.renew, self.global("ev-sweeper"), args)
            .await
    }
}
