//! HAProxy's PROXY protocol, version 2 (binary): the client address a trusted load balancer
//! prepends to a TCP connection (`send-proxy-v2`).
//!
//! Only read it from trusted proxies: anyone else could claim any address. A header is
//! `signature (12) | version-command (1) | family-transport (1) | length (2, big-endian) |
//! addresses and TLVs (length)`; TLVs are skipped.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12 bytes every v2 header starts with.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Fixed part of a header.
const FIXED: usize = 16;

/// Longest address-and-TLV block accepted (HAProxy's TLVs are far smaller).
pub const MAX_PAYLOAD: usize = 4096;

/// A parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The client's address; `None` for `LOCAL` (the proxy's own health check) and for
    /// unspecified or Unix-socket families: then the socket peer stands.
    pub source: Option<SocketAddr>,
    pub destination: Option<SocketAddr>,
    /// Bytes the header takes at the start of the stream.
    pub len: usize,
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("not a PROXY protocol v2 header")]
    NotProxy,
    #[error("unsupported PROXY protocol version {0}")]
    Version(u8),
    #[error("unknown PROXY command {0}")]
    Command(u8),
    #[error("unknown PROXY address family/transport 0x{0:02x}")]
    Family(u8),
    #[error("PROXY address block too short for its family")]
    Truncated,
    #[error("PROXY header payload of {0} bytes is too long")]
    TooLong(usize),
    #[error("reading the PROXY header: {0}")]
    Io(String),
}

/// Parses a header at the start of `buf`: `Ok(None)` while `buf` is a valid but incomplete
/// prefix (read more), `Err` as soon as it cannot be one.
pub fn parse_proxy_v2(buf: &[u8]) -> Result<Option<ProxyHeader>, ProxyError> {
    let n = buf.len().min(SIGNATURE.len());
    if buf[..n] != SIGNATURE[..n] {
        return Err(ProxyError::NotProxy);
    }
    if buf.len() < FIXED {
        return Ok(None);
    }
    let version = buf[12] >> 4;
    let command = buf[12] & 0x0f;
    if version != 2 {
        return Err(ProxyError::Version(version));
    }
    if command > 1 {
        return Err(ProxyError::Command(command));
    }
    let family = buf[13];
    let payload = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if payload > MAX_PAYLOAD {
        return Err(ProxyError::TooLong(payload));
    }
    let len = FIXED + payload;
    let Some(block) = buf.get(FIXED..len) else {
        return Ok(None);
    };
    if family >> 4 > 3 || family & 0x0f > 2 {
        return Err(ProxyError::Family(family));
    }
    let local = ProxyHeader {
        source: None,
        destination: None,
        len,
    };
    if command == 0 {
        return Ok(Some(local));
    }
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    let (source, destination) = match family >> 4 {
        // AF_INET: src 4, dst 4, src port 2, dst port 2.
        1 => {
            let b = block.get(..12).ok_or(ProxyError::Truncated)?;
            let src = Ipv4Addr::from(<[u8; 4]>::try_from(&b[0..4]).unwrap_or_default());
            let dst = Ipv4Addr::from(<[u8; 4]>::try_from(&b[4..8]).unwrap_or_default());
            (
                SocketAddr::new(IpAddr::V4(src), port(&b[8..10])),
                SocketAddr::new(IpAddr::V4(dst), port(&b[10..12])),
            )
        }
        // AF_INET6: src 16, dst 16, src port 2, dst port 2.
        2 => {
            let b = block.get(..36).ok_or(ProxyError::Truncated)?;
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&b[0..16]).unwrap_or_default());
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&b[16..32]).unwrap_or_default());
            (
                SocketAddr::new(IpAddr::V6(src), port(&b[32..34])),
                SocketAddr::new(IpAddr::V6(dst), port(&b[34..36])),
            )
        }
        // AF_UNSPEC or AF_UNIX: no IP address to use.
        _ => return Ok(Some(local)),
    };
    Ok(Some(ProxyHeader {
        source: Some(source),
        destination: Some(destination),
        len,
    }))
}

/// Reads exactly one header from `reader` (nothing after it). Bound the call with a timeout:
/// a peer that sends nothing would otherwise hold it forever.
pub async fn read_proxy_v2<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<ProxyHeader, ProxyError> {
    let io = |e: std::io::Error| ProxyError::Io(e.to_string());
    let mut buf = vec![0u8; FIXED];
    // Byte by byte up to the signature's end, so a non-PROXY stream fails at its first byte.
    for i in 0..SIGNATURE.len() {
        reader.read_exact(&mut buf[i..=i]).await.map_err(io)?;
        parse_proxy_v2(&buf[..=i])?;
    }
    reader
        .read_exact(&mut buf[SIGNATURE.len()..])
        .await
        .map_err(io)?;
    if let Some(header) = parse_proxy_v2(&buf)? {
        return Ok(header);
    }
    let payload = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    buf.resize(FIXED + payload, 0);
    reader.read_exact(&mut buf[FIXED..]).await.map_err(io)?;
    parse_proxy_v2(&buf)?.ok_or(ProxyError::Truncated)
}

/// Encodes a `PROXY` header for `source` → `destination` (both of one IP family), or a `LOCAL`
/// header without addresses. For tests and tools.
pub fn encode_proxy_v2(addresses: Option<(SocketAddr, SocketAddr)>) -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    let mut block = Vec::new();
    let family = match addresses {
        None => {
            out.push(0x20);
            0x00
        }
        Some((src, dst)) => {
            out.push(0x21);
            match (src.ip(), dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    block.extend(s.octets());
                    block.extend(d.octets());
                    block.extend(src.port().to_be_bytes());
                    block.extend(dst.port().to_be_bytes());
                    0x11
                }
                (s, d) => {
                    let v6 = |ip: IpAddr| match ip {
                        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                        IpAddr::V6(v6) => v6,
                    };
                    block.extend(v6(s).octets());
                    block.extend(v6(d).octets());
                    block.extend(src.port().to_be_bytes());
                    block.extend(dst.port().to_be_bytes());
                    0x21
                }
            }
        }
    };
    out.push(family);
    out.extend((block.len() as u16).to_be_bytes());
    out.extend(block);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_and_ipv6_headers_parse() {
        let h = encode_proxy_v2(Some((sa("203.0.113.5:51000"), sa("10.0.0.2:8080"))));
        assert_eq!(h.len(), 28);
        let mut stream = h.clone();
        stream.extend(b"GET /ws HTTP/1.1\r\n");
        let parsed = parse_proxy_v2(&stream).unwrap().unwrap();
        assert_eq!(parsed.source, Some(sa("203.0.113.5:51000")));
        assert_eq!(parsed.destination, Some(sa("10.0.0.2:8080")));
        assert_eq!(parsed.len, 28);
        assert_eq!(&stream[parsed.len..], b"GET /ws HTTP/1.1\r\n");

        let h = encode_proxy_v2(Some((sa("[2001:db8::5]:443"), sa("[2001:db8::1]:8080"))));
        let parsed = parse_proxy_v2(&h).unwrap().unwrap();
        assert_eq!(parsed.source, Some(sa("[2001:db8::5]:443")));
        assert_eq!(parsed.len, 52);
    }

    #[test]
    fn local_and_unspecified_carry_no_address() {
        let h = encode_proxy_v2(None);
        let parsed = parse_proxy_v2(&h).unwrap().unwrap();
        assert_eq!(parsed.source, None);
        assert_eq!(parsed.len, 16);
        // PROXY over AF_UNIX: 216 bytes of paths, no IP.
        let mut h = SIGNATURE.to_vec();
        h.extend([0x21, 0x31, 0, 216]);
        h.extend([0u8; 216]);
        let parsed = parse_proxy_v2(&h).unwrap().unwrap();
        assert_eq!(parsed.source, None);
        assert_eq!(parsed.len, 232);
    }

    #[test]
    fn tlvs_are_skipped() {
        let mut h = encode_proxy_v2(Some((sa("198.51.100.1:1"), sa("10.0.0.1:2"))));
        // Append a TLV (type 0x05 unique id, 3 bytes) and fix the length.
        h.extend([0x05, 0x00, 0x03, b'a', b'b', b'c']);
        let len = (h.len() - FIXED) as u16;
        h[14..16].copy_from_slice(&len.to_be_bytes());
        let parsed = parse_proxy_v2(&h).unwrap().unwrap();
        assert_eq!(parsed.source, Some(sa("198.51.100.1:1")));
        assert_eq!(parsed.len, h.len());
    }

    #[test]
    fn incomplete_prefixes_ask_for_more() {
        let h = encode_proxy_v2(Some((sa("203.0.113.5:51000"), sa("10.0.0.2:8080"))));
        for n in 0..h.len() {
            assert_eq!(parse_proxy_v2(&h[..n]), Ok(None), "prefix of {n}");
        }
    }

    #[test]
    fn malformed_headers_are_refused() {
        assert_eq!(
            parse_proxy_v2(b"GET / HTTP/1.1\r\n"),
            Err(ProxyError::NotProxy)
        );
        assert_eq!(parse_proxy_v2(b"\r\n\r\nX"), Err(ProxyError::NotProxy));
        // PROXY protocol v1 (text) is not v2.
        assert_eq!(
            parse_proxy_v2(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
            Err(ProxyError::NotProxy)
        );
        let good = encode_proxy_v2(Some((sa("203.0.113.5:1"), sa("10.0.0.2:2"))));
        let with = |i: usize, b: u8| {
            let mut h = good.clone();
            h[i] = b;
            h
        };
        assert_eq!(parse_proxy_v2(&with(12, 0x11)), Err(ProxyError::Version(1)));
        assert_eq!(parse_proxy_v2(&with(12, 0x22)), Err(ProxyError::Command(2)));
        assert_eq!(
            parse_proxy_v2(&with(13, 0x41)),
            Err(ProxyError::Family(0x41))
        );
        assert_eq!(
            parse_proxy_v2(&with(13, 0x13)),
            Err(ProxyError::Family(0x13))
        );
        // Family INET6 with an INET-sized block.
        assert_eq!(parse_proxy_v2(&with(13, 0x21)), Err(ProxyError::Truncated));
        // A declared length above the cap fails before anything is buffered.
        let mut huge = good[..16].to_vec();
        huge[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(
            parse_proxy_v2(&huge),
            Err(ProxyError::TooLong(u16::MAX as usize))
        );
    }

    #[tokio::test]
    async fn reading_from_a_stream_consumes_only_the_header() {
        let mut data = encode_proxy_v2(Some((sa("203.0.113.5:51000"), sa("10.0.0.2:8080"))));
        data.extend(b"GET /ws");
        let mut reader = &data[..];
        let h = read_proxy_v2(&mut reader).await.unwrap();
        assert_eq!(h.source, Some(sa("203.0.113.5:51000")));
        assert_eq!(reader, b"GET /ws");

        let local = encode_proxy_v2(None);
        let mut reader = &local[..];
        assert_eq!(read_proxy_v2(&mut reader).await.unwrap().source, None);

        // Not PROXY: fails at the first byte, without waiting for 16.
        let mut reader = &b"G"[..];
        assert_eq!(read_proxy_v2(&mut reader).await, Err(ProxyError::NotProxy));
        // Cut short.
        let mut reader = &data[..20];
        assert!(matches!(
            read_proxy_v2(&mut reader).await,
            Err(ProxyError::Io(_))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            if let Ok(Some(h)) = parse_proxy_v2(&bytes) {
                prop_assert!(h.len <= bytes.len());
            }
        }

        #[test]
        fn arbitrary_tails_after_a_signature_never_panic(
            tail in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            let mut bytes = SIGNATURE.to_vec();
            bytes.extend(tail);
            if let Ok(Some(h)) = parse_proxy_v2(&bytes) {
                prop_assert!(h.len >= FIXED && h.len <= bytes.len());
            }
        }

        #[test]
        fn encoded_addresses_round_trip(a in any::<[u8; 4]>(), p in any::<u16>(), v6 in any::<[u8; 16]>()) {
            let src = SocketAddr::new(IpAddr::from(a), p);
            let dst = sa("10.0.0.1:80");
            let h = parse_proxy_v2(&encode_proxy_v2(Some((src, dst)))).unwrap().unwrap();
            prop_assert_eq!(h.source, Some(src));
            let src = SocketAddr::new(IpAddr::from(v6), p);
            let dst = sa("[::1]:80");
            let h = parse_proxy_v2(&encode_proxy_v2(Some((src, dst)))).unwrap().unwrap();
            prop_assert_eq!(h.source, Some(src));
        }
    }
}
