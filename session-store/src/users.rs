//! Who a user's sessions are, and which users and tokens are revoked: what the server API's
//! fleet-wide `disconnect` and `revoke` need. Two small traits beside [`SessionStore`](crate::SessionStore),
//! each with a memory and a Redis implementation (see `redis::users` for the keys).
//!
//! The index lists sessions that may still be resumed: a session is added when it starts,
//! while it stays connected (with the record's keep-alive) and when its connection ends, each
//! time for the resume window. Entries expire by themselves; `take_sessions` empties a user's
//! list so a `disconnect` can delete every record in it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::SessionId;

use crate::{StoreError, now_ms};

/// A per-user index of resumable sessions.
pub trait UserSessions: Send + Sync + 'static {
    /// Notes that `session` of `user` may be resumed for `ttl` from now.
    fn add_session(
        &self,
        user: &str,
        session: &SessionId,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The user's sessions that may still be resumed, and forgets them.
    fn take_sessions(
        &self,
        user: &str,
    ) -> impl Future<Output = Result<Vec<SessionId>, StoreError>> + Send;
}

/// What a revocation names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Revoked {
    /// Every token and session of a user.
    User(String),
    /// One token, by its `jti` claim.
    Jti(String),
}

/// Revocations until a point in time: checked on `hello`, `refresh` and resume.
pub trait Revocations: Send + Sync + 'static {
    /// Revokes `who` until `until_ms` (Unix milliseconds); a time in the past revokes nothing.
    fn revoke(
        &self,
        who: &Revoked,
        until_ms: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Whether the user or the token is revoked now.
    fn is_revoked(
        &self,
        user: Option<&str>,
        jti: Option<&str>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// Both, in process (the embedded default).
#[derive(Debug, Clone, Default)]
pub struct MemoryUsers {
    inner: Arc<Mutex<Tables>>,
}

#[derive(Debug, Default)]
struct Tables {
    /// user → session → expiry (Unix ms).
    sessions: HashMap<String, HashMap<SessionId, u64>>,
    revoked: HashMap<Revoked, u64>,
}

impl UserSessions for MemoryUsers {
    async fn add_session(
        &self,
        user: &str,
        session: &SessionId,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mut t = self.inner.lock().expect("users lock");
        let sessions = t.sessions.entry(user.to_owned()).or_default();
        sessions.retain(|_, expires| *expires > now);
        let expires = now + ttl.as_millis() as u64;
        let entry = sessions.entry(session.clone()).or_insert(expires);
        *entry = (*entry).max(expires);
        Ok(())
    }

    async fn take_sessions(&self, user: &str) -> Result<Vec<SessionId>, StoreError> {
        let now = now_ms();
        let mut t = self.inner.lock().expect("users lock");
        Ok(t.sessions
            .remove(user)
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, expires)| *expires > now)
            .map(|(id, _)| id)
            .collect())
    }
}

impl Revocations for MemoryUsers {
    async fn revoke(&self, who: &Revoked, until_ms: u64) -> Result<(), StoreError> {
        let now = now_ms();
        let mut t = self.inner.lock().expect("users lock");
        t.revoked.retain(|_, until| *until > now);
        if until_ms > now {
            let entry = t.revoked.entry(who.clone()).or_insert(until_ms);
            *entry = (*entry).max(until_ms);
        }
        Ok(())
    }

    async fn is_revoked(&self, user: Option<&str>, jti: Option<&str>) -> Result<bool, StoreError> {
        let now = now_ms();
        let t = self.inner.lock().expect("users lock");
        let hit = |key: Revoked| t.revoked.get(&key).is_some_and(|until| *until > now);
        Ok(user.is_some_and(|u| hit(Revoked::User(u.to_owned())))
            || jti.is_some_and(|j| hit(Revoked::Jti(j.to_owned()))))
    }
}

/// The user index the gateway runs with, beside its [`AnyStore`](crate::AnyStore).
#[derive(Debug, Clone)]
pub enum AnyUsers {
    Memory(MemoryUsers),
    Redis(crate::redis::RedisUsers),
}

impl UserSessions for AnyUsers {
    async fn add_session(
        &self,
        user: &str,
        session: &SessionId,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        match self {
            Self::Memory(u) => u.add_session(user, session, ttl).await,
            Self::Redis(u) => Box::pin(u.add_session(user, session, ttl)).await,
        }
    }

    async fn take_sessions(&self, user: &str) -> Result<Vec<SessionId>, StoreError> {
        match self {
            Self::Memory(u) => u.take_sessions(user).await,
            Self::Redis(u) => Box::pin(u.take_sessions(user)).await,
        }
    }
}

impl Revocations for AnyUsers {
    async fn revoke(&self, who: &Revoked, until_ms: u64) -> Result<(), StoreError> {
        match self {
            Self::Memory(u) => u.revoke(who, until_ms).await,
            Self::Redis(u) => Box::pin(u.revoke(who, until_ms)).await,
        }
    }

    async fn is_revoked(&self, user: Option<&str>, jti: Option<&str>) -> Result<bool, StoreError> {
        match self {
            Self::Memory(u) => u.is_revoked(user, jti).await,
            Self::Redis(u) => Box::pin(u.is_revoked(user, jti)).await,
        }
    }
}

/// The behaviour both implementations share (run by the memory tests here and the Redis tests).
#[cfg(any(test, feature = "conformance"))]
pub async fn conformance(users: &(impl UserSessions + Revocations)) {
    let (a, b) = (SessionId::generate(), SessionId::generate());
    let long = Duration::from_secs(60);
    users.add_session("alice", &a, long).await.unwrap();
    users.add_session("alice", &b, long).await.unwrap();
    users.add_session("alice", &a, long).await.unwrap();
    users
        .add_session("bob", &SessionId::generate(), long)
        .await
        .unwrap();
    users
        .add_session("alice", &SessionId::generate(), Duration::from_millis(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut taken = users.take_sessions("alice").await.unwrap();
    taken.sort_by(|x, y| x.as_str().cmp(y.as_str()));
    let mut expected = vec![a, b];
    expected.sort_by(|x, y| x.as_str().cmp(y.as_str()));
    assert_eq!(taken, expected, "expired entries are not returned");
    assert!(users.take_sessions("alice").await.unwrap().is_empty());
    assert_eq!(users.take_sessions("bob").await.unwrap().len(), 1);

    let soon = now_ms() + 60_000;
    assert!(!users.is_revoked(Some("carol"), Some("t1")).await.unwrap());
    users
        .revoke(&Revoked::Jti("t1".into()), soon)
        .await
        .unwrap();
    assert!(users.is_revoked(Some("carol"), Some("t1")).await.unwrap());
    assert!(!users.is_revoked(Some("carol"), Some("t2")).await.unwrap());
    users
        .revoke(&Revoked::User("carol".into()), soon)
        .await
        .unwrap();
    assert!(users.is_revoked(Some("carol"), None).await.unwrap());
    users
        .revoke(&Revoked::User("dave".into()), now_ms() - 1)
        .await
        .unwrap();
    assert!(
        !users.is_revoked(Some("dave"), None).await.unwrap(),
        "past: nothing"
    );
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory_users_conform() {
        super::conformance(&super::MemoryUsers::default()).await;
    }
}
