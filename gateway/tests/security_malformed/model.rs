//! The model of the designed answers: what RFC 6455 and the gateway's design say the server
//! must answer to each frame, given the fragments that came before it.

use protocol::client::{ClientFrame, decode};

use super::{MAX, MAX_PAYLOAD};
use crate::support::hostile::{Frame, Length, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT};

/// What the gateway must answer to one frame.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expect {
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
    pub(crate) fn is_final(&self) -> bool {
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
pub(crate) struct Model {
    /// An unfinished fragmented message: whether it is text, and its bytes so far.
    incomplete: Option<(bool, Vec<u8>)>,
}

fn invalid_utf8_so_far(bytes: &[u8]) -> bool {
    matches!(std::str::from_utf8(bytes), Err(e) if e.error_len().is_some())
}

impl Model {
    pub(crate) fn frame(&mut self, f: &Frame) -> Expect {
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
