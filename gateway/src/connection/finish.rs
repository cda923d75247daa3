//! How a connection ends: its session saved with its positions, the close frame sent and the
//! client's awaited, the save confirmed once the client has read everything, and the
//! connection's subscriptions, presence and events released.

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::time::timeout;

use super::{Close, Conn};
use crate::metrics::CodeLabel;

impl Conn {
    /// Saves the session with its positions so the client can resume on any pod, then sends
    /// the close frame (if any) and waits briefly for the client's. Saving first means a
    /// drained client that reconnects at once finds its positions already stored.
    pub(super) async fn finish(&mut self, socket: &mut WebSocket, close: Close) {
        // Written but not flushed is not sent: a flush failure leaves the positions where
        // the last successful flush put them.
        // A goodbye (events on, the client's 1000) ends the session before anything is written
        // (the first flush sends tungstenite's reply to the close), so whatever the client does
        // next is recorded after the end.
        let goodbye = matches!(close, Close::ByClient(code) if self.is_goodbye(code));
        if goodbye {
            // Over for good: its members leave now (before its `session.ended`), not when
            // the resume window has passed.
            let topics: Vec<protocol::Topic> = self.subs.keys().cloned().collect();
            for topic in &topics {
                self.presence_leave(topic).await;
            }
            self.events_goodbye().await;
        }
        let answer = !matches!(close, Close::Gone);
        self.settle_publishes_on_close(socket, answer).await;
        if answer {
            let _ = timeout(self.shared.config.close_grace, self.flush(socket)).await;
        }
        if !goodbye {
            self.save_session().await;
            // Resumable for the window from now: the per-user index must say so (for
            // disconnect).
            self.index_session().await;
        }
        if let Close::ByClient(_) = close {
            // tungstenite queued the reply to the client's close frame: send it. A client that
            // closes cleanly reads until that reply (the closing handshake), so it has every
            // message sent before it: the positions are confirmed.
            let replied = timeout(self.shared.config.close_grace, socket.flush()).await;
            if matches!(replied, Ok(Ok(()))) && !goodbye {
                self.save_session_as(true).await;
            }
        }
        if let Some((code, advice)) = close.frame() {
            self.shared
                .metrics
                .conn
                .closes
                .get_or_create(&CodeLabel {
                    code: code.as_u16(),
                })
                .inc();
            let frame = CloseFrame {
                code: code.as_u16(),
                reason: advice.to_reason().into(),
            };
            let grace = self.shared.config.close_grace;
            let mut handshake_done = false;
            let _ = timeout(grace, async {
                if socket.send(Message::Close(Some(frame))).await.is_ok() {
                    // Wait for the client's close frame so it sees ours before the TCP close.
                    while let Some(Ok(message)) = socket.next().await {
                        handshake_done |= matches!(message, Message::Close(_));
                    }
                }
            })
            .await;
            if handshake_done {
                // The client read our close frame, and so every message before it: the saved
                // positions are now known to be what it has.
                self.save_session_as(true).await;
            }
        }
        if self.control.is_disconnected() {
            // The server API deleted the session; a save that raced it must not bring it back.
            self.forget_session().await;
        }
        self.presence_detach();
        if !goodbye {
            self.events_detached().await;
        }
        for topic in self.subs.keys() {
            self.shared.hub.unsubscribe(topic, self.id);
        }
        self.shared
            .metrics
            .conn
            .subscriptions
            .dec_by(self.subs.len() as i64);
    }
}
