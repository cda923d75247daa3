//! Malformed input: a raw WebSocket client writes thousands of broken, hostile and random frames
//! (bad UTF-8, reserved opcodes and bits, unmasked frames, lying lengths, fragmented control
//! frames, stray continuations, JSON bombs) to a running gateway process and checks the designed
//! answer to every one of them, while a witness keeps receiving and the process stays alive
//! with bounded memory. Plus a property test of the frame decoder over arbitrary JSON values.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use proptest::prelude::*;
use protocol::client::{ClientFrame, DecodeError, decode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use support::hostile::{
    Frame, Incoming, Length, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, RawWs,
    Witness, granting, hs256, log_path, secret_file, start_logged,
};
use support::http;
use tokio::io::AsyncWriteExt;

/// The largest message the gateway under attack reads (large enough for 100k-deep JSON): a
/// publish of its largest payload, `--max-message-size`, with room for the rest of the frame.
const MAX: usize = 256 * 1024;
/// `--max-message-size` of the gateway under attack.
const MAX_PAYLOAD: usize = MAX - gateway::sizes::CLIENT_FRAME_ROOM;

/// What the gateway must answer to one frame.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    /// Nothing yet: a fragment of an unfinished message.
    Pending,
    /// An `error` frame with this code; the connection stays open.
    Error(&'static str),
    /// A JSON reply of this type.
    Reply(&'static str),
    /// A WebSocket pong echoing this payload.
    WsPong(Vec<u8>),
    /// No answer at all.
    Nothing,
    /// The gateway closes with this code and, when given, this `error` in its JSON reason.
    Close(u16, Option<&'static str>),
    /// The client closed: the gateway echoes its close frame (code, or none for an empty one).
    Echo(Option<u16>),
}

impl Expect {
    fn is_final(&self) -> bool {
        matches!(self, Expect::Close(..) | Expect::Echo(_))
    }
}

/// The designed answer to a complete text message, from the protocol's own decoder.
fn answer_to_text(text: &str) -> Expect {
    match decode(text) {
        Err(e) => Expect::Error(e.code().as_str()),
        Ok(ClientFrame::Ping { .. }) => Expect::Reply("pong"),
        // After `hello`: a second one is a bad request.
        Ok(ClientFrame::Hello { .. }) => Expect::Error("bad_request"),
        // The fuzzer never subscribes, and its tokens are never valid.
        Ok(ClientFrame::Unsubscribe { .. }) => Expect::Error("not_subscribed"),
        Ok(ClientFrame::Refresh { .. }) => Expect::Error("unauthorized"),
        Ok(ClientFrame::Subscribe { .. }) => Expect::Reply("subscribed"),
        Ok(ClientFrame::Publish { data, .. }) if data.len() > MAX_PAYLOAD => {
            Expect::Error("too_large")
        }
        Ok(ClientFrame::Publish { .. }) => Expect::Reply("published"),
        Ok(ClientFrame::History { .. }) => Expect::Reply("history"),
        // Presence is off in these gateways.
        Ok(ClientFrame::Presence { .. } | ClientFrame::PresenceStats { .. }) => {
            Expect::Error("bad_request")
        }
        // This gateway has no --hook-url: rpc is a bad request.
        Ok(ClientFrame::Rpc { .. }) => Expect::Error("bad_request"),
    }
}

fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999)
}

/// The server's view of one connection, as RFC 6455 and the gateway's design say it must be.
#[derive(Debug, Default)]
struct Model {
    /// An unfinished fragmented message: whether it is text, and its bytes so far.
    incomplete: Option<(bool, Vec<u8>)>,
}

fn invalid_utf8_so_far(bytes: &[u8]) -> bool {
    matches!(std::str::from_utf8(bytes), Err(e) if e.error_len().is_some())
}

impl Model {
    fn frame(&mut self, f: &Frame) -> Expect {
        let protocol = Expect::Close(1002, Some("protocol_error"));
        if matches!(f.opcode, 3..=7 | 11..=15) {
            return protocol;
        }
        let declared = match f.length {
            Length::Declared(d) => d,
            _ => f.payload.len() as u64,
        };
        if declared > MAX as u64 {
            return Expect::Close(1009, Some("too_large"));
        }
        assert_eq!(
            declared,
            f.payload.len() as u64,
            "only oversize lengths may lie"
        );
        if f.mask.is_none() || f.rsv != 0 {
            return protocol;
        }
        let p = &f.payload;
        match f.opcode {
            OP_CLOSE | OP_PING | OP_PONG if !f.fin || p.len() > 125 => protocol,
            OP_CLOSE => match p.len() {
                0 => Expect::Echo(None),
                1 => protocol,
                _ if std::str::from_utf8(&p[2..]).is_err() => {
                    Expect::Close(1007, Some("invalid_utf8"))
                }
                _ => {
                    let code = u16::from_be_bytes([p[0], p[1]]);
                    Expect::Echo(Some(if close_code_allowed(code) { code } else { 1002 }))
                }
            },
            OP_PING => Expect::WsPong(p.clone()),
            // Mid-message nothing can be sent to check the silence: the next reply will do.
            OP_PONG if self.incomplete.is_some() => Expect::Pending,
            OP_PONG => Expect::Nothing,
            OP_CONT => {
                let Some((text, mut bytes)) = self.incomplete.take() else {
                    return protocol;
                };
                bytes.extend_from_slice(p);
                self.progress(text, bytes, f.fin)
            }
            _ => {
                if self.incomplete.is_some() {
                    return protocol;
                }
                self.progress(f.opcode == OP_TEXT, p.clone(), f.fin)
            }
        }
    }

    fn progress(&mut self, text: bool, bytes: Vec<u8>, fin: bool) -> Expect {
        if bytes.len() > MAX {
            return Expect::Close(1009, Some("too_large"));
        }
        if text && invalid_utf8_so_far(&bytes) {
            return Expect::Close(1007, Some("invalid_utf8"));
        }
        if !fin {
            self.incomplete = Some((text, bytes));
            return Expect::Pending;
        }
        if !text {
            return Expect::Error("bad_request");
        }
        match String::from_utf8(bytes) {
            Ok(s) => answer_to_text(&s),
            Err(_) => Expect::Close(1007, Some("invalid_utf8")),
        }
    }
}

/// Counts of what was sent and answered, for the summary.
#[derive(Debug, Default)]
struct Tally {
    frames: usize,
    connections: usize,
    answers: BTreeMap<String, usize>,
}

impl Tally {
    fn count(&mut self, e: &Expect) {
        let key = match e {
            Expect::Error(c) => format!("error {c}"),
            Expect::Reply(t) => format!("reply {t}"),
            Expect::Close(c, _) => format!("close {c}"),
            Expect::Echo(c) => format!("close echoed {c:?}"),
            other => format!("{other:?}").split('(').next().unwrap().to_owned(),
        };
        *self.answers.entry(key).or_default() += 1;
    }
}

/// Checks the answer to one frame; `false` once the connection is over.
async fn check(ws: &mut RawWs, expect: &Expect, what: &str, sync: &mut u64) -> bool {
    match expect {
        Expect::Pending => true,
        Expect::Nothing => {
            *sync += 1;
            ws.send_json(json!({"type": "ping", "ref": *sync})).await;
            match ws.next_reply().await {
                Incoming::Text(v) if v["type"] == "pong" && v["ref"] == *sync => true,
                other => panic!("{what}: expected no answer, then our pong; got {other:?}"),
            }
        }
        Expect::Error(code) => match ws.next_reply().await {
            Incoming::Text(v) if v["type"] == "error" && v["code"] == *code => true,
            other => panic!("{what}: expected error {code}, got {other:?}"),
        },
        Expect::Reply(kind) => match ws.next_reply().await {
            Incoming::Text(v) if v["type"] == *kind => true,
            other => panic!("{what}: expected {kind}, got {other:?}"),
        },
        Expect::WsPong(payload) => match ws.next_reply().await {
            Incoming::Pong(p) if p == *payload => true,
            other => panic!("{what}: expected a pong, got {other:?}"),
        },
        Expect::Close(code, error) => {
            match ws.next_reply().await {
                Incoming::Close(Some(c), reason) if c == *code => {
                    if let Some(error) = error {
                        let advice: Value = serde_json::from_str(&reason)
                            .unwrap_or_else(|_| panic!("{what}: reason {reason:?}"));
                        assert_eq!(advice["error"], *error, "{what}");
                        assert_eq!(advice["reconnect"], false, "{what}");
                    }
                }
                other => panic!("{what}: expected close {code}, got {other:?}"),
            }
            // Our side of the closing handshake: end the stream.
            let _ = ws.tcp.shutdown().await;
            assert_eq!(
                ws.next().await,
                Incoming::End,
                "{what}: open after the close"
            );
            false
        }
        Expect::Echo(code) => {
            match ws.next_reply().await {
                Incoming::Close(c, _) if c == *code => {}
                other => panic!("{what}: expected the close echoed ({code:?}), got {other:?}"),
            }
            assert_eq!(
                ws.next().await,
                Incoming::End,
                "{what}: open after the close"
            );
            false
        }
    }
}

/// Sends `frames` on a fresh session and checks the model's answer to each; returns them.
async fn run_script(
    addr: SocketAddr,
    token: &str,
    what: &str,
    frames: &[Frame],
    tally: &Mutex<Tally>,
) -> Vec<Expect> {
    let mut ws = session(addr, token).await;
    let mut model = Model::default();
    let mut sync = 0;
    let mut answers = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let expect = model.frame(f);
        // A server that already closed may refuse the write; the answer is still read below.
        ws.send_frame(f).await;
        let open = check(&mut ws, &expect, &format!("{what} #{i}"), &mut sync).await;
        {
            let mut t = tally.lock().unwrap();
            t.frames += 1;
            t.count(&expect);
        }
        answers.push(expect);
        if !open {
            break;
        }
    }
    tally.lock().unwrap().connections += 1;
    answers
}

/// A connection past `hello`.
async fn session(addr: SocketAddr, token: &str) -> RawWs {
    let mut ws = RawWs::connect(addr).await;
    ws.send_json(json!({"type": "hello", "token": token})).await;
    match ws.next_reply().await {
        Incoming::Text(v) if v["type"] == "welcome" => ws,
        other => panic!("no welcome: {other:?}"),
    }
}

fn text(s: impl Into<Vec<u8>>) -> Frame {
    Frame::text(s)
}

fn with(mut f: Frame, edit: impl FnOnce(&mut Frame)) -> Frame {
    edit(&mut f);
    f
}

fn close_frame(code: u16, reason: &[u8]) -> Frame {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    Frame::new(OP_CLOSE, p)
}

/// Hand-written attacks, each with the answer the design promises (the model must agree).
fn scripted() -> Vec<(&'static str, Vec<Frame>, Expect)> {
    let ping = || text(r#"{"type":"ping"}"#);
    let base = r#"{"type":"ping","pad":""}"#.len();
    let big_ok = format!(r#"{{"type":"ping","pad":"{}"}}"#, "p".repeat(MAX - base));
    assert_eq!(big_ok.len(), MAX);
    let bomb = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let deep_object = format!("{}1{}", r#"{"a":"#.repeat(40_000), "}".repeat(40_000));
    let protocol = Expect::Close(1002, Some("protocol_error"));
    let utf8 = Expect::Close(1007, Some("invalid_utf8"));
    let too_large = Expect::Close(1009, Some("too_large"));
    vec![
        (
            "invalid UTF-8 text",
            vec![text([0xff, 0xfe, 0xfd])],
            utf8.clone(),
        ),
        (
            "overlong UTF-8 encoding of '/'",
            vec![text(b"{\"type\":\"ping\",\"x\":\"\xc0\xaf\"}".to_vec())],
            utf8.clone(),
        ),
        (
            "a UTF-16 surrogate encoded in UTF-8",
            vec![text(b"\"\xed\xa0\x80\"".to_vec())],
            utf8.clone(),
        ),
        (
            "invalid UTF-8 across fragments",
            vec![
                text(b"{\"a\":\"\xe2".to_vec()).fin(false),
                Frame::new(OP_CONT, b"\x28\xa1\"}".to_vec()),
            ],
            utf8.clone(),
        ),
        (
            "a message ending inside a UTF-8 sequence",
            vec![
                text(b"\"\xe2\x82".to_vec()).fin(false),
                Frame::new(OP_CONT, Vec::new()),
            ],
            utf8.clone(),
        ),
        (
            "a 64-bit length of 2^40, nothing following",
            vec![with(text(Vec::new()), |f| {
                f.length = Length::Declared(1 << 40)
            })],
            too_large.clone(),
        ),
        (
            "a 64-bit length with the top bit set",
            vec![with(text(b"{}".to_vec()), |f| {
                f.length = Length::Declared(u64::MAX)
            })],
            too_large.clone(),
        ),
        (
            "a length one byte above the limit",
            vec![with(text(Vec::new()), |f| {
                f.length = Length::Declared(MAX as u64 + 1)
            })],
            too_large.clone(),
        ),
        (
            "a message above the limit in fragments",
            vec![
                text(vec![b' '; 60_000]).fin(false),
                Frame::new(OP_CONT, vec![b' '; 60_000]).fin(false),
                Frame::new(OP_CONT, vec![b' '; 60_000]).fin(false),
                Frame::new(OP_CONT, vec![b' '; 60_000]).fin(false),
                Frame::new(OP_CONT, vec![b' '; 60_000]),
            ],
            too_large.clone(),
        ),
        (
            "a message of exactly the limit",
            vec![text(big_ok)],
            Expect::Reply("pong"),
        ),
        (
            "non-minimal 16- and 64-bit lengths",
            vec![
                with(ping(), |f| f.length = Length::Forced16),
                with(ping(), |f| f.length = Length::Forced64),
            ],
            Expect::Reply("pong"),
        ),
        (
            "a fragmented ping",
            vec![Frame::new(OP_PING, b"x".to_vec()).fin(false)],
            protocol.clone(),
        ),
        (
            "a fragmented close",
            vec![close_frame(1000, b"").fin(false)],
            protocol.clone(),
        ),
        (
            "a ping of 126 bytes",
            vec![Frame::new(OP_PING, vec![b'p'; 126])],
            protocol.clone(),
        ),
        (
            "a pong inside a fragmented message, then the rest",
            vec![
                text(r#"{"type":"#).fin(false),
                Frame::new(OP_PONG, b"unsolicited".to_vec()),
                Frame::new(OP_PING, b"interleaved".to_vec()),
                Frame::new(OP_CONT, r#""ping","ref":1}"#),
            ],
            Expect::Reply("pong"),
        ),
        (
            "reserved opcode 3",
            vec![Frame::new(3, b"{}".to_vec())],
            protocol.clone(),
        ),
        (
            "reserved opcode 7",
            vec![Frame::new(7, Vec::new())],
            protocol.clone(),
        ),
        (
            "reserved opcode 0xB",
            vec![Frame::new(0xB, Vec::new())],
            protocol.clone(),
        ),
        (
            "reserved opcode 0xF",
            vec![Frame::new(0xF, b"x".to_vec())],
            protocol.clone(),
        ),
        (
            "RSV1 set",
            vec![with(ping(), |f| f.rsv = 0b100)],
            protocol.clone(),
        ),
        (
            "RSV2 set",
            vec![with(ping(), |f| f.rsv = 0b010)],
            protocol.clone(),
        ),
        (
            "RSV3 set",
            vec![with(ping(), |f| f.rsv = 0b001)],
            protocol.clone(),
        ),
        (
            "RSV bits on a ping",
            vec![with(Frame::new(OP_PING, Vec::new()), |f| f.rsv = 0b111)],
            protocol.clone(),
        ),
        (
            "an unmasked text frame",
            vec![with(ping(), |f| f.mask = None)],
            protocol.clone(),
        ),
        (
            "an unmasked ping",
            vec![with(Frame::new(OP_PING, b"x".to_vec()), |f| f.mask = None)],
            protocol.clone(),
        ),
        (
            "a continuation without a start",
            vec![Frame::new(OP_CONT, r#"{"type":"ping"}"#)],
            protocol.clone(),
        ),
        (
            "a new message inside a fragmented one",
            vec![text(r#"{"type":"#).fin(false), ping()],
            protocol.clone(),
        ),
        (
            "binary inside a fragmented text message",
            vec![
                text(r#"{"type":"#).fin(false),
                Frame::new(OP_BINARY, b"x".to_vec()),
            ],
            protocol.clone(),
        ),
        (
            "a close frame of one byte",
            vec![Frame::new(OP_CLOSE, vec![3])],
            protocol,
        ),
        (
            "a close frame with reserved code 1005",
            vec![close_frame(1005, b"")],
            Expect::Echo(Some(1002)),
        ),
        (
            "a close frame with code 0",
            vec![close_frame(0, b"bye")],
            Expect::Echo(Some(1002)),
        ),
        (
            "a close frame with an invalid UTF-8 reason",
            vec![close_frame(1000, b"\xff\xfe")],
            utf8,
        ),
        (
            "a normal close",
            vec![close_frame(1000, b"bye")],
            Expect::Echo(Some(1000)),
        ),
        (
            "binary frames",
            vec![
                Frame::new(OP_BINARY, vec![0u8; 10]),
                Frame::new(OP_BINARY, Vec::new()),
                Frame::new(OP_BINARY, vec![0xffu8; 60_000]),
                Frame::new(OP_BINARY, r#"{"type":"ping"}"#),
            ],
            Expect::Error("bad_request"),
        ),
        (
            "a fragmented binary message",
            vec![
                Frame::new(OP_BINARY, b"ab".to_vec()).fin(false),
                Frame::new(OP_CONT, b"cd".to_vec()),
            ],
            Expect::Error("bad_request"),
        ),
        (
            "an empty text frame",
            vec![text("")],
            Expect::Error("bad_request"),
        ),
        (
            "a nesting bomb of 100k '['",
            vec![text("[".repeat(100_000))],
            Expect::Error("bad_request"),
        ),
        (
            "a balanced nesting bomb of 100k arrays",
            vec![text(bomb(100_000))],
            Expect::Error("bad_request"),
        ),
        (
            "a nesting bomb of 40k objects",
            vec![text(deep_object.clone())],
            Expect::Error("bad_request"),
        ),
        (
            "a nesting bomb in an ignored field",
            vec![text(format!(r#"{{"type":"ping","x":{}}}"#, bomb(100_000)))],
            Expect::Reply("pong"),
        ),
        (
            "a nesting bomb in `since`",
            vec![text(format!(
                r#"{{"type":"subscribe","topic":"t","since":{}}}"#,
                bomb(100_000)
            ))],
            Expect::Error("bad_request"),
        ),
        (
            "a nesting bomb in `positions`",
            vec![text(format!(
                r#"{{"type":"hello","positions":{deep_object}}}"#
            ))],
            Expect::Error("bad_request"),
        ),
        (
            // `data` is opaque: the gateway validates it without recursion and forwards it.
            "a balanced nesting bomb of 100k arrays as `data`",
            vec![text(format!(
                r#"{{"type":"publish","topic":"bomb","data":{}}}"#,
                bomb(100_000)
            ))],
            Expect::Reply("published"),
        ),
        (
            "an unclosed nesting bomb in `data`",
            vec![text(format!(
                r#"{{"type":"publish","topic":"bomb","data":{}"#,
                "[".repeat(100_000)
            ))],
            Expect::Error("bad_request"),
        ),
        (
            "a 250 KB type",
            vec![text(format!(r#"{{"type":"{}"}}"#, "t".repeat(250_000)))],
            Expect::Error("unknown_type"),
        ),
        (
            "a 250 KB topic",
            vec![text(format!(
                r#"{{"type":"subscribe","topic":"{}"}}"#,
                "t".repeat(250_000)
            ))],
            Expect::Error("bad_request"),
        ),
        (
            "a 250 KB token",
            vec![text(format!(
                r#"{{"type":"refresh","token":"{}"}}"#,
                "t".repeat(250_000)
            ))],
            Expect::Error("unauthorized"),
        ),
        (
            "a 250 KB string where a number belongs",
            vec![text(format!(
                r#"{{"type":"ping","ref":"{}"}}"#,
                "9".repeat(250_000)
            ))],
            Expect::Error("bad_request"),
        ),
        (
            "a 120k escaped quotes where a number belongs",
            vec![text(format!(
                r#"{{"type":"ping","ref":"{}"}}"#,
                "\\\"".repeat(120_000)
            ))],
            Expect::Error("bad_request"),
        ),
        (
            "120k escaped control characters where a number belongs",
            vec![text(format!(
                r#"{{"type":"ping","ref":"{}"}}"#,
                "\\u0001".repeat(40_000)
            ))],
            Expect::Error("bad_request"),
        ),
        (
            "250 KB of whitespace around a ping",
            vec![text(format!(
                "{}{{\"type\":\"ping\"}}{}",
                " ".repeat(125_000),
                "\n".repeat(125_000)
            ))],
            Expect::Reply("pong"),
        ),
        (
            "250 KB of numbers",
            vec![text(format!("[{}1]", "1,".repeat(125_000)))],
            Expect::Error("bad_request"),
        ),
        (
            "a huge number as ref",
            vec![text(format!(
                r#"{{"type":"ping","ref":1{}}}"#,
                "0".repeat(100_000)
            ))],
            Expect::Error("bad_request"),
        ),
        (
            "a negative and a fractional ref",
            vec![
                text(r#"{"type":"ping","ref":-1}"#),
                text(r#"{"type":"ping","ref":1.5}"#),
            ],
            Expect::Error("bad_request"),
        ),
        (
            "a duplicate type",
            vec![text(r#"{"type":"ping","type":"hello"}"#)],
            Expect::Error("bad_request"),
        ),
        (
            "a lone surrogate escape in the type",
            vec![text(r#"{"type":"\ud800"}"#)],
            Expect::Error("bad_request"),
        ),
        (
            "a NUL in a topic",
            vec![text(r#"{"type":"subscribe","topic":"a\u0000b"}"#)],
            Expect::Error("bad_request"),
        ),
        (
            "hello again",
            vec![text(r#"{"type":"hello","token":"x"}"#)],
            Expect::Error("bad_request"),
        ),
        (
            "a 250 KB string published within the limit",
            vec![text(format!(
                r#"{{"type":"publish","topic":"big","data":"{}"}}"#,
                "d".repeat(250_000)
            ))],
            Expect::Reply("published"),
        ),
        (
            "a payload one byte above --max-message-size, in a frame within the limit",
            vec![text(format!(
                r#"{{"type":"publish","topic":"big","data":"{}"}}"#,
                "d".repeat(MAX_PAYLOAD - 1)
            ))],
            Expect::Error("too_large"),
        ),
        (
            "a publish with 10k keys",
            vec![text(format!(
                r#"{{"type":"publish","topic":"keys","data":{{{}"z":0}}}}"#,
                (0..10_000)
                    .map(|i| format!(r#""k{i}":{i},"#))
                    .collect::<String>()
            ))],
            Expect::Reply("published"),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Random frames.

static KINDS: [&str; 8] = [
    "hello",
    "subscribe",
    "unsubscribe",
    "publish",
    "ping",
    "refresh",
    "pong",
    "",
];
static FIELDS: [&str; 10] = [
    "type",
    "ref",
    "topic",
    "data",
    "since",
    "token",
    "resume",
    "positions",
    "seq",
    "exclude_self",
];

fn random_value(rng: &mut StdRng, depth: u32) -> Value {
    match rng.random_range(0..if depth == 0 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.random()),
        2 => json!(rng.random::<i64>()),
        3 => json!(rng.random::<f64>() * 1e6),
        4 => json!(KINDS[rng.random_range(0..KINDS.len())]),
        5 => {
            let len = rng.random_range(0..12);
            Value::String((0..len).map(|_| rng.random::<char>()).collect())
        }
        6 => Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| random_value(rng, depth - 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.random_range(0..5))
                .map(|_| {
                    let key = FIELDS[rng.random_range(0..FIELDS.len())].to_owned();
                    (key, random_value(rng, depth - 1))
                })
                .collect(),
        ),
    }
}

/// A random text payload: JSON-shaped, mutated, or bytes (perhaps not UTF-8).
fn random_text(rng: &mut StdRng) -> Vec<u8> {
    match rng.random_range(0..10) {
        0..=3 => {
            let mut v = random_value(rng, 3);
            if rng.random_bool(0.7) {
                v = json!({"type": KINDS[rng.random_range(0..KINDS.len())], "x": v});
            }
            v.to_string().into_bytes()
        }
        4..=5 => {
            let templates = [
                r#"{"type":"ping","ref":12}"#,
                r#"{"type":"subscribe","topic":"chat.a","since":{"seq":1,"epoch":"e"}}"#,
                r#"{"type":"publish","topic":"t","data":{"a":[1,2,3]},"ref":3}"#,
                r#"{"type":"refresh","token":"abc"}"#,
                r#"{"type":"hello","positions":{"t":{"seq":1,"epoch":"x"}}}"#,
            ];
            let mut b = templates[rng.random_range(0..templates.len())]
                .as_bytes()
                .to_vec();
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..b.len());
                b[i] = rng.random_range(0x20..0x7f);
            }
            b
        }
        6..=8 => (0..rng.random_range(0..200))
            .map(|_| rng.random_range(0x20..0x7f))
            .collect(),
        _ => (0..rng.random_range(0..200))
            .map(|_| rng.random())
            .collect(),
    }
}

/// A text payload the fuzzer may send without side effects on other connections (it never
/// subscribes or publishes at random).
fn harmless_text(rng: &mut StdRng) -> Vec<u8> {
    loop {
        let t = random_text(rng);
        let side_effect = std::str::from_utf8(&t).is_ok_and(|s| {
            matches!(
                decode(s),
                Ok(ClientFrame::Subscribe { .. } | ClientFrame::Publish { .. })
            )
        });
        if !side_effect {
            return t;
        }
    }
}

/// One random step: mostly well-formed frames with hostile content, sometimes a frame with
/// random header bits, a lying length, or a message split into fragments.
fn random_frames(rng: &mut StdRng) -> Vec<Frame> {
    match rng.random_range(0..100) {
        0..=34 => vec![text(harmless_text(rng))],
        35..=44 => {
            let len = rng.random_range(0..2_000);
            vec![Frame::new(
                OP_BINARY,
                (0..len).map(|_| rng.random()).collect::<Vec<u8>>(),
            )]
        }
        45..=52 => {
            let len = rng.random_range(0..=125);
            vec![Frame::new(
                OP_PING,
                (0..len).map(|_| rng.random()).collect::<Vec<u8>>(),
            )]
        }
        53..=56 => vec![Frame::new(
            OP_PONG,
            vec![rng.random(); rng.random_range(0..10)],
        )],
        57..=66 => {
            // A message in fragments, with control frames between them.
            let whole = harmless_text(rng);
            let parts = rng.random_range(1..5).min(whole.len().max(1));
            let mut cuts: Vec<usize> = (0..parts - 1)
                .map(|_| rng.random_range(0..=whole.len()))
                .collect();
            cuts.sort();
            let mut frames = Vec::new();
            let mut start = 0;
            for (i, end) in cuts.into_iter().chain([whole.len()]).enumerate() {
                let op = if i == 0 { OP_TEXT } else { OP_CONT };
                frames.push(
                    Frame::new(op, whole[start..end].to_vec())
                        .fin(end == whole.len() && i == parts - 1),
                );
                start = end;
                if rng.random_bool(0.3) && i + 1 < parts {
                    frames.push(Frame::new(OP_PING, b"mid".to_vec()));
                }
            }
            frames
        }
        _ => {
            // Random header bits.
            let opcode = if rng.random_bool(0.2) {
                rng.random_range(0..16)
            } else {
                [OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG][rng.random_range(0..6)]
            };
            let len = if rng.random_bool(0.05) {
                rng.random_range(126..70_000)
            } else {
                rng.random_range(0..140)
            };
            let payload: Vec<u8> = if opcode == OP_TEXT && rng.random_bool(0.5) {
                harmless_text(rng)
            } else {
                (0..len).map(|_| rng.random()).collect()
            };
            let mut f = Frame::new(opcode, payload);
            f.fin = rng.random_bool(0.8);
            f.rsv = if rng.random_bool(0.95) {
                0
            } else {
                rng.random_range(1..8)
            };
            if rng.random_bool(0.03) {
                f.mask = None;
            }
            f.length = match rng.random_range(0..20) {
                0 if f.payload.len() <= 0xffff => Length::Forced16,
                1 => Length::Forced64,
                2 => Length::Declared(rng.random_range(MAX as u64 + 1..=u64::MAX)),
                _ => Length::Minimal,
            };
            vec![f]
        }
    }
}

async fn fuzz_connection(
    addr: SocketAddr,
    token: String,
    seed: u64,
    index: u64,
    tally: Arc<Mutex<Tally>>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut frames = Vec::new();
    let mut model = Model::default();
    // Up to 30 steps, stopping after the first one that ends the connection.
    'steps: for _ in 0..rng.random_range(1..=30) {
        for f in random_frames(&mut rng) {
            let e = model.frame(&f);
            frames.push(f);
            if e.is_final() {
                break 'steps;
            }
        }
    }
    let what = format!("seed {seed} connection {index}");
    run_script(addr, &token, &what, &frames, &tally).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_malformed_frames_get_their_designed_answers_and_the_pod_survives() {
    let log = log_path("malformed");
    let secret = secret_file();
    let max = MAX_PAYLOAD.to_string();
    let mut pod = start_logged(
        &[
            "--auth",
            "required",
            "--jwt-secret-file",
            secret.to_str().unwrap(),
            "--max-message-size",
            &max,
        ],
        "warn",
        &log,
    );
    let addr: SocketAddr = ([127, 0, 0, 1], pod.port).into();
    let admin = pod.admin_addr();
    let token = hs256(&granting("fuzz", &["*"], &["*"]));
    let mut w = Witness::join(
        &pod.url(),
        admin,
        Some(&hs256(&granting("witness", &["witness"], &[]))),
    )
    .await;
    w.check().await;
    let rss_before = pod.rss_kib();
    let tally = Arc::new(Mutex::new(Tally::default()));

    // The scripted attacks, each on its own connection.
    let feed = w.stream(100, Duration::from_millis(10));
    for (what, frames, designed) in scripted() {
        let answers = run_script(addr, &token, what, &frames, &tally).await;
        assert_eq!(
            answers.last(),
            Some(&designed),
            "{what}: the model disagrees"
        );
    }
    // Before hello: token attacks close the connection.
    for token in ["t".repeat(200_000), String::new(), "a.b.c".into()] {
        let mut ws = RawWs::connect(addr).await;
        ws.send_json(json!({"type": "hello", "token": token})).await;
        match ws.next_reply().await {
            Incoming::Close(Some(1008), reason) => assert!(reason.contains("unauthorized")),
            other => panic!("hello with a bad token: {other:?}"),
        }
    }
    feed.await.unwrap();
    w.receive(100).await;

    // Random frames from many connections at once.
    let seed = std::env::var("HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("random frames: seed {seed} (rerun with HOSTILE_SEED={seed})");
    let feed = w.stream(200, Duration::from_millis(10));
    let before = tally.lock().unwrap().frames;
    futures_util::stream::iter(0..800u64)
        .map(|i| fuzz_connection(addr, token.clone(), seed, i, tally.clone()))
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    feed.await.unwrap();
    w.receive(200).await;

    {
        let tally = tally.lock().unwrap();
        eprintln!(
            "{} frames on {} connections ({} random); answers: {:?}",
            tally.frames,
            tally.connections,
            tally.frames - before,
            tally.answers
        );
        assert!(tally.frames >= 2_500, "only {} frames", tally.frames);
    }

    // Alive, healthy, bounded, no panic.
    assert!(
        pod.process.wait_timeout(Duration::ZERO).is_none(),
        "the gateway exited"
    );
    assert_eq!(
        http(addr, "GET", "/healthz", None, None).await,
        (200, "ok".into())
    );
    w.check().await;
    let rss_after = pod.rss_kib();
    eprintln!("RSS {rss_before} KiB before, {rss_after} KiB after");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(!text.contains("panicked"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// The decoder over arbitrary JSON values.

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        prop::sample::select(
            &[
                "hello",
                "subscribe",
                "unsubscribe",
                "publish",
                "ping",
                "refresh",
                "chat.a",
                "a b",
                ">",
                "a.*",
                "é",
                "",
            ][..]
        )
        .prop_map(Value::from),
        "\\PC{0,16}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    prop::sample::select(&FIELDS[..]).prop_map(String::from),
                    "[a-z]{0,4}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An object with a known `type` and arbitrary values in the other fields.
fn frame_value() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(&KINDS[..6]),
        prop::collection::btree_map(prop::sample::select(&FIELDS[1..]), json_value(), 0..5),
    )
        .prop_map(|(kind, fields)| {
            let mut m: serde_json::Map<String, Value> =
                fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            m.insert("type".into(), json!(kind));
            Value::Object(m)
        })
}

/// What decoding `v` must give, whatever `v` is.
fn decode_agrees(v: &Value) -> Result<(), TestCaseError> {
    let text = v.to_string();
    match decode(&text) {
        Err(e) => {
            prop_assert!(matches!(e.code().as_str(), "bad_request" | "unknown_type"));
            if let DecodeError::UnknownType { kind, .. } = &e {
                prop_assert!(!KINDS[..6].contains(&kind.as_str()));
                prop_assert!(kind.chars().count() <= 40);
            }
        }
        Ok(frame) => {
            // Only objects decode.
            let field = |name: &str, index: usize| match v {
                Value::Object(m) => m.get(name).cloned().unwrap_or(Value::Null),
                Value::Array(a) => a.get(index).cloned().unwrap_or(Value::Null),
                _ => Value::Null,
            };
            prop_assert!(v.is_object(), "{text} decoded");
            prop_assert_eq!(field("type", 0), json!(frame.kind()));
            match &frame {
                ClientFrame::Subscribe {
                    topic, reference, ..
                }
                | ClientFrame::History {
                    topic, reference, ..
                }
                | ClientFrame::Presence { topic, reference }
                | ClientFrame::PresenceStats { topic, reference }
                | ClientFrame::Unsubscribe { topic, reference } => {
                    prop_assert_eq!(field("topic", 2), json!(topic.as_str()));
                    prop_assert_eq!(field("ref", 1), json!(reference));
                }
                ClientFrame::Publish {
                    topic,
                    data,
                    exclude_self,
                    reference,
                    ..
                } => {
                    prop_assert_eq!(field("topic", 2), json!(topic.as_str()));
                    prop_assert_eq!(field("ref", 1), json!(reference));
                    // Only a JSON `true` asks for echo suppression; absent or `null` does not.
                    prop_assert_eq!(*exclude_self, field("exclude_self", 10) == json!(true));
                    // The payload is the client's JSON, byte for byte.
                    prop_assert_eq!(data.as_str(), field("data", 3).to_string());
                }
                ClientFrame::Ping { reference } => {
                    prop_assert_eq!(field("ref", 1), json!(reference));
                }
                ClientFrame::Refresh { token, reference } => {
                    prop_assert_eq!(field("token", 5), json!(token));
                    prop_assert_eq!(field("ref", 1), json!(reference));
                }
                ClientFrame::Hello { token, resume, .. } => {
                    prop_assert_eq!(field("token", 5), json!(token));
                    prop_assert_eq!(field("resume", 6), json!(resume));
                }
                ClientFrame::Rpc { reference, .. } => {
                    prop_assert_eq!(field("ref", 1), json!(reference));
                }
            }
            if let ClientFrame::Subscribe { topic, .. }
            | ClientFrame::Unsubscribe { topic, .. }
            | ClientFrame::Publish { topic, .. } = &frame
            {
                prop_assert!(protocol::Topic::new(topic.as_str()).is_ok());
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(2_000)
    })]

    /// Any JSON value: the decoder never panics, refuses with `bad_request`/`unknown_type`, and
    /// what it accepts is exactly what the value says.
    #[test]
    fn arbitrary_json_values_decode_consistently(v in json_value()) {
        decode_agrees(&v)?;
    }

    /// Frame-shaped values with arbitrary fields (far more of them reach the typed fields).
    #[test]
    fn frame_shaped_values_decode_consistently(v in frame_value()) {
        decode_agrees(&v)?;
    }
}
