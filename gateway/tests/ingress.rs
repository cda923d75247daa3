//! The two public listeners as Kubernetes uses them: the kubelet probes `--listen` with plain
//! HTTP while HAProxy speaks PROXY v2 to `--proxy-listen`; only trusted peers may use the
//! latter; and `drain-peer` closes the tunnels of one HAProxy pod, paced, while the others'
//! clients keep receiving.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use gateway::abuse::encode_proxy_v2;
use serde_json::json;
use support::hostile::{Witness, read_until_closed, refusal, tcp_from, ws_from, ws_over};
use support::resuming::ResumingClient;
use support::{TestGateway, http};
use tokio::io::AsyncWriteExt;

const BIN: &str = env!("CARGO_BIN_EXE_gateway");

fn lo(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// As the base manifests configure a pod: PROXY v2 from the balancer's network on
/// `--proxy-listen`, where the kubelet's own address (here 127.0.0.1) is inside that network.
fn as_deployed(c: &mut gateway::Config) {
    c.proxy_listen = Some("127.0.0.1:0".parse().unwrap());
    c.security.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    c.security.header_read_timeout = Duration::from_secs(1);
}

/// A plain HTTP GET from `from`, as the kubelet sends it; `None` when the socket was closed
/// without an answer.
async fn probe(from: IpAddr, to: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut tcp = tcp_from(from, to).await;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n");
    let _ = tcp.write_all(request.as_bytes()).await;
    let answer = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.get(9..12)?.parse().ok()?;
    Some((status, text.split_once("\r\n\r\n")?.1.to_owned()))
}

#[tokio::test]
async fn kubelet_probes_answer_on_listen_while_the_proxy_listener_requires_proxy_v2() {
    let gw = TestGateway::with(as_deployed).await;
    let proxy = gw.proxy.unwrap();
    // The kubelet's address is in the trusted range, and still its probes are plain HTTP.
    for path in ["/healthz", "/readyz"] {
        let (status, _) = probe(lo(1), gw.public, path).await.expect("answered");
        assert_eq!(status, 200, "{path} on --listen");
    }
    // The same probe on the PROXY listener is closed unanswered: probes never go there.
    assert_eq!(probe(lo(1), proxy, "/healthz").await, None);
    // HAProxy's health check (`check-send-proxy`: a LOCAL header) is answered there.
    let mut check = tcp_from(lo(1), proxy).await;
    check.write_all(&encode_proxy_v2(None)).await.unwrap();
    let request = format!("GET /readyz HTTP/1.1\r\nHost: {proxy}\r\nConnection: close\r\n\r\n");
    check.write_all(request.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut check, Duration::from_secs(5)).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    // And clients through HAProxy reach /ws with their own address.
    let mut header = encode_proxy_v2(Some(("203.0.113.5:4000".parse().unwrap(), proxy)));
    let mut tcp = tcp_from(lo(1), proxy).await;
    tcp.write_all(&header).await.unwrap();
    let mut c = ws_over(tcp, proxy).await.expect("upgrade through PROXY v2");
    c.send(json!({"type": "hello"})).await;
    c.expect("welcome").await;
    // A PROXY header on --listen is garbage to the HTTP server, from any peer.
    header.extend(format!("GET /healthz HTTP/1.1\r\nHost: {proxy}\r\n\r\n").as_bytes());
    let mut tcp = tcp_from(lo(1), gw.public).await;
    tcp.write_all(&header).await.unwrap();
    let answer = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    assert!(!answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
}

#[tokio::test]
async fn the_client_address_comes_from_the_header_of_a_trusted_peer_only() {
    let gw = TestGateway::with(|c| {
        as_deployed(c);
        c.security.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        c.security.max_conns_per_ip = 1;
    })
    .await;
    let proxy = gw.proxy.unwrap();
    let through = |client: &'static str| async move {
        let mut tcp = tcp_from(lo(1), proxy).await;
        let header = encode_proxy_v2(Some((client.parse().unwrap(), proxy)));
        tcp.write_all(&header).await.unwrap();
        ws_over(tcp, proxy).await
    };
    // One connection per client address: two clients behind one proxy both get in...
    let _a = through("203.0.113.5:1").await.expect("first client");
    let _b = through("203.0.113.6:1").await.expect("another client");
    // ...and the cap applies to the address the header carried, not to the proxy.
    assert_eq!(refusal(through("203.0.113.5:2").await).0, 429);
    // An untrusted peer on the proxy listener is closed before a byte is read.
    let mut tcp = tcp_from(lo(2), proxy).await;
    let _ = tcp
        .write_all(&encode_proxy_v2(Some((
            "203.0.113.7:1".parse().unwrap(),
            proxy,
        ))))
        .await;
    assert!(
        read_until_closed(&mut tcp, Duration::from_secs(5))
            .await
            .is_empty()
    );
    // Refusals are counted under their own outcomes, never as connections.
    let (_, metrics) = gw.admin_get("/metrics").await;
    for line in [
        r#"gateway_connections_total{outcome="accepted"} 2"#,
        r#"gateway_connections_total{outcome="ip_connections"} 1"#,
        r#"gateway_connections_total{outcome="untrusted_proxy"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    assert_eq!(
        http(gw.public, "GET", "/healthz", None, None).await,
        (200, "ok".into())
    );
}

/// Runs the binary with `args` and `env`; its stderr, after asserting that it failed.
fn fails_to_start(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(BIN);
    cmd.args(["--listen=127.0.0.1:0", "--admin-listen=127.0.0.1:0"])
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "{args:?} {env:?} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn unsafe_proxy_settings_fail_the_start_naming_the_flag() {
    let removed = fails_to_start(&[], &[("GATEWAY_PROXY_PROTOCOL", "true")]);
    assert!(
        removed.contains("--proxy-protocol (GATEWAY_PROXY_PROTOCOL) was removed")
            && removed.contains("--proxy-listen"),
        "{removed}"
    );
    let removed = fails_to_start(&["--proxy-protocol"], &[]);
    assert!(removed.contains("was removed"), "{removed}");
    let untrusted = fails_to_start(&["--proxy-listen=127.0.0.1:0"], &[]);
    assert!(
        untrusted.contains("--proxy-listen needs --trusted-proxies"),
        "{untrusted}"
    );
    for everyone in ["0.0.0.0/0", "10.0.0.0/8,::/0"] {
        let err = fails_to_start(
            &["--proxy-listen=127.0.0.1:0"],
            &[("GATEWAY_TRUSTED_PROXIES", everyone)],
        );
        assert!(
            err.contains("--trusted-proxies") && err.contains("would trust every address"),
            "{err}"
        );
    }
}

/// Waits until `done` holds for every client's state; panics after 20 s.
async fn until_all(
    clients: &[ResumingClient],
    what: &str,
    done: impl Fn(&support::resuming::ClientState) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !clients.iter().all(|c| done(&c.snapshot())) {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn drain_peer_closes_only_that_peers_tunnels_and_their_clients_resume_losslessly() {
    let gw = TestGateway::with(|c| {
        as_deployed(c);
        c.drain_rate = 20;
    })
    .await;
    let url = gw.ws_url();
    // Five clients that came through "HAProxy A" (127.0.0.1) and reconnect through "B"
    // (127.0.0.3); a witness connected through "C" (127.0.0.2) must keep receiving.
    let clients: Vec<ResumingClient> = (0..5)
        .map(|_| ResumingClient::spawn_from(url.clone(), "feed", vec![lo(1), lo(3)]))
        .collect();
    let mut w = Witness::on(ws_from(lo(2), gw.public).await.unwrap(), gw.admin, None).await;
    until_all(&clients, "all connected", |s| s.connected).await;
    // A tunnel through the PROXY listener counts under the balancer's address, not the
    // client's: draining the client address closes nothing.
    let mut tunnel = tcp_from(lo(1), gw.proxy.unwrap()).await;
    let header = encode_proxy_v2(Some(("203.0.113.9:1".parse().unwrap(), gw.proxy.unwrap())));
    tunnel.write_all(&header).await.unwrap();
    let (mut tunnel, _) = support::hostile::hello_on(
        ws_over(tunnel, gw.proxy.unwrap()).await.unwrap(),
        None,
        json!({}),
    )
    .await
    .welcome();
    let body = r#"{"peer":"203.0.113.9"}"#;
    let (status, report) = http(gw.admin, "POST", "/admin/drain-peer", Some(body), None).await;
    assert_eq!(status, 202, "{report}");
    assert!(report.contains(r#""connections":0"#), "{report}");

    // Messages flow while A's tunnels are drained.
    let publisher = {
        let admin = gw.admin;
        tokio::spawn(async move {
            for n in 0..60 {
                let status =
                    support::hostile::admin_publish(admin, None, "feed", json!({"n": n})).await;
                assert_eq!(status, 200);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let out = tokio::process::Command::new(BIN)
        .args(["drain-peer", "--peer", "127.0.0.1", "--poll", "100ms"])
        .args(["--targets-from-dns", &gw.admin.to_string()])
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
        stdout.contains("drained 127.0.0.1 from 1 gateways"),
        "{stdout}"
    );
    publisher.await.unwrap();
    w.check().await;
    // The tunnel from A was closed with 1001 too; the witness was not.
    assert_eq!(tunnel.closed().await.code, 1001);
    until_all(&clients, "every message after the resume", |s| {
        s.connected && s.got.last() == Some(&60)
    })
    .await;
    for c in clients {
        let s = c.stop().await;
        assert_eq!(
            s.closes.iter().map(|(code, _)| *code).collect::<Vec<_>>(),
            vec![1001],
            "closed once, by the peer drain"
        );
        assert_eq!(s.unrecovered, 0);
        support::resuming::assert_complete(&s.got, 60);
    }
    // The pod's drain of the peer ends once it sees no connection from it left (it checks
    // every 20 ms), which may be just after the command saw 0.
    let mut report = String::new();
    for _ in 0..100 {
        report = http(
            gw.admin,
            "GET",
            "/admin/drain-peer?peer=127.0.0.1",
            None,
            None,
        )
        .await
        .1;
        if report.contains(r#""draining":false"#) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        report.contains(r#""connections":0"#) && report.contains(r#""draining":false"#),
        "{report}"
    );
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains("gateway_peer_drain_closes_total 6"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gateway_peer_drains_active 0"),
        "{metrics}"
    );
    // The pod itself was never draining.
    assert_eq!(
        http(gw.public, "GET", "/readyz", None, None).await,
        (200, "ready".into())
    );
    w.check().await;
}

#[tokio::test]
async fn behind_a_real_haproxy_with_send_proxy_v2_clients_count_as_themselves() {
    let gw = TestGateway::with(|c| {
        as_deployed(c);
        c.security.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        c.security.max_conns_per_ip = 1;
    })
    .await;
    let frontend = test_support::free_port();
    let proxy = gw.proxy.unwrap();
    // As deploy/haproxy/haproxy.cfg does it: PROXY v2 on the tunnels and on the health checks.
    let cfg = format!(
        "global\n  maxconn 200\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 60s\n  \
         timeout server 60s\n  timeout tunnel 1h\nfrontend fe\n  bind 127.0.0.1:{frontend}\n  \
         default_backend gw\nbackend gw\n  option httpchk GET /readyz\n  \
         server g {proxy} check inter 200ms fall 2 rise 1 send-proxy-v2 check-send-proxy\n"
    );
    let _haproxy = test_support::Haproxy::start(&cfg, frontend);
    let lb: SocketAddr = ([127, 0, 0, 1], frontend).into();
    let through = |from: u8| async move { ws_over(tcp_from(lo(from), lb).await, lb).await };
    // Until HAProxy's check has seen the server up.
    let deadline = tokio::time::Instant::now() + support::WAIT;
    let first = loop {
        match through(5).await {
            Ok(c) => break c,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // One connection per client address: the second from 127.0.0.5 is refused by the
    // gateway (it saw HAProxy's header), one from 127.0.0.6 is not.
    assert_eq!(refusal(through(5).await).0, 429);
    let second = through(6).await.expect("another client address");
    let (mut first, _) = support::hostile::hello_on(first, None, json!({}))
        .await
        .welcome();
    let (mut second, _) = support::hostile::hello_on(second, None, json!({}))
        .await
        .welcome();
    // Both tunnels come from HAProxy's own address: draining it closes both with 1001.
    let body = r#"{"peer":"127.0.0.1"}"#;
    assert_eq!(
        http(gw.admin, "POST", "/admin/drain-peer", Some(body), None)
            .await
            .0,
        202
    );
    assert_eq!(first.closed().await.code, 1001);
    assert_eq!(second.closed().await.code, 1001);
}
