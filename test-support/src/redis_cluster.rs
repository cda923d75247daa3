//! A Redis Cluster of three masters and three replicas on loopback ports, built by hand (no
//! `redis-cli`), with the faults a clustered store meets: a master killed and replaced by its
//! replica, and a slot moved to another master.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::free_ports;
use crate::process::{ProcessGuard, TempDir, on_fresh_ports};
use crate::redis::try_spawn_redis;
use crate::resp::{info_field, redis_cmd, redis_cmds};

/// `cluster-node-timeout`: how long a silent node takes to be flagged failing. Short, so a
/// replica takes over within a few seconds.
pub const NODE_TIMEOUT: Duration = Duration::from_millis(1_000);

/// Upper bound for the cluster to form, fail over or settle after a reshard.
const SETTLE: Duration = Duration::from_secs(30);

/// Number of hash slots of every Redis Cluster.
pub const SLOTS: u16 = 16_384;

/// One `redis-server` of a [`RedisCluster`].
#[derive(Debug)]
pub struct ClusterNode {
    pub port: u16,
    /// The cluster bus port (`cluster-port`, chosen freely instead of `port + 10000`).
    pub bus_port: u16,
    // Declared before `dir`: the server is dead before its directory is removed.
    process: Option<ProcessGuard>,
    _dir: TempDir,
}

impl ClusterNode {
    /// Starts on two ports of its own choosing (the client port and the bus port), retried on
    /// others if either was taken.
    fn start() -> Self {
        on_fresh_ports("redis-server (cluster node)", Self::try_start)
    }

    fn try_start() -> Result<Self, String> {
        let ports = free_ports(2);
        let (port, bus_port) = (ports[0], ports[1]);
        let dir = TempDir::new("gw-redis-cluster");
        let timeout = NODE_TIMEOUT.as_millis().to_string();
        let process = try_spawn_redis(
            port,
            dir.path(),
            &[
                "--appendonly",
                "no",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-port",
                &bus_port.to_string(),
                "--cluster-node-timeout",
                &timeout,
            ],
        )?;
        Ok(Self {
            port,
            bus_port,
            process: Some(process),
            _dir: dir,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// Runs one command on this node (see [`redis_cmd`]); panics on failure.
    pub fn cmd(&self, args: &[&str]) -> String {
        self.try_cmd(args)
            .unwrap_or_else(|e| panic!("redis {args:?} on cluster node {}: {e}", self.port))
    }

    pub fn try_cmd(&self, args: &[&str]) -> io::Result<String> {
        redis_cmd(self.addr(), args)
    }

    /// Runs several commands on one connection of this node (see [`redis_cmds`]); panics on
    /// failure.
    pub fn cmds(&self, commands: &[&[&str]]) -> Vec<String> {
        redis_cmds(self.addr(), commands)
            .unwrap_or_else(|e| panic!("redis {commands:?} on cluster node {}: {e}", self.port))
    }

    /// The node's cluster id (`CLUSTER MYID`).
    pub fn node_id(&self) -> String {
        self.cmd(&["CLUSTER", "MYID"])
    }

    /// This process's `run_id`.
    pub fn run_id(&self) -> String {
        let info = self.cmd(&["INFO", "server"]);
        info_field(&info, "run_id")
            .unwrap_or_else(|| panic!("no run_id in INFO server: {info}"))
            .to_owned()
    }

    fn kill_9(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }
}

/// One line of `CLUSTER NODES`, as seen by one node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeLine {
    id: String,
    port: u16,
    master: bool,
    failed: bool,
    /// Slot ranges served (inclusive); migration markers (`[slot->-id]`) are left out.
    slots: Vec<(u16, u16)>,
}

fn parse_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (id, addr, flags) = (fields.first()?, fields.get(1)?, fields.get(2)?);
            let port = addr
                .split(['@', ','])
                .next()?
                .rsplit(':')
                .next()?
                .parse()
                .ok()?;
            let slots = fields
                .iter()
                .skip(8)
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|n| (n, n)),
                })
                .collect();
            Some(NodeLine {
                id: (*id).to_owned(),
                port,
                master: flags.contains("master"),
                failed: flags.contains("fail") && !flags.contains("fail?"),
                slots,
            })
        })
        .collect()
}

/// A Redis Cluster: nodes 0–2 start as the masters of slots 0–5460, 5461–10922 and
/// 10923–16383, nodes 3–5 as their replicas (node `3 + i` follows node `i`).
///
/// Every node runs with `cluster-node-timeout` [`NODE_TIMEOUT`] and the default
/// `cluster-require-full-coverage yes` (while a master is failing and not yet replaced, the
/// whole cluster refuses commands with `CLUSTERDOWN`). Node indices stay the same for the
/// cluster's life; which of them are masters changes with failovers: ask
/// [`master_for_slot`](Self::master_for_slot) or [`masters`](Self::masters).
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
}

impl RedisCluster {
    /// Starts six nodes, joins them, assigns slots and replicas, and returns once every node
    /// reports `cluster_state:ok`, agrees on who serves every slot, and each replica is in sync.
    pub fn start() -> Self {
        let nodes: Vec<ClusterNode> = (0..6).map(|_| ClusterNode::start()).collect();
        // Distinct config epochs before meeting, as `redis-cli --cluster create` does: masters
        // would otherwise collide at epoch 0 and resolve it slowly.
        for (i, node) in nodes.iter().enumerate() {
            node.cmd(&["CLUSTER", "SET-CONFIG-EPOCH", &(i + 1).to_string()]);
        }
        let ranges = [(0u16, 5_460u16), (5_461, 10_922), (10_923, SLOTS - 1)];
        for (node, (a, b)) in nodes.iter().zip(ranges) {
            node.cmd(&["CLUSTER", "ADDSLOTSRANGE", &a.to_string(), &b.to_string()]);
        }
        let first = &nodes[0];
        for node in &nodes[1..] {
            let (port, bus) = (first.port.to_string(), first.bus_port.to_string());
            node.cmd(&["CLUSTER", "MEET", "127.0.0.1", &port, &bus]);
        }
        let cluster = Self { nodes };
        cluster.wait_until("every node knows the others", |c| {
            c.live().all(|n| {
                n.try_cmd(&["CLUSTER", "NODES"])
                    .is_ok_and(|t| parse_nodes(&t).len() == 6 && !t.contains("handshake"))
            })
        });
        for i in 0..3 {
            let master = cluster.nodes[i].node_id();
            cluster.nodes[3 + i].cmd(&["CLUSTER", "REPLICATE", &master]);
        }
        cluster.wait_settled();
        cluster.wait_until("replicas in sync", |c| {
            c.nodes[3..].iter().all(|n| {
                n.try_cmd(&["INFO", "replication"])
                    .is_ok_and(|i| info_field(&i, "master_link_status") == Some("up"))
            })
        });
        cluster
    }

    /// `redis-cluster://` URL naming every node, in the form `fred` parses
    /// (`redis-cluster://host:port?node=host:port&node=…`): a client can start from any of them.
    pub fn url(&self) -> String {
        let others: Vec<String> = self.nodes[1..]
            .iter()
            .map(|n| format!("node=127.0.0.1:{}", n.port))
            .collect();
        format!(
            "redis-cluster://127.0.0.1:{}?{}",
            self.nodes[0].port,
            others.join("&")
        )
    }

    pub fn nodes(&self) -> &[ClusterNode] {
        &self.nodes
    }

    pub fn node(&self, i: usize) -> &ClusterNode {
        &self.nodes[i]
    }

    fn live(&self) -> impl Iterator<Item = &ClusterNode> {
        self.nodes.iter().filter(|n| n.is_running())
    }

    fn any_live(&self) -> &ClusterNode {
        self.live().next().expect("a running cluster node")
    }

    fn index_of_port(&self, port: u16) -> usize {
        self.nodes
            .iter()
            .position(|n| n.port == port)
            .unwrap_or_else(|| panic!("port {port} is not a node of this cluster"))
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`; braces are hash tags).
    pub fn key_slot(&self, key: &str) -> u16 {
        let reply = self.any_live().cmd(&["CLUSTER", "KEYSLOT", key]);
        reply.parse().expect("CLUSTER KEYSLOT is a number")
    }

    /// The node serving `slot`, as the first running node sees it.
    pub fn master_for_slot(&self, slot: u16) -> usize {
        self.try_master_for_slot(self.any_live(), slot)
            .unwrap_or_else(|| panic!("no master for slot {slot}"))
    }

    fn try_master_for_slot(&self, viewer: &ClusterNode, slot: u16) -> Option<usize> {
        let text = viewer.try_cmd(&["CLUSTER", "NODES"]).ok()?;
        parse_nodes(&text)
            .into_iter()
            .find(|n| n.master && !n.failed && n.slots.iter().any(|&(a, b)| a <= slot && slot <= b))
            .map(|n| self.index_of_port(n.port))
    }

    /// The node serving `key`'s slot.
    pub fn master_for_key(&self, key: &str) -> usize {
        self.master_for_slot(self.key_slot(key))
    }

    /// Indices of the running nodes that serve slots, in slot order.
    pub fn masters(&self) -> Vec<usize> {
        let text = self.any_live().cmd(&["CLUSTER", "NODES"]);
        let mut masters: Vec<(u16, usize)> = parse_nodes(&text)
            .into_iter()
            .filter(|n| n.master && !n.failed && !n.slots.is_empty())
            .map(|n| (n.slots[0].0, self.index_of_port(n.port)))
            .filter(|&(_, i)| self.nodes[i].is_running())
            .collect();
        masters.sort_unstable();
        masters.into_iter().map(|(_, i)| i).collect()
    }

    /// Kills node `i` with SIGKILL (a master or a replica).
    pub fn kill_9(&mut self, i: usize) {
        self.nodes[i].kill_9();
    }

    /// After a master was killed: waits until another node serves `slot` and the cluster is
    /// healthy again (see [`wait_settled`](Self::wait_settled)); returns the new master.
    pub fn wait_failover(&self, slot: u16, dead: usize) -> usize {
        self.wait_until("a replica takes over", |c| {
            c.try_master_for_slot(c.any_live(), slot)
                .is_some_and(|m| m != dead)
        });
        self.wait_settled();
        self.master_for_slot(slot)
    }

    /// Waits until every running node reports `cluster_state:ok` and all of them agree on
    /// which running node serves each slot.
    pub fn wait_settled(&self) {
        self.wait_until("cluster_state:ok and one view of the slots", |c| {
            let mut views = Vec::new();
            for node in c.live() {
                let state = node.try_cmd(&["CLUSTER", "INFO"]);
                if !state.is_ok_and(|s| info_field(&s, "cluster_state") == Some("ok")) {
                    return false;
                }
                let Ok(text) = node.try_cmd(&["CLUSTER", "NODES"]) else {
                    return false;
                };
                let mut owners: Vec<(u16, u16, u16)> = parse_nodes(&text)
                    .into_iter()
                    .filter(|n| n.master && !n.failed)
                    .flat_map(|n| {
                        n.slots
                            .iter()
                            .map(move |&(a, b)| (a, b, n.port))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                owners.sort_unstable();
                let covered: u32 = owners.iter().map(|&(a, b, _)| u32::from(b - a) + 1).sum();
                let owners_live = owners
                    .iter()
                    .all(|&(_, _, port)| c.nodes[c.index_of_port(port)].is_running());
                if covered != u32::from(SLOTS) || !owners_live {
                    return false;
                }
                views.push(owners);
            }
            views.windows(2).all(|w| w[0] == w[1])
        });
    }

    /// Moves `slot` and its keys from master `from` to master `to`, by hand as
    /// `redis-cli --cluster reshard` does: `IMPORTING` on the target, `MIGRATING` on the source,
    /// `MIGRATE` of the keys in batches, then `SETSLOT … NODE` on both and on every other
    /// master. Returns once every node agrees on the new owner.
    ///
    /// While the slot migrates, a script whose keys are not all on one side gets `TRYAGAIN` or
    /// an `ASK` redirection; afterwards the keys live in another process (another `run_id`).
    pub fn reshard(&self, slot: u16, from: usize, to: usize) {
        let (src, dst) = (&self.nodes[from], &self.nodes[to]);
        let (src_id, dst_id) = (src.node_id(), dst.node_id());
        let slot_s = slot.to_string();
        dst.cmd(&["CLUSTER", "SETSLOT", &slot_s, "IMPORTING", &src_id]);
        src.cmd(&["CLUSTER", "SETSLOT", &slot_s, "MIGRATING", &dst_id]);
        let dst_port = dst.port.to_string();
        let deadline = Instant::now() + SETTLE;
        loop {
            let keys = src.cmd(&["CLUSTER", "GETKEYSINSLOT", &slot_s, "100"]);
            if keys.is_empty() {
                break;
            }
            let mut args = vec!["MIGRATE", "127.0.0.1", &dst_port, "", "0", "5000", "KEYS"];
            args.extend(keys.lines());
            src.cmd(&args);
            assert!(Instant::now() < deadline, "slot {slot} did not empty");
        }
        dst.cmd(&["CLUSTER", "SETSLOT", &slot_s, "NODE", &dst_id]);
        src.cmd(&["CLUSTER", "SETSLOT", &slot_s, "NODE", &dst_id]);
        for i in self.masters() {
            if i != from && i != to {
                self.nodes[i].cmd(&["CLUSTER", "SETSLOT", &slot_s, "NODE", &dst_id]);
            }
        }
        self.wait_until("every node sees the moved slot", |c| {
            c.live().all(|n| c.try_master_for_slot(n, slot) == Some(to))
        });
        self.wait_settled();
    }

    /// Polls `done` every 50 ms until it holds; panics after [`SETTLE`].
    fn wait_until(&self, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + SETTLE;
        while !done(self) {
            if Instant::now() > deadline {
                let view = self
                    .any_live()
                    .try_cmd(&["CLUSTER", "NODES"])
                    .unwrap_or_else(|e| e.to_string());
                panic!("redis cluster: {what}: not within {SETTLE:?}; CLUSTER NODES:\n{view}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lines_are_parsed() {
        let text = "07c3 127.0.0.1:30004@31004,host myself,master - 0 0 1 connected 0-5460 7 [8->-e7d1]\n\
                    e7d1 127.0.0.1:30005@31005 slave,fail 07c3 0 0 1 disconnected\n";
        let nodes = parse_nodes(text);
        assert_eq!(nodes.len(), 2);
        assert_eq!(
            nodes[0],
            NodeLine {
                id: "07c3".into(),
                port: 30004,
                master: true,
                failed: false,
                slots: vec![(0, 5460), (7, 7)],
            }
        );
        assert!(nodes[1].failed && !nodes[1].master);
    }

    #[test]
    fn master_kill_fails_over_to_its_replica_and_a_slot_can_be_moved() {
        let mut cluster = RedisCluster::start();
        assert_eq!(cluster.masters(), vec![0, 1, 2]);
        assert!(cluster.url().starts_with("redis-cluster://127.0.0.1:"));
        let key = "{k}";
        let slot = cluster.key_slot(key);
        let master = cluster.master_for_key(key);
        let replica = 3 + master;
        // (A replica answers reads only after READONLY: ask the master whether it has the write.
        // WAIT on the connection that wrote: on another one it would wait for nothing.)
        let replies = cluster
            .node(master)
            .cmds(&[&["SET", key, "v"], &["WAIT", "1", "5000"]]);
        assert_eq!(replies, ["OK", "1"], "replica acknowledged the write");

        let started = Instant::now();
        cluster.kill_9(master);
        let promoted = cluster.wait_failover(slot, master);
        eprintln!("redis cluster failover took {:?}", started.elapsed());
        assert_eq!(promoted, replica, "the killed master's replica took over");
        assert_eq!(cluster.node(promoted).cmd(&["GET", key]), "v");

        let target = *cluster.masters().iter().find(|&&m| m != promoted).unwrap();
        cluster.reshard(slot, promoted, target);
        assert_eq!(cluster.master_for_key(key), target);
        assert_eq!(cluster.node(target).cmd(&["GET", key]), "v");
        let moved = cluster.node(promoted).try_cmd(&["GET", key]).unwrap_err();
        assert!(moved.to_string().starts_with("MOVED"), "{moved}");
    }
}
