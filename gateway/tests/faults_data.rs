//! Faults on the data path against real servers (redis-server, nats-server), each with a witness
//! client that must go on receiving while the fault lasts: a resume that does not read a large
//! backlog, a socket killed halfway through a replay, racing and delayed session takeovers, and
//! a NATS outage while hundreds of messages are published.
//!
//! Layout: one module per fault (`backlog`, `replay`, `takeover`, `nats_outage`); the bounds
//! and payloads they share are here.

mod support;

#[path = "faults_data/backlog.rs"]
mod backlog;
#[path = "faults_data/nats_outage.rs"]
mod nats_outage;
#[path = "faults_data/replay.rs"]
mod replay;
#[path = "faults_data/takeover.rs"]
mod takeover;

use std::time::Duration;

use serde_json::{Value, json};

/// Generous bound for anything a test waits for.
const LIMIT: Duration = Duration::from_secs(30);

const MIB: usize = 1 << 20;

/// A payload of about `bytes` (within the default 64 KiB message limit), numbered.
fn blob(i: usize, bytes: usize) -> Value {
    json!({"i": i, "pad": "x".repeat(bytes)})
}
