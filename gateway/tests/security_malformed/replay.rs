//! Replaying frames on a live session: sends each frame, reads the answer and checks it against
//! the model, counting what was sent and answered.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::model::{Expect, Model};
use crate::support::hostile::{Frame, Incoming, RawWs};

/// Counts of what was sent and answered, for the summary.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) frames: usize,
    pub(crate) connections: usize,
    pub(crate) answers: BTreeMap<String, usize>,
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
pub(crate) async fn run_script(
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
