//! Message sizes: what a publish may carry, and the buffers derived from it.
//!
//! One limit, `--max-message-size`, bounds a message's payload (its `data` JSON text) wherever it
//! enters: a WebSocket `publish` or `POST /api/publish`. It is checked at the door, before the
//! append, so a refused message uses no `seq` (`Shared::check_publishable`). Everything a
//! message passes through afterwards is sized from the same number here, so that a message
//! accepted anywhere can be delivered everywhere:
//! - the backplane: payload plus envelope header must fit its `max_payload` (NATS: the connected
//!   server's, 1 MiB by default). A smaller backplane limit lowers the accepted size, and
//!   [`watch_backplane_limit`] warns when it does.
//! - each socket's write buffer: a full batch plus the largest `message` frame
//!   ([`protocol::max_message_frame_len`]: the longest topic, `seq` and epoch around the payload).
//! - the WebSocket read limit: a `publish` frame of the largest payload, with room for the rest
//!   of the frame, so a payload somewhat above the limit gets `too_large` rather than a close.
//! - the admin router's body limit: the same for a `POST /api/publish` body.
//!
//! The write buffer is sized from this pod's limit, so every pod of a fleet must run with the
//! same `--max-message-size`: a message accepted by a pod with a larger limit could not be
//! written to the subscribers of a pod with a smaller one.

use std::sync::Arc;

use backplane::Backplane;
use protocol::{Payload, Topic};

use crate::envelope::MAX_HEADER_LEN;
use crate::{PublishError, Shared};

/// Room a client frame gets beyond its payload. A `publish` with the longest topic and `ref`
/// (`{"type":"publish","topic":"…","ref":…,"data":…}`) needs 264 bytes; the rest is for
/// whitespace and fields the gateway ignores.
pub const CLIENT_FRAME_ROOM: usize = 512;

/// Room an admin request body gets beyond its payload: the topic (up to six bytes per character
/// when written with `\u` escapes), the field names and whitespace.
pub const PUBLISH_BODY_ROOM: usize = 4 * 1024;

/// Largest WebSocket frame header the server writes (unmasked, 64-bit length).
const WS_HEADER: usize = 10;

/// Room for frames other than `message` that can sit in the write buffer: a reply (error
/// messages are cut to 200 bytes) and a queued pong or close (at most 127 bytes of frame).
const REPLY_ROOM: usize = 1024;

/// The largest client message (and frame) the WebSocket reads: a `publish` of the largest
/// payload. Above it the connection is closed with 1009.
pub fn max_client_frame(max_message_size: usize) -> usize {
    max_message_size + CLIENT_FRAME_ROOM
}

/// The largest `POST /api/publish` body the admin router reads (413 above it).
pub fn max_publish_body(max_message_size: usize) -> usize {
    max_message_size + PUBLISH_BODY_ROOM
}

/// The most one socket may buffer for writing: a batch (`write_buffer_size`, after which the
/// buffer is written out) plus the largest frame a message of at most `max_message_size` bytes
/// becomes. Anything smaller and an accepted message could fail to be written, dropping the
/// subscriber without a close frame.
pub fn max_write_buffer(write_buffer_size: usize, max_message_size: usize) -> usize {
    write_buffer_size + WS_HEADER + protocol::max_message_frame_len(max_message_size) + REPLY_ROOM
}

/// What limits a publish, for `gateway_publishes_refused_total{reason}`.
pub(crate) const MAX_MESSAGE_SIZE: &str = "max_message_size";
const BACKPLANE_MAX_PAYLOAD: &str = "backplane_max_payload";

impl Shared {
    /// Refuses a payload that could not reach every subscriber: above `--max-message-size`,
    /// or too large for the backplane once wrapped in its envelope. Called before anything is
    /// stored, so a refusal uses no `seq`.
    pub(crate) fn check_publishable(
        &self,
        topic: &Topic,
        data: &Payload,
    ) -> Result<(), PublishError> {
        let (limit, reason) =
            payload_limit(self.config.max_message_size, self.backplane.max_payload());
        let size = data.len();
        if size <= limit {
            return Ok(());
        }
        self.metrics.publish.refuse(reason);
        tracing::debug!(%topic, size, limit, reason, "publish refused: too large");
        Err(PublishError::TooLarge { size, limit })
    }
}

/// The largest accepted payload and what sets it: the configured limit, or the backplane's
/// when that is smaller once the envelope header is taken off.
fn payload_limit(max_message_size: usize, backplane: Option<usize>) -> (usize, &'static str) {
    match backplane.map(|max| max.saturating_sub(MAX_HEADER_LEN)) {
        Some(carried) if carried < max_message_size => (carried, BACKPLANE_MAX_PAYLOAD),
        _ => (max_message_size, MAX_MESSAGE_SIZE),
    }
}

/// Warns when the backplane carries less than `--max-message-size` plus the envelope: messages
/// in between are refused with `too_large`. Checked at every (re)connection, since the servers
/// of a NATS cluster can differ; each limit is reported once.
pub(crate) async fn watch_backplane_limit(shared: Arc<Shared>) {
    if shared.backplane.max_payload().is_none() {
        return;
    }
    let mut reconnects = shared.backplane.reconnects();
    let mut warned = None;
    loop {
        // Zero until the first connection: before it, the limit is only the client's default.
        if *reconnects.borrow_and_update() > 0 {
            let max_payload = shared.backplane.max_payload();
            let max_message_size = shared.config.max_message_size;
            let (limit, reason) = payload_limit(max_message_size, max_payload);
            if reason == BACKPLANE_MAX_PAYLOAD && warned != max_payload {
                warned = max_payload;
                tracing::warn!(
                    max_payload,
                    max_message_size,
                    accepted = limit,
                    "the backplane's max_payload is below --max-message-size plus the {MAX_HEADER_LEN}-byte envelope: \
                     larger messages are refused with too_large; raise max_payload on the NATS servers or lower --max-message-size"
                );
            }
        }
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            changed = reconnects.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{Epoch, encode_message};

    #[test]
    fn a_maximal_message_with_a_maximal_topic_fits_the_write_buffer() {
        let topic = Topic::new(&"t".repeat(Topic::MAX_LEN)).unwrap();
        let epoch = Epoch::new("e".repeat(protocol::MAX_EPOCH_LEN));
        for (write_buffer, max) in [(32 * 1024, 64 * 1024), (1024, 128), (0, 16 << 20)] {
            let data = Payload::parse(&format!("\"{}\"", "x".repeat(max - 2))).unwrap();
            assert_eq!(data.len(), max);
            let frame = encode_message(&topic, u64::MAX, Some(&epoch), &data);
            // What tungstenite checks: the frame with its header, on top of a full batch.
            let needed = write_buffer + WS_HEADER + frame.len();
            assert!(needed <= max_write_buffer(write_buffer, max), "{max}");
            assert!(max_write_buffer(write_buffer, max) > write_buffer);
        }
    }

    #[test]
    fn a_publish_of_the_largest_payload_fits_the_read_limit() {
        let max = 64 * 1024;
        let frame = serde_json::json!({
            "type": "publish",
            "topic": "t".repeat(Topic::MAX_LEN),
            "ref": u64::MAX,
            "data": "x".repeat(max - 2),
        })
        .to_string();
        assert!(frame.len() <= max_client_frame(max));
        // The longest topic with every character escaped: `\u0074` is six bytes for `t`.
        let body = format!(
            r#"{{ "topic": "{}", "data": "{}" }}"#,
            r"\u0074".repeat(Topic::MAX_LEN),
            "x".repeat(max - 2)
        );
        assert!(body.len() <= max_publish_body(max));
    }

    #[test]
    fn the_backplane_limit_counts_the_envelope() {
        assert_eq!(payload_limit(1000, None), (1000, MAX_MESSAGE_SIZE));
        assert_eq!(payload_limit(1000, Some(1 << 20)), (1000, MAX_MESSAGE_SIZE));
        assert_eq!(
            payload_limit(1000, Some(1000 + MAX_HEADER_LEN)),
            (1000, MAX_MESSAGE_SIZE)
        );
        assert_eq!(
            payload_limit(1000, Some(999 + MAX_HEADER_LEN)),
            (999, BACKPLANE_MAX_PAYLOAD)
        );
        assert_eq!(payload_limit(1000, Some(10)), (0, BACKPLANE_MAX_PAYLOAD));
    }
}
