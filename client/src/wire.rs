//! The frames of protocol v1 as this client sends and reads them (see docs/protocol.md).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A topic position: the last `seq` processed in an `epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    /// The last sequence number processed (0: nothing yet).
    pub seq: u64,
    /// The topic's epoch (16 hex characters); `seq` numbers restart at 1 in a new epoch.
    pub epoch: String,
}

/// A position as sent (`hello.positions`, `subscribe.since`): the message position, with the
/// presence position on topics with join/leave events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct SentPosition {
    #[serde(flatten)]
    pub at: Position,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pseq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pepoch: Option<String>,
}

/// What the client sends.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(crate) enum ClientFrame<'a> {
    Hello {
        #[serde(skip_serializing_if = "Option::is_none")]
        token: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        resume: Option<&'a str>,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        positions: BTreeMap<String, SentPosition>,
        /// Topics to subscribe in the same round trip (answered after `welcome`, in order).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        subscribe: Vec<&'a str>,
    },
    Subscribe {
        topic: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<&'a SentPosition>,
        #[serde(rename = "ref")]
        reference: u64,
    },
    Unsubscribe {
        topic: &'a str,
        #[serde(rename = "ref")]
        reference: u64,
    },
    Publish {
        topic: &'a str,
        data: &'a RawValue,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        exclude_self: bool,
        #[serde(rename = "ref")]
        reference: u64,
    },
    Ping {
        #[serde(rename = "ref")]
        reference: u64,
    },
    Refresh {
        token: &'a str,
        #[serde(rename = "ref")]
        reference: u64,
    },
}

impl ClientFrame<'_> {
    pub(crate) fn to_text(&self) -> String {
        serde_json::to_string(self).expect("client frames always serialize")
    }
}

/// A topic restored by a resumed `welcome`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RestoredTopic {
    pub seq: u64,
    pub epoch: String,
    #[serde(default)]
    pub recovered: bool,
    #[serde(default)]
    pub pseq: Option<u64>,
    #[serde(default)]
    pub pepoch: Option<String>,
}

/// What the gateway sends. Unknown frame types are ignored (`Other`), so a newer gateway's
/// additions do not break this client.
#[derive(Debug)]
pub(crate) enum ServerFrame {
    Welcome(Welcome),
    Subscribed(Subscribed),
    Message(MessageFrame),
    /// A message published with this session excluded: its place in the order, no data.
    Skipped(SkippedFrame),
    Published(Published),
    Unsubscribed(Unsubscribed),
    Pong(Reference),
    Refreshed(Refreshed),
    Error(ErrorFrame),
    /// A `join` (`join: true`) or `leave`.
    Presence(PresenceFrame, bool),
    /// A `presence` list without `ref`: sent in place of join/leave events that could not be
    /// replayed (`recovered: false`).
    FreshList(FreshList),
    /// The reply to a query (`rpc_result`, `history`, `presence`, `presence_stats`), kept whole:
    /// the caller decodes it into its typed result.
    Answer {
        reference: Option<u64>,
        frame: String,
    },
    Other,
}

#[derive(Deserialize)]
struct Tag<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
}

impl ServerFrame {
    /// Decodes a text frame. Two passes (the type, then the frame), because a message's `data`
    /// is kept as raw JSON, which serde's tagged enums cannot hold.
    pub(crate) fn parse(text: &str) -> Result<Self, serde_json::Error> {
        let tag: Tag<'_> = serde_json::from_str(text)?;
        Ok(match tag.kind.as_ref() {
            "welcome" => ServerFrame::Welcome(serde_json::from_str(text)?),
            "subscribed" => ServerFrame::Subscribed(serde_json::from_str(text)?),
            "message" => ServerFrame::Message(serde_json::from_str(text)?),
            "skipped" => ServerFrame::Skipped(serde_json::from_str(text)?),
            "published" => ServerFrame::Published(serde_json::from_str(text)?),
            "unsubscribed" => ServerFrame::Unsubscribed(serde_json::from_str(text)?),
            "pong" => ServerFrame::Pong(serde_json::from_str(text)?),
            "refreshed" => ServerFrame::Refreshed(serde_json::from_str(text)?),
            "error" => ServerFrame::Error(serde_json::from_str(text)?),
            "join" => ServerFrame::Presence(serde_json::from_str(text)?, true),
            "leave" => ServerFrame::Presence(serde_json::from_str(text)?, false),

            "rpc_result" | "history" | "presence" | "presence_stats" => {
                let Reference { reference } = serde_json::from_str(text)?;
                if reference.is_none() && tag.kind == "presence" {
                    return Ok(ServerFrame::FreshList(serde_json::from_str(text)?));
                }
                let frame = text.to_owned();
                ServerFrame::Answer { reference, frame }
            }
            _ => ServerFrame::Other,
        })
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct Welcome {
    pub session: String,
    pub resume: String,
    #[serde(default)]
    pub pod: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub resumed: bool,
    #[serde(default)]
    pub topics: BTreeMap<String, RestoredTopic>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct PresenceFrame {
    pub topic: String,
    pub pseq: u64,
    pub epoch: String,
    pub member: crate::queries::PresenceMember,
}

#[derive(Debug, Deserialize)]
pub(crate) struct FreshList {
    pub topic: String,
    pub members: Vec<crate::queries::PresenceMember>,
    #[serde(default)]
    pub pseq: Option<u64>,
    #[serde(default)]
    pub epoch: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Subscribed {
    pub topic: String,
    pub seq: u64,
    pub epoch: String,
    #[serde(default)]
    pub recovered: Option<bool>,
    #[serde(default)]
    pub pseq: Option<u64>,
    #[serde(default)]
    pub pepoch: Option<String>,
    /// `server` when the application subscribed this session (connect hook, server API).
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default, rename = "ref")]
    pub reference: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct MessageFrame {
    pub topic: String,
    pub seq: u64,
    #[serde(default)]
    pub epoch: Option<String>,
    pub data: Box<RawValue>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct SkippedFrame {
    pub topic: String,
    pub seq: u64,
    #[serde(default)]
    pub epoch: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Published {
    pub seq: u64,
    #[serde(default, rename = "ref")]
    pub reference: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Unsubscribed {
    pub topic: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default, rename = "ref")]
    pub reference: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Reference {
    #[serde(default, rename = "ref")]
    pub reference: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Refreshed {
    #[serde(default)]
    pub exp: Option<u64>,
    #[serde(default, rename = "ref")]
    pub reference: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ErrorFrame {
    pub code: String,
    #[serde(default)]
    pub message: String,
    /// The topic of a refused subscription.
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default, rename = "ref")]
    pub reference: Option<u64>,
}

/// The reconnect advice in a close reason: `{"reconnect":bool,"after_ms"?:n,"error"?:s}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CloseAdvice {
    /// `false`: do not reconnect automatically.
    pub reconnect: bool,
    /// Wait at least this long before reconnecting.
    #[serde(default)]
    pub after_ms: Option<u64>,
    /// Why the gateway closed (`token_expired`, `lagged`, `unauthorized`, …).
    #[serde(default)]
    pub error: Option<String>,
}

impl CloseAdvice {
    /// The advice of a close reason, or `None` when the reason is not the gateway's JSON.
    pub fn parse(reason: &str) -> Option<Self> {
        if !reason.starts_with('{') {
            return None;
        }
        serde_json::from_str(reason).ok()
    }
}

/// The `exp` claim of a JWT (seconds since the Unix epoch), without checking its signature.
pub(crate) fn token_expiry(token: &str) -> Option<u64> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("exp")?.as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_parse() {
        assert_eq!(
            CloseAdvice::parse(r#"{"reconnect":true,"after_ms":500,"error":"lagged"}"#),
            Some(CloseAdvice {
                reconnect: true,
                after_ms: Some(500),
                error: Some("lagged".into())
            })
        );
        assert_eq!(
            CloseAdvice::parse(r#"{"reconnect":false,"error":"unauthorized"}"#)
                .map(|a| a.reconnect),
            Some(false)
        );
        assert_eq!(CloseAdvice::parse("bye"), None);
        assert_eq!(CloseAdvice::parse(""), None);
    }

    #[test]
    fn server_frames_decode_and_unknown_types_are_ignored() {
        let f = ServerFrame::parse(
            r#"{"type":"message","topic":"t","seq":3,"data":{"b":  1,"a":[ 1e3 ]}}"#,
        )
        .unwrap();
        match f {
            ServerFrame::Message(MessageFrame { data, seq, .. }) => {
                assert_eq!(seq, 3);
                assert_eq!(data.get(), r#"{"b":  1,"a":[ 1e3 ]}"#);
            }
            other => panic!("{other:?}"),
        }
        let f = ServerFrame::parse(r#"{"type":"presence","members":[],"ref":7}"#).unwrap();
        assert!(matches!(
            f,
            ServerFrame::Answer {
                reference: Some(7),
                ..
            }
        ));
        let f = ServerFrame::parse(
            r#"{"type":"leave","topic":"r","pseq":4,"epoch":"p","member":{"user":"ref","session":"s"}}"#,
        )
        .unwrap();
        assert!(matches!(
            f,
            ServerFrame::Presence(PresenceFrame { pseq: 4, .. }, false)
        ));
        let f = ServerFrame::parse(
            r#"{"type":"presence","topic":"r","members":[{"user":"ref","session":"s"}],"pseq":4,"epoch":"p","recovered":false}"#,
        )
        .unwrap();
        assert!(matches!(
            f,
            ServerFrame::FreshList(FreshList { pseq: Some(4), .. })
        ));
        let f = ServerFrame::parse(r#"{"type":"presence_diff","x":1}"#).unwrap();
        assert!(matches!(f, ServerFrame::Other));
    }

    #[test]
    fn hello_carries_resume_and_positions() {
        let mut positions = BTreeMap::new();
        positions.insert(
            "t".to_owned(),
            SentPosition {
                at: Position {
                    seq: 4,
                    epoch: "e1".into(),
                },
                pseq: None,
                pepoch: None,
            },
        );
        let text = ClientFrame::Hello {
            token: None,
            resume: Some("s.x"),
            positions,
            subscribe: vec!["u", "v"],
        }
        .to_text();
        assert_eq!(
            text,
            r#"{"type":"hello","resume":"s.x","positions":{"t":{"seq":4,"epoch":"e1"}},"subscribe":["u","v"]}"#
        );
    }

    #[test]
    fn token_expiry_reads_exp() {
        // {"alg":"HS256"} . {"sub":"u","exp":1700000000}
        let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1IiwiZXhwIjoxNzAwMDAwMDAwfQ.sig";
        assert_eq!(token_expiry(token), Some(1_700_000_000));
        assert_eq!(token_expiry("not-a-jwt"), None);
    }
}
