//! Requests answered by one frame: `rpc`, `history`, `presence`, `presence_stats`.
//!
//! They are not kept across reconnects like subscriptions: made while offline they wait for the
//! next connection; in flight when it drops they fail with [`ClientError::Disconnected`].

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::{Client, ClientError, Command, Position, check_topic};

/// Which page of a topic's history [`Client::history`] reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Without: the latest messages. With: the messages after it (before it with `reverse`);
    /// a position of another epoch, or whose next messages are gone, gets `recovered: false`
    /// and the latest page instead.
    pub since: Option<Position>,
    /// At most this many messages (the gateway's default is 100, its maximum 1000).
    pub limit: Option<u32>,
    /// Newest first (with `since`: the messages before it).
    pub reverse: bool,
}

impl HistoryQuery {
    /// The latest `limit` messages, oldest first.
    pub fn latest(limit: u32) -> Self {
        HistoryQuery {
            limit: Some(limit),
            ..Self::default()
        }
    }

    /// The messages after `since`, oldest first.
    pub fn after(since: Position) -> Self {
        HistoryQuery {
            since: Some(since),
            ..Self::default()
        }
    }
}

/// One message of a history page.
#[derive(Debug, Clone, Deserialize)]
pub struct HistoryMessage {
    pub seq: u64,
    /// The message as published, byte for byte.
    pub data: Box<RawValue>,
}

/// A page of a topic's history.
#[derive(Debug, Clone, Deserialize)]
pub struct HistoryPage {
    /// The topic's latest `seq`, read with the messages.
    pub seq: u64,
    /// The topic's epoch.
    pub epoch: String,
    /// Only when `since` was given: `false` when the page is the latest one instead.
    #[serde(default)]
    pub recovered: Option<bool>,
    /// In the order asked for. A page may stop early (size limits): continue from the last
    /// `seq`; a forward page is complete when its last `seq` is the topic's `seq`.
    pub messages: Vec<HistoryMessage>,
}

impl HistoryPage {
    /// The position of the page's last message: subscribe with it as `since` to go live
    /// after a forward page without a gap.
    pub fn last_position(&self) -> Option<Position> {
        self.messages.last().map(|m| Position {
            seq: m.seq,
            epoch: self.epoch.clone(),
        })
    }
}

/// A member of a topic's presence: one per subscribed session.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PresenceMember {
    /// The token's `sub`; `None` for anonymous sessions.
    #[serde(default)]
    pub user: Option<String>,
    pub session: String,
    /// What the application attached to the session (the token's `info` claim or the connect
    /// hook's `info`); `None` when it has none.
    #[serde(default)]
    pub info: Option<Value>,
}

/// The size of a topic's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct PresenceStats {
    /// Subscribed sessions.
    pub members: u64,
    /// Distinct users among them.
    pub users: u64,
}

#[derive(Deserialize)]
struct RpcResult {
    #[serde(default)]
    data: Value,
}

#[derive(Deserialize)]
struct PresenceList {
    members: Vec<PresenceMember>,
}

/// Whether `method` is a valid rpc method name (1-100 characters of `A-Z a-z 0-9 _ . : / -`).
pub fn valid_method(method: &str) -> bool {
    (1..=100).contains(&method.len())
        && method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'/' | b'-'))
}

fn frame(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => unreachable!("query frames are built as objects"),
    }
}

impl Client {
    async fn query<T: DeserializeOwned>(
        &self,
        frame: Map<String, Value>,
    ) -> Result<T, ClientError> {
        let text = self
            .request(|reply| Command::Query { frame, reply })
            .await?;
        serde_json::from_str(&text).map_err(|e| ClientError::Server {
            code: "bad_frame".into(),
            message: format!("unreadable reply from the gateway: {e}"),
        })
    }

    /// Calls `method` of the application's rpc hook with `data` (`&()`: none); resolves with
    /// the answer's `data` (`null` when it gave none). A refusal is a [`ClientError::Server`]
    /// with the application's code; `unavailable` when the application did not answer (nothing
    /// was done: retry later). A gateway without a hook answers `bad_request`.
    pub async fn rpc<T: serde::Serialize + ?Sized>(
        &self,
        method: &str,
        data: &T,
    ) -> Result<Value, ClientError> {
        if !valid_method(method) {
            return Err(ClientError::InvalidMethod(method.to_owned()));
        }
        let data = serde_json::to_value(data).map_err(|e| ClientError::Data(e.to_string()))?;
        let mut f = frame(json!({"type": "rpc", "method": method}));
        // `null` goes as no `data`, as the other SDKs send it (the hook sees `null` either way).
        if !data.is_null() {
            f.insert("data".into(), data);
        }
        let reply: RpcResult = self.query(f).await?;
        Ok(reply.data)
    }

    /// Reads a page of `topic`'s history without subscribing (needs the permission to
    /// subscribe to it, else `forbidden`). To render the last messages and then go live without
    /// a gap, subscribe with `since` set to [`HistoryPage::last_position`].
    pub async fn history(
        &self,
        topic: &str,
        query: HistoryQuery,
    ) -> Result<HistoryPage, ClientError> {
        check_topic(topic)?;
        let mut f = frame(json!({"type": "history", "topic": topic}));
        if let Some(since) = query.since {
            f.insert(
                "since".into(),
                json!({"seq": since.seq, "epoch": since.epoch}),
            );
        }
        if let Some(limit) = query.limit {
            f.insert("limit".into(), limit.into());
        }
        if query.reverse {
            f.insert("reverse".into(), true.into());
        }
        self.query(f).await
    }

    /// The members present in `topic` (gateway started with `--presence`, else `bad_request`).
    /// Above the gateway's list limit: `limit_reached` (use [`Client::presence_stats`]).
    pub async fn presence(&self, topic: &str) -> Result<Vec<PresenceMember>, ClientError> {
        check_topic(topic)?;
        let reply: PresenceList = self
            .query(frame(json!({"type": "presence", "topic": topic})))
            .await?;
        Ok(reply.members)
    }

    /// How many sessions and distinct users are present in `topic`: cheap at any size.
    pub async fn presence_stats(&self, topic: &str) -> Result<PresenceStats, ClientError> {
        check_topic(topic)?;
        self.query(frame(json!({"type": "presence_stats", "topic": topic})))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names() {
        assert!(valid_method("chat/rooms.list:v1_a-b"));
        assert!(!valid_method(""));
        assert!(!valid_method("a b"));
        assert!(!valid_method(&"m".repeat(101)));
    }

    #[test]
    fn history_pages_decode() {
        let page: HistoryPage = serde_json::from_str(
            r#"{"type":"history","topic":"t","seq":5,"epoch":"e1","recovered":true,"messages":[{"seq":4,"data":{"a": 1}}],"ref":2}"#,
        )
        .unwrap();
        assert_eq!(page.recovered, Some(true));
        assert_eq!(page.messages[0].data.get(), r#"{"a": 1}"#);
        assert_eq!(
            page.last_position(),
            Some(Position {
                seq: 4,
                epoch: "e1".into()
            })
        );
    }
}
