//! Frames the server sends.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::client::Ref;
use crate::names::Payload;
use crate::names::{Epoch, Topic};

/// Error codes of `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    UnknownType,
    Unauthorized,
    Forbidden,
    NotSubscribed,
    RateLimited,
    LimitReached,
    TooLarge,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::UnknownType => "unknown_type",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotSubscribed => "not_subscribed",
            Self::RateLimited => "rate_limited",
            Self::LimitReached => "limit_reached",
            Self::TooLarge => "too_large",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }
}

/// The state of one topic reported in `welcome` after a resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResumedTopic {
    /// `None` on an ephemeral topic (no history, no `seq`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<Epoch>,
    pub recovered: bool,
    /// On a topic with join/leave events: the presence position the connection follows from
    /// (the client's own when it sent one; missed events or a fresh list follow `welcome`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pseq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pepoch: Option<Epoch>,
}

/// Every server frame but `message` (see [`MessageFrame`]).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        session: String,
        resume: String,
        pod: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        resumed: bool,
        #[serde(skip_serializing_if = "HashMap::is_empty")]
        topics: HashMap<Topic, ResumedTopic>,
    },
    Subscribed {
        topic: Topic,
        /// `None` on an ephemeral topic (no history, no `seq`), and `epoch` with it.
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<Epoch>,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        /// On a topic with join/leave events: the presence position the connection follows
        /// from (see [`ResumedTopic::pseq`]).
        #[serde(skip_serializing_if = "Option::is_none")]
        pseq: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pepoch: Option<Epoch>,
        /// `"server"` when the server subscribed the client (connect hook, server API).
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'static str>,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
    },
    Unsubscribed {
        topic: Topic,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'static str>,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
    },
    Published {
        topic: Topic,
        /// `None` on an ephemeral topic.
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
    },
    Pong {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
    },
    Refreshed {
        #[serde(skip_serializing_if = "Option::is_none")]
        exp: Option<u64>,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
    },
    /// A page of history: `messages` in the order asked for, `seq`/`epoch` the topic's top read
    /// with them.
    History {
        topic: Topic,
        seq: u64,
        epoch: Epoch,
        /// Set when a `since` was given: `false` when it is from another epoch or its messages
        /// are gone (the page is then the latest one).
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        messages: Vec<HistoryMessage>,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
    },
    /// The members present in a topic. On a topic with join/leave events, `pseq` and `epoch`
    /// are its presence position: the events after it follow. Sent without a `ref` and with
    /// `recovered: false` when missed events could not be replayed (the list replaces them).
    Presence {
        topic: Topic,
        members: Vec<Member>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pseq: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<Epoch>,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
    },
    /// A member joined a topic with join/leave events: presence event `pseq` of `epoch`.
    Join {
        topic: Topic,
        pseq: u64,
        epoch: Epoch,
        member: Member,
    },
    /// A member left a topic with join/leave events.
    Leave {
        topic: Topic,
        pseq: u64,
        epoch: Epoch,
        member: Member,
    },
    /// A topic's presence counts.
    PresenceStats {
        topic: Topic,
        /// Sessions present.
        members: u64,
        /// Distinct users among them (anonymous sessions count as one user each).
        users: u64,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
    },
    /// Message `seq` of `topic` was published with this session excluded (`exclude_self` on
    /// the publish frame, `exclude_session` on the server API): it takes the message's place
    /// in the ordered stream, without `data`, so the client's position moves past it and the
    /// next message is not a gap.
    ///
    /// A frame of its own rather than a `message` without `data`: a client that does not know
    /// it ignores it and then sees the next `seq` as a gap, which it reports and recovers from,
    /// instead of handing the application a message with no data.
    Skipped {
        topic: Topic,
        seq: u64,
        /// Only when it is the first message of a new epoch for this connection, as on
        /// `message`.
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<Epoch>,
    },
    /// The `rpc` hook's answer.
    RpcResult {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
        data: Payload,
    },
    Error {
        code: ErrorCode,
        message: String,
        /// The topic a refused `subscribe` (or `hello.subscribe` entry) was for: how a client
        /// tells the ref-less answers of `hello.subscribe` apart.
        #[serde(skip_serializing_if = "Option::is_none")]
        topic: Option<Topic>,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
    },
}

/// A member of a topic's presence: one session (a user with several tabs or devices is several
/// members).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub session: String,
    /// What the application said about the session (the token's `info` claim or the connect
    /// hook's `info`), as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
}

/// One message of a `history` page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryMessage {
    pub seq: u64,
    /// Raw JSON, written as it was published.
    pub data: Payload,
}

impl ServerFrame {
    pub fn error(code: ErrorCode, message: impl Into<String>, reference: Option<Ref>) -> Self {
        Self::Error {
            code,
            message: message.into(),
            topic: None,
            reference,
        }
    }

    /// The error of a subscription to `topic`: [`Self::error`] naming the topic.
    pub fn subscribe_error(
        code: ErrorCode,
        message: impl Into<String>,
        topic: &Topic,
        reference: Option<Ref>,
    ) -> Self {
        Self::Error {
            code,
            message: message.into(),
            topic: Some(topic.clone()),
            reference,
        }
    }

    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: no maps with non-string keys, no foreign types.
        serde_json::to_string(self).expect("server frames always serialize")
    }
}

/// The longest epoch [`max_message_frame_len`] allows for: epochs are random hex (8 or 16
/// characters), with room to grow to 32.
pub const MAX_EPOCH_LEN: usize = 32;

/// The longest `message` frame (as [`encode_message`] writes it) for a payload of at most
/// `max_data_len` bytes: the longest topic, a 20-digit `seq`, an epoch of up to
/// [`MAX_EPOCH_LEN`] characters and the fixed JSON around them.
///
/// The gateway sizes each socket's write buffer from this, so that every message it accepts can
/// be written to every subscriber.
pub fn max_message_frame_len(max_data_len: usize) -> usize {
    const FIXED: &str = r#"{"type":"message","topic":"","seq":,"epoch":"","data":}"#;
    const U64_DIGITS: usize = 20;
    FIXED.len() + Topic::MAX_LEN + U64_DIGITS + MAX_EPOCH_LEN + max_data_len
}

/// Encodes `{"type":"message","topic":…,"data":…}`: a message of an ephemeral topic, which has
/// no `seq` (see [`encode_message`] for why by hand).
pub fn encode_ephemeral_message(topic: &Topic, data: &Payload) -> String {
    let mut out = String::with_capacity(48 + topic.as_str().len() + data.as_str().len());
    out.push_str(r#"{"type":"message","topic":""#);
    out.push_str(topic.as_str());
    out.push_str(r#"","data":"#);
    out.push_str(data.as_str());
    out.push('}');
    out
}

/// Encodes `{"type":"skipped","topic":…,"seq":…,"epoch"?:…}`: [`ServerFrame::Skipped`], by
/// hand like [`encode_message`], in whose place it is written.
pub fn encode_skipped(topic: &Topic, seq: u64, epoch: Option<&Epoch>) -> String {
    let mut out = String::with_capacity(64 + topic.as_str().len());
    out.push_str(r#"{"type":"skipped","topic":""#);
    out.push_str(topic.as_str());
    out.push_str(r#"","seq":"#);
    let _ = write!(out, "{seq}");
    if let Some(epoch) = epoch {
        out.push_str(r#","epoch":""#);
        out.push_str(epoch.as_str());
        out.push('"');
    }
    out.push('}');
    out
}

/// Encodes `{"type":"message","topic":…,"seq":…,"epoch"?:…,"data":…}`: once per message, the
/// bytes then shared by every subscriber on the pod.
///
/// Written by hand because it is the hottest path of the gateway and every part is already safe
/// JSON: topics and epochs are restricted to characters that need no escaping, and `data` is a
/// validated [`Payload`].
pub fn encode_message(topic: &Topic, seq: u64, epoch: Option<&Epoch>, data: &Payload) -> String {
    let mut out = String::with_capacity(64 + topic.as_str().len() + data.as_str().len());
    out.push_str(r#"{"type":"message","topic":""#);
    out.push_str(topic.as_str());
    out.push_str(r#"","seq":"#);
    let _ = write!(out, "{seq}");
    if let Some(epoch) = epoch {
        out.push_str(r#","epoch":""#);
        out.push_str(epoch.as_str());
        out.push('"');
    }
    out.push_str(r#","data":"#);
    out.push_str(data.as_str());
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_serialize_as_documented() {
        let t = Topic::new("a").unwrap();
        let f = ServerFrame::Published {
            topic: t.clone(),
            seq: Some(3),
            reference: Some(1),
        };
        assert_eq!(
            f.to_json(),
            r#"{"type":"published","topic":"a","seq":3,"ref":1}"#
        );
        let page = ServerFrame::History {
            topic: t.clone(),
            seq: 9,
            epoch: Epoch::new("e1"),
            recovered: None,
            messages: vec![HistoryMessage {
                seq: 9,
                data: Payload::parse(r#"{"b": 1}"#).unwrap(),
            }],
            reference: Some(4),
        };
        assert_eq!(
            page.to_json(),
            r#"{"type":"history","topic":"a","seq":9,"epoch":"e1","messages":[{"seq":9,"data":{"b": 1}}],"ref":4}"#
        );
        let members = ServerFrame::Presence {
            topic: t.clone(),
            members: vec![Member {
                user: Some("ann".into()),
                session: "s1".into(),
                info: Some(serde_json::json!({"name": "Ann"})),
            }],
            pseq: None,
            epoch: None,
            recovered: None,
            reference: None,
        };
        assert_eq!(
            members.to_json(),
            r#"{"type":"presence","topic":"a","members":[{"user":"ann","session":"s1","info":{"name":"Ann"}}]}"#
        );
        let join = ServerFrame::Join {
            topic: t.clone(),
            pseq: 4,
            epoch: Epoch::new("p1"),
            member: Member {
                user: None,
                session: "s2".into(),
                info: None,
            },
        };
        assert_eq!(
            join.to_json(),
            r#"{"type":"join","topic":"a","pseq":4,"epoch":"p1","member":{"session":"s2"}}"#
        );
        let stats = ServerFrame::PresenceStats {
            topic: t.clone(),
            members: 3,
            users: 2,
            reference: Some(1),
        };
        assert_eq!(
            stats.to_json(),
            r#"{"type":"presence_stats","topic":"a","members":3,"users":2,"ref":1}"#
        );
        let e = ServerFrame::error(ErrorCode::NotSubscribed, "x", None).to_json();
        assert_eq!(
            e,
            r#"{"type":"error","code":"not_subscribed","message":"x"}"#
        );
        let data = Payload::parse(r#"{"k":"\"}"}"#).unwrap();
        assert_eq!(
            encode_message(&t, 9, None, &data),
            r#"{"type":"message","topic":"a","seq":9,"data":{"k":"\"}"}}"#
        );
        assert_eq!(
            encode_ephemeral_message(&t, &data),
            r#"{"type":"message","topic":"a","data":{"k":"\"}"}}"#
        );
        let rpc = ServerFrame::RpcResult {
            reference: Some(4),
            data: Payload::parse("[1]").unwrap(),
        };
        assert_eq!(rpc.to_json(), r#"{"type":"rpc_result","ref":4,"data":[1]}"#);
        let skipped = ServerFrame::Skipped {
            topic: t.clone(),
            seq: 5,
            epoch: None,
        };
        assert_eq!(
            skipped.to_json(),
            r#"{"type":"skipped","topic":"a","seq":5}"#
        );
        let skipped = ServerFrame::Skipped {
            topic: t.clone(),
            seq: 1,
            epoch: Some(Epoch::new("e2")),
        };
        assert_eq!(
            skipped.to_json(),
            r#"{"type":"skipped","topic":"a","seq":1,"epoch":"e2"}"#
        );
        assert_eq!(
            encode_skipped(&t, 1, Some(&Epoch::new("e2"))),
            skipped.to_json()
        );
        assert_eq!(
            encode_skipped(&t, 5, None),
            r#"{"type":"skipped","topic":"a","seq":5}"#
        );
        let e = Epoch::new("ab12");
        let text = encode_message(&t, 1, Some(&e), &data);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["epoch"], "ab12");
        assert_eq!(v["data"]["k"], "\"}");
    }

    #[test]
    fn a_maximal_message_fits_its_frame_bound() {
        let topic = Topic::new(&"t".repeat(Topic::MAX_LEN)).unwrap();
        let epoch = Epoch::new("e".repeat(MAX_EPOCH_LEN));
        for max in [2, 128, 65_536] {
            // A JSON string of exactly `max` bytes, quotes included.
            let data = Payload::parse(&format!("\"{}\"", "x".repeat(max - 2))).unwrap();
            assert_eq!(data.len(), max);
            let frame = encode_message(&topic, u64::MAX, Some(&epoch), &data);
            assert_eq!(frame.len(), max_message_frame_len(max));
            assert!(encode_message(&topic, u64::MAX, None, &data).len() <= frame.len());
        }
    }

    #[test]
    fn error_code_names_match_serde() {
        for c in [
            ErrorCode::BadRequest,
            ErrorCode::UnknownType,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::NotSubscribed,
            ErrorCode::RateLimited,
            ErrorCode::LimitReached,
            ErrorCode::TooLarge,
            ErrorCode::Unavailable,
            ErrorCode::Internal,
        ] {
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
    }
}
