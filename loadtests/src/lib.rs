//! `wsload`: the gateway's load generator and benchmark scenarios.
//!
//! Layout:
//! - [`net`]: loopback-only targets, client sockets spread over 127.0.0.1..N, the WebSocket
//!   connect.
//! - [`run`]: what the clients of one run share: phase, balancer (round-robin or least
//!   connections), counters, latency histograms, reconnect events.
//! - [`session`]: a subscriber: hello, subscribe, record deliveries, reconnect and resume on
//!   1001/1012/1013 like the SDK.
//! - [`publisher`]: paced publishers, and the final `seq` of every topic.
//! - [`tracker`]: the pure bookkeeping of lost, duplicate and out-of-order deliveries.
//! - [`payload`]: payloads carrying the send time and a counter; the receive fast path.
//! - [`report`]: HDR histograms, peak rates, the progress bar, JSON output.
//! - [`admin`]: the gateway's admin endpoints and `/proc` readings (RSS, CPU time).
//! - [`baseline`]: `baseline-server`, the raw tokio-tungstenite broadcast server.
//! - [`scenario`]: `connect`, `fanout`, `drain`, `rebalance`, `storm`, `throughput`, and
//!   `compare` (the ratio of two reports of one sitting against the benchmark targets).
//!
//! Every scenario is bounded: a count of clients (at most 18,000 per process, more through
//! worker processes for `connect`), and a hard deadline (`--max-duration`, at most 300 s).

#![forbid(unsafe_code)]

pub mod admin;
pub mod baseline;
pub mod net;
pub mod payload;
pub mod publisher;
pub mod report;
pub mod run;
pub mod scenario;
pub mod session;
pub mod tracker;
