//! A Sentinel deployment on loopback ports: a master, its replica and three sentinels that
//! promote the replica when the master fails or when asked to.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;
use crate::process::{ProcessGuard, TempDir, on_fresh_ports, try_spawn_listening};
use crate::redis::{Security, redis_server_bin, try_spawn_redis_with};
use crate::resp::{info_field, redis_cmd};

/// The name the sentinels monitor the master under (`sentinelServiceName` in the URL).
pub const SERVICE: &str = "gw-primary";

/// `down-after-milliseconds`: how long the master may be silent before it is considered down.
pub const DOWN_AFTER: Duration = Duration::from_millis(1_000);

/// `failover-timeout`. Also: a new failover of the same service waits until twice this has
/// passed since the previous one started, so a test can kill the master soon after a failover.
const FAILOVER_TIMEOUT: Duration = Duration::from_millis(3_000);

/// Upper bound for the deployment to form or to fail over.
const SETTLE: Duration = Duration::from_secs(30);

/// A data node: the master or the replica (the roles swap on a failover).
#[derive(Debug)]
struct DataNode {
    port: u16,
    process: Option<ProcessGuard>,
    _dir: TempDir,
}

impl DataNode {
    fn start(replica_of: Option<u16>) -> Self {
        on_fresh_ports("redis-server (sentinel data node)", || {
            Self::try_start(replica_of)
        })
    }

    fn try_start(replica_of: Option<u16>) -> Result<Self, String> {
        let port = free_port();
        let dir = TempDir::new("gw-redis-sentinel-data");
        let config = dir.path().join("redis.conf");
        // Sentinel runs CONFIG REWRITE on the servers it reconfigures: give them a file.
        std::fs::write(&config, "").expect("write redis.conf");
        let master_port = replica_of.map(|p| p.to_string());
        let mut extra = vec!["--appendonly", "no"];
        if let Some(master_port) = &master_port {
            extra.extend(["--replicaof", "127.0.0.1", master_port]);
        }
        let process = try_spawn_redis_with(
            Some(&config),
            port,
            dir.path(),
            &extra,
            &Security::default(),
        )?;
        Ok(Self {
            port,
            process: Some(process),
            _dir: dir,
        })
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn role(&self) -> Option<String> {
        let info = redis_cmd(self.addr(), &["INFO", "replication"]).ok()?;
        info_field(&info, "role").map(str::to_owned)
    }
}

/// One sentinel process and the config file it rewrites.
#[derive(Debug)]
struct Sentinel {
    port: u16,
    process: ProcessGuard,
    _config: PathBuf,
}

/// A master (node 0 at first), one replica (node 1) and three sentinels monitoring the master
/// as [`SERVICE`] with a quorum of 2, `down-after-milliseconds` [`DOWN_AFTER`] and a
/// `failover-timeout` of 3 s.
///
/// Node indices stay the same; which one is the master changes with failovers:
/// [`current_master`](Self::current_master) asks the sentinels.
#[derive(Debug)]
pub struct Sentinels {
    // Declared before `dir`: the processes are dead before their files are removed.
    sentinels: Vec<Sentinel>,
    nodes: Vec<DataNode>,
    dir: TempDir,
}

impl Sentinels {
    /// Starts the master, the replica and the sentinels; returns once the replica is in sync
    /// and every sentinel knows the replica and the two other sentinels (a failover needs
    /// their votes).
    pub fn start() -> Self {
        let master = DataNode::start(None);
        let replica = DataNode::start(Some(master.port));
        let dir = TempDir::new("gw-sentinels");
        let sentinels = (0..3)
            .map(|i| {
                on_fresh_ports("redis-server --sentinel", || {
                    let port = free_port();
                    let config = dir.path().join(format!("sentinel-{i}.conf"));
                    std::fs::write(
                        &config,
                        format!(
                            "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {}\n\
                         sentinel monitor {SERVICE} 127.0.0.1 {} 2\n\
                         sentinel down-after-milliseconds {SERVICE} {}\n\
                         sentinel failover-timeout {SERVICE} {}\n\
                         sentinel parallel-syncs {SERVICE} 1\n",
                            dir.path().display(),
                            master.port,
                            DOWN_AFTER.as_millis(),
                            FAILOVER_TIMEOUT.as_millis(),
                        ),
                    )
                    .unwrap_or_else(|e| panic!("write {}: {e}", config.display()));
                    let process = try_spawn_listening(
                        Command::new(redis_server_bin())
                            .arg(&config)
                            .arg("--sentinel")
                            .stdout(Stdio::null())
                            .stderr(Stdio::null()),
                        port,
                        "redis-server --sentinel",
                    )?;
                    Ok(Sentinel {
                        port,
                        process,
                        _config: config,
                    })
                })
            })
            .collect();
        let deployment = Self {
            sentinels,
            nodes: vec![master, replica],
            dir,
        };
        deployment.wait_until("the replica in sync and the sentinels acquainted", |d| {
            let link = redis_cmd(d.nodes[1].addr(), &["INFO", "replication"])
                .is_ok_and(|i| info_field(&i, "master_link_status") == Some("up"));
            link && (0..d.sentinels.len()).all(|s| {
                d.master_fields(s).is_some_and(|f| {
                    field(&f, "num-slaves") == Some("1")
                        && field(&f, "num-other-sentinels") == Some("2")
                        && field(&f, "flags") == Some("master")
                })
            })
        });
        deployment
    }

    /// The `redis-sentinel://` URL of the service, naming all three sentinels in the form
    /// `fred` parses (`redis-sentinel://host:port?sentinelServiceName=…&node=host:port&…`).
    pub fn url(&self) -> String {
        self.url_for(SERVICE)
    }

    /// Like [`url`](Self::url) for another service name (one the sentinels may not know).
    pub fn url_for(&self, service: &str) -> String {
        let others: String = self.sentinels[1..]
            .iter()
            .map(|s| format!("&node=127.0.0.1:{}", s.port))
            .collect();
        format!(
            "redis-sentinel://127.0.0.1:{}?sentinelServiceName={service}{others}",
            self.sentinels[0].port
        )
    }

    /// The ports of the data nodes (index 0: the first master).
    pub fn node_port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// The ports of the sentinels.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// Runs one command on data node `i`.
    pub fn node_cmd(&self, i: usize, args: &[&str]) -> io::Result<String> {
        redis_cmd(self.nodes[i].addr(), args)
    }

    /// Runs one command on sentinel `i`.
    pub fn sentinel_cmd(&self, i: usize, args: &[&str]) -> io::Result<String> {
        redis_cmd(
            SocketAddr::from(([127, 0, 0, 1], self.sentinels[i].port)),
            args,
        )
    }

    /// `SENTINEL MASTER` of sentinel `s`, as `(field, value)` pairs.
    fn master_fields(&self, s: usize) -> Option<Vec<(String, String)>> {
        let reply = self
            .sentinel_cmd(s, &["SENTINEL", "MASTER", SERVICE])
            .ok()?;
        let items: Vec<&str> = reply.lines().collect();
        Some(
            items
                .chunks(2)
                .filter_map(|kv| Some((kv.first()?.to_string(), kv.get(1)?.to_string())))
                .collect(),
        )
    }

    /// What sentinel `s` says the master is (a node index).
    fn master_seen_by(&self, s: usize) -> Option<usize> {
        let reply = self
            .sentinel_cmd(s, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE])
            .ok()?;
        let port: u16 = reply.lines().nth(1)?.parse().ok()?;
        self.nodes.iter().position(|n| n.port == port)
    }

    /// The data node the sentinels report as master (the first sentinel that answers).
    pub fn current_master(&self) -> usize {
        (0..self.sentinels.len())
            .find_map(|s| self.master_seen_by(s))
            .expect("no sentinel reports a master")
    }

    /// A graceful failover (`SENTINEL FAILOVER`, no agreement needed): returns the new master
    /// once every sentinel reports it and it says `role:master`. The old master keeps running;
    /// the sentinels turn it into a replica of the new one some seconds later
    /// ([`wait_replica`](Self::wait_replica)).
    pub fn failover(&self) -> usize {
        let old = self.current_master();
        let reply = self
            .sentinel_cmd(0, &["SENTINEL", "FAILOVER", SERVICE])
            .unwrap_or_else(|e| panic!("SENTINEL FAILOVER: {e}"));
        assert_eq!(reply, "OK", "SENTINEL FAILOVER");
        self.wait_failover(old)
    }

    /// Kills the current master with SIGKILL; returns its index. The sentinels notice after
    /// [`DOWN_AFTER`], agree, and promote the replica ([`wait_failover`](Self::wait_failover)).
    pub fn kill_9_master(&mut self) -> usize {
        let master = self.current_master();
        if let Some(mut process) = self.nodes[master].process.take() {
            process.kill();
        }
        master
    }

    /// Waits until every sentinel reports a master other than `old` and that node says
    /// `role:master`; returns it.
    pub fn wait_failover(&self, old: usize) -> usize {
        self.wait_until("a new master", |d| {
            let seen: Vec<Option<usize>> = (0..d.sentinels.len())
                .map(|s| d.master_seen_by(s))
                .collect();
            seen.iter()
                .all(|m| m.is_some_and(|m| m != old) && *m == seen[0])
                && seen[0].is_some_and(|m| d.nodes[m].role().as_deref() == Some("master"))
        });
        self.current_master()
    }

    /// Waits until data node `i` is a replica with its link to the master up (after a graceful
    /// failover: the old master demoted by the sentinels).
    pub fn wait_replica(&self, i: usize) {
        self.wait_until("the node to follow the new master", |d| {
            redis_cmd(d.nodes[i].addr(), &["INFO", "replication"]).is_ok_and(|info| {
                info_field(&info, "role") == Some("slave")
                    && info_field(&info, "master_link_status") == Some("up")
            })
        });
    }

    /// The directory holding the sentinels' config files (rewritten by them as they learn).
    pub fn config_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    fn wait_until(&self, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + SETTLE;
        while !done(self) {
            if Instant::now() > deadline {
                let view = self.master_fields(0).unwrap_or_default();
                panic!("sentinels: {what}: not within {SETTLE:?}; SENTINEL MASTER: {view:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for s in &mut self.sentinels {
            s.process.kill();
        }
        for n in &mut self.nodes {
            if let Some(mut p) = n.process.take() {
                p.kill();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinels_fail_over_on_request_and_when_the_master_dies() {
        let mut d = Sentinels::start();
        assert_eq!(d.current_master(), 0);
        assert!(
            d.url()
                .contains("sentinelServiceName=gw-primary&node=127.0.0.1:")
        );
        d.node_cmd(0, &["SET", "k", "v"]).unwrap();

        let started = Instant::now();
        assert_eq!(d.failover(), 1);
        eprintln!("sentinel graceful failover took {:?}", started.elapsed());
        assert_eq!(d.node_cmd(1, &["GET", "k"]).unwrap(), "v");
        d.wait_replica(0);
        eprintln!(
            "old master demoted {:?} after the request",
            started.elapsed()
        );

        let started = Instant::now();
        assert_eq!(d.kill_9_master(), 1);
        assert_eq!(d.wait_failover(1), 0);
        eprintln!(
            "sentinel failover after kill -9 took {:?}",
            started.elapsed()
        );
        assert_eq!(d.node_cmd(0, &["SET", "x", "1"]).unwrap(), "OK");
        let dir = d.config_dir().to_owned();
        drop(d);
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}
