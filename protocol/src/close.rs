//! Close codes and the reconnect advice carried in the close reason.

use serde::{Deserialize, Serialize};

/// The close codes the gateway sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: the client asked to close, or its session was taken over elsewhere.
    Normal,
    /// 1001: the pod is draining; reconnect (to another pod) and resume.
    GoingAway,
    /// 1002: the peer broke the WebSocket protocol.
    ProtocolError,
    /// 1007: a text frame that is not UTF-8.
    InvalidPayload,
    /// 1008: policy: no `hello` in time, authentication failed, abuse.
    Policy,
    /// 1009: a frame above the size limit.
    TooBig,
    /// 1011: an internal error.
    Internal,
    /// 1012: the pod is rebalancing its load; reconnect and resume.
    ServiceRestart,
    /// 1013: overloaded or too slow a consumer; reconnect later and resume.
    TryAgainLater,
}

impl CloseCode {
    pub fn as_u16(self) -> u16 {
        match self {
            Self::Normal => 1000,
            Self::GoingAway => 1001,
            Self::ProtocolError => 1002,
            Self::InvalidPayload => 1007,
            Self::Policy => 1008,
            Self::TooBig => 1009,
            Self::Internal => 1011,
            Self::ServiceRestart => 1012,
            Self::TryAgainLater => 1013,
        }
    }

    pub fn from_u16(code: u16) -> Option<Self> {
        Some(match code {
            1000 => Self::Normal,
            1001 => Self::GoingAway,
            1002 => Self::ProtocolError,
            1007 => Self::InvalidPayload,
            1008 => Self::Policy,
            1009 => Self::TooBig,
            1011 => Self::Internal,
            1012 => Self::ServiceRestart,
            1013 => Self::TryAgainLater,
            _ => return None,
        })
    }
}

/// Reconnect advice, serialized as compact JSON into the close reason (at most 123 bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseAdvice {
    pub reconnect: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub after_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

impl CloseAdvice {
    /// The longest reason a close frame may carry.
    pub const MAX_REASON: usize = 123;

    pub fn reconnect(after_ms: Option<u64>) -> Self {
        Self {
            reconnect: true,
            after_ms,
            error: None,
        }
    }

    pub fn with_error(mut self, error: &str) -> Self {
        self.error = Some(error.to_owned());
        self
    }

    pub fn stop(error: &str) -> Self {
        Self {
            reconnect: false,
            after_ms: None,
            error: Some(error.to_owned()),
        }
    }

    /// The close reason; an over-long error string is cut so the reason fits.
    pub fn to_reason(&self) -> String {
        let mut advice = self.clone();
        loop {
            let s = serde_json::to_string(&advice).expect("advice always serializes");
            if s.len() <= Self::MAX_REASON {
                return s;
            }
            match advice.error.as_mut() {
                Some(e) if !e.is_empty() => {
                    let cut = e
                        .len()
                        .saturating_sub(s.len() - Self::MAX_REASON)
                        .min(e.len() - 1);
                    let mut cut = cut;
                    while !e.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    e.truncate(cut);
                }
                _ => return s,
            }
        }
    }

    pub fn parse(reason: &str) -> Option<Self> {
        serde_json::from_str(reason).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_is_compact_and_bounded() {
        assert_eq!(
            CloseAdvice::reconnect(Some(850)).to_reason(),
            r#"{"reconnect":true,"after_ms":850}"#
        );
        let long = CloseAdvice::stop(&"é".repeat(200)).to_reason();
        assert!(long.len() <= CloseAdvice::MAX_REASON, "{}", long.len());
        assert!(CloseAdvice::parse(&long).is_some());
    }

    #[test]
    fn codes_round_trip() {
        for c in [1000, 1001, 1002, 1007, 1008, 1009, 1011, 1012, 1013] {
            assert_eq!(CloseCode::from_u16(c).unwrap().as_u16(), c);
        }
    }
}
