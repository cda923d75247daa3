//! Every way a connection can end, and the one mapping from each to its close code and advice;
//! read errors are mapped here too.

use protocol::{CloseAdvice, CloseCode};
use tokio_tungstenite::tungstenite;

/// Why a connection ends. [`Close::frame`] is the one mapping to close codes.
#[derive(Debug)]
pub enum Close {
    /// The client sent a close frame (tungstenite answers it), with this code if any.
    ByClient(Option<u16>),
    /// The transport is gone (EOF, reset, write timeout, idle): nothing more can be sent.
    Gone,
    /// Asked from outside: drain (1001), slow consumer (1013), takeover (1000), rebalance (1012).
    Requested(CloseCode, CloseAdvice),
    /// No `hello` within the handshake timeout.
    HelloTimeout,
    /// A message above `--max-message-size`.
    TooBig,
    /// A text frame that is not UTF-8.
    InvalidUtf8,
    /// A WebSocket protocol violation.
    Protocol,
    /// The store could not open or restore the session.
    Unavailable,
    /// Authentication failed (`unauthorized`), or the token expired (`token_expired`).
    Auth(&'static str),
    /// Sustained abuse of the frame or publish rate limits.
    Abusive,
    /// A subscription fell behind further than history reaches: the client must resume (and
    /// is told `recovered: false` for that topic).
    Lagged,
    /// A newer connection of the same session holds it (this pod or another).
    TakenOver,
    /// The application's connect hook refused the client, with its code and advice.
    Refused { error: String, reconnect: bool },
}

impl Close {
    pub(super) fn frame(&self) -> Option<(CloseCode, CloseAdvice)> {
        match self {
            Close::ByClient(_) | Close::Gone => None,
            Close::Requested(code, advice) => Some((*code, advice.clone())),
            Close::HelloTimeout => Some((
                CloseCode::Policy,
                CloseAdvice::reconnect(Some(1_000)).with_error("hello_timeout"),
            )),
            Close::TooBig => Some((CloseCode::TooBig, CloseAdvice::stop("too_large"))),
            Close::InvalidUtf8 => {
                Some((CloseCode::InvalidPayload, CloseAdvice::stop("invalid_utf8")))
            }
            Close::Protocol => Some((
                CloseCode::ProtocolError,
                CloseAdvice::stop("protocol_error"),
            )),
            Close::Auth("token_expired") => Some((
                CloseCode::Policy,
                CloseAdvice::reconnect(None).with_error("token_expired"),
            )),
            Close::Auth(error) => Some((CloseCode::Policy, CloseAdvice::stop(error))),
            Close::Abusive => Some((CloseCode::Policy, CloseAdvice::stop("rate_limited"))),
            Close::Unavailable => Some((
                CloseCode::TryAgainLater,
                CloseAdvice::reconnect(Some(2_000)).with_error("unavailable"),
            )),
            Close::Lagged => Some((
                CloseCode::TryAgainLater,
                CloseAdvice::reconnect(Some(500)).with_error("lagged"),
            )),
            Close::TakenOver => Some((CloseCode::Normal, CloseAdvice::stop("session_taken_over"))),
            Close::Refused { error, reconnect } => Some((
                CloseCode::Policy,
                if *reconnect {
                    CloseAdvice::reconnect(Some(5_000)).with_error(error)
                } else {
                    CloseAdvice::stop(error)
                },
            )),
        }
    }
}

/// Maps a read error to how the connection ends.
pub(super) fn read_error(e: axum::Error) -> Close {
    let Ok(e) = e.into_inner().downcast::<tungstenite::Error>() else {
        return Close::Gone;
    };
    match *e {
        tungstenite::Error::Capacity(_) => Close::TooBig,
        tungstenite::Error::Utf8(_) => Close::InvalidUtf8,
        // A peer that vanishes without a close frame is gone, not misbehaving.
        tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        ) => Close::Gone,
        tungstenite::Error::Protocol(_) => Close::Protocol,
        tungstenite::Error::ConnectionClosed
        | tungstenite::Error::AlreadyClosed
        | tungstenite::Error::Io(_)
        | tungstenite::Error::Tls(_)
        | tungstenite::Error::WriteBufferFull(_)
        | tungstenite::Error::Url(_)
        | tungstenite::Error::Http(_)
        | tungstenite::Error::HttpFormat(_)
        | tungstenite::Error::AttackAttempt => Close::Gone,
    }
}
