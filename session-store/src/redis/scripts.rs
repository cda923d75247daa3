//! The Lua scripts and how a call runs one: EVALSHA by a SHA computed here, EVAL when the server
//! lacks the script (as the call allows), and which failures may be sent again.

use std::sync::Arc;

use fred::prelude::{Error as FredError, LuaInterface, Value};

use super::{PRELUDE, ordered};

/// A Lua script run with EVALSHA, falling back to EVAL when the server does not know it (after a
/// restart or failover, or on another cluster node). The SHA is computed here rather than
/// learnt from `SCRIPT LOAD`, so the first call is one command too: a pipelined append must be
/// sent the moment it is issued (see [`ordered`]).
#[derive(Debug)]
pub(super) struct Script {
    pub(super) source: String,
    pub(super) sha: String,
}

impl Script {
    /// A topic script: the shared prelude, then `body`.
    pub(super) fn new(body: &str) -> Self {
        Self::standalone(&format!("{PRELUDE}\n{body}"))
    }

    pub(super) fn standalone(source: &str) -> Self {
        use sha1::Digest;
        let digest = sha1::Sha1::digest(source.as_bytes());
        Self {
            source: source.to_owned(),
            sha: digest.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

/// A script's keys and args.
#[derive(Debug)]
pub(super) struct ScriptCall {
    pub(super) keys: Vec<String>,
    pub(super) args: Vec<String>,
}

/// Whether a failed call may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Retry {
    /// Never: the call is not idempotent (an append without a publish id, a claim).
    Never,
    /// Once, when fred gave up after a cluster redirection ([`gave_up`]): for idempotent calls.
    Redirected,
}

/// What fred 10 answers when it would have written a command a second time: with
/// `max_command_attempts` 1, a `MOVED` or `ASK` redirection counts as that second write, so a
/// command meeting one fails instead of following it (fred has already refreshed its slot
/// table on `MOVED`, so the next command goes to the right node). A replay after a dropped
/// connection fails the same way and may follow a write that did run: only idempotent calls
/// retry on it.
pub(super) fn gave_up(e: &FredError) -> bool {
    e.details() == "Too many failed write attempts."
}

/// What a call does when the server does not know the script (`NOSCRIPT`: nothing ran).
#[derive(Debug)]
pub(super) enum NoScript {
    /// Sends the script itself (EVAL), which also loads it.
    Eval,
    /// The `ticket`-th append of an ordered lane: EVAL only if nothing was issued on the lane
    /// after it, else fail (nothing was stored; a retry is safe). Sending it again behind later
    /// appends would store it out of issue order.
    InOrder {
        lane: Arc<crate::ordered::LaneState>,
        ticket: u64,
        /// Whether the server the append goes to is known to hold the script; when not, the
        /// script goes in its first send (EVAL), so a cold server never answers `NOSCRIPT`.
        cache: Arc<ordered::ScriptCache>,
        node: ordered::Node,
    },
}

/// One EVALSHA, with EVAL on `NOSCRIPT` as `noscript` allows.
pub(super) async fn eval_once(
    client: &fred::prelude::Client,
    script: &Script,
    keys: Vec<String>,
    args: Vec<String>,
    noscript: &NoScript,
) -> Result<Value, FredError> {
    if let NoScript::InOrder { cache, node, .. } = noscript
        && !cache.holds(node)
    {
        return client.eval(script.source.as_str(), keys, args).await;
    }
    match client
        .evalsha(script.sha.as_str(), keys.clone(), args.clone())
        .await
    {
        Err(e) if e.details().starts_with("NOSCRIPT") => match noscript {
            NoScript::Eval => client.eval(script.source.as_str(), keys, args).await,
            NoScript::InOrder {
                lane,
                ticket,
                cache,
                node,
            } => {
                cache.forget(node);
                ordered::eval_if_last(client, script, (keys, args), lane, *ticket).await
            }
        },
        other => other,
    }
}
