//! Message size limits in cluster mode (two gateways sharing a real redis-server and
//! nats-server): an oversize publish is refused at the door, over the WebSocket and over
//! `POST /api/publish`, before anything is stored; nobody is dropped; and a large message
//! within the limit reaches every subscriber on every pod.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use support::{Client, TestGateway, WAIT, seqs};
use test_support::{NatsServer, RedisServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The default `--max-message-size`.
const LIMIT: usize = 64 * 1024;

async fn pod(redis: &RedisServer, nats: &NatsServer, name: &str) -> TestGateway {
    let (r, n, name) = (redis.url(), nats.url(), name.to_owned());
    TestGateway::with(move |c| {
        c.redis_url = Some(r);
        c.nats_url = vec![n];
        c.pod_name = Some(name);
        c.topic_resync_interval = Duration::from_millis(500);
        c.store_timeout = Duration::from_millis(500);
    })
    .await
}

/// Two pods, each with a subscriber (the witness) on `topic`.
async fn two_pods_with_witnesses(
    redis: &RedisServer,
    nats: &NatsServer,
    topic: &str,
) -> (Vec<TestGateway>, Vec<Client>) {
    let pods = vec![
        pod(redis, nats, "pod-0").await,
        pod(redis, nats, "pod-1").await,
    ];
    let mut witnesses = Vec::new();
    for p in &pods {
        let (mut w, _) = p.hello().await;
        w.subscribe(topic).await;
        witnesses.push(w);
    }
    (pods, witnesses)
}

/// A JSON string payload of exactly `len` bytes (quotes included).
fn payload(len: usize) -> Value {
    json!("x".repeat(len - 2))
}

/// Sends a `publish` with `ref` 7 and returns the reply (messages of other topics aside).
async fn ws_publish(c: &mut Client, topic: &str, data: Value) -> Value {
    c.send(json!({"type": "publish", "topic": topic, "data": data, "ref": 7}))
        .await;
    c.next().await
}

/// `POST /api/publish` with `body`, written while the answer is read: the server may answer an
/// oversize body and close before reading all of it, so write errors are ignored.
async fn post_publish(admin: SocketAddr, body: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(admin).await.unwrap();
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let (mut rd, mut wr) = s.split();
    let write = async {
        let _ = wr.write_all(head.as_bytes()).await;
        let _ = wr.write_all(body.as_bytes()).await;
    };
    let read = async {
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        // Until the end, an error (a reset after the answer), or a complete answer.
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
            if complete(&out) {
                break;
            }
        }
        out
    };
    let ((), out) = tokio::time::timeout(WAIT, futures_util::future::join(write, read))
        .await
        .expect("an answer in time");
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Whether `out` holds a whole response with a `content-length` body.
fn complete(out: &[u8]) -> bool {
    let text = String::from_utf8_lossy(out);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .is_some_and(|len| body.len() >= len)
}

async fn api_publish(admin: SocketAddr, topic: &str, data: Value) -> (u16, Value) {
    post_publish(admin, &json!({"topic": topic, "data": data}).to_string()).await
}

fn assert_too_large(reply: &Value) {
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "too_large", "{reply}");
    assert_eq!(reply["ref"], 7, "{reply}");
}

/// Each witness is still connected and has received nothing so far.
async fn all_still_here(clients: &mut [&mut Client]) {
    for c in clients.iter_mut() {
        c.send(json!({"type": "ping", "ref": 1})).await;
        assert_eq!(c.next().await["type"], "pong");
    }
}

fn refused(metrics: &str, reason: &str) -> u64 {
    let prefix = format!(r#"gateway_publishes_refused_total{{reason="{reason}"}} "#);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_publish_is_refused_at_the_door_and_a_large_one_reaches_both_pods() {
    let (redis, nats) = (RedisServer::start(), NatsServer::start());
    let (pods, mut witnesses) = two_pods_with_witnesses(&redis, &nats, "big").await;
    let (mut publisher, _) = pods[0].hello().await;

    // Over the WebSocket: a payload one byte above the limit, in a frame the socket reads.
    let reply = ws_publish(&mut publisher, "big", payload(LIMIT + 1)).await;
    assert_too_large(&reply);
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains(&LIMIT.to_string()),
        "{reply}"
    );
    // Over HTTP, on the other pod: above the limit but within the body limit, then the
    // reported 150 KB (above the body limit too).
    for size in [LIMIT + 1, 150_000] {
        let (status, body) = api_publish(pods[1].admin, "big", payload(size)).await;
        assert_eq!(status, 413, "{size}: {body}");
        assert_eq!(body["error"], "too_large", "{size}: {body}");
        assert!(body["message"].is_string(), "{body}");
    }
    // `null` and a missing `data` are not messages, as on the WebSocket.
    for body in [r#"{"topic":"big","data":null}"#, r#"{"topic":"big"}"#] {
        let (status, reply) = post_publish(pods[0].admin, body).await;
        assert_eq!(status, 400, "{body}: {reply}");
        assert_eq!(reply["error"], "bad_request", "{reply}");
    }
    let (status, reply) = post_publish(pods[0].admin, r#"{"topic":"big","data":"#).await;
    assert_eq!((status, &reply["error"]), (400, &json!("bad_request")));
    let reply = ws_publish(&mut publisher, "big", Value::Null).await;
    assert_eq!(reply["code"], "bad_request", "{reply}");

    // Nobody was dropped, and nothing reached anyone.
    let [w0, w1] = &mut witnesses[..] else {
        unreachable!()
    };
    all_still_here(&mut [w0, w1, &mut publisher]).await;

    // No seq was used: the next accepted publishes are 1 and 2, 60 KB each (under 64 KiB),
    // one over the WebSocket on pod 0, one over HTTP on pod 1.
    let large = payload(60_000);
    assert_eq!(publisher.publish("big", large.clone()).await, 1);
    let (status, body) = api_publish(pods[1].admin, "big", large.clone()).await;
    assert_eq!((status, body["seq"].as_u64()), (200, Some(2)), "{body}");
    for w in [&mut *w0, &mut *w1] {
        let msgs = w.messages(2).await;
        assert_eq!(seqs(&msgs), vec![1, 2]);
        assert!(msgs.iter().all(|m| m["data"] == large));
    }
    all_still_here(&mut [w0, w1, &mut publisher]).await;

    let (_, m0) = pods[0].admin_get("/metrics").await;
    let (_, m1) = pods[1].admin_get("/metrics").await;
    assert_eq!(refused(&m0, "max_message_size"), 1, "{m0}");
    assert_eq!(refused(&m1, "max_message_size"), 2, "{m1}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_above_the_nats_max_payload_is_refused_before_the_append() {
    let redis = RedisServer::start();
    let nats = NatsServer::start_with_max_payload(32 * 1024);
    let (pods, mut witnesses) = two_pods_with_witnesses(&redis, &nats, "nats").await;
    let (mut publisher, _) = pods[1].hello().await;

    // Within --max-message-size, but the envelope would not fit NATS's max_payload.
    let reply = ws_publish(&mut publisher, "nats", payload(32 * 1024)).await;
    assert_too_large(&reply);
    let (status, body) = api_publish(pods[0].admin, "nats", payload(40_000)).await;
    assert_eq!(
        (status, &body["error"]),
        (413, &json!("too_large")),
        "{body}"
    );

    let [w0, w1] = &mut witnesses[..] else {
        unreachable!()
    };
    all_still_here(&mut [w0, w1, &mut publisher]).await;
    // Below it (with the envelope): delivered to both pods, as seq 1.
    let fits = payload(30_000);
    assert_eq!(publisher.publish("nats", fits.clone()).await, 1);
    for w in [&mut *w0, &mut *w1] {
        let msgs = w.messages(1).await;
        assert_eq!(
            (msgs[0]["seq"].as_u64(), &msgs[0]["data"]),
            (Some(1), &fits)
        );
    }
    let (_, m0) = pods[0].admin_get("/metrics").await;
    let (_, m1) = pods[1].admin_get("/metrics").await;
    assert_eq!(refused(&m0, "backplane_max_payload"), 1, "{m0}");
    assert_eq!(refused(&m1, "backplane_max_payload"), 1, "{m1}");
}
