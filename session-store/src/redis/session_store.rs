//! [`SessionStore`] for [`RedisStore`]: topic scripts for appends, tops, history and epochs,
//! session claims and saves, and the newest-first pages of [`crate::ReverseHistory`].

use std::time::Duration;

use fred::prelude::{ClientLike, HashesInterface, KeysInterface, Value};
use protocol::{Epoch, Payload, Position, PublishId, SessionId, Topic};

use super::calls::{corrupt, millis};
use super::replies::{parse_message, parse_top};
use super::scripts::{NoScript, Retry, gave_up};
use super::{RedisStore, TOPS_BATCH};
use crate::{
    Appended, Claim, Extras, HistoryPage, Owner, PAGE_BYTES, SessionRecord, SessionStore,
    StoreError,
};

impl RedisStore {
    /// One newest-first page of messages with ids up to `end` (an XREVRANGE end): see
    /// [`crate::ReverseHistory`].
    pub(crate) async fn page_before(
        &self,
        topic: &Topic,
        end: String,
        limit: usize,
    ) -> Result<HistoryPage, StoreError> {
        let mut args = self.base_args(topic);
        args.push(end);
        args.push(limit.to_string());
        args.push(PAGE_BYTES.to_string());
        let items = self.eval(&self.inner.history_before, topic, args).await?;
        let mut items = items.into_iter();
        let top = parse_top(&mut items)?;
        let mut messages = Vec::with_capacity(items.len() / 3);
        while let Some(id) = items.next() {
            messages.push(parse_message(id, items.next(), items.next())?);
        }
        Ok(HistoryPage { top, messages })
    }
}

impl SessionStore for RedisStore {
    async fn append_with(
        &self,
        topic: &Topic,
        data: &Payload,
        id: Option<&PublishId>,
        extras: Extras<'_>,
    ) -> Result<Appended, StoreError> {
        let call = self.append_call(topic, data, id, extras);
        self.append_on(self.inner.pool.next(), topic, call, NoScript::Eval)
            .await
    }

    async fn top(&self, topic: &Topic) -> Result<Position, StoreError> {
        let items = self
            .eval(&self.inner.top, topic, self.base_args(topic))
            .await?;
        parse_top(&mut items.into_iter())
    }

    async fn tops(&self, topics: &[Topic]) -> Result<Vec<Position>, StoreError> {
        let mut out = Vec::with_capacity(topics.len());
        for batch in topics.chunks(TOPS_BATCH) {
            let tops = futures_util::future::join_all(batch.iter().map(|t| self.top(t))).await;
            for top in tops {
                out.push(top?);
            }
        }
        Ok(out)
    }

    async fn history(
        &self,
        topic: &Topic,
        after: u64,
        limit: usize,
    ) -> Result<HistoryPage, StoreError> {
        let mut args = self.base_args(topic);
        // Entry ids are `<seq>-1`, so everything from `<after + 1>-0` on has seq > after.
        args.push(format!("{}-0", after.saturating_add(1)));
        args.push(after.to_string());
        args.push(limit.max(1).to_string());
        args.push(PAGE_BYTES.to_string());
        let items = self.eval(&self.inner.history, topic, args).await?;
        let mut items = items.into_iter();
        let top = parse_top(&mut items)?;
        let mut messages = Vec::with_capacity(items.len() / 3);
        while let Some(id) = items.next() {
            messages.push(parse_message(id, items.next(), items.next())?);
        }
        Ok(HistoryPage { top, messages })
    }

    async fn new_epoch(&self, topic: &Topic, stale: &Epoch) -> Result<Position, StoreError> {
        let mut args = self.base_args(topic);
        args.push(stale.as_str().to_owned());
        let items = self.eval(&self.inner.new_epoch, topic, args).await?;
        parse_top(&mut items.into_iter())
    }

    async fn claim_session(
        &self,
        id: &SessionId,
        pod: &str,
        ttl: Duration,
    ) -> Result<Claim, StoreError> {
        let keys = vec![self.session_key(id)];
        let args = vec![pod.to_owned(), millis(ttl).to_string()];
        let reply = self
            .eval_on(
                self.inner.pool.next(),
                &self.inner.claim_session,
                keys,
                args,
                Retry::Never,
                &NoScript::Eval,
            )
            .await?;
        let Value::Array(items) = reply else {
            return Err(corrupt("claim reply is not an array"));
        };
        let mut items = items.into_iter();
        let generation = items
            .next()
            .and_then(|v| v.as_u64())
            .ok_or_else(|| corrupt("claim reply without generation"))?;
        let previous = match (items.next(), items.next()) {
            (Some(pod), Some(generation)) => Some(Owner {
                pod: pod.into_string().unwrap_or_default(),
                generation: generation.as_u64().unwrap_or(0),
            }),
            _ => None,
        };
        Ok(Claim {
            generation,
            previous,
        })
    }

    async fn save_session(
        &self,
        session: &SessionRecord,
        generation: u64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_string(session)
            .map_err(|e| corrupt(format!("session not serializable: {e}")))?;
        let keys = vec![self.session_key(&session.id)];
        let args = vec![
            generation.to_string(),
            json,
            millis(ttl).to_string(),
            session.last_pod.clone(),
        ];
        // Conditional on the generation: writing the same record twice is harmless.
        let client = self.inner.pool.next();
        let reply = self
            .eval_on(
                client,
                &self.inner.save_session,
                keys,
                args,
                Retry::Redirected,
                &NoScript::Eval,
            )
            .await?;
        Ok(reply.as_u64() == Some(1))
    }

    async fn load_session(&self, id: &SessionId) -> Result<Option<SessionRecord>, StoreError> {
        let pool = &self.inner.pool;
        let key = self.session_key(id);
        let json: Option<String> = self
            .bounded(async {
                match pool.hget(&key, "r").await {
                    Err(e) if gave_up(&e) => pool.hget(&key, "r").await,
                    other => other,
                }
            })
            .await?;
        json.map(|json| {
            serde_json::from_str(&json).map_err(|e| corrupt(format!("session {id}: {e}")))
        })
        .transpose()
    }

    async fn delete_session(&self, id: &SessionId) -> Result<(), StoreError> {
        let pool = &self.inner.pool;
        self.bounded(pool.del::<(), _>(self.session_key(id))).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let pool = &self.inner.pool;
        self.bounded(pool.ping::<()>(None)).await
    }
}
