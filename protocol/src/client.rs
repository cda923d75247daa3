//! Frames a client sends, and their decoder.
//!
//! Decoding goes through a flat, borrowed [`Envelope`] rather than a serde-tagged enum for two
//! reasons: serde's internally tagged enums cannot carry a borrowed [`RawJson`] payload, and the
//! flat form lets every error keep the frame's `ref` and tell `unknown_type` from `bad_request`.

use std::collections::HashMap;

use serde::Deserialize;

use crate::RawJson;
use crate::names::{Payload, Position, PresencePosition, PublishId, Topic, WirePosition};
use crate::server::ErrorCode;

/// A correlation id chosen by the client and echoed in the reply.
pub type Ref = u64;

/// A decoded, validated client frame.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientFrame {
    Hello {
        token: Option<String>,
        resume: Option<String>,
        positions: HashMap<Topic, Position>,
        /// The presence positions the client sent with them (`pseq` and `pepoch`).
        presence: HashMap<Topic, PresencePosition>,
        /// Topics to subscribe once the session is open, each answered like a `subscribe`
        /// without `ref` (one round trip for a connection and its subscriptions).
        subscribe: Vec<Topic>,
    },
    Subscribe {
        topic: Topic,
        since: Option<Position>,
        /// The presence position sent with `since` (`pseq` and `pepoch`).
        presence_since: Option<PresencePosition>,
        /// Rewind by count: start `last` messages before the top (ignored with `since`).
        last: Option<u64>,
        reference: Option<Ref>,
    },
    Unsubscribe {
        topic: Topic,
        reference: Option<Ref>,
    },
    Publish {
        topic: Topic,
        data: Payload,
        /// Idempotency key: a retry with the same id stores nothing new.
        id: Option<PublishId>,
        /// Echo suppression: this session gets a `skipped` frame in the message's place (its
        /// position advances, it is not sent the data). Frame field `exclude_self: true`.
        exclude_self: bool,
        reference: Option<Ref>,
    },
    Ping {
        reference: Option<Ref>,
    },
    Refresh {
        token: String,
        reference: Option<Ref>,
    },
    /// The members present in a topic (refused above the configured list size).
    Presence {
        topic: Topic,
        reference: Option<Ref>,
    },
    /// The counts of a topic's members and distinct users: cheap at any size.
    PresenceStats {
        topic: Topic,
        reference: Option<Ref>,
    },
    /// A page of a topic's history, without subscribing (see [`HistoryQuery`]).
    History {
        topic: Topic,
        query: HistoryQuery,
        reference: Option<Ref>,
    },
    /// A request to the application's `rpc` hook, answered by `rpc_result` or `error`.
    Rpc {
        method: RpcMethod,
        /// `null` when the frame has no `data`.
        data: Option<Payload>,
        reference: Option<Ref>,
    },
}

/// What a `history` request asks for.
///
/// Without `since`: the latest `limit` messages (oldest first, or newest first with
/// `reverse`). With `since`: the `limit` messages after it (or, with `reverse`, before it,
/// newest first: scrolling back from the oldest message a client holds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    pub since: Option<Position>,
    /// Requested page size; the server caps it (see `docs/protocol.md`).
    pub limit: Option<u64>,
    pub reverse: bool,
}

/// An `rpc` method name: 1–100 characters of `[A-Za-z0-9_.:/-]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RpcMethod(String);

impl RpcMethod {
    pub const MAX_LEN: usize = 100;

    pub fn new(name: &str) -> Result<Self, crate::InvalidName> {
        let valid = !name.is_empty()
            && name.len() <= Self::MAX_LEN
            && name.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'/' | b'-')
            });
        if !valid {
            return Err(crate::InvalidName::RpcMethod);
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl ClientFrame {
    /// The frame's `type`, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "hello",
            Self::Subscribe { .. } => "subscribe",
            Self::Unsubscribe { .. } => "unsubscribe",
            Self::Publish { .. } => "publish",
            Self::Ping { .. } => "ping",
            Self::Refresh { .. } => "refresh",
            Self::History { .. } => "history",
            Self::Presence { .. } => "presence",
            Self::PresenceStats { .. } => "presence_stats",
            Self::Rpc { .. } => "rpc",
        }
    }
}

/// Why a frame could not be decoded. Each maps to one wire error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame is not a JSON object: {0}")]
    NotJson(String),
    #[error("missing field `type`")]
    MissingType,
    #[error("unknown frame type `{kind}`")]
    UnknownType {
        kind: String,
        reference: Option<Ref>,
    },
    #[error("missing field `{field}`")]
    MissingField {
        field: &'static str,
        reference: Option<Ref>,
    },
    #[error("invalid topic: {reason}")]
    InvalidTopic {
        reason: crate::InvalidName,
        reference: Option<Ref>,
    },
    #[error("invalid `{field}`: {reason}")]
    InvalidField {
        field: &'static str,
        reason: crate::InvalidName,
        reference: Option<Ref>,
    },
}

impl DecodeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NotJson(_)
            | Self::MissingType
            | Self::MissingField { .. }
            | Self::InvalidTopic { .. }
            | Self::InvalidField { .. } => ErrorCode::BadRequest,
            Self::UnknownType { .. } => ErrorCode::UnknownType,
        }
    }

    /// The `ref` of the offending frame, when it could be read.
    pub fn reference(&self) -> Option<Ref> {
        match self {
            Self::NotJson(_) | Self::MissingType => None,
            Self::UnknownType { reference, .. }
            | Self::MissingField { reference, .. }
            | Self::InvalidTopic { reference, .. }
            | Self::InvalidField { reference, .. } => *reference,
        }
    }
}

/// Every field any frame may carry, borrowed from the input.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "ref")]
    reference: Option<Ref>,
    #[serde(borrow)]
    topic: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<&'a RawJson>,
    since: Option<WirePosition>,
    token: Option<String>,
    resume: Option<String>,
    positions: Option<HashMap<Topic, WirePosition>>,
    /// `hello`'s initial subscriptions (a rare frame: owned strings are fine).
    subscribe: Option<Vec<String>>,
    #[serde(borrow)]
    id: Option<std::borrow::Cow<'a, str>>,
    limit: Option<u64>,
    reverse: Option<bool>,
    last: Option<u64>,
    #[serde(borrow)]
    method: Option<std::borrow::Cow<'a, str>>,
    exclude_self: Option<bool>,
}

/// Decodes one text frame.
pub fn decode(text: &str) -> Result<ClientFrame, DecodeError> {
    // serde would also read a struct from a JSON array of its fields in order: only objects
    // are frames.
    if !text.trim_start().starts_with('{') {
        return Err(DecodeError::NotJson("a frame must be a JSON object".into()));
    }
    let env: Envelope<'_> =
        serde_json::from_str(text).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    let reference = env.reference;
    let kind = env.kind.ok_or(DecodeError::MissingType)?;
    let topic = || -> Result<Topic, DecodeError> {
        let raw = env.topic.as_deref().ok_or(DecodeError::MissingField {
            field: "topic",
            reference,
        })?;
        Topic::new(raw).map_err(|reason| DecodeError::InvalidTopic { reason, reference })
    };
    let (since, presence_since) = match env.since {
        Some(since) => {
            let (since, presence) = since.split();
            (Some(since), presence)
        }
        None => (None, None),
    };
    let frame = match &*kind {
        "hello" => {
            let mut positions = HashMap::new();
            let mut presence = HashMap::new();
            for (topic, wire) in env.positions.unwrap_or_default() {
                let (position, at) = wire.split();
                if let Some(at) = at {
                    presence.insert(topic.clone(), at);
                }
                positions.insert(topic, position);
            }
            ClientFrame::Hello {
                token: env.token,
                resume: env.resume,
                positions,
                presence,
                subscribe: env
                    .subscribe
                    .unwrap_or_default()
                    .iter()
                    .map(|raw| Topic::new(raw))
                    .collect::<Result<_, _>>()
                    .map_err(|reason| DecodeError::InvalidTopic { reason, reference })?,
            }
        }
        "subscribe" => ClientFrame::Subscribe {
            topic: topic()?,
            since,
            presence_since,
            last: env.last,
            reference,
        },
        "presence" => ClientFrame::Presence {
            topic: topic()?,
            reference,
        },
        "presence_stats" => ClientFrame::PresenceStats {
            topic: topic()?,
            reference,
        },
        "history" => ClientFrame::History {
            topic: topic()?,
            query: HistoryQuery {
                since,
                limit: env.limit,
                reverse: env.reverse.unwrap_or(false),
            },
            reference,
        },
        "unsubscribe" => ClientFrame::Unsubscribe {
            topic: topic()?,
            reference,
        },
        "publish" => ClientFrame::Publish {
            topic: topic()?,
            data: env
                .data
                .ok_or(DecodeError::MissingField {
                    field: "data",
                    reference,
                })
                .map(Payload::from_raw)?,
            id: env
                .id
                .as_deref()
                .map(PublishId::new)
                .transpose()
                .map_err(|reason| DecodeError::InvalidField {
                    field: "id",
                    reason,
                    reference,
                })?,
            exclude_self: env.exclude_self.unwrap_or(false),
            reference,
        },
        "ping" => ClientFrame::Ping { reference },
        "refresh" => ClientFrame::Refresh {
            token: env.token.ok_or(DecodeError::MissingField {
                field: "token",
                reference,
            })?,
            reference,
        },
        "rpc" => ClientFrame::Rpc {
            method: RpcMethod::new(env.method.as_deref().ok_or(DecodeError::MissingField {
                field: "method",
                reference,
            })?)
            .map_err(|reason| DecodeError::InvalidField {
                field: "method",
                reason,
                reference,
            })?,
            data: env.data.map(Payload::from_raw),
            reference,
        },
        other => {
            return Err(DecodeError::UnknownType {
                kind: other.chars().take(40).collect(),
                reference,
            });
        }
    };
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_every_frame() {
        let f = decode(r#"{"type":"publish","topic":"a","data":{"x":[1,2]},"ref":7}"#).unwrap();
        match f {
            ClientFrame::Publish {
                topic,
                data,
                id,
                exclude_self,
                reference,
            } => {
                assert_eq!(topic.as_str(), "a");
                assert_eq!(data.as_str(), r#"{"x":[1,2]}"#);
                assert_eq!(id, None);
                assert!(!exclude_self);
                assert_eq!(reference, Some(7));
            }
            other => panic!("{other:?}"),
        }
        for (flag, expected) in [
            ("true", Some(true)),
            ("false", Some(false)),
            ("null", Some(false)),
        ] {
            let frame =
                format!(r#"{{"type":"publish","topic":"a","data":1,"exclude_self":{flag}}}"#);
            let decoded = decode(&frame).ok().and_then(|f| match f {
                ClientFrame::Publish { exclude_self, .. } => Some(exclude_self),
                _ => None,
            });
            assert_eq!(decoded, expected, "{flag}");
        }
        // Only a boolean: anything else is a malformed frame, not a silent default.
        let e = decode(r#"{"type":"publish","topic":"a","data":1,"exclude_self":"yes","ref":2}"#)
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadRequest);
        match decode(r#"{"type":"publish","topic":"a","data":1,"id":"order-17:a"}"#) {
            Ok(ClientFrame::Publish { id: Some(id), .. }) => assert_eq!(id.as_str(), "order-17:a"),
            other => panic!("{other:?}"),
        }
        for bad in [
            r#""""#,
            r#""has space""#,
            &format!("\"{}\"", "a".repeat(65)),
        ] {
            let frame = format!(r#"{{"type":"publish","topic":"a","data":1,"id":{bad},"ref":3}}"#);
            let e = decode(&frame).unwrap_err();
            assert_eq!(
                (e.code(), e.reference()),
                (ErrorCode::BadRequest, Some(3)),
                "{bad}"
            );
        }
        assert!(matches!(
            decode(r#"{"type":"subscribe","topic":"a","since":{"seq":3,"epoch":"e"}}"#),
            Ok(ClientFrame::Subscribe {
                since: Some(Position { seq: 3, .. }),
                ..
            })
        ));
        assert!(matches!(
            decode(r#"{"type":"subscribe","topic":"a","last":50}"#),
            Ok(ClientFrame::Subscribe {
                last: Some(50),
                since: None,
                ..
            })
        ));
        assert_eq!(
            decode(
                r#"{"type":"history","topic":"a","since":{"seq":3,"epoch":"e"},"limit":20,"reverse":true,"ref":9}"#
            ),
            Ok(ClientFrame::History {
                topic: Topic::new("a").unwrap(),
                query: HistoryQuery {
                    since: Some(Position {
                        seq: 3,
                        epoch: crate::Epoch::new("e")
                    }),
                    limit: Some(20),
                    reverse: true,
                },
                reference: Some(9),
            })
        );
        let e = decode(r#"{"type":"history","topic":"a","limit":-1,"ref":2}"#).unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadRequest);
        assert!(matches!(
            decode(r#"{"type":"ping"}"#),
            Ok(ClientFrame::Ping { reference: None })
        ));
        assert!(matches!(
            decode(r#"{"type":"hello","positions":{"t":{"seq":1,"epoch":"x"}}}"#),
            Ok(ClientFrame::Hello { positions, presence, .. }) if positions.len() == 1 && presence.is_empty()
        ));
        match decode(
            r#"{"type":"hello","positions":{"t":{"seq":1,"epoch":"x","pseq":4,"pepoch":"p"}}}"#,
        ) {
            Ok(ClientFrame::Hello { presence, .. }) => {
                assert_eq!(presence[&Topic::new("t").unwrap()].pseq, 4);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode(
                r#"{"type":"subscribe","topic":"a","since":{"seq":3,"epoch":"e","pseq":2,"pepoch":"p"}}"#
            ),
            Ok(ClientFrame::Subscribe {
                presence_since: Some(PresencePosition { pseq: 2, .. }),
                ..
            })
        ));
    }

    #[test]
    fn decodes_hello_with_initial_subscriptions() {
        match decode(r#"{"type":"hello","subscribe":["a","b.c"]}"#) {
            Ok(ClientFrame::Hello { subscribe, .. }) => {
                let names: Vec<&str> = subscribe.iter().map(|t| t.as_str()).collect();
                assert_eq!(names, ["a", "b.c"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode(r#"{"type":"hello"}"#),
            Ok(ClientFrame::Hello { subscribe, .. }) if subscribe.is_empty()
        ));
        let e = decode(r#"{"type":"hello","subscribe":["a","no spaces"]}"#).unwrap_err();
        assert!(matches!(e, DecodeError::InvalidTopic { .. }), "{e:?}");
        let e = decode(r#"{"type":"hello","subscribe":"a"}"#).unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadRequest);
    }

    #[test]
    fn decodes_rpc() {
        match decode(r#"{"type":"rpc","method":"room.join","data":{"room":"a"},"ref":2}"#) {
            Ok(ClientFrame::Rpc {
                method,
                data: Some(data),
                reference: Some(2),
            }) => {
                assert_eq!(method.as_str(), "room.join");
                assert_eq!(data.as_str(), r#"{"room":"a"}"#);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode(r#"{"type":"rpc","method":"m"}"#),
            Ok(ClientFrame::Rpc { data: None, .. })
        ));
        for bad in [
            r#"{"type":"rpc","ref":1}"#,
            r#"{"type":"rpc","method":"a b","ref":1}"#,
        ] {
            let e = decode(bad).unwrap_err();
            assert_eq!((e.code(), e.reference()), (ErrorCode::BadRequest, Some(1)));
        }
    }

    #[test]
    fn errors_keep_ref_and_code() {
        let e = decode(r#"{"type":"nope","ref":3}"#).unwrap_err();
        assert_eq!((e.code(), e.reference()), (ErrorCode::UnknownType, Some(3)));
        let e = decode(r#"{"type":"publish","topic":"a","ref":4}"#).unwrap_err();
        assert_eq!((e.code(), e.reference()), (ErrorCode::BadRequest, Some(4)));
        let e = decode(r#"{"type":"subscribe","topic":"a b","ref":5}"#).unwrap_err();
        assert_eq!((e.code(), e.reference()), (ErrorCode::BadRequest, Some(5)));
        assert_eq!(decode("[1]").unwrap_err().code(), ErrorCode::BadRequest);
        assert!(decode(r#"["subscribe",7,"chat.a",null,null,null,null,null]"#).is_err());
        assert_eq!(decode("{").unwrap_err().code(), ErrorCode::BadRequest);
        assert_eq!(decode("{}").unwrap_err(), DecodeError::MissingType);
    }

    proptest! {
        /// The decoder never panics, whatever it is given.
        #[test]
        fn decode_never_panics(s in ".{0,300}") {
            let _ = decode(&s);
        }

        /// Frames built from the JSON grammar's pieces never panic either, and a frame that
        /// decodes as a publish keeps its payload byte for byte.
        #[test]
        fn structured_frames(kind in prop::sample::select(vec!["hello","subscribe","unsubscribe","publish","ping","refresh","history","presence","presence_stats","x"]),
                             topic in "[A-Za-z0-9_.:> *-]{0,12}", r in any::<u64>(), n in any::<i64>(),
                             exclude in any::<bool>()) {
            let text = format!(r#"{{"type":"{kind}","topic":"{topic}","ref":{r},"data":[{n}],"token":"t","exclude_self":{exclude}}}"#);
            if let Ok(ClientFrame::Publish { data, reference, exclude_self, .. }) = decode(&text) {
                prop_assert_eq!(data.as_str(), format!("[{n}]"));
                prop_assert_eq!(reference, Some(r));
                prop_assert_eq!(exclude_self, exclude);
            }
        }
    }
}
