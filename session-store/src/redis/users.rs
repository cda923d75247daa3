//! [`UserSessions`] and [`Revocations`] over Redis, sharing the store's connections.
//!
//! Keys (each under its own hash tag, so Redis Cluster keeps one user's index in one slot):
//! - `{prefix}:user:{<user>}`: sorted set of session ids scored by when they stop being
//!   resumable (Unix ms); expired members are dropped on each add, the key expires with its
//!   last member.
//! - `{prefix}:revoked:user:{<user>}`, `{prefix}:revoked:jti:{<jti>}`: present until the
//!   revocation ends (`PX`).

use std::time::Duration;

use fred::prelude::KeysInterface;
use protocol::SessionId;

use super::{NoScript, RedisStore, Retry, Script, corrupt, millis};
use crate::users::{Revocations, Revoked, UserSessions};
use crate::{StoreError, now_ms};

const ADD_SESSION_LUA: &str = r#"
-- KEYS[1] user index; ARGV: session, expires (ms), now (ms), ttl (ms)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
local current = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not current) or tonumber(current) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[4]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return 1
"#;

const TAKE_SESSIONS_LUA: &str = r#"
-- KEYS[1] user index; ARGV: now (ms)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')
redis.call('DEL', KEYS[1])
return ids
"#;

/// The user index and revocations in the store's Redis.
#[derive(Debug, Clone)]
pub struct RedisUsers {
    store: RedisStore,
    scripts: std::sync::Arc<(Script, Script)>,
}

impl RedisStore {
    /// The user index and revocation list on this store's connections.
    pub fn users(&self) -> RedisUsers {
        RedisUsers {
            store: self.clone(),
            scripts: std::sync::Arc::new((
                Script::standalone(ADD_SESSION_LUA),
                Script::standalone(TAKE_SESSIONS_LUA),
            )),
        }
    }
}

impl RedisUsers {
    fn user_key(&self, user: &str) -> String {
        format!("{}:user:{{{user}}}", self.store.inner.prefix)
    }

    fn revoked_key(&self, who: &Revoked) -> String {
        let p = &self.store.inner.prefix;
        match who {
            Revoked::User(u) => format!("{p}:revoked:user:{{{u}}}"),
            Revoked::Jti(j) => format!("{p}:revoked:jti:{{{j}}}"),
        }
    }
}

impl UserSessions for RedisUsers {
    async fn add_session(
        &self,
        user: &str,
        session: &SessionId,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let args = vec![
            session.as_str().to_owned(),
            (now + millis(ttl)).to_string(),
            now.to_string(),
            millis(ttl).to_string(),
        ];
        let client = self.store.inner.pool.next();
        self.store
            .eval_on(
                client,
                &self.scripts.0,
                vec![self.user_key(user)],
                args,
                Retry::Redirected,
                &NoScript::Eval,
            )
            .await?;
        Ok(())
    }

    async fn take_sessions(&self, user: &str) -> Result<Vec<SessionId>, StoreError> {
        let client = self.store.inner.pool.next();
        let reply = self
            .store
            .eval_on(
                client,
                &self.scripts.1,
                vec![self.user_key(user)],
                vec![now_ms().to_string()],
                Retry::Never,
                &NoScript::Eval,
            )
            .await?;
        let items = match reply {
            fred::types::Value::Array(items) => items,
            fred::types::Value::Null => Vec::new(),
            other => return Err(corrupt(format!("script returned {:?}", other.kind()))),
        };
        items
            .into_iter()
            .map(|v| {
                let text = v
                    .into_string()
                    .ok_or_else(|| corrupt("session id is not text"))?;
                SessionId::parse(&text).map_err(|_| corrupt(format!("bad session id {text:?}")))
            })
            .collect()
    }
}

impl Revocations for RedisUsers {
    async fn revoke(&self, who: &Revoked, until_ms: u64) -> Result<(), StoreError> {
        let now = now_ms();
        if until_ms <= now {
            return Ok(());
        }
        let key = self.revoked_key(who);
        let client = self.store.inner.pool.next();
        let ms = i64::try_from(until_ms - now).unwrap_or(i64::MAX);
        let _: () = self
            .store
            .bounded(client.set(
                key,
                until_ms.to_string(),
                Some(fred::types::Expiration::PX(ms)),
                None,
                false,
            ))
            .await?;
        Ok(())
    }

    async fn is_revoked(&self, user: Option<&str>, jti: Option<&str>) -> Result<bool, StoreError> {
        let keys = user
            .map(|u| Revoked::User(u.to_owned()))
            .into_iter()
            .chain(jti.map(|j| Revoked::Jti(j.to_owned())));
        for key in keys {
            let client = self.store.inner.pool.next();
            let found: u64 = self
                .store
                .bounded(client.exists(self.revoked_key(&key)))
                .await?;
            if found > 0 {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
