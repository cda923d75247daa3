//! Hand-written attacks: each a sequence of frames with the answer the design promises to its
//! last one.

use super::model::Expect;
use super::{MAX, MAX_PAYLOAD};
use crate::support::hostile::{Frame, Length, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG};

pub(crate) fn text(s: impl Into<Vec<u8>>) -> Frame {
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
pub(crate) fn scripted() -> Vec<(&'static str, Vec<Frame>, Expect)> {
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
