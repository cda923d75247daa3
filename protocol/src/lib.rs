//! Wire protocol v1 of the gateway, shared by the server, the backends and the load generator.
//!
//! Layout:
//! - [`names`]: validated newtypes for what travels between parts: [`Topic`], [`SessionId`],
//!   [`Epoch`], [`ResumeToken`], and the client's [`Position`] in a topic.
//! - [`client`]: frames a client sends, decoded by [`client::decode`] into [`ClientFrame`] with a
//!   typed [`DecodeError`] (so the server can answer `bad_request` or `unknown_type` precisely).
//! - [`server`]: frames the server sends, and [`encode_message`], the hot-path frame that is
//!   serialized once per published message and shared by every local subscriber.
//! - [`close`]: close codes and the compact JSON reconnect advice carried in the close reason.
//! - [`redact`]: [`redact_url`], backend URLs without their credentials, for logs and errors.
//!
//! The protocol is JSON text frames with a `type` field; `docs/protocol.md` documents every frame.
//! `data` payloads are kept as raw JSON ([`serde_json::value::RawValue`]) end to end: the gateway
//! validates them once on the way in and never parses them again.

#![forbid(unsafe_code)]

pub mod client;
pub mod close;
pub mod names;
pub mod redact;
pub mod server;

pub use client::{ClientFrame, DecodeError, HistoryQuery};
pub use close::{CloseAdvice, CloseCode};
pub use names::{
    Epoch, InvalidName, Payload, Position, PresencePosition, PublishId, ResumeToken, SessionId,
    Topic, WirePosition,
};
pub use redact::redact_url;
pub use server::{
    ErrorCode, HistoryMessage, MAX_EPOCH_LEN, Member, ServerFrame, encode_ephemeral_message,
    encode_message, encode_skipped, max_message_frame_len,
};

/// Raw JSON payload of a message, validated once when it enters the gateway.
pub type RawJson = serde_json::value::RawValue;
