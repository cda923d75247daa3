//! Reading client messages: text frames are decoded (errors answered with their `ref` and a
//! bounded message), binary frames refused, control frames handled, and each decoded frame
//! dispatched to its handler (only `hello` before the session exists).

use axum::extract::ws::{Message, WebSocket};
use futures_util::SinkExt;
use protocol::{ErrorCode, ServerFrame, client};

use super::{Close, Conn};

impl Conn {
    pub(super) async fn on_message(
        &mut self,
        socket: &mut WebSocket,
        message: Message,
    ) -> Result<(), Close> {
        match message {
            Message::Text(text) => {
                self.shared.metrics.conn.received.inc();
                // Decode first so a rate-limited frame's `rate_limited` carries its `ref`.
                let decoded = client::decode(text.as_str());
                let reference = match &decoded {
                    Ok(frame) => reference_of(frame),
                    Err(e) => e.reference(),
                };
                // Replies go out in frame order: anything but a publish, which joins the
                // publishes in flight, waits for them.
                if !matches!(decoded, Ok(client::ClientFrame::Publish { .. })) {
                    self.settle_publishes(socket).await?;
                }
                if !self.admit_frame(socket, reference).await? {
                    return Ok(());
                }
                match decoded {
                    Ok(frame) => self.on_frame(socket, frame).await,
                    Err(e) => {
                        let message = bounded(e.to_string());
                        let reply = ServerFrame::error(e.code(), message, e.reference());
                        self.reply(socket, &reply).await
                    }
                }
            }
            Message::Binary(_) => {
                self.shared.metrics.conn.received.inc();
                self.settle_publishes(socket).await?;
                if !self.admit_frame(socket, None).await? {
                    return Ok(());
                }
                let reply = ServerFrame::error(
                    ErrorCode::BadRequest,
                    "binary frames are not supported: send JSON text frames",
                    None,
                );
                self.reply(socket, &reply).await
            }
            // tungstenite queued the pong; send it now rather than with the next write.
            Message::Ping(_) => socket.flush().await.map_err(|_| Close::Gone),
            Message::Pong(_) => Ok(()),
            Message::Close(frame) => Err(Close::ByClient(frame.map(|f| f.code))),
        }
    }

    async fn on_frame(
        &mut self,
        socket: &mut WebSocket,
        frame: client::ClientFrame,
    ) -> Result<(), Close> {
        use client::ClientFrame as F;
        if self.session.is_none() {
            return match frame {
                F::Hello {
                    token,
                    resume,
                    positions,
                    presence,
                    subscribe,
                } => {
                    self.hello(socket, token, resume, positions, presence, subscribe)
                        .await
                }
                other => {
                    let reply = ServerFrame::error(
                        ErrorCode::BadRequest,
                        format!("send hello before {}", other.kind()),
                        reference_of(&other),
                    );
                    self.reply(socket, &reply).await
                }
            };
        }
        match frame {
            F::Hello { .. } => {
                let reply =
                    ServerFrame::error(ErrorCode::BadRequest, "hello was already received", None);
                self.reply(socket, &reply).await
            }
            F::Subscribe {
                topic,
                since,
                presence_since,
                last,
                reference,
            } => {
                self.subscribe_from(socket, topic, since, presence_since, last, reference)
                    .await
            }
            F::Unsubscribe { topic, reference } => self.unsubscribe(socket, topic, reference).await,
            F::Publish {
                topic,
                data,
                id,
                exclude_self,
                reference,
            } => {
                self.publish(socket, topic, data, id, exclude_self, reference)
                    .await
            }
            F::Ping { reference } => self.reply(socket, &ServerFrame::Pong { reference }).await,
            F::Refresh { token, reference } => self.refresh(socket, token, reference).await,
            F::History {
                topic,
                query,
                reference,
            } => self.history(socket, topic, query, reference).await,
            F::Presence { topic, reference } => self.presence(socket, topic, reference).await,
            F::PresenceStats { topic, reference } => {
                self.presence_stats(socket, topic, reference).await
            }
            F::Rpc {
                method,
                data,
                reference,
            } => self.rpc(socket, method, data, reference).await,
        }
    }
}

fn reference_of(frame: &client::ClientFrame) -> Option<client::Ref> {
    use client::ClientFrame as F;
    match frame {
        F::Hello { .. } => None,
        F::Subscribe { reference, .. }
        | F::Unsubscribe { reference, .. }
        | F::Publish { reference, .. }
        | F::Ping { reference }
        | F::Refresh { reference, .. }
        | F::History { reference, .. }
        | F::Presence { reference, .. }
        | F::PresenceStats { reference, .. }
        | F::Rpc { reference, .. } => *reference,
    }
}

/// Longest decode error message sent back, in bytes.
const MAX_ERROR_MESSAGE: usize = 200;

/// Cuts a decode error message: serde's quotes the offending value, which can be as long as
/// the frame and, escaped twice (Debug, then JSON), twice as long: more than the write buffer
/// holds, which would drop the connection instead of answering.
fn bounded(mut message: String) -> String {
    if message.len() > MAX_ERROR_MESSAGE {
        let mut cut = MAX_ERROR_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    message
}
