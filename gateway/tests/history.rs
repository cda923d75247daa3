//! The history read API: the `history` frame, `subscribe {last}`, and the admin port's
//! `GET /api/topics/{topic}` and `.../history`, on one node and on a fleet sharing Redis and
//! NATS.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Client, TestGateway, WAIT, seqs};
use test_support::{NatsServer, RedisServer};

async fn pod(redis: &RedisServer, nats: &NatsServer, name: &str) -> TestGateway {
    let (r, n, name) = (redis.url(), nats.url(), name.to_owned());
    TestGateway::with(move |c| {
        c.redis_url = Some(r);
        c.nats_url = vec![n];
        c.pod_name = Some(name);
        c.heartbeat_interval = Duration::from_millis(200);
        c.store_timeout = Duration::from_millis(500);
    })
    .await
}

async fn history(c: &mut Client, request: Value) -> Value {
    c.send(request).await;
    c.expect("history").await
}

fn page_seqs(page: &Value) -> Vec<u64> {
    seqs(page["messages"].as_array().unwrap())
}

fn range(from: u64, to: u64) -> Vec<u64> {
    (from..=to).collect()
}

/// Publishes `n` messages `{"i": seq}` through the admin API; returns the epoch.
async fn publish_n(gw: &TestGateway, topic: &str, n: u64) -> Value {
    let mut epoch = Value::Null;
    for i in 1..=n {
        let r = gw.publish_api(topic, json!({"i": i})).await;
        assert_eq!(r["seq"], i);
        epoch = r["epoch"].clone();
    }
    epoch
}

#[tokio::test]
async fn history_pages_forwards_and_backwards_match_what_subscribers_received() {
    let gw = TestGateway::start().await;
    let (mut sub, _) = gw.hello().await;
    sub.subscribe("log").await;
    let epoch = publish_n(&gw, "log", 30).await;
    let received = sub.messages(30).await;
    let (mut c, _) = gw.hello().await;

    // Without `since`: the latest page, oldest first, with the top.
    let latest = history(
        &mut c,
        json!({"type": "history", "topic": "log", "limit": 10, "ref": 1}),
    )
    .await;
    assert_eq!(
        (latest["seq"].as_u64(), &latest["epoch"]),
        (Some(30), &epoch)
    );
    assert_eq!(
        (page_seqs(&latest), latest["ref"].as_u64()),
        (range(21, 30), Some(1))
    );
    assert!(latest.get("recovered").is_none());
    let newest = history(
        &mut c,
        json!({"type": "history", "topic": "log", "limit": 3, "reverse": true}),
    )
    .await;
    assert_eq!(page_seqs(&newest), vec![30, 29, 28]);

    // Forwards page by page from the start: exactly what the subscriber got, payloads included.
    let mut forward = Vec::new();
    let mut since = json!({"seq": 0, "epoch": epoch});
    loop {
        let page = history(
            &mut c,
            json!({"type": "history", "topic": "log", "since": since, "limit": 7}),
        )
        .await;
        assert_eq!(page["recovered"], true);
        let msgs = page["messages"].as_array().unwrap().clone();
        let Some(last) = msgs.last() else { break };
        since = json!({"seq": last["seq"], "epoch": epoch});
        forward.extend(msgs);
    }
    let as_received: Vec<(Value, Value)> = received
        .iter()
        .map(|m| (m["seq"].clone(), m["data"].clone()))
        .collect();
    let as_read: Vec<(Value, Value)> = forward
        .iter()
        .map(|m| (m["seq"].clone(), m["data"].clone()))
        .collect();
    assert_eq!(as_read, as_received);

    // Backwards page by page from the top: the same, newest first.
    let mut backward = Vec::new();
    let mut before = json!({"seq": 31, "epoch": epoch});
    loop {
        let page = history(&mut c, json!({"type": "history", "topic": "log", "since": before, "limit": 8, "reverse": true})).await;
        assert_eq!(page["recovered"], true);
        let msgs = page["messages"].as_array().unwrap().clone();
        let Some(oldest) = msgs.last() else { break };
        before = json!({"seq": oldest["seq"], "epoch": epoch});
        backward.extend(msgs);
    }
    backward.reverse();
    assert_eq!(backward, forward);

    // A position from another epoch: not recovered, and the latest page instead.
    let stale = history(&mut c, json!({"type": "history", "topic": "log", "since": {"seq": 3, "epoch": "0000000000000000"}, "limit": 4})).await;
    assert_eq!(
        (stale["recovered"].as_bool(), page_seqs(&stale)),
        (Some(false), range(27, 30))
    );
    // The same from the admin port.
    let (status, body) = gw
        .admin_get("/api/topics/log/history?since=3&epoch=0000000000000000&limit=4")
        .await;
    assert_eq!(status, 200, "{body}");
    let api: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (api["recovered"].as_bool(), page_seqs(&api)),
        (Some(false), range(27, 30))
    );
    // An empty topic: its top, no messages.
    let empty = history(&mut c, json!({"type": "history", "topic": "nothing-yet"})).await;
    assert_eq!(
        (empty["seq"].as_u64(), page_seqs(&empty)),
        (Some(0), vec![])
    );
}

#[tokio::test]
async fn admin_api_serves_topic_state_and_history_pages() {
    let gw = TestGateway::start().await;
    let epoch = publish_n(&gw, "orders", 12).await;
    let (status, body) = gw
        .admin_get(&format!(
            "/api/topics/orders/history?since=4&epoch={}&limit=3",
            epoch.as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (
            page["seq"].as_u64(),
            &page["epoch"],
            page["recovered"].as_bool()
        ),
        (Some(12), &epoch, Some(true))
    );
    assert_eq!(
        page["messages"],
        json!([{"seq": 5, "data": {"i": 5}}, {"seq": 6, "data": {"i": 6}}, {"seq": 7, "data": {"i": 7}}])
    );
    let (_, body) = gw
        .admin_get("/api/topics/orders/history?limit=2&reverse=true")
        .await;
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page_seqs(&page), vec![12, 11]);

    for bad in [
        "/api/topics/orders/history?since=4",
        "/api/topics/orders/history?limit=x",
        "/api/topics/a%20b/history",
    ] {
        let (status, body) = gw.admin_get(bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("bad_request"), "{body}");
    }

    let (mut a, _) = gw.hello().await;
    a.subscribe("orders").await;
    let (status, body) = gw.admin_get("/api/topics/orders").await;
    assert_eq!(status, 200, "{body}");
    let state: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        state,
        json!({"topic": "orders", "seq": 12, "epoch": epoch, "subscribers": 1})
    );
}

#[tokio::test]
async fn admin_topic_routes_need_the_admin_token() {
    let gw = TestGateway::with(|c| c.admin_token = Some("s3cret".into())).await;
    for path in ["/api/topics/a", "/api/topics/a/history"] {
        let (status, _) = gw.admin_get(path).await;
        assert_eq!(status, 401, "{path}");
    }
}

#[tokio::test]
async fn history_needs_subscribe_permission() {
    let gw = TestGateway::with(|c| {
        c.security.auth_mode = gateway::auth::AuthMode::Optional;
        c.security.jwt_secret_file = Some(support::hostile::secret_file());
        c.security.anon_subscribe = vec!["public.*".into()];
    })
    .await;
    publish_n(&gw, "private.x", 2).await;
    let (mut anon, _) = gw.hello().await;
    anon.send(json!({"type": "history", "topic": "private.x", "ref": 5}))
        .await;
    let e = anon.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_u64()),
        (Some("forbidden"), Some(5))
    );
    // `last` on a forbidden topic is refused like any subscribe.
    anon.send(json!({"type": "subscribe", "topic": "private.x", "last": 2, "ref": 6}))
        .await;
    assert_eq!(anon.expect("error").await["code"], "forbidden");
    let page = history(&mut anon, json!({"type": "history", "topic": "public.y"})).await;
    assert_eq!(page["seq"], 0);
}

#[tokio::test]
async fn subscribe_last_rewinds_by_count() {
    let gw = TestGateway::start().await;
    publish_n(&gw, "feed", 10).await;
    let (mut c, _) = gw.hello().await;
    c.send(json!({"type": "subscribe", "topic": "feed", "last": 3, "ref": 1}))
        .await;
    let sub = c.expect("subscribed").await;
    assert_eq!(
        (sub["seq"].as_u64(), sub["recovered"].as_bool()),
        (Some(10), Some(true))
    );
    assert_eq!(seqs(&c.messages(3).await), vec![8, 9, 10]);
    gw.publish_api("feed", json!(11)).await;
    assert_eq!(seqs(&c.messages(1).await), vec![11]);

    // More than history holds: everything there is.
    let (mut d, _) = gw.hello().await;
    d.send(json!({"type": "subscribe", "topic": "feed", "last": 500}))
        .await;
    assert_eq!(d.expect("subscribed").await["recovered"], true);
    assert_eq!(seqs(&d.messages(11).await), range(1, 11));
    // `last: 0` is a plain subscribe at the top.
    let (mut e, _) = gw.hello().await;
    e.send(json!({"type": "subscribe", "topic": "feed", "last": 0}))
        .await;
    let sub = e.expect("subscribed").await;
    assert_eq!(sub["seq"], 11);
    e.silent_for(Duration::from_millis(200)).await;
}

/// A page rendered from `history`, then `subscribe since` its last seq, while a publisher runs on
/// another pod: the client sees every seq once, in order.
#[tokio::test]
async fn history_then_subscribe_since_is_gap_and_duplicate_free_under_load() {
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    let a = pod(&redis, &nats, "pod-a").await;
    let b = pod(&redis, &nats, "pod-b").await;
    const TOTAL: u64 = 400;
    let url = a.ws_url();
    let publisher = tokio::spawn(async move {
        let mut p = Client::connect(&url).await;
        p.send(json!({"type": "hello"})).await;
        p.expect("welcome").await;
        for i in 1..=TOTAL {
            assert_eq!(p.publish("room", json!({"i": i})).await, i);
        }
    });
    // Wait until the publisher is well under way.
    let (mut c, _) = b.hello().await;
    let page = loop {
        let page = history(
            &mut c,
            json!({"type": "history", "topic": "room", "limit": 50}),
        )
        .await;
        if page["seq"].as_u64().unwrap() >= 50 {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut got = page_seqs(&page);
    assert_eq!(got.len(), 50);
    let last = *got.last().unwrap();
    c.send(json!({"type": "subscribe", "topic": "room", "since": {"seq": last, "epoch": page["epoch"]}})).await;
    assert_eq!(c.expect("subscribed").await["recovered"], true);
    let rest = c.messages((TOTAL - last) as usize).await;
    got.extend(seqs(&rest));
    assert_eq!(got, range(last - 49, TOTAL));
    assert!(
        last < TOTAL,
        "the publisher was still running at the history read"
    );
    tokio::time::timeout(WAIT, publisher)
        .await
        .unwrap()
        .unwrap();
    c.silent_for(Duration::from_millis(300)).await;
}

/// `GET /api/topics/{topic}` counts the connected subscribers of every live pod.
#[tokio::test]
async fn topic_state_counts_subscribers_fleet_wide() {
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    let a = pod(&redis, &nats, "pod-a").await;
    let b = pod(&redis, &nats, "pod-b").await;
    let mut clients = Vec::new();
    for (gw, n) in [(&a, 2), (&b, 3)] {
        for _ in 0..n {
            let (mut c, _) = gw.hello().await;
            c.subscribe("lobby").await;
            clients.push(c);
        }
    }
    // Reports go out once per heartbeat: wait for them (bounded).
    until_subscribers(&[&a, &b], 5).await;
    // Two leave pod b; then pod b goes away entirely.
    clients.truncate(3);
    until_subscribers(&[&a, &b], 3).await;
    b.shutdown().await;
    until_subscribers(&[&a], 2).await;
}

async fn subscribers(gw: &TestGateway, topic: &str) -> u64 {
    let (status, body) = gw.admin_get(&format!("/api/topics/{topic}")).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["subscribers"]
        .as_u64()
        .unwrap()
}

/// Waits (bounded) until every pod in `pods` reports `want` subscribers of `lobby`.
async fn until_subscribers(pods: &[&TestGateway], want: u64) {
    for _ in 0..100 {
        let mut all = true;
        for gw in pods {
            all &= subscribers(gw, "lobby").await == want;
        }
        if all {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("subscribers never reached {want}");
}

/// A page never exceeds what the socket can write in one frame (about one largest message):
/// big messages come a few per page, and the connection stays.
#[tokio::test]
async fn pages_of_large_messages_fit_the_socket() {
    let gw = TestGateway::with(|c| c.max_message_size = 2_048).await;
    let blob = "x".repeat(1_500);
    for _ in 0..6 {
        gw.publish_api("big", json!(blob)).await;
    }
    let (mut c, _) = gw.hello().await;
    let mut since = json!({"seq": 0, "epoch": gw.publish_api("big", json!(blob)).await["epoch"]});
    let mut got = Vec::new();
    loop {
        let page = history(
            &mut c,
            json!({"type": "history", "topic": "big", "since": since, "limit": 100}),
        )
        .await;
        let msgs = page_seqs(&page);
        assert!(msgs.len() <= 2, "{msgs:?}");
        let Some(&last) = msgs.last() else { break };
        since["seq"] = last.into();
        got.extend(msgs);
    }
    assert_eq!(got, range(1, 7));
    let latest = history(&mut c, json!({"type": "history", "topic": "big"})).await;
    assert_eq!(*page_seqs(&latest).last().unwrap(), 7);
}
