//! Ordered appends over Redis: a lane is one pooled client, whose commands fred writes to one
//! connection in the order they are handed over (auto-pipelined, several in flight), and
//! Redis runs one connection's commands in arrival order. In a Cluster a client holds one
//! connection per node and routes by slot, so one topic's appends still travel over one
//! connection in order; appends on different topics of one lane may go to different nodes
//! and are ordered only per topic, which is all `seq` order is.
//!
//! Scripts: an append must be a single command from the start, so a re-send never has to
//! overtake anything. Each pool client knows which servers hold the append script: none at
//! first, and none again after every reconnect (a restart or a failover empties a server's
//! cache); in a Cluster the server is the one owning the topic's slot. Until an append
//! succeeded on a server, appends to it send the script itself (EVAL, which also loads it),
//! then its SHA (EVALSHA). A `NOSCRIPT` can still come back in a narrow window (a
//! reconnect not yet noticed, `SCRIPT FLUSH`). Nothing ran then, but later appends of the lane
//! may already be on the wire behind it, and another connection may load the script between
//! them, so they may succeed: sending this one again would store it after them. It is sent
//! again only when nothing was issued on the lane after it; otherwise it fails as unavailable
//! (nothing stored, a retry is safe).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use fred::prelude::{
    ClientLike, ClusterInterface, Error as FredError, ErrorKind, EventInterface, LuaInterface,
    Pool, Server, Value,
};
use fred::types::ConnectHandle;
use protocol::{Payload, PublishId, Topic};

use super::{NoScript, RedisStore, Script};
use crate::Extras;
use crate::ordered::{Issued, IssuedAppend, Lane, LaneState, OrderedAppends};

impl OrderedAppends for RedisStore {
    fn issue_append_with(
        &self,
        lane: &mut Lane,
        topic: &Topic,
        data: &Payload,
        id: Option<&PublishId>,
        extras: Extras<'_>,
    ) -> IssuedAppend {
        let call = self.append_call(topic, data, id, extras);
        let clients = self.inner.pool.clients();
        let moved = lane.state.moved.load(std::sync::atomic::Ordering::Relaxed);
        let index = lane.key.wrapping_add(moved) % clients.len();
        let client = clients[index].clone();
        let cache = Arc::clone(&self.inner.script_caches[index]);
        let node = Node::of(&client, &call.keys[0]);
        let (store, topic, state) = (self.clone(), topic.clone(), Arc::clone(&lane.state));
        // Held while the append is handed to fred, so a re-send (see `eval_if_last`) sees
        // every append issued before it was itself sent.
        let mut issued = lane.state.issued.lock().expect("lane lock");
        let ticket = *issued;
        *issued += 1;
        let noscript = NoScript::InOrder {
            lane: state,
            ticket,
            cache: Arc::clone(&cache),
            node: node.clone(),
        };
        let lane_state = Arc::clone(&lane.state);
        Issued::now(async move {
            let appended = store.append_on(&client, &topic, call, noscript).await;
            match &appended {
                Ok(_) => cache.learn(node),
                // Once per stuck connection, not once per append in flight on it.
                Err(crate::StoreError::Timeout(_)) => {
                    let _ = lane_state.moved.compare_exchange(
                        moved,
                        moved.wrapping_add(1),
                        std::sync::atomic::Ordering::Relaxed,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                }
                Err(_) => {}
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
) -> Result<Value, FredError> {
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

/// The server an append goes to, as far as the script cache is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Node {
    /// Not a Cluster: the one server the client is connected to.
    Single,
    /// The Cluster node owning the key's slot.
    Cluster(Server),
    /// A Cluster whose slot table is not known yet: never taken to hold the script.
    Unknown,
}

impl Node {
    fn of(client: &fred::prelude::Client, key: &str) -> Self {
        if !client.is_clustered() {
            return Self::Single;
        }
        let slot = fred::util::redis_keyslot(key.as_bytes());
        client
            .cached_cluster_state()
            .and_then(|state| state.get_server(slot).cloned())
            .map_or(Self::Unknown, Self::Cluster)
    }
}

/// The servers one pool client knows to hold the append script.
#[derive(Debug, Default)]
pub(super) struct ScriptCache {
    holding: Mutex<HashSet<Node>>,
}

impl ScriptCache {
    pub(super) fn holds(&self, node: &Node) -> bool {
        *node != Node::Unknown && self.holding.lock().expect("cache lock").contains(node)
    }

    fn learn(&self, node: Node) {
        if node != Node::Unknown {
            self.holding.lock().expect("cache lock").insert(node);
        }
    }

    pub(super) fn forget(&self, node: &Node) {
        self.holding.lock().expect("cache lock").remove(node);
    }

    fn forget_all(&self) {
        self.holding.lock().expect("cache lock").clear();
    }
}

/// One cache per pool client, emptied whenever the client (re)connects: a new connection may be
/// to a server that restarted or was promoted, whose script cache is empty.
pub(super) fn track_script_caches(
    pool: &Pool,
    tasks: &mut Vec<ConnectHandle>,
) -> Vec<Arc<ScriptCache>> {
    let mut caches = Vec::new();
    for client in pool.clients() {
        let cache = Arc::new(ScriptCache::default());
        let on_reconnect = Arc::clone(&cache);
        tasks.push(client.on_reconnect(move |_| {
            on_reconnect.forget_all();
            std::future::ready(Ok(()))
        }));
        caches.push(cache);
    }
    caches
}
