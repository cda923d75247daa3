//! Appends: the keys and args of the append script, and running it on one connection, with the
//! replica wait and the acknowledgement when `min_replicas` > 0.

use fred::prelude::{ServerInterface, Value};
use protocol::{Payload, PublishId, Topic};

use super::RedisStore;
use super::calls::{corrupt, millis};
use super::replies::parse_top;
use super::scripts::{NoScript, Retry, ScriptCall};
use crate::{Appended, Extras, StoreError};

impl RedisStore {
    /// The keys and args of an append.
    pub(super) fn append_call(
        &self,
        topic: &Topic,
        data: &Payload,
        id: Option<&PublishId>,
        extras: Extras<'_>,
    ) -> ScriptCall {
        let mut args = self.base_args(topic);
        args.push(data.as_str().to_owned());
        let limits = self.limits_of(topic);
        args.push(limits.max_len.to_string());
        args.push(id.map(|id| id.as_str().to_owned()).unwrap_or_default());
        args.push(millis(limits.dedup_window).to_string());
        let exclude = extras.exclude.map(|s| s.as_str().to_owned());
        args.push(exclude.unwrap_or_default());
        let mut keys = self.script_keys(topic);
        // Without an id the fifth key is never touched, but keeps one key list for the script.
        keys.push(self.publish_id_key(topic, id.map_or("-", PublishId::as_str)));
        if let Some(stage) = extras.stage {
            keys.push(stage.key.clone());
            args.push(stage.id.clone());
            args.push(stage.head.clone());
        }
        ScriptCall { keys, args }
    }

    /// Runs an append on `client`: the script, and with `min_replicas` the WAIT after it (on
    /// the same connection: WAIT counts this connection's writes) and the acknowledgement.
    pub(super) async fn append_on(
        &self,
        client: &fred::prelude::Client,
        topic: &Topic,
        call: ScriptCall,
        noscript: NoScript,
    ) -> Result<Appended, StoreError> {
        let ScriptCall { keys, args } = call;
        let reply = self.eval_on(
            client,
            &self.inner.append,
            keys,
            args,
            Retry::Never,
            &noscript,
        );
        let items = match reply.await? {
            Value::Array(items) => items,
            other => return Err(corrupt(format!("script returned {:?}", other.kind()))),
        };
        let mut items = items.into_iter();
        let top = parse_top(&mut items)?;
        let duplicate = items.next().and_then(|v| v.as_u64()) == Some(1);
        let min = self.inner.min_replicas;
        if min > 0 {
            // A duplicate waits too: its first attempt may be the one that timed out. WAIT gives
            // up a little before the call timeout, so a missing replica is reported as such.
            let wait_ms = (millis(self.inner.call_timeout) * 3 / 4).max(1);
            let timeout = i64::try_from(wait_ms).unwrap_or(i64::MAX);
            let acked: i64 = self.bounded(client.wait(i64::from(min), timeout)).await?;
            if acked < i64::from(min) {
                return Err(StoreError::Unavailable(format!(
                    "only {acked} of {min} replicas acknowledged seq {} (it is stored: retry with the same publish id)",
                    top.seq
                )));
            }
            // Now readers may see it (and a failover keeps it). The acknowledgement only ever
            // raises the acknowledged seq, so acknowledgements of pipelined appends may run in
            // any order.
            let mut args = self.base_args(topic);
            args.push(top.seq.to_string());
            args.push(top.epoch.as_str().to_owned());
            self.eval(&self.inner.ack, topic, args).await?;
        }
        Ok(Appended {
            seq: top.seq,
            epoch: top.epoch,
            duplicate,
        })
    }
}
