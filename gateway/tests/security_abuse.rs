//! Hostile clients against the abuse limits: frame and byte floods, per-address caps, slowloris,
//! handshake floods, the admin port, and client addresses claimed through PROXY v2 and
//! `X-Forwarded-For`. Every attack runs next to a well-behaved witness client that must keep
//! receiving its messages.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use gateway::abuse::encode_proxy_v2;
use serde_json::json;
use support::hostile::{
    Witness, admin_publish, read_until_closed, refusal, start_exposed, start_logged, tcp_from,
    ws_from, ws_over, ws_request,
};
use support::{Client, TestGateway, http};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_gateway");

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

#[tokio::test]
async fn a_frame_flood_is_rate_limited_then_closed_1008_while_others_keep_receiving() {
    let gw = TestGateway::with(|c| c.security.max_frame_rate = 20).await;
    let mut w = witness(&gw).await;
    let (mut flood, _) = gw.hello().await;
    // A well-behaved publisher on the same pod, under its own limit.
    let (mut publisher, _) = gw.hello().await;
    let feed = w.stream(40, Duration::from_millis(10));
    let polite = async {
        let mut seqs = Vec::new();
        for i in 0..10 {
            seqs.push(publisher.publish("witness", json!({"polite": i})).await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        seqs
    };
    let started = Instant::now();
    let attack = async {
        // 2,000 frames at once: 100 times the rate.
        for i in 0..2_000 {
            let frame = Message::text(json!({"type": "ping", "ref": i}).to_string());
            if flood.ws.feed(frame).await.is_err() {
                break;
            }
        }
        let _ = flood.ws.flush().await;
        let (mut pongs, mut limited) = (0, 0);
        loop {
            match support::hostile::frame_or_close(&mut flood).await {
                Ok(f) if f["type"] == "pong" => pongs += 1,
                Ok(f) if f["type"] == "error" && f["code"] == "rate_limited" => limited += 1,
                Ok(f) => panic!("unexpected {f}"),
                Err(closed) => return (pongs, limited, closed, started.elapsed()),
            }
        }
    };
    let (seqs, (pongs, limited, closed, took)) = tokio::join!(polite, attack);
    assert_eq!(closed.code, 1008);
    assert_eq!(
        closed.reason,
        json!({"reconnect": false, "error": "rate_limited"})
    );
    // The burst (two seconds' worth, less `hello`) passes, and what the rate refills while
    // the flood lasts; every other frame is answered `rate_limited` until more than
    // max(rate, 10) were dropped within 10 s.
    let refilled = (took.as_secs_f64() * 20.0).ceil() as usize;
    assert!(
        (39..=40 + refilled).contains(&pongs),
        "pongs: {pongs} in {took:?}"
    );
    assert_eq!(limited, 20, "rate_limited answers");
    assert_eq!(seqs.len(), 10);
    feed.await.unwrap();
    // The witness got every admin message and every polite publish, in order.
    let mut admin = Vec::new();
    let mut polite = Vec::new();
    while admin.len() < 40 || polite.len() < 10 {
        let m = w.client.expect("message").await;
        match m["data"].get("n") {
            Some(n) => admin.push(n.as_u64().unwrap()),
            None => polite.push(m["data"]["polite"].as_u64().unwrap()),
        }
    }
    assert_eq!(admin, (1..=40).collect::<Vec<_>>());
    assert_eq!(polite, (0..10).collect::<Vec<_>>());
    w.check().await;
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains(r#"gateway_closes_total{code="1008"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_publish_byte_flood_is_rate_limited_then_closed_1008() {
    let gw = TestGateway::with(|c| {
        c.max_message_size = 16 * 1024;
        c.security.max_publish_bytes_rate = 10_000;
    })
    .await;
    let mut w = witness(&gw).await;
    let (mut reader, _) = gw.hello().await;
    reader.subscribe("flood").await;
    let (mut flood, _) = gw.hello().await;
    let data = "x".repeat(12 * 1024);
    for i in 0..100 {
        let frame = json!({"type": "publish", "topic": "flood", "data": data, "ref": i});
        if flood
            .ws
            .feed(Message::text(frame.to_string()))
            .await
            .is_err()
        {
            break;
        }
    }
    let _ = flood.ws.flush().await;
    let (mut published, mut limited) = (0, Vec::new());
    let closed = loop {
        match support::hostile::frame_or_close(&mut flood).await {
            Ok(f) if f["type"] == "published" => published += 1,
            Ok(f) if f["code"] == "rate_limited" => limited.push(f["ref"].as_u64().unwrap()),
            Ok(f) => panic!("unexpected {f}"),
            Err(closed) => break closed,
        }
    };
    assert_eq!(closed.code, 1008);
    assert_eq!(closed.reason["error"], "rate_limited");
    assert!((1..=3).contains(&published), "published: {published}");
    assert_eq!(limited.len(), 10);
    assert!(limited.windows(2).all(|w| w[0] < w[1]), "{limited:?}");
    // Subscribers got exactly what was accepted, nothing that was dropped.
    assert_eq!(reader.messages(published).await.len(), published);
    reader.silent_for(Duration::from_millis(200)).await;
    w.check().await;
}

#[tokio::test]
async fn subscriptions_per_connection_are_capped_with_limit_reached() {
    let gw = TestGateway::with(|c| c.max_subscriptions = 5).await;
    let mut w = witness(&gw).await;
    let (mut a, _) = gw.hello().await;
    for i in 0..5 {
        a.subscribe(&format!("t{i}")).await;
    }
    for i in 5..50 {
        a.send(json!({"type": "subscribe", "topic": format!("t{i}"), "ref": i}))
            .await;
        let e = a.expect("error").await;
        assert_eq!(
            (e["code"].as_str(), e["ref"].as_u64()),
            (Some("limit_reached"), Some(i))
        );
    }
    w.check().await;
    a.send(json!({"type": "unsubscribe", "topic": "t0"})).await;
    a.expect("unsubscribed").await;
    a.subscribe("t5").await;
    w.check().await;
}

#[tokio::test]
async fn concurrent_connections_per_address_are_capped_with_429() {
    let gw = TestGateway::with(|c| c.security.max_conns_per_ip = 3).await;
    let mut w = witness_from(&gw, lo(2)).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(ws_from(lo(1), gw.public).await.expect("under the cap"));
    }
    for _ in 0..20 {
        let (status, retry, body) = refusal(ws_from(lo(1), gw.public).await);
        assert_eq!(
            (status, retry, body.as_str()),
            (429, Some(5), "ip_connections")
        );
    }
    w.check().await;
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains(r#"gateway_connections_total{outcome="ip_connections"} 20"#),
        "{metrics}"
    );
    // Other addresses are not affected.
    let (_c, _) = support::hostile::hello_on(
        ws_from(lo(3), gw.public).await.expect("another address"),
        None,
        json!({}),
    )
    .await
    .welcome();
    // One closes: its place frees up.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if ws_from(lo(1), gw.public).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the place was never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    w.check().await;
}

#[tokio::test]
async fn new_connections_per_address_are_rate_limited_with_429() {
    // 1/s with the minimum burst of 10.
    let gw = TestGateway::with(|c| c.security.max_new_conns_per_ip = 1).await;
    let mut w = witness_from(&gw, lo(2)).await;
    let (mut accepted, mut refused) = (0, 0);
    let started = Instant::now();
    for _ in 0..40 {
        match ws_from(lo(1), gw.public).await {
            Ok(_) => accepted += 1,
            Err(e) => {
                let (status, retry, body) = refusal(Err(e));
                assert_eq!((status, body.as_str()), (429, "ip_rate"));
                let retry = retry.expect("Retry-After");
                assert!((1..=2).contains(&retry), "Retry-After: {retry}");
                refused += 1;
            }
        }
    }
    // The burst, plus one per second the attempts took.
    let refilled = started.elapsed().as_secs() as usize + 1;
    assert!(
        (10..=10 + refilled).contains(&accepted),
        "accepted {accepted} in {:?}",
        started.elapsed()
    );
    assert_eq!(accepted + refused, 40);
    w.check().await;
    // Other addresses connect meanwhile.
    ws_from(lo(3), gw.public).await.expect("another address");
    w.check().await;
}

#[tokio::test]
async fn slowloris_sockets_are_dropped_after_the_header_timeout_while_clients_connect() {
    let log = support::hostile::log_path("slowloris");
    let pod = start_logged(&["--header-read-timeout", "1s"], "warn", &log);
    let _ = std::fs::remove_file(&log);
    let public: SocketAddr = ([127, 0, 0, 1], pod.port).into();
    let admin = pod.admin_addr();
    let mut w = Witness::join(&pod.url(), admin, None).await;
    let started = Instant::now();
    let mut stalled = Vec::new();
    // 400 send part of the request line and headers, then stall.
    for i in 0..400 {
        let mut s = TcpStream::connect(public).await.unwrap();
        let partial = format!("GET /ws HTTP/1.1\r\nHost: x\r\nX-Slow-{i}: ");
        s.write_all(partial.as_bytes()).await.unwrap();
        stalled.push(s);
    }
    // 50 send nothing at all.
    for _ in 0..50 {
        stalled.push(TcpStream::connect(public).await.unwrap());
    }
    // 25 finish one request on a keep-alive connection, then stall before the next.
    for _ in 0..25 {
        let mut s = TcpStream::connect(public).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /hea")
            .await
            .unwrap();
        stalled.push(s);
    }
    // 25 trickle one byte every 200 ms, forever.
    let mut tricklers = Vec::new();
    for _ in 0..25 {
        let mut s = TcpStream::connect(public).await.unwrap();
        tricklers.push(tokio::spawn(async move {
            let request = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n".repeat(100);
            for b in request {
                if s.write_all(&[b]).await.is_err() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            false
        }));
    }
    assert_eq!(stalled.len() + tricklers.len(), 500);
    // During the attack, normal clients connect, subscribe and receive.
    let mut late = Vec::new();
    for i in 0..10 {
        let c = Client::connect(&pod.url()).await;
        late.push(Witness::on_topic(c, admin, None, &format!("late-{i}")).await);
    }
    w.check().await;
    for c in &mut late {
        c.check().await;
    }
    let drops = stalled.iter_mut().map(|s| async move {
        read_until_closed(s, Duration::from_secs(10)).await;
    });
    futures_util::future::join_all(drops).await;
    for t in tricklers {
        let dropped = tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("trickler dropped in time")
            .unwrap();
        assert!(dropped, "a trickling socket outlived its whole request");
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "took {took:?}");
    // Still serving.
    w.check().await;
    let c = Client::connect(&pod.url()).await;
    let _ = support::hostile::hello_on(c, None, json!({}))
        .await
        .welcome();
    assert_eq!(
        http(public, "GET", "/healthz", None, None).await,
        (200, "ok".into())
    );
}

#[tokio::test]
async fn the_handshake_cap_answers_503_until_a_handshake_finishes() {
    let gw = TestGateway::with(|c| {
        c.security.max_handshakes = 3;
        c.handshake_timeout = Duration::from_secs(2);
    })
    .await;
    let mut w = witness(&gw).await;
    // Three upgraded sockets that never say hello hold every handshake place.
    let mut pending = Vec::new();
    for _ in 0..3 {
        pending.push(gw.client().await);
    }
    for _ in 0..10 {
        let (status, retry, body) = refusal(ws_from(lo(1), gw.public).await);
        assert_eq!((status, retry, body.as_str()), (503, Some(1), "handshakes"));
        w.check().await;
    }
    // One finishes its handshake: a place frees up.
    let first = pending.remove(0);
    let (_done, _) = support::hostile::hello_on(first, None, json!({}))
        .await
        .welcome();
    let fourth = gw.client().await;
    assert_eq!(refusal(ws_from(lo(1), gw.public).await).0, 503);
    // The stalled ones are closed when their hello time is up, freeing the rest.
    for mut c in pending.into_iter().chain([fourth]) {
        let closed = c.closed().await;
        assert_eq!(closed.code, 1008);
        assert_eq!(closed.reason["error"], "hello_timeout");
    }
    let (_c, _) = gw.hello().await;
    w.check().await;
}

#[test]
fn the_admin_port_refuses_to_start_exposed_without_a_token() {
    let public = test_support::free_port();
    let admin = test_support::free_port();
    for (args, env) in [
        (vec![format!("--admin-listen=0.0.0.0:{admin}")], None),
        (vec![format!("--admin-listen=[::]:{admin}")], None),
        (vec![], Some(format!("0.0.0.0:{admin}"))),
    ] {
        let mut cmd = Command::new(BIN);
        cmd.arg(format!("--listen=127.0.0.1:{public}")).args(&args);
        if let Some(addr) = &env {
            cmd.env("GATEWAY_ADMIN_LISTEN", addr);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{args:?} {env:?} started");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(
                "is not loopback: set --admin-token-file (GATEWAY_ADMIN_TOKEN_FILE), or \
                 --admin-insecure for development only"
            ),
            "{stderr}"
        );
    }
}

#[tokio::test]
async fn an_exposed_admin_port_starts_when_insecure_or_with_a_token_and_refuses_wrong_tokens() {
    let log = support::hostile::log_path("admin");
    let insecure = start_exposed("0.0.0.0", &["--admin-insecure"], "warn", &log);
    let admin: SocketAddr = ([127, 0, 0, 1], insecure.admin).into();
    assert_eq!(http(admin, "GET", "/metrics", None, None).await.0, 200);
    drop(insecure);

    let token = "admin-token-for-the-hostile-suite";
    let pod = start_exposed("0.0.0.0", &["--admin-token", token], "warn", &log);
    let _ = std::fs::remove_file(&log);
    let admin: SocketAddr = ([127, 0, 0, 1], pod.admin).into();
    let good = format!("Authorization: Bearer {token}\r\n");
    let mut w = Witness::join(&pod.url(), admin, None).await;
    w.admin_headers = Some(good.clone());
    let wrong = [
        String::new(),
        "Authorization: Bearer wrong\r\n".to_owned(),
        format!("Authorization: Bearer {token}x\r\n"),
        format!("Authorization: Bearer {}\r\n", &token[..token.len() - 1]),
        format!("Authorization: bearer {token}\r\n"),
        format!("Authorization: {token}\r\n"),
        format!("Authorization: Basic {token}\r\n"),
        "X-Gateway-Admin-Token: wrong\r\n".to_owned(),
        format!("X-Gateway-Admin-Token: {}\r\n", token.to_uppercase()),
    ];
    for headers in &wrong {
        for path in ["/metrics", "/admin/drain", "/scaler", "/admin/cluster"] {
            let (status, _) = http(admin, "GET", path, None, Some(headers)).await;
            assert_eq!(status, 401, "{path} with {headers:?}");
        }
        // A refused publish reaches nobody; a refused drain drains nothing.
        assert_eq!(
            admin_publish(admin, Some(headers), "witness", json!({"n": 0})).await,
            401
        );
        let (status, _) = http(admin, "POST", "/admin/drain", Some(""), Some(headers)).await;
        assert_eq!(status, 401);
        w.check().await;
    }
    let (status, _) = http(admin, "GET", "/metrics", None, Some(&good)).await;
    assert_eq!(status, 200);
    let (status, _) = http(
        admin,
        "GET",
        "/metrics",
        None,
        Some(&format!("X-Gateway-Admin-Token: {token}\r\n")),
    )
    .await;
    assert_eq!(status, 200);
    let (_, drain) = http(admin, "GET", "/admin/drain", None, Some(&good)).await;
    assert!(drain.contains(r#""draining":false"#), "{drain}");
}

/// A TCP connection from 127.0.0.1 to `--proxy-listen` that starts with a PROXY v2 header
/// claiming `client`.
async fn via_proxy(gw: &TestGateway, client: &str) -> TcpStream {
    let proxy = gw.proxy.expect("--proxy-listen");
    let mut tcp = tcp_from(lo(1), proxy).await;
    let header = encode_proxy_v2(Some((client.parse().unwrap(), proxy)));
    tcp.write_all(&header).await.unwrap();
    tcp
}

/// Behind a load balancer: PROXY v2 required on `--proxy-listen` from 127.0.0.1 only.
fn behind_proxy(c: &mut gateway::Config) {
    c.proxy_listen = Some("127.0.0.1:0".parse().unwrap());
    c.security.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    c.security.header_read_timeout = Duration::from_secs(1);
}

#[tokio::test]
async fn proxy_v2_client_addresses_are_counted_per_client() {
    let gw = TestGateway::with(|c| {
        behind_proxy(c);
        c.security.max_conns_per_ip = 2;
    })
    .await;
    let proxy = gw.proxy.unwrap();
    // The witness comes through the proxy too, as another client.
    let tcp = via_proxy(&gw, "198.51.100.9:40000").await;
    let mut w = Witness::on(ws_over(tcp, proxy).await.unwrap(), gw.admin, None).await;
    let mut held = Vec::new();
    for port in [40001, 40002] {
        let tcp = via_proxy(&gw, &format!("203.0.113.7:{port}")).await;
        held.push(ws_over(tcp, proxy).await.expect("under the cap"));
    }
    for port in 40003..40010 {
        let tcp = via_proxy(&gw, &format!("203.0.113.7:{port}")).await;
        let (status, retry, _) = refusal(ws_over(tcp, proxy).await);
        assert_eq!((status, retry), (429, Some(5)));
    }
    w.check().await;
    // The limit hit that client only: the proxy's own address and other clients still connect.
    for client in ["203.0.113.8:1", "[2001:db8::1]:2"] {
        let tcp = via_proxy(&gw, client).await;
        held.push(ws_over(tcp, proxy).await.expect("another client"));
    }
    let mut local = tcp_from(lo(1), proxy).await;
    local.write_all(&encode_proxy_v2(None)).await.unwrap();
    held.push(ws_over(local, proxy).await.expect("a LOCAL header"));
    // `--listen` never reads PROXY headers, even from the trusted proxy: a header there is
    // garbage to the HTTP server, so nobody can claim an address on it.
    let mut spoof = tcp_from(lo(1), gw.public).await;
    spoof
        .write_all(&encode_proxy_v2(Some((
            "198.51.100.77:1".parse().unwrap(),
            gw.public,
        ))))
        .await
        .unwrap();
    assert!(ws_over(spoof, gw.public).await.is_err());
    held.push(
        ws_from(lo(2), gw.public)
            .await
            .expect("a direct client, no header"),
    );
    // A peer that is not a trusted proxy is closed on `--proxy-listen` before a byte is read,
    // with a header or without.
    for header in [true, false] {
        let mut tcp = tcp_from(lo(2), proxy).await;
        if header {
            let claim = encode_proxy_v2(Some(("198.51.100.77:1".parse().unwrap(), proxy)));
            let _ = tcp.write_all(&claim).await;
        }
        let answer = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
        assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    }
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains(r#"gateway_connections_total{outcome="untrusted_proxy"} 2"#),
        "{metrics}"
    );
    w.check().await;
}

#[tokio::test]
async fn malformed_proxy_headers_close_the_socket() {
    let gw = TestGateway::with(behind_proxy).await;
    let proxy = gw.proxy.unwrap();
    let tcp = via_proxy(&gw, "198.51.100.9:40000").await;
    let mut w = Witness::on(ws_over(tcp, proxy).await.unwrap(), gw.admin, None).await;
    let good = encode_proxy_v2(Some(("203.0.113.7:1".parse().unwrap(), gw.public)));
    let with = |i: usize, b: u8| {
        let mut h = good.clone();
        h[i] = b;
        h
    };
    let mut long = good[..14].to_vec();
    long.extend(5_000u16.to_be_bytes());
    long.extend(vec![0u8; 5_000]);
    let mut short_block = good[..14].to_vec();
    short_block.extend(4u16.to_be_bytes());
    short_block.extend([203, 0, 113, 7]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "a version 1 text header",
            b"PROXY TCP4 203.0.113.7 127.0.0.1 1 2\r\nGET /ws HTTP/1.1\r\n\r\n".to_vec(),
        ),
        (
            "no header at all",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        ("a corrupted signature", with(5, b'X')),
        ("version 1 in the binary header", with(12, 0x11)),
        ("version 3", with(12, 0x31)),
        ("an unknown command", with(12, 0x2F)),
        ("an unknown family", with(13, 0x51)),
        ("an unknown transport", with(13, 0x1F)),
        ("a length above the maximum", long),
        ("an address block too short for IPv4", short_block),
        ("32 random bytes", (0..32).map(|_| rand::random()).collect()),
    ];
    for (what, bytes) in cases {
        let mut tcp = tcp_from(lo(1), proxy).await;
        tcp.write_all(&bytes).await.unwrap();
        let answer = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
        assert!(
            answer.is_empty(),
            "{what}: got {:?}",
            String::from_utf8_lossy(&answer)
        );
        w.check().await;
    }
    // Half a header, then silence: dropped at the header timeout.
    let stalls = [&good[..6], &good[..20], &good[..0]].map(|prefix| async move {
        let mut tcp = tcp_from(lo(1), proxy).await;
        tcp.write_all(prefix).await.unwrap();
        read_until_closed(&mut tcp, Duration::from_secs(5)).await
    });
    for answer in futures_util::future::join_all(stalls).await {
        assert!(answer.is_empty());
    }
    w.check().await;
}

#[tokio::test]
async fn x_forwarded_for_is_believed_only_from_trusted_proxies() {
    let gw = TestGateway::with(|c| {
        c.security.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        c.security.max_conns_per_ip = 2;
    })
    .await;
    let mut w = witness_from(&gw, lo(3)).await;
    let mut held = Vec::new();
    // From an untrusted peer, every forged header is ignored: all count as 127.0.0.2.
    for (i, xff) in ["1.1.1.1", "2.2.2.2", "3.3.3.3", "127.0.0.1"]
        .iter()
        .enumerate()
    {
        let tcp = tcp_from(lo(2), gw.public).await;
        let r = ws_request(tcp, gw.public, &[("x-forwarded-for", xff)]).await;
        if i < 2 {
            held.push(r.expect("under the cap"));
        } else {
            assert_eq!(refusal(r).0, 429, "{xff}");
        }
    }
    w.check().await;
    // From the trusted proxy, the rightmost untrusted entry is the client.
    for (xff, ok) in [
        ("9.9.9.9", true),
        ("6.6.6.6, 9.9.9.9", true),
        ("9.9.9.9, 127.0.0.1", false),
        ("9.9.9.9", false),
        ("8.8.8.8", true),
    ] {
        let tcp = tcp_from(lo(1), gw.public).await;
        let r = ws_request(tcp, gw.public, &[("x-forwarded-for", xff)]).await;
        if ok {
            held.push(r.expect(xff));
        } else {
            assert_eq!(refusal(r).0, 429, "{xff}");
        }
    }
    // An unreadable entry stops the walk at the last trusted hop: the proxy itself.
    for _ in 0..2 {
        let tcp = tcp_from(lo(1), gw.public).await;
        held.push(
            ws_request(tcp, gw.public, &[("x-forwarded-for", "9.9.9.9, garbage")])
                .await
                .expect("counted as the proxy"),
        );
    }
    let tcp = tcp_from(lo(1), gw.public).await;
    let r = ws_request(tcp, gw.public, &[("x-forwarded-for", "not-an-address")]).await;
    assert_eq!(refusal(r).0, 429);
    w.check().await;
}
