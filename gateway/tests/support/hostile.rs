//! Hostile clients for the security suites: tokens (valid, forged and broken), a well-behaved
//! witness that must keep receiving during every attack, sockets from chosen loopback addresses,
//! gateway processes with a captured log, and a raw WebSocket client that writes frames byte by
//! byte (any header bits, its own masking, any declared length).
//!
//! Layout: `tokens`, `hello` (a hello's outcome, admin publishes), `witness`, `sockets`,
//! `processes` and `raw_ws`; everything is used through this module's re-exports.

mod hello;
mod processes;
mod raw_ws;
mod sockets;
mod tokens;
mod witness;

// Each test binary uses only some of these, as with `dead_code` in `support`.
#[allow(unused_imports)]
pub use hello::*;
#[allow(unused_imports)]
pub use processes::*;
#[allow(unused_imports)]
pub use raw_ws::*;
#[allow(unused_imports)]
pub use sockets::*;
#[allow(unused_imports)]
pub use tokens::*;
#[allow(unused_imports)]
pub use witness::*;
