//! The client's address behind trusted proxies (`X-Forwarded-For`).

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

use super::ip::canonical;

/// Parses one `--trusted-proxies` entry: a CIDR (`10.0.0.0/8`) or a single address.
pub fn parse_trusted_proxy(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not an IP address or CIDR (e.g. 10.0.0.0/8)"))
}

fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    proxies.iter().any(|net| net.contains(&ip))
}

/// Hops of `X-Forwarded-For` read at most.
const MAX_HOPS: usize = 32;

/// The client's address: the socket peer, unless the peer is a trusted proxy; then the
/// rightmost `X-Forwarded-For` hop that is not itself a trusted proxy (hops left of it could
/// have been written by anyone). An unreadable hop stops the walk at the last trusted one.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted_proxies: &[IpNet]) -> IpAddr {
    let mut client = canonical(peer.ip());
    if !trusted(client, trusted_proxies) {
        return client;
    }
    let values: Vec<_> = headers.get_all("x-forwarded-for").iter().collect();
    let hops = values
        .iter()
        .rev()
        .flat_map(|v| match v.to_str() {
            Ok(s) => s.rsplit(',').map(Some).collect::<Vec<_>>(),
            Err(_) => vec![None],
        })
        .take(MAX_HOPS);
    for hop in hops {
        let Some(ip) = hop.and_then(parse_hop) else {
            return client;
        };
        client = ip;
        if !trusted(ip, trusted_proxies) {
            return ip;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: `1.2.3.4`, `2001:db8::1`, `1.2.3.4:80` or `[2001:db8::1]:80`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn proxies() -> Vec<IpNet> {
        ["10.0.0.0/8", "2001:db8:ffff::/48", "192.0.2.254"]
            .iter()
            .map(|s| parse_trusted_proxy(s).unwrap())
            .collect()
    }

    fn peer(s: &str) -> SocketAddr {
        SocketAddr::new(ip(s), 40000)
    }

    #[test]
    fn forwarded_for_is_only_honoured_from_trusted_proxies() {
        let p = proxies();
        // An untrusted peer's header is ignored.
        let h = xff(&["203.0.113.5"]);
        assert_eq!(client_ip(peer("198.51.100.1"), &h, &p), ip("198.51.100.1"));
        // A trusted peer: the hop it saw.
        assert_eq!(client_ip(peer("10.1.2.3"), &h, &p), ip("203.0.113.5"));
        assert_eq!(client_ip(peer("192.0.2.254"), &h, &p), ip("203.0.113.5"));
        // No header: the proxy itself.
        assert_eq!(
            client_ip(peer("10.1.2.3"), &HeaderMap::new(), &p),
            ip("10.1.2.3")
        );
        // Without trusted proxies nothing is honoured.
        assert_eq!(client_ip(peer("10.1.2.3"), &h, &[]), ip("10.1.2.3"));
    }

    #[test]
    fn the_rightmost_untrusted_hop_wins() {
        let p = proxies();
        // The client forged a first entry; the chain of proxies appended the real one.
        let h = xff(&["1.1.1.1, 203.0.113.5, 10.9.9.9"]);
        assert_eq!(client_ip(peer("10.0.0.1"), &h, &p), ip("203.0.113.5"));
        // Several header lines count as one list, in order.
        let h = xff(&["1.1.1.1", "203.0.113.5", "10.9.9.9"]);
        assert_eq!(client_ip(peer("10.0.0.1"), &h, &p), ip("203.0.113.5"));
        // Every hop trusted: the leftmost.
        let h = xff(&["10.3.3.3, 10.2.2.2"]);
        assert_eq!(client_ip(peer("10.0.0.1"), &h, &p), ip("10.3.3.3"));
        // Ports, brackets, spaces and IPv6.
        let h = xff(&["[2001:db8::7]:443 , 10.2.2.2:80"]);
        assert_eq!(client_ip(peer("10.0.0.1"), &h, &p), ip("2001:db8::7"));
        let h = xff(&["2001:db8::8"]);
        assert_eq!(
            client_ip(peer("2001:db8:ffff:1::1"), &h, &p),
            ip("2001:db8::8")
        );
        // A mapped peer address is a trusted IPv4 proxy.
        let h = xff(&["203.0.113.5"]);
        assert_eq!(
            client_ip(peer("::ffff:10.0.0.1"), &h, &p),
            ip("203.0.113.5")
        );
    }

    #[test]
    fn garbage_stops_at_the_last_trusted_hop() {
        let p = proxies();
        let h = xff(&["203.0.113.5, garbage, 10.2.2.2"]);
        assert_eq!(client_ip(peer("10.0.0.1"), &h, &p), ip("10.2.2.2"));
        let h = xff(&["unknown"]);
        assert_eq!(client_ip(peer("10.0.0.1"), &h, &p), ip("10.0.0.1"));
        let h = xff(&[""]);
        assert_eq!(client_ip(peer("10.0.0.1"), &h, &p), ip("10.0.0.1"));
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        );
        assert_eq!(client_ip(peer("10.0.0.1"), &h, &p), ip("10.0.0.1"));
    }

    #[test]
    fn long_chains_are_bounded() {
        let p = proxies();
        let chain = vec!["10.1.1.1"; 1000].join(",");
        let h = xff(&[&format!("203.0.113.5,{chain}")]);
        // Past MAX_HOPS trusted hops the walk stops at the last one read.
        assert_eq!(client_ip(peer("10.0.0.1"), &h, &p), ip("10.1.1.1"));
    }

    #[test]
    fn trusted_proxy_entries_parse() {
        assert_eq!(
            parse_trusted_proxy("10.0.0.0/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            parse_trusted_proxy(" 192.0.2.1 ").unwrap().to_string(),
            "192.0.2.1/32"
        );
        assert_eq!(parse_trusted_proxy("::1").unwrap().to_string(), "::1/128");
        assert!(parse_trusted_proxy("10.0.0.0/33").is_err());
        assert!(parse_trusted_proxy("proxy.local").is_err());
    }

    proptest! {
        #[test]
        fn client_ip_never_panics_and_ignores_untrusted_peers(
            header in "[ -~]{0,200}",
            a in any::<u32>(),
        ) {
            let p = proxies();
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&header) {
                h.append("x-forwarded-for", v);
            }
            let untrusted = IpAddr::from(std::net::Ipv4Addr::from(a | 0x8000_0000)); // never in 10/8 or 192.0.2.254
            prop_assume!(!trusted(untrusted, &p));
            prop_assert_eq!(client_ip(SocketAddr::new(untrusted, 1), &h, &p), untrusted);
            let _ = client_ip(peer("10.0.0.1"), &h, &p);
        }
    }
}
