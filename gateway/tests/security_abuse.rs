//! Hostile clients against the abuse limits: frame and byte floods, per-address caps, slowloris,
//! handshake floods, the admin port, and client addresses claimed through PROXY v2 and
//! `X-Forwarded-For`. Every attack runs next to a well-behaved witness client that must keep
//! receiving its messages.
//!
//! Layout: `floods` (one connection's frames, bytes and subscriptions), `connections` (per
//! address caps, slowloris, the handshake cap), `admin_port` and `client_address` (PROXY v2 and
//! `X-Forwarded-For`); the witnesses they share are here.

mod support;

#[path = "security_abuse/admin_port.rs"]
mod admin_port;
#[path = "security_abuse/client_address.rs"]
mod client_address;
#[path = "security_abuse/connections.rs"]
mod connections;
#[path = "security_abuse/floods.rs"]
mod floods;

use std::net::{IpAddr, Ipv4Addr};

use support::TestGateway;
use support::hostile::{Witness, ws_from};

fn lo(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

async fn witness(gw: &TestGateway) -> Witness {
    Witness::join(&gw.ws_url(), gw.admin, None).await
}

/// A witness connecting from another loopback address than the attacker (127.0.0.1).
async fn witness_from(gw: &TestGateway, ip: IpAddr) -> Witness {
    let c = ws_from(ip, gw.public).await.expect("witness connects");
    Witness::on(c, gw.admin, None).await
}
