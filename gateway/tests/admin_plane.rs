//! The admin plane as production runs it: an operator token and a read-only token from files,
//! start-up errors that name the flag, readiness that survives a backend blip, undrain, and a
//! `/metrics` scrape that Prometheus's own checker accepts.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use support::hostile::Witness;
use support::{TestGateway, http};

const BIN: &str = env!("CARGO_BIN_EXE_gateway");
const OPERATOR: &str = "operator-token-of-the-admin-suite";
const METRICS: &str = "metrics-token-of-the-admin-suite";

/// A token file (with the trailing newline `kubectl create secret --from-file` often leaves).
fn token_file(name: &str, token: &str) -> PathBuf {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("admin-plane-{name}-{}", std::process::id()));
    std::fs::write(&path, format!("{token}\n")).unwrap();
    path
}

fn with_tokens(c: &mut gateway::Config) {
    c.admin_token_file = Some(token_file("operator", OPERATOR));
    c.metrics_token_file = Some(token_file("metrics", METRICS));
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

async fn call(admin: SocketAddr, method: &str, path: &str, token: Option<&str>) -> u16 {
    let headers = token.map(bearer);
    let body = (method == "POST").then_some(r#"{"topic":"witness","data":{"n":-1}}"#);
    http(admin, method, path, body, headers.as_deref()).await.0
}

#[tokio::test]
async fn the_metrics_token_reads_but_cannot_drain_or_publish() {
    let gw = TestGateway::with(with_tokens).await;
    let mut w = Witness::join(&gw.ws_url(), gw.admin, None).await;
    w.admin_headers = Some(bearer(OPERATOR));
    let reads = ["/metrics", "/scaler", "/admin/cluster"];
    let writes = [
        ("POST", "/admin/drain"),
        ("GET", "/admin/drain"),
        ("POST", "/api/publish"),
    ];
    for path in reads {
        assert_eq!(
            call(gw.admin, "GET", path, Some(METRICS)).await,
            200,
            "{path}"
        );
        assert_eq!(
            call(gw.admin, "GET", path, Some(OPERATOR)).await,
            200,
            "{path}"
        );
        assert_eq!(call(gw.admin, "GET", path, None).await, 401, "{path}");
        assert_eq!(
            call(gw.admin, "GET", path, Some("wrong")).await,
            401,
            "{path}"
        );
    }
    for (method, path) in writes {
        assert_eq!(
            call(gw.admin, method, path, Some(METRICS)).await,
            403,
            "{path}"
        );
        assert_eq!(call(gw.admin, method, path, None).await, 401, "{path}");
        let longer = format!("{OPERATOR}x");
        assert_eq!(call(gw.admin, method, path, Some(&longer)).await, 401);
    }
    // Nothing was drained or published by the refused calls; the witness keeps receiving.
    w.check().await;
    let (_, drain) = http(
        gw.admin,
        "GET",
        "/admin/drain",
        None,
        Some(&bearer(OPERATOR)),
    )
    .await;
    assert!(drain.contains(r#""draining":false"#), "{drain}");
    // The operator token drains (and the witness is told 1001, as every client).
    assert_eq!(
        call(gw.admin, "POST", "/admin/drain", Some(OPERATOR)).await,
        202
    );
}

/// Runs the binary with `args`; its stderr, after asserting that it failed to start.
fn fails_to_start(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(["--listen=127.0.0.1:0"])
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn admin_plane_misconfigurations_fail_the_start_naming_the_flag() {
    let exposed = fails_to_start(&["--admin-listen=0.0.0.0:0"]);
    assert!(
        exposed.contains("--admin-listen 0.0.0.0:0 is not loopback: set --admin-token-file"),
        "{exposed}"
    );
    let alone = fails_to_start(&[
        "--admin-listen=127.0.0.1:0",
        "--metrics-token-file",
        token_file("alone", METRICS).to_str().unwrap(),
    ]);
    assert!(
        alone.contains("--metrics-token-file needs --admin-token-file"),
        "{alone}"
    );
    let missing = fails_to_start(&[
        "--admin-listen=0.0.0.0:0",
        "--admin-token-file=/nonexistent/admin-token",
    ]);
    assert!(
        missing.contains("--admin-token-file /nonexistent/admin-token"),
        "{missing}"
    );
    let operator = token_file("same-op", OPERATOR);
    let same = fails_to_start(&[
        "--admin-listen=127.0.0.1:0",
        "--admin-token-file",
        operator.to_str().unwrap(),
        "--metrics-token-file",
        operator.to_str().unwrap(),
    ]);
    assert!(
        same.contains("--metrics-token-file holds the operator token"),
        "{same}"
    );
    // Nothing of a token reaches the log, whatever failed.
    for text in [&exposed, &alone, &missing, &same] {
        assert!(
            !text.contains(OPERATOR) && !text.contains(METRICS),
            "{text}"
        );
    }
}

#[tokio::test]
async fn the_drain_command_reads_the_pods_token_file_from_the_environment() {
    let gw = TestGateway::with(with_tokens).await;
    let (mut client, _) = gw.hello().await;
    let out = tokio::process::Command::new(BIN)
        .args(["drain", "--url", &format!("http://{}", gw.admin)])
        .env("GATEWAY_ADMIN_TOKEN_FILE", token_file("cli", OPERATOR))
        .env_remove("GATEWAY_ADMIN_TOKEN")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("drained test-pod"), "{stdout}");
    assert_eq!(client.closed().await.code, 1001);
    // With the read-only token the command is refused, and says so.
    let gw = TestGateway::with(with_tokens).await;
    let out = tokio::process::Command::new(BIN)
        .args(["drain", "--url", &format!("http://{}", gw.admin)])
        .args(["--admin-token", METRICS])
        .env_remove("GATEWAY_ADMIN_TOKEN_FILE")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("403"));
}

/// `/readyz` until `until` (or up to [`support::WAIT`]): every answer must be `status`.
async fn readyz_stays(public: SocketAddr, status: u16, until: std::time::Duration) {
    let deadline = tokio::time::Instant::now() + until;
    while tokio::time::Instant::now() < deadline {
        let (got, body) = http(public, "GET", "/readyz", None, None).await;
        assert_eq!(got, status, "{body}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn backend_up(gw: &TestGateway, backend: &str) -> String {
    let (_, metrics) = gw.admin_get("/metrics").await;
    let prefix = format!("gateway_backend_up{{backend=\"{backend}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or("absent")
        .to_owned()
}

#[tokio::test]
async fn readiness_rides_out_a_redis_stall_and_goes_unready_after_the_configured_time() {
    use std::time::Duration;
    let redis = test_support::RedisServer::start();
    let link = test_support::FaultProxy::start(&redis);
    let gw = TestGateway::with(|c| {
        c.redis_url = Some(link.url("redis"));
        c.store_timeout = Duration::from_millis(300);
        c.unready_after_backend_down = Duration::from_secs(3);
    })
    .await;
    support::wait_readyz(gw.public, 200).await;
    assert_eq!(backend_up(&gw, "redis").await, "1");
    let (mut witness, _) = gw.hello().await;
    // A stall of a third of the grace: every probe stays 200, the metric says down, the open
    // connection keeps answering.
    link.pause();
    readyz_stays(gw.public, 200, Duration::from_secs(1)).await;
    assert_eq!(backend_up(&gw, "redis").await, "0");
    witness.send(serde_json::json!({"type": "ping"})).await;
    witness.expect("pong").await;
    link.resume();
    support::wait_readyz(gw.public, 200).await;
    // A longer outage: unready once the grace has passed, with no error text on the public
    // port; liveness never depends on the backend.
    link.pause();
    let body = support::wait_readyz(gw.public, 503).await;
    assert_eq!(body, "backend unavailable: redis");
    assert_eq!(
        http(gw.public, "GET", "/healthz", None, None).await,
        (200, "ok".into())
    );
    witness.send(serde_json::json!({"type": "ping"})).await;
    witness.expect("pong").await;
    link.resume();
    support::wait_readyz(gw.public, 200).await;
    assert_eq!(backend_up(&gw, "redis").await, "1");
}

#[tokio::test]
async fn a_full_pod_is_unready_until_a_connection_leaves() {
    let gw = TestGateway::with(|c| c.max_connections = 1).await;
    assert_eq!(
        backend_up(&gw, "redis").await,
        "absent",
        "memory: not checked"
    );
    let (c, _) = gw.hello().await;
    assert_eq!(
        http(gw.public, "GET", "/readyz", None, None).await,
        (503, "full".into())
    );
    drop(c);
    support::wait_readyz(gw.public, 200).await;
}

fn closed_count(report: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(report).unwrap();
    v["closed"].as_u64().unwrap()
}

#[tokio::test]
async fn an_operators_drain_is_undone_by_undrain_but_a_sigterm_drain_is_not() {
    use std::time::Duration;
    // Two closes a second: the drain of six clients is still running when it is undone.
    let mut gw = TestGateway::with(|c| c.drain_rate = 2).await;
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(gw.hello().await.0);
    }
    assert_eq!(gw.admin_post("/admin/drain", "").await.0, 202);
    support::wait_readyz(gw.public, 503).await;
    // Once the drain's first close has gone out, undo the rest with the command.
    let deadline = tokio::time::Instant::now() + support::WAIT;
    while closed_count(&gw.admin_get("/admin/drain").await.1) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the drain never closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = tokio::process::Command::new(BIN)
        .args(["undrain", "--url", &format!("http://{}", gw.admin)])
        .env_remove("GATEWAY_ADMIN_TOKEN")
        .env_remove("GATEWAY_ADMIN_TOKEN_FILE")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("undrained test-pod: taking connections again"),
        "{stdout}"
    );
    let (_, report) = gw.admin_get("/admin/drain").await;
    let closed_at_undrain = closed_count(&report);
    assert!(report.contains(r#""draining":false"#), "{report}");
    // Ready and taking upgrades again at once; the drain stops at its next close (one close
    // may have been on its way when the undrain landed).
    assert_eq!(
        http(gw.public, "GET", "/readyz", None, None).await,
        (200, "ready".into())
    );
    let (newcomer, _) = gw.hello().await;
    clients.push(newcomer);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, report) = gw.admin_get("/admin/drain").await;
    let closed = closed_count(&report);
    assert!(closed <= closed_at_undrain + 1, "{report}");
    let mut open = 0;
    for c in &mut clients {
        c.send(serde_json::json!({"type": "ping"})).await;
        match support::hostile::frame_or_close(c).await {
            Ok(f) if f["type"] == "pong" => open += 1,
            Ok(f) => panic!("unexpected {f}"),
            Err(closed) => assert_eq!(closed.code, 1001),
        }
    }
    assert_eq!(
        open,
        7 - closed,
        "every connection not closed by the drain stays open"
    );
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(metrics.contains("gateway_draining 0"), "{metrics}");

    // SIGTERM: the drain ends in exit and cannot be undone.
    gw.begin_shutdown();
    support::wait_readyz(gw.public, 503).await;
    let (status, body) = gw.admin_post("/admin/undrain", "").await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("terminating"), "{body}");
    gw.shutdown().await;
}

/// `promtool` (Debian package `prometheus`), or `None` when it is not installed.
fn promtool() -> Option<PathBuf> {
    let path = std::env::var_os("PROMTOOL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("promtool"));
    Command::new(&path)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| path)
}

#[tokio::test]
async fn a_live_scrape_passes_promtool_and_carries_build_and_process_metrics() {
    // Every family present: traffic, a refusal, a drain-peer, backends.
    let redis = test_support::RedisServer::start();
    let gw = TestGateway::with(|c| {
        c.redis_url = Some(redis.url());
        c.max_connections = 2;
    })
    .await;
    support::wait_readyz(gw.public, 200).await;
    let (mut a, _) = gw.hello().await;
    let (_b, _) = gw.hello().await;
    a.subscribe("t").await;
    gw.publish_api("t", serde_json::json!(1)).await;
    a.expect("message").await;
    let full = tokio_tungstenite::connect_async(gw.ws_url()).await;
    assert!(full.is_err(), "the third connection is refused: capacity");
    let (status, _) = gw
        .admin_post("/admin/drain-peer", r#"{"peer":"192.0.2.1"}"#)
        .await;
    assert_eq!(status, 202);

    let text_accept = "Accept: text/plain;version=0.0.4\r\n";
    let (status, text) = http(gw.admin, "GET", "/metrics", None, Some(text_accept)).await;
    assert_eq!(status, 200);
    let (_, open) = gw.admin_get("/metrics").await;
    assert!(open.ends_with("# EOF\n"), "OpenMetrics by default");
    for line in [
        r#"gateway_connections_total{outcome="accepted"} 2"#,
        r#"gateway_connections_total{outcome="capacity"} 1"#,
        r#"gateway_backend_up{backend="redis"} 1"#,
        "gateway_peer_drain_closes_total 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in {text}");
    }
    let build = text
        .lines()
        .find(|l| l.starts_with("gateway_build_info{"))
        .expect("gateway_build_info");
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
        "{build}"
    );
    assert!(
        build.contains("commit=\"") && build.ends_with("} 1"),
        "{build}"
    );
    let value = |name: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} in {text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(value("process_open_fds") > 0.0);
    assert!(value("process_max_fds") >= value("process_open_fds"));
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_cpu_seconds_total") >= 0.0);

    let Some(promtool) = promtool() else {
        // scripts/test.sh installs it; a bare `cargo test` on a machine without it says so.
        eprintln!("promtool not installed (Debian package prometheus): check skipped");
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is required in CI"
        );
        return;
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_and_never_hold_a_token() {
    let log = support::hostile::log_path("json");
    let operator = token_file("json-log", OPERATOR);
    let pod = support::hostile::start_logged(
        &[
            "--log-format",
            "json",
            "--admin-token-file",
            operator.to_str().unwrap(),
        ],
        "info",
        &log,
    );
    let admin: SocketAddr = ([127, 0, 0, 1], pod.admin).into();
    // A refused and an accepted call, so that the admin plane has logged what it logs.
    assert_eq!(
        call(admin, "POST", "/admin/undrain", Some("wrong")).await,
        401
    );
    assert_eq!(
        call(admin, "POST", "/admin/undrain", Some(OPERATOR)).await,
        200
    );
    pod.terminate();
    let deadline = std::time::Instant::now() + support::WAIT;
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains("gateway stopped") {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let _ = std::fs::remove_file(&log);
    let mut messages = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        messages.push(v["message"].as_str().unwrap_or_default().to_owned());
    }
    assert!(messages.iter().any(|m| m == "gateway listening"), "{text}");
    assert!(!text.contains(OPERATOR), "{text}");
}
