//! A raw WebSocket client that writes frames byte by byte (any header bits, its own masking,
//! any declared length) and reports what the server sent back.

use std::net::SocketAddr;

use base64::Engine;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::WAIT;

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// How a frame's payload length is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    /// The shortest form, matching the payload.
    Minimal,
    /// The 16-bit form, whatever the payload (non-minimal for short payloads).
    Forced16,
    /// The 64-bit form, whatever the payload.
    Forced64,
    /// The 64-bit form with this value, whatever the payload actually is (a lie).
    Declared(u64),
}

/// One frame, bit by bit.
#[derive(Debug, Clone)]
pub struct Frame {
    pub fin: bool,
    /// RSV1..3 as the low three bits.
    pub rsv: u8,
    pub opcode: u8,
    /// `None`: an unmasked client frame (a protocol violation).
    pub mask: Option<[u8; 4]>,
    pub payload: Vec<u8>,
    pub length: Length,
}

impl Frame {
    /// A well-formed, final, masked frame.
    pub fn new(opcode: u8, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            fin: true,
            rsv: 0,
            opcode,
            mask: Some(rand::random()),
            payload: payload.into(),
            length: Length::Minimal,
        }
    }

    pub fn text(text: impl Into<Vec<u8>>) -> Self {
        Self::new(OP_TEXT, text)
    }

    pub fn fin(mut self, fin: bool) -> Self {
        self.fin = fin;
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payload.len() + 14);
        out.push(u8::from(self.fin) << 7 | (self.rsv & 0x7) << 4 | (self.opcode & 0x0f));
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let len = self.payload.len() as u64;
        match self.length {
            Length::Minimal if len < 126 => out.push(mask_bit | len as u8),
            Length::Minimal if len <= 0xffff => {
                out.push(mask_bit | 126);
                out.extend((len as u16).to_be_bytes());
            }
            Length::Forced16 => {
                out.push(mask_bit | 126);
                out.extend((len as u16).to_be_bytes());
            }
            Length::Minimal | Length::Forced64 => {
                out.push(mask_bit | 127);
                out.extend(len.to_be_bytes());
            }
            Length::Declared(declared) => {
                out.push(mask_bit | 127);
                out.extend(declared.to_be_bytes());
            }
        }
        match self.mask {
            Some(mask) => {
                out.extend(mask);
                out.extend(
                    self.payload
                        .iter()
                        .enumerate()
                        .map(|(i, b)| b ^ mask[i % 4]),
                );
            }
            None => out.extend(&self.payload),
        }
        out
    }
}

/// What the server sent on a raw connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Text(Value),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// A close frame: its code (if any) and its reason.
    Close(Option<u16>, String),
    /// The socket was closed (EOF or reset).
    End,
}

/// A WebSocket client speaking raw bytes.
#[derive(Debug)]
pub struct RawWs {
    pub tcp: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// Opens `/ws` with a hand-written upgrade request.
    pub async fn connect(addr: SocketAddr) -> Self {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        let end = loop {
            let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
                .await
                .expect("upgrade response in time")
                .unwrap();
            assert!(n > 0, "closed during the upgrade");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        Self {
            tcp,
            buf: buf[end..].to_vec(),
        }
    }

    /// Writes bytes; `false` when the server has already closed the socket.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        self.tcp.write_all(bytes).await.is_ok()
    }

    pub async fn send_frame(&mut self, frame: &Frame) -> bool {
        self.send(&frame.encode()).await
    }

    pub async fn send_json(&mut self, v: Value) -> bool {
        self.send_frame(&Frame::text(v.to_string())).await
    }

    async fn fill(&mut self, need: usize, deadline: tokio::time::Instant) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        while self.buf.len() < need {
            match tokio::time::timeout_at(deadline, self.tcp.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return false,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => panic!("no frame from the server in time"),
            }
        }
        true
    }

    /// The next frame from the server (whole; the server never fragments).
    pub async fn next(&mut self) -> Incoming {
        let deadline = tokio::time::Instant::now() + WAIT;
        if !self.fill(2, deadline).await {
            return Incoming::End;
        }
        let (b0, b1) = (self.buf[0], self.buf[1]);
        assert_eq!(b1 & 0x80, 0, "the server masked a frame");
        let (len, header) = match b1 & 0x7f {
            126 => {
                if !self.fill(4, deadline).await {
                    return Incoming::End;
                }
                (
                    usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                    4,
                )
            }
            127 => {
                if !self.fill(10, deadline).await {
                    return Incoming::End;
                }
                let mut l = [0u8; 8];
                l.copy_from_slice(&self.buf[2..10]);
                (usize::try_from(u64::from_be_bytes(l)).unwrap(), 10)
            }
            n => (usize::from(n), 2),
        };
        if !self.fill(header + len, deadline).await {
            return Incoming::End;
        }
        let payload: Vec<u8> = self.buf.drain(..header + len).skip(header).collect();
        match b0 & 0x0f {
            OP_TEXT => Incoming::Text(
                serde_json::from_slice(&payload)
                    .unwrap_or_else(|e| panic!("server text is not JSON ({e})")),
            ),
            OP_BINARY => Incoming::Binary(payload),
            OP_PING => Incoming::Ping(payload),
            OP_PONG => Incoming::Pong(payload),
            OP_CLOSE => {
                if payload.len() >= 2 {
                    Incoming::Close(
                        Some(u16::from_be_bytes([payload[0], payload[1]])),
                        String::from_utf8_lossy(&payload[2..]).into_owned(),
                    )
                } else {
                    Incoming::Close(None, String::new())
                }
            }
            other => panic!("server sent opcode {other}"),
        }
    }

    /// The next frame that is not a server ping.
    pub async fn next_reply(&mut self) -> Incoming {
        loop {
            match self.next().await {
                Incoming::Ping(_) => continue,
                other => return other,
            }
        }
    }
}
