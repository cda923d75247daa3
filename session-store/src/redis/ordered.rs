//! Ordered appends over Redis: a lane is one pooled client, whose commands fred writes to one
//! connection in the order they are handed over (auto-pipelined, several in flight), and
//! Redis runs one connection's commands in arrival order. In a Cluster a client holds one
//! connection per node and routes by slot, so one topic's appends still travel over one
//! connection in order; appends on different topics of one lane may go to different nodes
//! and are ordered only per topic, which is all `seq` order is.
//!
//! Scripts: an append must be a single command from the start, so a re-send never has to
//! overtake anything. Each pool client knows whether its server holds the scripts: not at
//! first, and not again after every reconnect (a restart or a failover empties the cache);
//! until an append succeeds on it, appends send the script itself (EVAL, which also loads
//! it), then its SHA (EVALSHA). A `NOSCRIPT` can still come back in a narrow window (a
//! reconnect not yet noticed, `SCRIPT FLUSH`). Nothing ran then, but later appends of the lane
//! may already be on the wire behind it, and another connection may load the script between
//! them, so they may succeed: sending this one again would store it after them. It is sent
//! again only when nothing was issued on the lane after it; otherwise it fails as unavailable
//! (nothing stored, a retry is safe).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fred::prelude::{Error as FredError, ErrorKind, EventInterface, LuaInterface, Pool, Value};
use fred::types::ConnectHandle;
use protocol::{Payload, PublishId, Topic};

use super::{NoScript, RedisStore, Script};
use crate::ordered::{Issued, IssuedAppend, Lane, LaneState, OrderedAppends};

impl OrderedAppends for RedisStore {
    fn issue_append(
        &self,
        lane: &mut Lane,
        topic: &Topic,
        data: &Payload,
        id: Option<&PublishId>,
    ) -> IssuedAppend {
        let call = self.append_call(topic, data, id);
        let clients = self.inner.pool.clients();
        let index = lane.key % clients.len();
        let client = clients[index].clone();
        let loaded = Arc::clone(&self.inner.scripts_loaded[index]);
        let (store, topic, state) = (self.clone(), topic.clone(), Arc::clone(&lane.state));
        // Held while the append is handed to fred, so a re-send (see `eval_if_last`) sees
        // every append issued before it was itself sent.
        let mut issued = lane.state.issued.lock().expect("lane lock");
        let ticket = *issued;
        *issued += 1;
        let noscript = NoScript::InOrder {
            lane: state,
            ticket,
            loaded: Arc::clone(&loaded),
        };
        Issued::now(async move {
            let appended = store.append_on(&client, &topic, call, noscript).await;
            if appended.is_ok() {
                loaded.store(true, Ordering::Relaxed);
            }
            appended
        })
    }
}

/// EVAL for the `ticket`-th append of `lane` after `NOSCRIPT`, if it is still the lane's
/// latest; the refusal is an error like a dropped connection's (nothing was stored).
pub(super) async fn eval_if_last(
    client: &fred::prelude::Client,
    script: &Script,
    (keys, args): (Vec<String>, Vec<String>),
    lane: &LaneState,
    ticket: u64,
    loaded: &AtomicBool,
) -> Result<Value, FredError> {
    loaded.store(false, Ordering::Relaxed);
    let sent = {
        let issued = lane.issued.lock().expect("lane lock");
        if *issued != ticket + 1 {
            return Err(FredError::new(
                ErrorKind::Unknown,
                "script not loaded on the server (restarted or failed over) and later publishes \
                 already sent: not stored",
            ));
        }
        let (client, source) = (client.clone(), script.source.clone());
        Issued::now(async move { client.eval::<Value, _, _, _>(source, keys, args).await })
    };
    sent.await
}

/// One flag per pool client, cleared whenever the client (re)connects: a new connection may be
/// to a server that restarted or was promoted, whose script cache is empty.
pub(super) fn track_script_cache(
    pool: &Pool,
    tasks: &mut Vec<ConnectHandle>,
) -> Vec<Arc<AtomicBool>> {
    let mut flags = Vec::new();
    for client in pool.clients() {
        let loaded = Arc::new(AtomicBool::new(false));
        let on_reconnect = Arc::clone(&loaded);
        tasks.push(client.on_reconnect(move |_| {
            on_reconnect.store(false, Ordering::Relaxed);
            std::future::ready(Ok(()))
        }));
        flags.push(loaded);
    }
    flags
}
