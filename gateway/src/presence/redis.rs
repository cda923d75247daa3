//! Presence in Redis, per topic under its hash tag: `<prefix>:presence:{<topic>}` (field: the
//! session; value: `<owner pod>|<expiry ms>|<user key, with the info before it when the session
//! has one>` (see [`super::value`]), the owner empty once detached) and
//! `<prefix>:presence-users:{<topic>}` (field: the user key; value: its sessions present), both
//! changed only by the scripts in `lua/` so the counts and the join/leave decisions stay exact.
//! `<prefix>:presence-topics` (a set) lists the topics to sweep. A topic with join/leave events
//! also has `<prefix>:presence-pos:{<topic>}` (`<epoch>|<master_replid>|<pseq>`) and
//! `<prefix>:presence-log:{<topic>}` (a stream of its last events, ids `<pseq>-1`), written by
//! the same scripts (see `lua/log.lua` for the epoch rules).

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fred::interfaces::ClientLike;
use fred::prelude::{HashesInterface, LuaInterface, SetsInterface};
use fred::types::{ClusterHash, CustomCommand, Value};
use protocol::{Epoch, PresencePosition, Topic};
use session_store::RedisStore;

use crate::events::outbox::RedisOutbox;

use super::{
    Change, Event, EventLog, Listing, LogRead, Op, PresenceError, PresenceStore, Stats, member_of,
    user_key, value,
};

/// Members per `apply` (or sweep) call: bounds one script's run time.
const APPLY_BATCH: usize = 500;
/// Members read per HSCAN page of a sweep.
const SCAN_COUNT: usize = 1_000;

/// A Lua script run with EVALSHA, loaded on first use and sent again on `NOSCRIPT` (a restarted
/// or failed-over server has an empty script cache).
#[derive(Debug, Clone)]
struct Script {
    source: &'static str,
    sha: Arc<OnceLock<String>>,
}

impl Script {
    fn new(source: &'static str) -> Self {
        Self {
            source,
            sha: Arc::default(),
        }
    }

    async fn run(
        &self,
        client: &fred::prelude::Client,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Vec<Value>, fred::error::Error> {
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

#[derive(Debug, Clone)]
pub struct RedisPresence {
    store: RedisStore,
    log: EventLog,
    /// Where joins and leaves stage their lifecycle events, when the gateway records them.
    outbox: Option<RedisOutbox>,
    apply: Script,
    sweep: Script,
    members: Script,
    events: Script,
}

impl RedisPresence {
    pub fn new(store: RedisStore, log: EventLog, outbox: Option<RedisOutbox>) -> Self {
        Self {
            store,
            log,
            outbox,
            apply: Script::new(concat!(
                include_str!("lua/log.lua"),
                include_str!("lua/stage.lua"),
                include_str!("lua/apply.lua")
            )),
            sweep: Script::new(concat!(
                include_str!("lua/log.lua"),
                include_str!("lua/stage.lua"),
                include_str!("lua/sweep.lua")
            )),
            members: Script::new(concat!(
                include_str!("lua/log.lua"),
                include_str!("lua/members.lua")
            )),
            events: Script::new(concat!(
                include_str!("lua/log.lua"),
                include_str!("lua/events.lua")
            )),
        }
    }

    fn keys(&self, topic: &Topic) -> Vec<String> {
        let (p, t) = (self.store.key_prefix(), topic.as_str());
        vec![
            format!("{p}:presence:{{{t}}}"),
            format!("{p}:presence-users:{{{t}}}"),
            format!("{p}:presence-pos:{{{t}}}"),
            format!("{p}:presence-log:{{{t}}}"),
        ]
    }

    /// A fresh epoch for the scripts when `topic` logs its events, else "" (no log).
    fn fresh_epoch(&self, topic: &Topic) -> String {
        if self.log.logs(topic) {
            Epoch::generate().as_str().to_owned()
        } else {
            String::new()
        }
    }

    /// The keys of the scripts that decide joins and leaves: [`Self::keys`] and the outbox.
    fn deciding_keys(&self, topic: &Topic) -> Vec<String> {
        let mut keys = self.keys(topic);
        keys.push(format!(
            "{}:ev-outbox:{{{}}}",
            self.store.key_prefix(),
            topic.as_str()
        ));
        keys
    }

    /// The stage prefix, time and topic arguments (see `lua/stage.lua`), the outbox covered
    /// first; empty when no events are recorded (nothing is staged then).
    async fn stage_args(&self, topic: &Topic) -> Result<[String; 3], PresenceError> {
        let Some(outbox) = &self.outbox else {
            return Ok(Default::default());
        };
        outbox
            .cover(&outbox.key(topic.as_str()))
            .await
            .map_err(|e| PresenceError::Unavailable(e.to_string()))?;
        let prefix = protocol::SessionId::generate().to_string()[..24].to_owned();
        let at = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        Ok([prefix, at, topic.as_str().to_owned()])
    }

    fn topics_key(&self) -> String {
        format!("{}:presence-topics", self.store.key_prefix())
    }

    async fn bounded<T>(
        &self,
        op: impl Future<Output = Result<T, fred::error::Error>>,
    ) -> Result<T, PresenceError> {
        let timeout = self.store.call_timeout();
        tokio::time::timeout(timeout, op)
            .await
            .map_err(|_| PresenceError::Unavailable(format!("timed out after {timeout:?}")))?
            .map_err(|e| PresenceError::Unavailable(e.to_string()))
    }

    async fn run(
        &self,
        script: &Script,
        topic: &Topic,
        args: Vec<String>,
    ) -> Result<Vec<Value>, PresenceError> {
        self.run_on(script, self.keys(topic), args).await
    }

    /// [`Self::run`] of a script that decides joins and leaves (and stages their events).
    async fn decide(
        &self,
        script: &Script,
        topic: &Topic,
        args: Vec<String>,
    ) -> Result<Vec<Value>, PresenceError> {
        self.run_on(script, self.deciding_keys(topic), args).await
    }

    async fn run_on(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Vec<Value>, PresenceError> {
        let client = self.store.pool().next();
        self.bounded(script.run(client, keys, args)).await
    }
}

fn corrupt(what: &str) -> PresenceError {
    PresenceError::Corrupt(what.to_owned())
}

fn text(v: Value) -> Result<String, PresenceError> {
    v.into_string().ok_or_else(|| corrupt("not text"))
}

fn number(v: Option<Value>) -> Result<u64, PresenceError> {
    v.and_then(|v| v.as_u64())
        .ok_or_else(|| corrupt("not a number"))
}

/// Info as the scripts return it: '' for none.
fn info_of(v: Option<Value>) -> Result<Option<String>, PresenceError> {
    let info = text(v.ok_or_else(|| corrupt("no info"))?)?;
    Ok((!info.is_empty()).then_some(info))
}

/// Reads `{epoch, then kind, session, user key, info, edge, pseq, staged id, staged JSON per
/// event}` (pseq 0: not logged; id '': not staged).
fn events(reply: Vec<Value>) -> Result<Vec<Event>, PresenceError> {
    let mut out = Vec::with_capacity(reply.len() / 6);
    let mut items = reply.into_iter();
    let epoch = Epoch::new(text(items.next().ok_or_else(|| corrupt("no epoch"))?)?);
    while let Some(kind) = items.next() {
        let join = text(kind)? == "j";
        let session = text(items.next().ok_or_else(|| corrupt("no session"))?)?;
        let user = text(items.next().ok_or_else(|| corrupt("no user"))?)?;
        let info = info_of(items.next())?;
        let edge = items.next().and_then(|v| v.as_i64()) == Some(1);
        let pseq = number(items.next())?;
        let id = text(items.next().ok_or_else(|| corrupt("no staged id"))?)?;
        let json = text(items.next().ok_or_else(|| corrupt("no staged event"))?)?;
        out.push(Event {
            join,
            member: member_of(&session, &user, info.as_deref()),
            user_edge: edge,
            logged: (pseq > 0).then(|| PresencePosition {
                pseq,
                epoch: epoch.clone(),
            }),
            staged: (!id.is_empty()).then_some((id, json)),
        });
    }
    Ok(out)
}

impl PresenceStore for RedisPresence {
    async fn apply(
        &self,
        topic: &Topic,
        pod: &str,
        ttl: Duration,
        changes: &[Change],
    ) -> Result<Vec<Event>, PresenceError> {
        let ttl_ms = ttl.as_millis().max(1);
        let mut out = Vec::new();
        for batch in changes.chunks(APPLY_BATCH) {
            let mut args = vec![
                pod.to_owned(),
                ttl_ms.to_string(),
                (ttl_ms * 2).to_string(),
                self.fresh_epoch(topic),
                self.log.size.to_string(),
            ];
            args.extend(self.stage_args(topic).await?);
            for change in batch {
                let op = match change.op {
                    Op::Attach => "a",
                    Op::Detach => "d",
                    Op::Leave => "l",
                };
                args.push(op.to_owned());
                args.push(change.session.clone());
                args.push(user_key(change.user.as_deref(), &change.session));
                args.push(change.info.clone().unwrap_or_default());
            }
            out.extend(events(self.decide(&self.apply, topic, args).await?)?);
        }
        Ok(out)
    }

    /// Scans the members in pages (each a short call, so a big topic never blocks Redis for
    /// long), then removes the expired ones with a script that checks each again.
    async fn sweep(&self, topic: &Topic, live: &[String]) -> Result<Vec<Event>, PresenceError> {
        let key = self.keys(topic).swap_remove(0);
        let now = session_store::now_ms();
        let mut cursor = "0".to_owned();
        let mut gone = Vec::new();
        loop {
            let hscan = CustomCommand::new("HSCAN", ClusterHash::FirstKey, false);
            let args = vec![key.clone(), cursor, "COUNT".into(), SCAN_COUNT.to_string()];
            let reply: Value = self
                .bounded(self.store.pool().next().custom(hscan, args))
                .await?;
            let Value::Array(mut parts) = reply else {
                return Err(corrupt("HSCAN reply"));
            };
            let (Some(Value::Array(page)), Some(next)) = (parts.pop(), parts.pop()) else {
                return Err(corrupt("HSCAN reply"));
            };
            let mut items = page.into_iter();
            while let (Some(session), Some(value)) = (items.next(), items.next()) {
                let (session, value) = (text(session)?, text(value)?);
                let Some((owner, expiry, _, _)) = value::decode_value(&value) else {
                    continue;
                };
                let expiry: u64 = expiry.parse().unwrap_or(u64::MAX);
                if !live.iter().any(|p| p == owner) && expiry < now {
                    gone.push(session);
                }
            }
            cursor = text(next)?;
            if cursor == "0" {
                break;
            }
        }
        let mut out = Vec::new();
        for batch in gone.chunks(APPLY_BATCH) {
            let mut args = vec![
                live.join("\n"),
                self.fresh_epoch(topic),
                self.log.size.to_string(),
                self.log.ttl.as_millis().max(1).to_string(),
            ];
            args.extend(self.stage_args(topic).await?);
            args.extend(batch.iter().cloned());
            out.extend(events(self.decide(&self.sweep, topic, args).await?)?);
        }
        Ok(out)
    }

    async fn members(
        &self,
        topic: &Topic,
        live: &HashSet<String>,
        max: usize,
    ) -> Result<Option<Listing>, PresenceError> {
        let args = vec![
            max.to_string(),
            self.fresh_epoch(topic),
            self.log.ttl.as_millis().max(1).to_string(),
        ];
        let reply = self.run(&self.members, topic, args).await?;
        let mut items = reply.into_iter();
        let now = items
            .next()
            .and_then(|v| v.as_i64())
            .ok_or_else(|| corrupt("no time"))?;
        if now < 0 {
            return Ok(None);
        }
        let epoch = text(items.next().ok_or_else(|| corrupt("no epoch"))?)?;
        let pseq = number(items.next())?;
        let at = (!epoch.is_empty()).then(|| PresencePosition {
            pseq,
            epoch: Epoch::new(epoch),
        });
        let mut members = Vec::new();
        while let Some(session) = items.next() {
            let session = text(session)?;
            let value = text(items.next().ok_or_else(|| corrupt("no member value"))?)?;
            let Some((owner, expiry, user, info)) = value::decode_value(&value) else {
                return Err(corrupt("member value"));
            };
            let expiry: i64 = expiry.parse().map_err(|_| corrupt("member expiry"))?;
            if live.contains(owner) || expiry >= now {
                members.push(member_of(&session, user, info));
            }
        }
        Ok(Some(Listing { members, at }))
    }

    async fn events_since(
        &self,
        topic: &Topic,
        since: &PresencePosition,
        limit: usize,
    ) -> Result<LogRead, PresenceError> {
        let args = vec![
            Epoch::generate().as_str().to_owned(),
            self.log.ttl.as_millis().max(1).to_string(),
            since.epoch.as_str().to_owned(),
            since.pseq.to_string(),
            limit.max(1).to_string(),
        ];
        let reply = self.run(&self.events, topic, args).await?;
        let mut items = reply.into_iter();
        let epoch = Epoch::new(text(items.next().ok_or_else(|| corrupt("no epoch"))?)?);
        let top = PresencePosition {
            pseq: number(items.next())?,
            epoch: epoch.clone(),
        };
        if number(items.next())? == 0 {
            return Ok(LogRead { top, events: None });
        }
        let mut out = Vec::new();
        while let Some(kind) = items.next() {
            let join = text(kind)? == "j";
            let session = text(items.next().ok_or_else(|| corrupt("no session"))?)?;
            let user = text(items.next().ok_or_else(|| corrupt("no user"))?)?;
            let info = info_of(items.next())?;
            let pseq = number(items.next())?;
            out.push(Event {
                join,
                member: member_of(&session, &user, info.as_deref()),
                // Not stored: only the call that made an event counts it.
                user_edge: false,
                logged: Some(PresencePosition {
                    pseq,
                    epoch: epoch.clone(),
                }),
                staged: None,
            });
        }
        Ok(LogRead {
            top,
            events: Some(out),
        })
    }

    async fn stats(&self, topic: &Topic) -> Result<Stats, PresenceError> {
        let [members, users, ..]: [String; 4] = self.keys(topic).try_into().expect("four keys");
        let pool = self.store.pool();
        let (members, users) = self
            .bounded(async {
                futures_util::try_join!(pool.hlen::<u64, _>(members), pool.hlen::<u64, _>(users))
            })
            .await?;
        Ok(Stats { members, users })
    }

    async fn register(&self, topics: &[Topic]) -> Result<(), PresenceError> {
        let names: Vec<String> = topics.iter().map(|t| t.as_str().to_owned()).collect();
        self.bounded(self.store.pool().sadd::<(), _, _>(self.topics_key(), names))
            .await
    }

    async fn topics(&self) -> Result<Vec<Topic>, PresenceError> {
        let names: Vec<String> = self
            .bounded(self.store.pool().smembers(self.topics_key()))
            .await?;
        let mut out = Vec::with_capacity(names.len());
        let mut empty = Vec::new();
        for name in names {
            let Ok(topic) = Topic::new(&name) else {
                continue;
            };
            let members = self.keys(&topic).swap_remove(0);
            if self
                .bounded(self.store.pool().hlen::<u64, _>(members))
                .await?
                == 0
            {
                empty.push(name);
            } else {
                out.push(topic);
            }
        }
        if !empty.is_empty() {
            // A topic that gets a member again is registered again at its pod's next refresh.
            self.bounded(self.store.pool().srem::<(), _, _>(self.topics_key(), empty))
                .await?;
        }
        Ok(out)
    }
}
