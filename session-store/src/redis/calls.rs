//! Running calls against Redis: every call under the call timeout, topic scripts on a topic's
//! keys (retried once after a cluster redirection when idempotent), their common args, and how
//! `fred` errors map to [`StoreError`].

use std::time::Duration;

use fred::prelude::{Error as FredError, ErrorKind, Value};
use protocol::{Epoch, Topic};

use super::scripts::{NoScript, Retry, Script, eval_once, gave_up};
use super::{RedisStore, TIMEOUT_GRACE};
use crate::StoreError;

impl RedisStore {
    /// Runs `op` under the call timeout.
    pub(super) async fn bounded<T>(
        &self,
        op: impl Future<Output = Result<T, FredError>>,
    ) -> Result<T, StoreError> {
        let timeout = self.inner.call_timeout;
        match tokio::time::timeout(timeout + TIMEOUT_GRACE, op).await {
            Ok(result) => result.map_err(|e| map_error(e, timeout)),
            Err(_) => Err(StoreError::Timeout(timeout)),
        }
    }

    /// Runs a topic script on the topic's keys. Only for the idempotent ones (`top`, `history`,
    /// `new_epoch`): they are retried once after a cluster redirection (see [`gave_up`]).
    pub(super) async fn eval(
        &self,
        script: &Script,
        topic: &Topic,
        args: Vec<String>,
    ) -> Result<Vec<Value>, StoreError> {
        let keys = self.script_keys(topic);
        let client = self.inner.pool.next();
        match self
            .eval_on(
                client,
                script,
                keys,
                args,
                Retry::Redirected,
                &NoScript::Eval,
            )
            .await?
        {
            Value::Array(items) => Ok(items),
            other => Err(corrupt(format!("script returned {:?}", other.kind()))),
        }
    }

    /// EVALSHA on `client`, loading the script on first use and falling back to EVAL on
    /// `NOSCRIPT`; with [`Retry::Redirected`], once more if fred gave up on a redirection.
    pub(super) async fn eval_on(
        &self,
        client: &fred::prelude::Client,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
        retry: Retry,
        noscript: &NoScript,
    ) -> Result<Value, StoreError> {
        self.bounded(async {
            match eval_once(client, script, keys.clone(), args.clone(), noscript).await {
                Err(e) if retry == Retry::Redirected && gave_up(&e) => {
                    eval_once(client, script, keys, args, noscript).await
                }
                other => other,
            }
        })
        .await
    }

    /// The common args of every topic script: a fresh epoch (used only for a new history), the
    /// ttl, and the incarnation mode: `lineage` when appends wait for replicas (a promoted
    /// replica then has every acknowledged message, so its topics keep their epochs), else
    /// `strict` (any restart or failover starts new epochs).
    pub(super) fn base_args(&self, topic: &Topic) -> Vec<String> {
        let mode = if self.inner.min_replicas > 0 {
            "lineage"
        } else {
            "strict"
        };
        vec![
            Epoch::generate().as_str().to_owned(),
            self.ttl_ms(topic).to_string(),
            mode.to_owned(),
        ]
    }
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

pub(super) fn corrupt(msg: impl Into<String>) -> StoreError {
    StoreError::Corrupt(msg.into())
}

fn map_error(e: FredError, timeout: Duration) -> StoreError {
    match e.kind() {
        ErrorKind::Timeout => StoreError::Timeout(timeout),
        ErrorKind::Parse => StoreError::Corrupt(e.details().to_owned()),
        _ => StoreError::Unavailable(format!("redis: {}", e.details())),
    }
}
