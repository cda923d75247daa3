//! Random frames: mostly well-formed frames with hostile content, sometimes random header bits,
//! lying lengths or fragments, replayed from a seed on many connections at once.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use protocol::client::{ClientFrame, decode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::MAX;
use super::model::Model;
use super::replay::{Tally, run_script};
use super::scripted::text;
use crate::support::hostile::{
    Frame, Length, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT,
};

pub(crate) static KINDS: [&str; 8] = [
    "hello",
    "subscribe",
    "unsubscribe",
    "publish",
    "ping",
    "refresh",
    "pong",
    "",
];
pub(crate) static FIELDS: [&str; 10] = [
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

pub(crate) async fn fuzz_connection(
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
