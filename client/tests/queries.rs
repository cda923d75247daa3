//! `rpc`, `history`, `presence` and `presence_stats` against a scripted fake gateway: each
//! request carries its own `ref` and gets its typed answer; `error` replies (`limit_reached`,
//! `bad_request`) fail the request, not the client; a request made before the connection is
//! up waits for it.

use std::time::Duration;

use gateway_client::{ClientConfig, ClientError, HistoryQuery, Position, PresenceStats};
use serde_json::{Value, json};
use tokio::net::TcpListener;

mod support;

use support::{recv, send};

/// Answers each request by its type; returns the requests it got, in order.
async fn fake_gateway(listener: TcpListener) -> Vec<Value> {
    let (tcp, _) = listener.accept().await.unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    let hello = recv(&mut ws).await;
    assert_eq!(hello["type"], "hello");
    send(
        &mut ws,
        json!({"type": "welcome", "session": "s1", "resume": "s1.secret", "resumed": false}),
    )
    .await;
    let mut requests = Vec::new();
    while requests.len() < 7 {
        let req = recv(&mut ws).await;
        let r = req["ref"].clone();
        let topic = req["topic"].clone();
        let reply = match (req["type"].as_str().unwrap(), req["method"].as_str()) {
            ("rpc", Some("echo")) => json!({"type": "rpc_result", "ref": r, "data": req["data"]}),
            ("rpc", Some("nothing")) => json!({"type": "rpc_result", "ref": r}),
            ("rpc", _) => json!({"type": "error", "code": "bad_request",
                                 "message": "this method always fails", "ref": r}),
            ("history", _) => json!({"type": "history", "topic": topic, "ref": r, "seq": 5,
                "epoch": "e1", "recovered": false,
                "messages": [{"seq": 5, "data": {"text":  "m5"}}, {"seq": 4, "data": "m4"}]}),
            ("presence", _) if topic == "big" => json!({"type": "error", "code": "limit_reached",
                "message": "more than 1000 members: use presence_stats", "ref": r}),
            ("presence", _) => json!({"type": "presence", "topic": topic, "ref": r,
                "members": [{"session": "a1"}, {"user": "ann", "session": "b2", "info": {"name": "Ann"}}]}),
            ("presence_stats", _) => json!({"type": "presence_stats", "topic": topic, "ref": r,
                "members": 2, "users": 1}),
            other => panic!("unexpected request {other:?}"),
        };
        send(&mut ws, reply).await;
        requests.push(req);
    }
    requests
}

#[tokio::test]
async fn queries_get_typed_answers_and_errors_by_ref() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let gateway = tokio::spawn(fake_gateway(listener));
    let (client, _events) = gateway_client::connect(ClientConfig::new([url]));

    // Sent before the welcome: waits for the connection.
    let echoed = client.rpc("echo", &json!({"n": [1, 2]})).await.unwrap();
    assert_eq!(echoed, json!({"n": [1, 2]}));
    assert_eq!(client.rpc("nothing", &()).await.unwrap(), Value::Null);
    let failed = client.rpc("fail", &json!(null)).await.unwrap_err();
    assert_eq!(failed.code(), Some("bad_request"));
    assert!(matches!(
        client.rpc("no spaces", &()).await,
        Err(ClientError::InvalidMethod(_))
    ));

    let since = Position {
        seq: 3,
        epoch: "e0".into(),
    };
    let query = HistoryQuery {
        since: Some(since),
        limit: Some(2),
        reverse: true,
    };
    let page = client.history("chat", query).await.unwrap();
    assert_eq!((page.seq, page.epoch.as_str()), (5, "e1"));
    assert_eq!(page.recovered, Some(false));
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [5, 4]);
    assert_eq!(page.messages[0].data.get(), r#"{"text":"m5"}"#);

    let members = client.presence("room").await.unwrap();
    assert_eq!(members.len(), 2);
    assert_eq!(members[1].user.as_deref(), Some("ann"));
    assert_eq!(members[0].user, None);
    assert_eq!(members[1].info, Some(json!({"name": "Ann"})));
    assert_eq!(members[0].info, None);
    let big = client.presence("big").await.unwrap_err();
    assert_eq!(big.code(), Some("limit_reached"));
    let stats = client.presence_stats("room").await.unwrap();
    assert_eq!(
        stats,
        PresenceStats {
            members: 2,
            users: 1
        }
    );

    let requests = tokio::time::timeout(Duration::from_secs(10), gateway)
        .await
        .unwrap()
        .unwrap();
    let refs: std::collections::HashSet<u64> = requests
        .iter()
        .map(|r| r["ref"].as_u64().unwrap())
        .collect();
    assert_eq!(refs.len(), requests.len(), "every request has its own ref");
    assert_eq!(
        requests[3],
        json!({"type": "history", "topic": "chat", "since": {"seq": 3, "epoch": "e0"},
               "limit": 2, "reverse": true, "ref": requests[3]["ref"]})
    );
    assert_eq!(
        requests[1],
        json!({"type": "rpc", "method": "nothing", "ref": requests[1]["ref"]}),
        "no data: no data field"
    );
    client.close().await;
}
