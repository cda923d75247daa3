//! Client addresses claimed by the transport: PROXY v2 headers on `--proxy-listen` (counted per
//! client, malformed ones closed) and `X-Forwarded-For`, believed only from trusted proxies.

use std::time::Duration;

use gateway::abuse::encode_proxy_v2;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{lo, witness_from};
use crate::support::TestGateway;
use crate::support::hostile::{
    Witness, read_until_closed, refusal, tcp_from, ws_from, ws_over, ws_request,
};

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
