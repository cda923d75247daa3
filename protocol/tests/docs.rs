//! `docs/protocol.md` documents every frame: each client frame type has a row in the client
//! table and each server frame type one in the server table. The lists below are checked
//! against the enums by exhaustive matches, so a new frame fails here until it is documented.

use protocol::{ClientFrame, ServerFrame};

fn doc() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md");
    std::fs::read_to_string(path).expect("docs/protocol.md")
}

/// The section of `doc` from `heading` to the next `## ` heading.
fn section<'a>(doc: &'a str, heading: &str) -> &'a str {
    let start = doc.find(heading).unwrap_or_else(|| panic!("no {heading}"));
    let rest = &doc[start + heading.len()..];
    &rest[..rest.find("\n## ").unwrap_or(rest.len())]
}

const CLIENT: [&str; 10] = [
    "hello",
    "subscribe",
    "unsubscribe",
    "publish",
    "ping",
    "refresh",
    "history",
    "presence",
    "presence_stats",
    "rpc",
];

const SERVER: [&str; 15] = [
    "welcome",
    "subscribed",
    "message",
    "skipped",
    "published",
    "unsubscribed",
    "pong",
    "refreshed",
    "history",
    "presence",
    "presence_stats",
    "join",
    "leave",
    "rpc_result",
    "error",
];

/// Fails to compile when a client frame is added without a name in [`CLIENT`].
#[allow(dead_code)]
fn client_kind(frame: &ClientFrame) -> &'static str {
    match frame {
        ClientFrame::Hello { .. }
        | ClientFrame::Subscribe { .. }
        | ClientFrame::Unsubscribe { .. }
        | ClientFrame::Publish { .. }
        | ClientFrame::Ping { .. }
        | ClientFrame::Refresh { .. }
        | ClientFrame::History { .. }
        | ClientFrame::Presence { .. }
        | ClientFrame::PresenceStats { .. }
        | ClientFrame::Rpc { .. } => frame.kind(),
    }
}

/// Fails to compile when a server frame is added without a name in [`SERVER`] (`message` is
/// encoded apart, by `encode_message`).
#[allow(dead_code)]
fn server_kind(frame: &ServerFrame) -> &'static str {
    match frame {
        ServerFrame::Welcome { .. } => "welcome",
        ServerFrame::Subscribed { .. } => "subscribed",
        ServerFrame::Unsubscribed { .. } => "unsubscribed",
        ServerFrame::Published { .. } => "published",
        ServerFrame::Pong { .. } => "pong",
        ServerFrame::Refreshed { .. } => "refreshed",
        ServerFrame::History { .. } => "history",
        ServerFrame::Presence { .. } => "presence",
        ServerFrame::PresenceStats { .. } => "presence_stats",
        ServerFrame::Skipped { .. } => "skipped",
        ServerFrame::Join { .. } => "join",
        ServerFrame::Leave { .. } => "leave",
        ServerFrame::RpcResult { .. } => "rpc_result",
        ServerFrame::Error { .. } => "error",
    }
}

#[test]
fn every_frame_is_in_the_tables() {
    let doc = doc();
    let client = section(&doc, "\n## Client frames\n");
    for kind in CLIENT {
        assert!(
            client.contains(&format!("\n| `{kind}` |")),
            "client frame `{kind}` is not in the client frame table"
        );
        let decoded = protocol::client::decode(&format!(
            r#"{{"type":"{kind}","topic":"t","data":1,"token":"x","method":"m"}}"#
        ));
        assert_eq!(decoded.map(|f| f.kind()), Ok(kind), "{kind}");
    }
    let server = section(&doc, "\n## Server frames\n");
    for kind in SERVER {
        assert!(
            server.contains(&format!("\n| `{kind}` |")),
            "server frame `{kind}` is not in the server frame table"
        );
    }
}
