//! `rpc`, `history`, `presence`, `presence_stats` and join/leave events against real gateway
//! processes (in-memory, loopback ports, killed by PID): one with `--presence
//! --presence-max-list 2`, one with `--presence --join-leave`, one with the example chat backend (`examples/chat-backend/backend.py`) as its hook. The gateway binary is
//! `GATEWAY_BIN` or the workspace's `target/debug/gateway` (`cargo build -p gateway`); without
//! one that has `--presence`, the tests say so and pass without running.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use gateway_client::{
    Client, ClientConfig, Event, HistoryQuery, Position, PresenceEvent, PresenceStats,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A child process, killed when dropped (also when a test fails).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn gateway_bin() -> Option<PathBuf> {
    let bin = match std::env::var_os("GATEWAY_BIN") {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
            .join("debug/gateway"),
    };
    let help = Command::new(&bin).arg("--help").output().ok()?;
    String::from_utf8_lossy(&help.stdout)
        .contains("--presence")
        .then_some(bin)
}

fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// Distinct free ports, all held until all are chosen (ports picked one after the other can
/// come back equal once the first listener is dropped).
fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

fn wait_port(port: u16, child: &mut Killed, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(child.0.try_wait().unwrap().is_none(), "{what} exited");
        assert!(Instant::now() < deadline, "{what} not listening on {port}");
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// Starts a gateway; returns it and its WebSocket URL.
fn gateway(bin: &PathBuf, args: &[&str], env: &[(&str, String)]) -> (Killed, String) {
    let (child, url, _admin) = gateway_with_admin(bin, args, env);
    (child, url)
}

/// [`gateway`], with its admin port too.
fn gateway_with_admin(
    bin: &PathBuf,
    args: &[&str],
    env: &[(&str, String)],
) -> (Killed, String, u16) {
    let [port, admin, agent] = free_ports::<3>();
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env("GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
        .env("GATEWAY_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .env("GATEWAY_AGENT_LISTEN", format!("127.0.0.1:{agent}"))
        .env("GATEWAY_POD_NAME", "sdk-rust")
        .env("GATEWAY_MAX_FRAME_RATE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = Killed(cmd.spawn().unwrap());
    wait_port(port, &mut child, "gateway");
    (child, format!("ws://127.0.0.1:{port}/ws"), admin)
}

/// A missing binary fails the test, never skips it: `cargo test --workspace` builds it.
const NO_GATEWAY: &str =
    "no gateway binary with --presence: run `cargo build -p gateway` (or set GATEWAY_BIN)";

fn client(url: &str) -> (Client, gateway_client::Events) {
    gateway_client::connect(
        ClientConfig::new([url.to_owned()])
            .backoff(Duration::from_millis(20), Duration::from_millis(200)),
    )
}

#[tokio::test]
async fn history_pages_then_live_and_presence() {
    let bin = gateway_bin().expect(NO_GATEWAY);
    let (_gw, url) = gateway(&bin, &["--presence", "--presence-max-list", "2"], &[]);
    let (a, _a_events) = client(&url);
    for i in 1..=10 {
        a.publish("log", &json!({"i": i}), None).await.unwrap();
    }
    let latest = a.history("log", HistoryQuery::latest(3)).await.unwrap();
    let seqs: Vec<u64> = latest.messages.iter().map(|m| m.seq).collect();
    assert_eq!(
        (latest.seq, seqs, latest.recovered),
        (10, vec![8, 9, 10], None)
    );
    let back = HistoryQuery {
        since: Some(Position {
            seq: 8,
            epoch: latest.epoch.clone(),
        }),
        limit: Some(2),
        reverse: true,
    };
    let back = a.history("log", back).await.unwrap();
    let got: Vec<(u64, &str)> = back
        .messages
        .iter()
        .map(|m| (m.seq, m.data.get()))
        .collect();
    assert_eq!(got, [(7, r#"{"i":7}"#), (6, r#"{"i":6}"#)]);
    assert_eq!(back.recovered, Some(true));
    let stale = HistoryQuery {
        limit: Some(2),
        ..HistoryQuery::after(Position {
            seq: 2,
            epoch: "0000000000000000".into(),
        })
    };
    let stale = a.history("log", stale).await.unwrap();
    assert_eq!(stale.recovered, Some(false));
    assert_eq!(
        stale.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [9, 10]
    );

    // Render a page, then go live from its last message: every later message once, in order.
    let (b, mut b_events) = client(&url);
    let page = b.history("log", HistoryQuery::latest(5)).await.unwrap();
    let mut seen: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
    b.subscribe("log", page.last_position()).await.unwrap();
    for i in 11..=15 {
        a.publish("log", &json!({"i": i}), None).await.unwrap();
    }
    while seen.len() < 10 {
        let event = tokio::time::timeout(Duration::from_secs(10), b_events.next())
            .await
            .expect("messages 11-15 within 10 s")
            .expect("events go on");
        match event {
            Event::Message(m) => seen.push(m.seq),
            Event::Gap(g) => panic!("gap: {g:?}"),
            _ => {}
        }
    }
    assert_eq!(seen, (6..=15).collect::<Vec<_>>());

    a.subscribe("room", None).await.unwrap();
    b.subscribe("room", None).await.unwrap();
    let members = a.presence("room").await.unwrap();
    assert_eq!(members.len(), 2);
    assert_ne!(members[0].session, members[1].session);
    let two = PresenceStats {
        members: 2,
        users: 2,
    };
    assert_eq!(b.presence_stats("room").await.unwrap(), two);
    let (c, _c_events) = client(&url);
    c.subscribe("room", None).await.unwrap();
    let big = c.presence("room").await.unwrap_err();
    assert_eq!(big.code(), Some("limit_reached"));
    let three = PresenceStats {
        members: 3,
        users: 3,
    };
    assert_eq!(c.presence_stats("room").await.unwrap(), three);
    for x in [a, b, c] {
        x.close().await;
    }
}

#[tokio::test]
async fn rpc_answers_and_error_codes_through_the_hook() {
    let bin = gateway_bin().expect(NO_GATEWAY);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("rpc-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("hook.secret");
    std::fs::write(&secret, "rust-hook-secret\n").unwrap();
    let backend_port = free_port();
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/chat-backend/backend.py");
    let mut backend = Killed(
        Command::new("python3")
            .arg(script)
            .args(["--port", &backend_port.to_string(), "--secret-file"])
            .arg(&secret)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(backend_port, &mut backend, "chat backend");
    let env = [
        (
            "GATEWAY_HOOK_URL",
            format!("http://127.0.0.1:{backend_port}"),
        ),
        ("GATEWAY_HOOK_SECRET_FILE", secret.display().to_string()),
    ];
    let (_gw, url) = gateway(&bin, &[], &env);
    let (c, _events) = client(&format!("{url}?user=rita"));
    let echoed = c.rpc("echo", &json!({"n": [1, 2]})).await.unwrap();
    assert_eq!(echoed, json!({"n": [1, 2]}));
    assert_eq!(c.rpc("whoami", &()).await.unwrap()["user"], "rita");
    let failed = c.rpc("fail", &()).await.unwrap_err();
    assert_eq!(failed.code(), Some("bad_request"));
    let off = c.presence_stats("chat.lobby").await.unwrap_err();
    assert_eq!(off.code(), Some("bad_request"), "no --presence");
    c.close().await;
}

/// The next join/leave event (other events skipped), within 10 s.
async fn next_presence(events: &mut gateway_client::Events) -> PresenceEvent {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("a join/leave within 10 s")
            .expect("events go on");
        if let Event::Presence(e) = event {
            return e;
        }
    }
}

#[tokio::test]
async fn join_and_leave_events_in_pseq_order() {
    let bin = gateway_bin().expect(NO_GATEWAY);
    let (_gw, url) = gateway(&bin, &["--presence", "--join-leave"], &[]);
    let (a, mut a_events) = client(&url);
    a.subscribe("room", None).await.unwrap();
    let (b, _b_events) = client(&url);
    b.subscribe("room", None).await.unwrap();
    let joined = next_presence(&mut a_events).await;
    assert!(joined.join, "{joined:?}");
    b.unsubscribe("room").await.unwrap();
    let left = next_presence(&mut a_events).await;
    assert!(!left.join, "{left:?}");
    assert_eq!(left.member.session, joined.member.session);
    assert_eq!((left.pseq, &left.epoch), (joined.pseq + 1, &joined.epoch));
    for x in [a, b] {
        x.close().await;
    }
}

/// One HTTP/1.0 request to a gateway's admin port; the response body.
async fn admin_http(port: u16, method: &str, path: &str, body: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = format!(
        "{method} {path} HTTP/1.0\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{head}"
    );
    body.to_owned()
}

/// The frames the gateway received from all its clients (`gateway_messages_received_total`).
async fn frames_received(admin: u16) -> u64 {
    let metrics = admin_http(admin, "GET", "/metrics", "").await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("gateway_messages_received_total "))
        .expect("gateway_messages_received_total is exported")
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn hello_subscribes_in_one_frame_and_refusals_fail_the_subscription() {
    let bin = gateway_bin().expect(NO_GATEWAY);
    let args = [
        "--auth",
        "optional",
        "--anon-subscribe",
        "open.*",
        "--anon-publish",
        "open.*",
    ];
    let secret = [(
        "GATEWAY_JWT_SECRET",
        "rust-hello-subscribe-0123456789abcdef".to_owned(),
    )];
    let (_gw, url, admin) = gateway_with_admin(&bin, &args, &secret);

    // A fresh connect with one subscription: `hello` is the only frame before the first message.
    let before = frames_received(admin).await;
    let (c, mut events) = client(&url);
    c.subscribe("open.one", None).await.unwrap();
    admin_http(
        admin,
        "POST",
        "/api/publish",
        r#"{"topic":"open.one","data":{"n":1}}"#,
    )
    .await;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("the message within 10 s")
            .expect("events go on");
        if let Event::Message(m) = event {
            assert_eq!((m.topic.as_str(), m.seq), ("open.one", 1));
            break;
        }
    }
    assert_eq!(frames_received(admin).await - before, 1, "hello only");
    c.close().await;

    // A topic the grants refuse fails its subscription as a `subscribe` frame's would.
    let before = frames_received(admin).await;
    let (c, _events) = client(&url);
    let (a, refused, z) = tokio::join!(
        c.subscribe("open.a", None),
        c.subscribe("closed.b", None),
        c.subscribe("open.z", None),
    );
    a.unwrap();
    z.unwrap();
    let refused = refused.unwrap_err();
    assert_eq!(refused.code(), Some("forbidden"));
    assert!(refused.to_string().contains("closed.b"), "{refused}");
    let positions = c.positions();
    assert_eq!(
        positions.keys().map(String::as_str).collect::<Vec<_>>(),
        ["open.a", "open.z"]
    );
    assert_eq!(
        frames_received(admin).await - before,
        1,
        "all three in hello"
    );
    c.close().await;
}
