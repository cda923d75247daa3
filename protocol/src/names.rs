//! Validated names: topics, session ids, epochs and resume tokens.
//!
//! Every name is checked when it is built, so code past the decoder never sees a topic that could
//! smuggle a NATS wildcard or a Redis key separator.

use std::fmt;
use std::sync::Arc;

use rand::Rng;
use serde::{Deserialize, Deserializer, Serialize};

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidName {
    #[error("topic must be 1-{max} characters", max = Topic::MAX_LEN)]
    TopicLength,
    #[error("topic may only contain A-Z a-z 0-9 _ . : -")]
    TopicCharacter,
    #[error("malformed resume token")]
    ResumeToken,
    #[error("malformed session id")]
    SessionId,
    #[error("publish id must be 1-64 characters of A-Z a-z 0-9 _ . : -")]
    PublishId,
    #[error("rpc method must be 1-100 characters of A-Z a-z 0-9 _ . : / -")]
    RpcMethod,
}

/// A publisher's idempotency key (`publish.id`): 1–64 characters of `[A-Za-z0-9_.:-]`.
///
/// A retry with the same id on the same topic within the dedup window returns the first
/// publish's `seq` and stores nothing. The character set keeps it safe inside a store key.
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct PublishId(String);

impl PublishId {
    pub const MAX_LEN: usize = 64;

    pub fn new(id: &str) -> Result<Self, InvalidName> {
        let valid = !id.is_empty()
            && id.len() <= Self::MAX_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
        if valid {
            Ok(Self(id.to_owned()))
        } else {
            Err(InvalidName::PublishId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PublishId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PublishId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        PublishId::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A topic name: 1–200 characters of `[A-Za-z0-9_.:-]`.
///
/// Cheap to clone (shared string): topics are keys in the hub and travel with every message.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Topic(Arc<str>);

impl Topic {
    pub const MAX_LEN: usize = 200;

    pub fn new(name: &str) -> Result<Self, InvalidName> {
        if name.is_empty() || name.len() > Self::MAX_LEN {
            return Err(InvalidName::TopicLength);
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
        {
            return Err(InvalidName::TopicCharacter);
        }
        Ok(Self(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Topic {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Topic::new(&s).map_err(serde::de::Error::custom)
    }
}

/// `bytes` random bytes as lowercase hex. Written into one string: a session's ids are made on
/// every fresh `hello`, and a string per byte was a measurable part of a handshake.
fn random_hex(bytes: usize) -> String {
    use std::fmt::Write as _;
    let mut rng = rand::rng();
    let mut out = String::with_capacity(bytes * 2);
    for _ in 0..bytes {
        let _ = write!(out, "{:02x}", rng.random::<u8>());
    }
    out
}

/// A session id: 32 lowercase hex characters (128 random bits). Public: it appears in `welcome`.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(String);

impl SessionId {
    pub fn generate() -> Self {
        Self(random_hex(16))
    }

    pub fn parse(s: &str) -> Result<Self, InvalidName> {
        if s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidName::SessionId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The generation of a topic's history. It changes when the history is lost (for example the
/// store was flushed), so a client position from an older epoch is known to be unrecoverable.
///
/// Cheap to clone (shared string): every subscription of every connection holds its topic's
/// epoch, twice (what was fed and what was flushed).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Epoch(Arc<str>);

impl Epoch {
    /// A new epoch: 16 lowercase hex digits, the creation time in Unix milliseconds (48 bits)
    /// followed by 16 random bits, so epochs created later order after earlier ones (see
    /// [`Epoch::is_newer_than`]) and two created in the same millisecond still differ.
    pub fn generate() -> Self {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self::at(ms, rand::rng().random::<u16>())
    }

    /// The epoch created at `ms` (Unix milliseconds) with the random suffix `salt`.
    pub fn at(ms: u64, salt: u16) -> Self {
        Self(Arc::from(format!(
            "{:012x}{salt:04x}",
            ms & 0xffff_ffff_ffff
        )))
    }

    /// Whether this epoch was created after `other`. Epochs are ordered by length, then
    /// lexicographically: fixed-width hex orders like the number it spells, and the 8-digit
    /// random epochs of earlier versions order before every time-prefixed one.
    pub fn is_newer_than(&self, other: &Epoch) -> bool {
        (self.0.len(), &*self.0) > (other.0.len(), &*other.0)
    }

    pub fn new(s: impl Into<String>) -> Self {
        Self(Arc::from(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A message payload: any JSON value, validated once when it enters the gateway and kept as text.
///
/// Cheap to clone (shared string): it is stored in history and forwarded without being parsed again.
#[derive(Clone, PartialEq, Eq)]
pub struct Payload(Arc<str>);

impl Payload {
    /// Validates `text` as one JSON value.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        let raw: &crate::RawJson = serde_json::from_str(text)?;
        Ok(Self(Arc::from(raw.get())))
    }

    /// Wraps raw JSON that was validated by serde.
    pub fn from_raw(raw: &crate::RawJson) -> Self {
        Self(Arc::from(raw.get()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Writes the payload as the JSON it is, byte for byte. For the cold paths (history pages, API
/// answers): serde has no way to take already-validated raw JSON without scanning it again, so
/// the hot path writes `message` frames by hand instead ([`crate::encode_message`]).
impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw: &crate::RawJson =
            serde_json::from_str(&self.0).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({} bytes)", self.0.len())
    }
}

/// A client's place in a topic: the last `seq` it has seen, in which epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub seq: u64,
    pub epoch: Epoch,
}

/// A client's place in a topic's join/leave events: the last `pseq` it has seen, in which
/// presence epoch (presence has its own sequence and epoch, independent of the messages').
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresencePosition {
    pub pseq: u64,
    pub epoch: Epoch,
}

/// A position as a client sends it (`hello.positions`, `subscribe.since`): the message
/// position, optionally with the presence position as `pseq` and `pepoch`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct WirePosition {
    pub seq: u64,
    pub epoch: Epoch,
    pub pseq: Option<u64>,
    pub pepoch: Option<Epoch>,
}

impl WirePosition {
    /// The message position and, when both `pseq` and `pepoch` were given, the presence one.
    pub fn split(self) -> (Position, Option<PresencePosition>) {
        let presence = match (self.pseq, self.pepoch) {
            (Some(pseq), Some(epoch)) => Some(PresencePosition { pseq, epoch }),
            _ => None,
        };
        (
            Position {
                seq: self.seq,
                epoch: self.epoch,
            },
            presence,
        )
    }
}

/// The secret a client presents to resume its session: `<session id>.<secret>`.
///
/// The secret is 256 random bits stored with the session; a token whose secret does not match the
/// stored one (compared in constant time) resumes nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct ResumeToken {
    pub session: SessionId,
    pub secret: String,
}

impl ResumeToken {
    pub fn generate(session: SessionId) -> Self {
        Self {
            session,
            secret: random_hex(32),
        }
    }

    pub fn parse(s: &str) -> Result<Self, InvalidName> {
        let (id, secret) = s.split_once('.').ok_or(InvalidName::ResumeToken)?;
        let session = SessionId::parse(id).map_err(|_| InvalidName::ResumeToken)?;
        if secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(InvalidName::ResumeToken);
        }
        Ok(Self {
            session,
            secret: secret.to_owned(),
        })
    }

    /// Constant-time comparison of the secret, so timing does not leak how much of a guess matched.
    pub fn secret_matches(&self, stored: &str) -> bool {
        let (a, b) = (self.secret.as_bytes(), stored.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl fmt::Display for ResumeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.session, self.secret)
    }
}

/// Never print the secret.
impl fmt::Debug for ResumeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResumeToken({}.…)", self.session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_order_by_creation_time() {
        let old = Epoch::at(1_000, 0xffff);
        let new = Epoch::at(1_001, 0);
        assert_eq!(new.as_str().len(), 16);
        assert!(new.is_newer_than(&old));
        assert!(!old.is_newer_than(&new));
        assert!(!old.is_newer_than(&old));
        // The 8-digit random epochs of earlier versions are older than any new one.
        assert!(Epoch::at(0, 0).is_newer_than(&Epoch::new("ffffffff")));
        assert!(Epoch::generate().is_newer_than(&old));
    }

    #[test]
    fn topic_rules() {
        assert!(Topic::new("chat.room-1:a_b").is_ok());
        assert_eq!(Topic::new(""), Err(InvalidName::TopicLength));
        assert_eq!(Topic::new(&"a".repeat(201)), Err(InvalidName::TopicLength));
        assert!(Topic::new(&"a".repeat(200)).is_ok());
        for bad in ["a b", "a>", "a*", "é", "a/b", "a\u{0}"] {
            assert_eq!(Topic::new(bad), Err(InvalidName::TopicCharacter), "{bad:?}");
        }
    }

    #[test]
    fn resume_token_round_trip() {
        let t = ResumeToken::generate(SessionId::generate());
        let p = ResumeToken::parse(&t.to_string()).unwrap();
        assert_eq!(p, t);
        assert!(p.secret_matches(&t.secret));
        assert!(!p.secret_matches(&"0".repeat(64)));
        assert!(ResumeToken::parse("nope").is_err());
        assert!(!format!("{t:?}").contains(&t.secret));
    }
}
