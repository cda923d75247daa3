//! Reading a topic's history without subscribing: the `history` frame, the admin API's
//! `GET /api/topics/{topic}/history`, and `subscribe {last: N}`.
//!
//! Pages come straight from the store (stream ids are seqs, so a page is a seq range) and always
//! carry the topic's top `{seq, epoch}`, read in the same store call. "History, then live" is
//! gap-free because a subscribe `since` the last seq of a page goes through the ordinary
//! recovery path: everything after that seq is replayed, then live messages follow.
//!
//! A page is bounded three ways: the requested `limit` (at most [`MAX_LIMIT`]), the store's
//! page bytes, and, on a WebSocket, the frame the socket can write in one piece (about one
//! largest message: see [`crate::sizes`]). It always carries at least one message when there
//! is one; a client continues from the last `seq` it got.

use axum::extract::ws::WebSocket;
use protocol::client::Ref;
use protocol::{ErrorCode, HistoryMessage, HistoryQuery, Position, ServerFrame, Topic};
use session_store::{HistoryPage, ReverseHistory, SessionStore, StoreError, StoredMessage};

use crate::Shared;
use crate::connection::{Close, Conn};

/// Messages per page when the request names no `limit`.
pub(crate) const DEFAULT_LIMIT: usize = 100;
/// Most messages per page, whatever the request's `limit`.
pub(crate) const MAX_LIMIT: usize = 1_000;

/// JSON around each message of a page (`{"seq":<20 digits>,"data":},`).
const PER_MESSAGE: usize = 40;

/// A page as answered.
#[derive(Debug)]
pub(crate) struct Answer {
    pub top: Position,
    /// `Some` when a `since` was given: whether the page continues from it.
    pub recovered: Option<bool>,
    /// In the order asked for.
    pub messages: Vec<StoredMessage>,
}

impl Answer {
    pub(crate) fn into_frame(self, topic: Topic, reference: Option<Ref>) -> ServerFrame {
        ServerFrame::History {
            topic,
            seq: self.top.seq,
            epoch: self.top.epoch,
            recovered: self.recovered,
            messages: self
                .messages
                .into_iter()
                .map(|m| HistoryMessage {
                    seq: m.seq,
                    data: m.data,
                })
                .collect(),
            reference,
        }
    }
}

/// Reads the page `query` asks for. `max_bytes` bounds the page's payload (beyond its first
/// message): the largest frame the caller can send.
pub(crate) async fn read(
    shared: &Shared,
    topic: &Topic,
    query: &HistoryQuery,
    max_bytes: usize,
) -> Result<Answer, StoreError> {
    let limit = query
        .limit
        .map_or(DEFAULT_LIMIT, |l| usize::try_from(l).unwrap_or(MAX_LIMIT))
        .clamp(1, MAX_LIMIT);
    let store = &shared.store;
    let started = std::time::Instant::now();
    // Each page knows which end to keep when it is cut to `max_bytes`: the end next to the
    // position it continues, or the newest messages.
    let (answer, keep_front) = match (&query.since, query.reverse) {
        (None, reverse) => (latest(store, topic, limit, reverse, None).await?, reverse),
        (Some(since), false) => {
            let page = store.history(topic, since.seq, limit).await?;
            let top = page.top.clone();
            let recovery = session_store::recover(since, page);
            if recovery.recovered {
                let answer = Answer {
                    top,
                    recovered: Some(true),
                    messages: recovery.messages,
                };
                (answer, true)
            } else {
                (
                    latest(store, topic, limit, false, Some(false)).await?,
                    false,
                )
            }
        }
        (Some(since), true) => {
            let page = store.history_before(topic, Some(since.seq), limit).await?;
            // Backwards from a position of this epoch (not past the top): the page is exactly
            // what precedes it. From another epoch: the newest page instead.
            let answer =
                if since.epoch == page.top.epoch && since.seq <= page.top.seq.saturating_add(1) {
                    Answer {
                        top: page.top,
                        recovered: Some(true),
                        messages: page.messages,
                    }
                } else {
                    latest(store, topic, limit, true, Some(false)).await?
                };
            (answer, true)
        }
    };
    shared.metrics.store.observe("history_read", started);
    Ok(fit(answer, max_bytes, keep_front))
}

/// The newest `limit` messages: oldest first unless `reverse`.
async fn latest(
    store: &crate::Store,
    topic: &Topic,
    limit: usize,
    reverse: bool,
    recovered: Option<bool>,
) -> Result<Answer, StoreError> {
    let HistoryPage { top, mut messages } = store.history_before(topic, None, limit).await?;
    if !reverse {
        messages.reverse();
    }
    Ok(Answer {
        top,
        recovered,
        messages,
    })
}

/// Cuts a page to `max_bytes`, keeping at least one message, from its front or its back.
fn fit(mut answer: Answer, max_bytes: usize, keep_front: bool) -> Answer {
    let mut bytes = 0;
    let fits = |m: &StoredMessage, bytes: &mut usize| {
        let first = *bytes == 0;
        *bytes += m.data.len() + PER_MESSAGE;
        first || *bytes <= max_bytes
    };
    if keep_front {
        let n = answer
            .messages
            .iter()
            .take_while(|m| fits(m, &mut bytes))
            .count();
        answer.messages.truncate(n);
    } else {
        let n = answer
            .messages
            .iter()
            .rev()
            .take_while(|m| fits(m, &mut bytes))
            .count();
        answer.messages.drain(..answer.messages.len() - n);
    }
    answer
}

/// Where `subscribe {last: n}` starts: `n` messages before the top, or at the oldest message
/// still kept when history holds fewer. Read from the store (one call), then subscribed from as
/// an ordinary `since`, so the rewind and the live messages join without a gap.
pub(crate) async fn rewind(
    shared: &Shared,
    topic: &Topic,
    last: u64,
) -> Result<Position, StoreError> {
    let newest = shared
        .store
        .history_before(
            topic,
            None,
            usize::try_from(last)
                .unwrap_or(MAX_LIMIT)
                .clamp(1, MAX_LIMIT),
        )
        .await?;
    let seq = match newest.messages.last() {
        Some(oldest) if last > 0 => oldest.seq - 1,
        _ => newest.top.seq,
    };
    Ok(Position {
        seq,
        epoch: newest.top.epoch,
    })
}

impl Conn {
    /// `subscribe`, with `last: n` turned into the `since` it means (a `since` wins over it).
    pub(crate) async fn subscribe_from(
        &mut self,
        socket: &mut WebSocket,
        topic: Topic,
        since: Option<Position>,
        presence_since: Option<protocol::PresencePosition>,
        last: Option<u64>,
        reference: Option<Ref>,
    ) -> Result<(), Close> {
        let since = match (since, last) {
            (None, Some(last)) if self.grants.can_subscribe(&topic) => {
                match rewind(&self.shared, &topic, last).await {
                    Ok(at) => Some(at),
                    Err(e) => {
                        let reply =
                            ServerFrame::error(ErrorCode::Unavailable, e.to_string(), reference);
                        return self.reply(socket, &reply).await;
                    }
                }
            }
            (since, _) => since,
        };
        self.subscribe(socket, topic, since, presence_since, reference)
            .await
    }

    /// Answers a `history` frame: subscribe permission for the topic is required.
    pub(crate) async fn history(
        &mut self,
        socket: &mut WebSocket,
        topic: Topic,
        query: HistoryQuery,
        reference: Option<Ref>,
    ) -> Result<(), Close> {
        if !self.grants.can_subscribe(&topic) {
            let reply = ServerFrame::error(
                ErrorCode::Forbidden,
                format!("may not read the history of {topic}"),
                reference,
            );
            return self.reply(socket, &reply).await;
        }
        let max_bytes = protocol::max_message_frame_len(self.shared.config.max_message_size);
        let reply = match read(&self.shared, &topic, &query, max_bytes).await {
            Ok(answer) => answer.into_frame(topic, reference),
            Err(e) => ServerFrame::error(ErrorCode::Unavailable, e.to_string(), reference),
        };
        self.reply(socket, &reply).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{Epoch, Payload};

    fn answer(seqs: &[u64], size: usize) -> Answer {
        let data = Payload::parse(&format!("\"{}\"", "x".repeat(size - 2))).unwrap();
        Answer {
            top: Position {
                seq: 9,
                epoch: Epoch::new("e"),
            },
            recovered: None,
            messages: seqs
                .iter()
                .map(|&seq| StoredMessage {
                    seq,
                    data: data.clone(),
                    exclude: None,
                })
                .collect(),
        }
    }

    fn seqs(a: &Answer) -> Vec<u64> {
        a.messages.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn pages_are_cut_to_the_frame_keeping_the_right_end() {
        let room = 2 * (100 + PER_MESSAGE);
        // Forwards from a position: the start continues it.
        assert_eq!(seqs(&fit(answer(&[1, 2, 3], 100), room, true)), vec![1, 2]);
        // The latest page, oldest first: the newest are kept.
        assert_eq!(seqs(&fit(answer(&[1, 2, 3], 100), room, false)), vec![2, 3]);
        // Newest first: the newest are kept, in front.
        assert_eq!(seqs(&fit(answer(&[3, 2, 1], 100), room, true)), vec![3, 2]);
        // One message always goes, whatever its size.
        assert_eq!(seqs(&fit(answer(&[5, 6], 1_000), 10, false)), vec![6]);
        assert_eq!(seqs(&fit(answer(&[5, 6], 1_000), 10, true)), vec![5]);
        assert!(fit(answer(&[], 10), 10, true).messages.is_empty());
    }
}
