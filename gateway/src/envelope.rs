//! The payload of a topic message on the backplane.
//!
//! `<seq> <epoch> <published unix µs>[ <excluded session>]\n<data JSON>`: a one-line header the
//! receiving pod needs for ordering, latency and echo suppression, then the payload exactly as
//! the publisher sent it. A text header keeps it readable with `nats sub` when debugging a fleet.
//!
//! The excluded session is the publisher's choice (`exclude_self`, `exclude_session`): every pod
//! needs it, since that session may be connected anywhere. It is a trailing field so a pod that
//! predates it reads the first three and ignores it (it then delivers the message to that
//! session in full, during a rolling upgrade).
//!
//! A message of an ephemeral topic (no history) has no `seq`: its header is `0 - <µs>`. `0` is
//! never a real `seq`, and the epoch `-` orders before every real epoch, so a pod that (wrongly
//! configured) treats the topic as one with history drops it as stale instead of misordering.

use bytes::{BufMut, Bytes, BytesMut};
use protocol::{Epoch, Payload, SessionId};

/// The longest header [`Envelope::encode`] writes: a 20-digit `seq`, an epoch of up to
/// [`protocol::MAX_EPOCH_LEN`] characters, 20 digits of time, an excluded session id (32
/// characters), three spaces and the newline. A payload of `n` bytes travels as at most
/// `n + MAX_HEADER_LEN` bytes on the backplane.
pub const MAX_HEADER_LEN: usize = 20 + 1 + protocol::MAX_EPOCH_LEN + 1 + 20 + 1 + 32 + 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub seq: u64,
    pub epoch: Epoch,
    pub published_us: u64,
    pub data: Payload,
    /// The session that gets a `skipped` frame instead (or, on an ephemeral topic, nothing).
    pub exclude: Option<SessionId>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed backplane envelope: {0}")]
pub struct EnvelopeError(&'static str);

/// The epoch written in ephemeral envelopes.
const EPHEMERAL_EPOCH: &str = "-";

impl Envelope {
    /// A message of an ephemeral topic.
    pub fn ephemeral(data: Payload, exclude: Option<SessionId>) -> Self {
        Self {
            seq: 0,
            epoch: Epoch::new(EPHEMERAL_EPOCH),
            published_us: now_us(),
            data,
            exclude,
        }
    }

    pub fn is_ephemeral(&self) -> bool {
        self.seq == 0
    }

    pub fn encode(&self) -> Bytes {
        let header = match &self.exclude {
            None => format!(
                "{} {} {}\n",
                self.seq,
                self.epoch.as_str(),
                self.published_us
            ),
            Some(session) => format!(
                "{} {} {} {}\n",
                self.seq,
                self.epoch.as_str(),
                self.published_us,
                session.as_str()
            ),
        };
        let mut buf = BytesMut::with_capacity(header.len() + self.data.len());
        buf.put_slice(header.as_bytes());
        buf.put_slice(self.data.as_str().as_bytes());
        buf.freeze()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let text = std::str::from_utf8(bytes).map_err(|_| EnvelopeError("not UTF-8"))?;
        let (header, data) = text.split_once('\n').ok_or(EnvelopeError("no header"))?;
        let mut parts = header.split(' ');
        let mut field = |what| parts.next().ok_or(EnvelopeError(what));
        let seq = field("seq")?.parse().map_err(|_| EnvelopeError("seq"))?;
        let epoch = Epoch::new(field("epoch")?);
        let published_us = field("time")?.parse().map_err(|_| EnvelopeError("time"))?;
        let exclude = parts
            .next()
            .map(SessionId::parse)
            .transpose()
            .map_err(|_| EnvelopeError("excluded session"))?;
        let data = Payload::parse(data).map_err(|_| EnvelopeError("data is not JSON"))?;
        Ok(Self {
            seq,
            epoch,
            published_us,
            data,
            exclude,
        })
    }
}

/// Microseconds since the Unix epoch (wall clock: publish and delivery may be on two pods).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let e = Envelope {
            seq: 42,
            epoch: Epoch::new("a1b2"),
            published_us: 1_700_000_000_000_000,
            data: Payload::parse("{\"x\":\"line\\nbreak\"}").unwrap(),
            exclude: None,
        };
        assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
        let excluding = Envelope {
            exclude: Some(SessionId::generate()),
            ..e.clone()
        };
        let encoded = excluding.encode();
        assert_eq!(Envelope::decode(&encoded).unwrap(), excluding);
        // Only a session id there: anything else is malformed, not silently dropped.
        assert!(Envelope::decode(b"1 e 2 not-a-session\n1").is_err());
        assert!(Envelope::decode(b"garbage").is_err());
        let eph = Envelope::ephemeral(Payload::parse("[1]").unwrap(), None);
        let back = Envelope::decode(&eph.encode()).unwrap();
        assert!(back.is_ephemeral());
        assert!(!back.epoch.is_newer_than(&Epoch::new("a1b2")));
        assert!(Envelope::decode(b"1 e 2\n{").is_err());
    }

    #[test]
    fn the_longest_header_fits_its_bound() {
        let e = Envelope {
            seq: u64::MAX,
            epoch: Epoch::new("e".repeat(protocol::MAX_EPOCH_LEN)),
            published_us: u64::MAX,
            data: Payload::parse("1").unwrap(),
            exclude: Some(SessionId::generate()),
        };
        assert_eq!(e.encode().len(), MAX_HEADER_LEN + e.data.len());
    }
}
