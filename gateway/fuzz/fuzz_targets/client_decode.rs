//! Fuzzes the decoder of client frames: any text a client can send must decode to a frame or an
//! error, never panic, and a decoded frame's topic must be a valid topic name.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::client::{ClientFrame, decode};

fuzz_target!(|data: &[u8]| {
    // WebSocket text frames are UTF-8 (tungstenite rejects anything else before the decoder).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match decode(text) {
        Ok(
            ClientFrame::Subscribe { topic, .. }
            | ClientFrame::Unsubscribe { topic, .. }
            | ClientFrame::Publish { topic, .. },
        ) => {
            assert!(protocol::Topic::new(topic.as_str()).is_ok());
        }
        Ok(_) => {}
        Err(e) => {
            // Every error maps to a code and renders without panicking.
            let _ = (e.code(), e.reference(), e.to_string());
        }
    }
});
