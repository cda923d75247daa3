//! A fleet behind a real HAProxy (`balance leastconn` + agent-check): placement, drain under
//! load, rebalancing after scale-out, and the operator's commands.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::process::Pod;
use support::resuming::{ResumingClient, assert_complete};
use support::{Client, http};
use test_support::{Haproxy, NatsServer, RedisServer, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_gateway");

struct Fleet {
    _redis: RedisServer,
    _nats: NatsServer,
    pods: Vec<Option<Pod>>,
    agents: Vec<u16>,
    ports: Vec<u16>,
    redis_url: String,
    nats_url: String,
    _haproxy: Haproxy,
    frontend: u16,
}

impl Fleet {
    /// `slots` gateway addresses behind HAProxy; the first `running` of them are started.
    async fn start(slots: usize, running: usize, extra: &[&str]) -> Self {
        let redis = RedisServer::start();
        let nats = NatsServer::start();
        let ports: Vec<u16> = (0..slots).map(|_| free_port()).collect();
        let agents: Vec<u16> = (0..slots).map(|_| free_port()).collect();
        let frontend = free_port();
        let servers: String = (0..slots)
            .map(|i| {
                format!(
                    "  server p{i} 127.0.0.1:{} check inter 300ms fall 1 rise 1 agent-check agent-port {} agent-inter 300ms\n",
                    ports[i], agents[i]
                )
            })
            .collect();
        let cfg = format!(
            "global\n  maxconn 4000\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n  timeout tunnel 1h\n\
             frontend fe\n  bind 127.0.0.1:{frontend}\n  default_backend gw\n\
             backend gw\n  balance leastconn\n  option httpchk GET /readyz\n{servers}"
        );
        let mut fleet = Fleet {
            redis_url: redis.url(),
            nats_url: nats.url(),
            _redis: redis,
            _nats: nats,
            pods: (0..slots).map(|_| None).collect(),
            agents,
            ports,
            _haproxy: Haproxy::start(&cfg, frontend),
            frontend,
        };
        for i in 0..running {
            fleet.start_pod(i, extra);
        }
        fleet.wait_routable(running).await;
        fleet
    }

    fn start_pod(&mut self, i: usize, extra: &[&str]) {
        let agent = format!("127.0.0.1:{}", self.agents[i]);
        let name = format!("pod-{i}");
        let mut args = vec![
            "--agent-listen",
            &agent,
            "--pod-name",
            &name,
            "--redis-url",
            &self.redis_url,
            "--nats-url",
            &self.nats_url,
            "--heartbeat-interval",
            "300ms",
            "--topic-resync-interval",
            "1s",
        ];
        args.extend_from_slice(extra);
        self.pods[i] = Some(Pod::start_on(self.ports[i], &args));
    }

    /// Waits until HAProxy routes to `n` pods (every one answers through the frontend).
    async fn wait_routable(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut seen = std::collections::HashSet::new();
            for _ in 0..(n * 4) {
                if let Ok(Ok((mut ws, _))) = tokio::time::timeout(
                    Duration::from_secs(2),
                    tokio_tungstenite::connect_async(self.url()),
                )
                .await
                {
                    use futures_util::{SinkExt, StreamExt};
                    let _ = ws
                        .send(tokio_tungstenite::tungstenite::Message::text(
                            r#"{"type":"hello"}"#,
                        ))
                        .await;
                    if let Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) =
                        ws.next().await
                    {
                        let v: Value = serde_json::from_str(t.as_str()).unwrap();
                        seen.insert(v["pod"].as_str().unwrap_or_default().to_owned());
                    }
                    let _ = ws.close(None).await;
                }
            }
            if seen.len() >= n {
                // Let the probe connections close before measuring placement.
                tokio::time::sleep(Duration::from_millis(500)).await;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "HAProxy routes to {} of {n} pods",
                seen.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.frontend)
    }

    fn pod(&self, i: usize) -> &Pod {
        self.pods[i].as_ref().expect("pod running")
    }
}

fn distribution(clients: &[ResumingClient]) -> std::collections::BTreeMap<String, usize> {
    let mut d = std::collections::BTreeMap::new();
    for c in clients {
        let s = c.snapshot();
        if s.connected {
            *d.entry(s.pod).or_insert(0) += 1;
        }
    }
    d
}

fn within(
    d: &std::collections::BTreeMap<String, usize>,
    pods: usize,
    total: usize,
    tolerance: f64,
) -> bool {
    let mean = total as f64 / pods as f64;
    d.len() == pods
        && d.values().sum::<usize>() == total
        && d.values()
            .all(|&n| (n as f64 - mean).abs() <= mean * tolerance)
}

async fn connect_all(url: &str, n: usize) -> Vec<ResumingClient> {
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(ResumingClient::spawn(url.to_owned(), "load"));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while clients.iter().filter(|c| c.snapshot().connected).count() < n {
        assert!(Instant::now() < deadline, "clients did not all connect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    clients
}

/// Publishes on `load` through a pod's `/api/publish` every `every` until told to stop (not a
/// WebSocket: rebalancing may close any socket); returns the last seq.
fn publisher(
    admin: std::net::SocketAddr,
    every: Duration,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<u64>,
) {
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut n = 0;
        loop {
            n += 1;
            let body = json!({"topic": "load", "data": {"n": n}}).to_string();
            let (status, reply) = http(admin, "POST", "/api/publish", Some(&body), None).await;
            assert_eq!(status, 200, "{reply}");
            let last = serde_json::from_str::<Value>(&reply).unwrap()["seq"]
                .as_u64()
                .unwrap();
            tokio::select! {
                _ = &mut rx => return last,
                _ = tokio::time::sleep(every) => {}
            }
        }
    });
    (tx, task)
}

async fn wait_for_all(clients: &[ResumingClient], last: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while clients
        .iter()
        .any(|c| c.snapshot().got.last().copied() != Some(last))
    {
        assert!(
            Instant::now() < deadline,
            "not every client received up to {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leastconn_places_300_clients_evenly_over_3_pods() {
    let fleet = Fleet::start(3, 3, &[]).await;
    let clients = connect_all(&fleet.url(), 300).await;
    let d = distribution(&clients);
    eprintln!("placement of 300 clients: {d:?}");
    assert!(within(&d, 3, 300, 0.10), "uneven placement: {d:?}");
    for c in clients {
        c.stop().await;
    }
}

/// `gateway_rebalance_closes_total` of a pod.
async fn rebalance_closes(pod: &Pod) -> u64 {
    let (status, metrics) = http(pod.admin_addr(), "GET", "/metrics", None, None).await;
    assert_eq!(status, 200);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("gateway_rebalance_closes_total "))
        .expect("rebalance counter exported")
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ramp_up_through_haproxy_sheds_nobody() {
    // Rebalancing looks every 300 ms, as often as pods beat: during the ramp every pod's view
    // mixes its own fresh count with the others' older ones, and only the wait for a stable
    // view keeps that apparent imbalance from turning into 1012s.
    let fleet = Fleet::start(3, 3, &["--rebalance-interval", "300ms"]).await;
    let clients = connect_all(&fleet.url(), 150).await;
    // Every pod sees the whole fleet...
    for i in 0..3 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, body) = http(fleet.pod(i).admin_addr(), "GET", "/scaler", None, None).await;
            let v: Value = serde_json::from_str(&body).unwrap();
            if v["fleet"]["connections"] == 150 && v["fleet"]["pods"] == 3 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "pod {i} never saw the fleet: {v}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // ...and keeps it for many rebalancing rounds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let d = distribution(&clients);
    eprintln!("placement of 150 clients: {d:?}");
    assert!(within(&d, 3, 150, 0.10), "uneven placement: {d:?}");
    for i in 0..3 {
        assert_eq!(rebalance_closes(fleet.pod(i)).await, 0, "pod {i} shed");
    }
    for c in clients {
        let s = c.stop().await;
        assert!(s.closes.is_empty(), "a client was closed: {:?}", s.closes);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_pod_under_load_loses_nothing() {
    let mut fleet = Fleet::start(3, 3, &["--drain-rate", "40"]).await;
    let clients = connect_all(&fleet.url(), 150).await;
    let (stop, publishing) = publisher(fleet.pod(1).admin_addr(), Duration::from_millis(20));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let drained = Instant::now();
    fleet.pod(0).terminate();
    let mut pod0 = fleet.pods[0].take().unwrap();
    let status = pod0
        .process
        .wait_timeout(Duration::from_secs(30))
        .expect("drained pod exits");
    assert!(status.success(), "drained pod exit status {status}");
    eprintln!("pod drained and exited in {:?}", drained.elapsed());
    let deadline = Instant::now() + Duration::from_secs(20);
    while clients.iter().any(|c| !c.snapshot().connected) {
        assert!(Instant::now() < deadline, "clients did not all come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    let last = publishing.await.unwrap();
    wait_for_all(&clients, last).await;
    let mut closes = Vec::new();
    let mut reconnects = Vec::new();
    for c in clients {
        let s = c.stop().await;
        assert_complete(&s.got, last);
        assert_eq!(s.unrecovered, 0);
        assert!(
            s.closes.iter().all(|(code, _)| *code == 1001),
            "{:?}",
            s.closes
        );
        closes.extend(s.closes.iter().map(|(_, at)| *at));
        reconnects.extend(s.reconnect_secs);
    }
    assert!(!closes.is_empty(), "nobody was on the drained pod");
    closes.sort();
    // Pacing: no one-second window holds more than twice the configured rate.
    let peak = closes
        .iter()
        .map(|t| {
            closes
                .iter()
                .filter(|u| **u >= *t && u.duration_since(*t) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    reconnects.sort_by(f64::total_cmp);
    eprintln!(
        "drain: {} clients closed with 1001, peak {peak}/s (rate 40/s), reconnect p50 {:.3}s max {:.3}s, {} messages each, 0 lost",
        closes.len(),
        reconnects[reconnects.len() / 2],
        reconnects.last().unwrap(),
        last
    );
    assert!(peak <= 80, "1001s were not paced: {peak} in one second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_rebalances_to_even_without_loss() {
    let extra = ["--rebalance-rate", "50", "--rebalance-interval", "1s"];
    let mut fleet = Fleet::start(3, 2, &extra).await;
    let clients = connect_all(&fleet.url(), 300).await;
    let (stop, publishing) = publisher(fleet.pod(0).admin_addr(), Duration::from_millis(50));
    let started = Instant::now();
    fleet.start_pod(2, &extra);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = distribution(&clients);
        if within(&d, 3, 300, 0.10) {
            eprintln!("rebalanced to {d:?} in {:?}", started.elapsed());
            break;
        }
        assert!(Instant::now() < deadline, "fleet did not even out: {d:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop.send(());
    let last = publishing.await.unwrap();
    wait_for_all(&clients, last).await;
    for c in clients {
        let s = c.stop().await;
        assert_complete(&s.got, last);
        assert!(
            s.closes.iter().all(|(code, _)| *code == 1012),
            "{:?}",
            s.closes
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_check_scaler_status_and_drain_commands() {
    let fleet = Fleet::start(2, 2, &["--drain-rate", "1"]).await;
    let read_agent = |port: u16| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut out = String::new();
        std::io::Read::read_to_string(&mut s, &mut out).unwrap();
        out
    };
    assert_eq!(read_agent(fleet.agents[0]), "up ready 100%\n");
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut c = Client::connect(&fleet.pod(0).url()).await;
        c.send(json!({"type": "hello"})).await;
        c.expect("welcome").await;
        clients.push(c);
    }
    // Heartbeats reach every pod: both report the fleet.
    let deadline = Instant::now() + Duration::from_secs(10);
    let scaler = loop {
        let (_, body) = http(fleet.pod(1).admin_addr(), "GET", "/scaler", None, None).await;
        let v: Value = serde_json::from_str(&body).unwrap();
        if v["fleet"]["connections"] == 4 && v["fleet"]["pods"] == 2 {
            break v;
        }
        assert!(Instant::now() < deadline, "fleet view incomplete: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(scaler["pod"]["connections"], 0);
    assert_eq!(scaler["fleet"]["connections_per_pod"], 2);

    let status = Command::new(BIN)
        .args(["status", "--url", &fleet.pod(1).admin_url()])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&status.stdout);
    assert!(
        out.contains("pod-0") && out.contains("pod-1") && out.contains("100.0%"),
        "{out}"
    );
    assert!(out.contains("UNEVEN"), "{out}");
    assert_eq!(status.status.code(), Some(1), "an uneven fleet exits 1");

    // Draining 4 clients at 1/s cannot finish in 1 s: exit 1 with a message.
    let out = Command::new(BIN)
        .args([
            "drain",
            "--url",
            &fleet.pod(0).admin_url(),
            "--timeout",
            "1s",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("still had"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read_agent(fleet.agents[0]), "drain\n");
    // Given time, the same drain completes and exits 0.
    let out = Command::new(BIN)
        .args([
            "drain",
            "--url",
            &fleet.pod(0).admin_url(),
            "--timeout",
            "30s",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("drained pod-0"), "{stdout}");
    for mut c in clients {
        assert_eq!(c.closed().await.code, 1001);
    }
    // Nothing listens there: a clear failure.
    let out = Command::new(BIN)
        .args([
            "drain",
            "--url",
            &format!("http://127.0.0.1:{}", free_port()),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the admin port"));
}
