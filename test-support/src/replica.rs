//! A Redis replica, attached to a primary directly or through a [`FaultProxy`], for failover
//! tests: promote it and see which writes it has.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::free_port;
use crate::process::on_fresh_ports;
use crate::process::{ProcessGuard, TempDir};
use crate::proxy::FaultProxy;
use crate::redis::try_spawn_redis;
use crate::resp::{info_field, redis_cmd};

/// A `redis-server` started with `--replicaof`, without persistence.
///
/// To make it lag, attach it through a proxy with [`start_via`](Self::start_via), then
/// [`FaultProxy::pause`] the proxy while the primary takes writes: the replication stream stalls
/// in the proxy, and a [`promote`](Self::promote)d replica lacks those writes, as after a
/// failover to a replica that was behind.
#[derive(Debug)]
pub struct RedisReplica {
    pub port: u16,
    /// The primary itself (never the proxy): where `wait_in_sync` reads the offset to reach.
    primary: SocketAddr,
    process: ProcessGuard,
    _dir: TempDir,
}

impl RedisReplica {
    /// A replica of `primary` (a [`RedisServer`](crate::RedisServer), a [`RedisReplica`] or an
    /// address), connected to it directly.
    pub fn start(primary: impl Into<SocketAddr>) -> Self {
        let primary = primary.into();
        Self::start_with(primary, primary)
    }

    /// A replica of the proxy's target whose replication link goes through `proxy`, so the
    /// test can pause or cut that link alone.
    pub fn start_via(proxy: &FaultProxy) -> Self {
        Self::start_with(proxy.addr(), proxy.target())
    }

    /// A replica that connects to `upstream` for the replication stream of `primary` (they
    /// differ when something sits in between).
    pub fn start_with(upstream: SocketAddr, primary: SocketAddr) -> Self {
        on_fresh_ports("redis-server (replica)", || {
            Self::try_start_with(upstream, primary)
        })
    }

    fn try_start_with(upstream: SocketAddr, primary: SocketAddr) -> Result<Self, String> {
        let port = free_port();
        let dir = TempDir::new("gw-redis-replica");
        let host = upstream.ip().to_string();
        let upstream_port = upstream.port().to_string();
        let process = try_spawn_redis(
            port,
            dir.path(),
            &["--appendonly", "no", "--replicaof", &host, &upstream_port],
        )?;
        Ok(Self {
            port,
            primary,
            process,
            _dir: dir,
        })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Runs one command on the replica (see [`redis_cmd`]); panics on failure.
    pub fn cmd(&self, args: &[&str]) -> String {
        self.try_cmd(args)
            .unwrap_or_else(|e| panic!("redis {args:?} on replica port {}: {e}", self.port))
    }

    pub fn try_cmd(&self, args: &[&str]) -> io::Result<String> {
        redis_cmd(self.addr(), args)
    }

    /// Waits (up to 10 s) until the link to the primary is up and the replica has processed the
    /// primary's whole replication stream: after this, every write acknowledged by the primary
    /// before the call is readable on the replica.
    pub fn wait_in_sync(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let replica = self.cmd(&["INFO", "replication"]);
            let primary = redis_cmd(self.primary, &["INFO", "replication"])
                .unwrap_or_else(|e| panic!("INFO on primary {}: {e}", self.primary));
            let link_up = info_field(&replica, "master_link_status") == Some("up");
            let done = info_field(&replica, "slave_repl_offset");
            let target = info_field(&primary, "master_repl_offset");
            if link_up && done.is_some() && done == target {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "replica on port {} not in sync within 10 s\n\
                     replica:\n{replica}\nprimary:\n{primary}",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Turns the replica into a primary (`REPLICAOF NO ONE`) with whatever it has now; it stops
    /// following the old primary and accepts writes.
    pub fn promote(&self) {
        assert_eq!(self.cmd(&["REPLICAOF", "NO", "ONE"]), "OK");
        let info = self.cmd(&["INFO", "replication"]);
        assert_eq!(info_field(&info, "role"), Some("master"), "{info}");
    }

    /// Kills the replica with SIGKILL.
    pub fn kill(&mut self) {
        self.process.kill();
    }
}

impl From<&RedisReplica> for SocketAddr {
    fn from(replica: &RedisReplica) -> Self {
        replica.addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RedisServer;

    #[test]
    fn replica_follows_and_promotes() {
        let primary = RedisServer::start();
        primary.cmd(&["SET", "k", "v"]);
        let replica = RedisReplica::start(&primary);
        replica.wait_in_sync();
        assert_eq!(replica.cmd(&["GET", "k"]), "v");
        assert!(
            replica.try_cmd(&["SET", "x", "1"]).is_err(),
            "replicas are read-only"
        );

        replica.promote();
        assert_eq!(replica.cmd(&["SET", "x", "1"]), "OK");
        assert_eq!(primary.cmd(&["EXISTS", "x"]), "0");
    }

    #[test]
    fn promoted_lagging_replica_lacks_writes_made_while_its_link_was_paused() {
        let primary = RedisServer::start();
        let proxy = FaultProxy::start(&primary);
        let replica = RedisReplica::start_via(&proxy);
        primary.cmd(&["SET", "before", "1"]);
        replica.wait_in_sync();
        assert_eq!(replica.cmd(&["GET", "before"]), "1");

        proxy.pause();
        primary.cmd(&["SET", "during", "2"]);
        // Unpaused, the write would reach the replica in well under a millisecond.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(replica.cmd(&["EXISTS", "during"]), "0");
        let offset =
            |info: String, field| info_field(&info, field).unwrap().parse::<u64>().unwrap();
        let sent = offset(primary.cmd(&["INFO", "replication"]), "master_repl_offset");
        let applied = offset(replica.cmd(&["INFO", "replication"]), "slave_repl_offset");
        assert!(applied < sent, "the replica is behind: {applied} < {sent}");
        replica.promote();
        proxy.resume();
        std::thread::sleep(Duration::from_millis(200));

        assert_eq!(primary.cmd(&["GET", "during"]), "2");
        assert_eq!(replica.cmd(&["GET", "before"]), "1");
        assert_eq!(
            replica.cmd(&["EXISTS", "during"]),
            "0",
            "the promoted replica never got the write made during the pause"
        );
    }
}
