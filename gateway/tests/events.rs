//! Lifecycle events delivered at least once (design §13) against real Redis, NATS, gateways in
//! this process and as processes, and a webhook receiver that checks every signature: session
//! and topic events arrive and a drain adds none; a receiver down for 30 s loses nothing and
//! sees each user's events in order; a pod killed before it delivered has its events delivered
//! by another, and its sessions end as `expired` after the resume window.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::lifecycle::*;
use support::webhook::{Receiver, of};
use support::{Client, TestGateway};
use test_support::{NatsServer, RedisServer};

/// Two pods on one partition (one total order, so an event that arrives proves every earlier
/// one did): sessions start and end (closed, disconnected), a topic is occupied once and
/// vacated once, and a drain that moves a session between pods records nothing.
#[tokio::test]
async fn session_and_topic_events_arrive_and_a_drain_records_none() {
    let (redis, nats, rx) = (
        RedisServer::start(),
        NatsServer::start(),
        Receiver::start().await,
    );
    let pods = [
        TestGateway::with(|c| {
            events_on(c, &rx, &redis, &nats, "pod-a");
            c.events.webhook_partitions = 1;
        })
        .await,
        TestGateway::with(|c| {
            events_on(c, &rx, &redis, &nats, "pod-b");
            c.events.webhook_partitions = 1;
        })
        .await,
    ];
    let (mut ann, ann_welcome) = hello_as(&pods[0], "ann").await;
    ann.subscribe("room.1").await;
    let (mut bob, bob_welcome) = hello_as(&pods[1], "bob").await;
    bob.subscribe("room.1").await;
    let (ann_s, bob_s) = (session_of(&ann_welcome), session_of(&bob_welcome));

    // pod-a drains: ann gets 1001 and resumes on pod-b.
    let (status, _) = pods[0].admin_post("/admin/drain", "").await;
    assert_eq!(status, 202);
    assert_eq!(ann.closed().await.code, 1001);
    let mut ann = pods[1].client().await;
    let resume = json!({"type": "hello", "token": token("ann"), "resume": ann_welcome["resume"]});
    ann.send(resume.clone()).await;
    assert_eq!(ann.expect("welcome").await["resumed"], true);
    // pod-a's connection task is over (whatever it records at the end is recorded).
    wait_metric(pods[0].admin, "gateway_connections_active", 0.0).await;
    // A marker appended after the drain: once it arrives, everything before it did.
    let (marker, marker_welcome) = hello_as(&pods[1], "cat").await;
    let marker_s = session_of(&marker_welcome);
    let events = rx
        .wait_for("the marker", LIMIT, |e| {
            story(e, &marker_s) == ["session.started"]
        })
        .await;
    assert_eq!(
        story(&events, &ann_s),
        ["session.started"],
        "the drain recorded nothing"
    );
    assert_eq!(story(&events, &bob_s), ["session.started"]);
    assert_eq!(topic_events(&events, "room.1"), ["topic.occupied"]);
    let started = of(&events, "session.started");
    assert_eq!(started[0]["user"], "ann");
    assert!(
        started
            .iter()
            .all(|e| e["id"].as_str().unwrap().len() == 32 && e["at"].is_string())
    );

    // ann closes for good; bob is disconnected by the server API; the topic is empty then.
    goodbye(ann).await;
    let (status, body) = pods[0]
        .admin_post("/api/disconnect", &json!({"user": "bob"}).to_string())
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(bob.closed().await.code, 1008);
    goodbye(marker).await;
    let events = rx
        .wait_for("the ends", LIMIT, |e| {
            [&ann_s, &bob_s, &marker_s]
                .iter()
                .all(|s| story(e, s).len() >= 2)
                && topic_events(e, "room.1").len() >= 2
        })
        .await;
    assert_eq!(
        story(&events, &ann_s),
        ["session.started", "session.ended:closed"]
    );
    assert_eq!(
        story(&events, &bob_s),
        ["session.started", "session.ended:disconnected"]
    );
    assert_eq!(
        topic_events(&events, "room.1"),
        ["topic.occupied", "topic.vacated"]
    );
    let ended = of(&events, "session.ended");
    assert!(
        ended
            .iter()
            .any(|e| e["user"] == "bob" && e["session"] == bob_s.as_str())
    );
    assert_eq!(rx.bad_signatures(), 0);
    // A session closed for good does not resume.
    let mut again = pods[1].client().await;
    again.send(resume).await;
    let welcome = again.expect("welcome").await;
    assert_eq!(welcome["resumed"], false);
}

/// The receiver answers 503 for 30 s while three users each open and close three sessions on
/// two pods; once it is back every event arrives (at least once), each user's in the order they
/// happened, every batch signed.
#[tokio::test]
async fn a_receiver_down_for_30s_loses_nothing_and_sees_each_users_order() {
    let (redis, nats, rx) = (
        RedisServer::start(),
        NatsServer::start(),
        Receiver::start().await,
    );
    let pods = [
        TestGateway::with(|c| {
            events_on(c, &rx, &redis, &nats, "pod-a");
            c.events.webhook_partitions = 4;
            c.events.webhook_batch_max = 3;
        })
        .await,
        TestGateway::with(|c| {
            events_on(c, &rx, &redis, &nats, "pod-b");
            c.events.webhook_partitions = 4;
            c.events.webhook_batch_max = 3;
        })
        .await,
    ];
    rx.set_up(false);
    let users = ["ann", "bob", "cat"];
    let mut expected: Vec<(String, Vec<String>)> = Vec::new();
    for user in users {
        let mut story = Vec::new();
        for round in 0..3 {
            let gw = &pods[round % 2];
            let (mut c, welcome) = hello_as(gw, user).await;
            c.subscribe(&format!("room.{user}")).await;
            let session = session_of(&welcome);
            story.push(format!("session.started {session}"));
            story.push(format!("session.ended {session}"));
            goodbye(c).await;
        }
        expected.push((user.to_owned(), story));
    }
    let down_for = Duration::from_secs(30);
    tokio::time::sleep(down_for).await;
    assert!(
        rx.refused_while_down() > 0,
        "deliveries were attempted meanwhile"
    );
    assert!(rx.received().is_empty());
    rx.set_up(true);
    let back = std::time::Instant::now();
    // 3 users × 3 sessions × (started, ended) + 3 topics × 3 × (occupied, vacated).
    let events = rx.wait_for("every event", LIMIT, |e| e.len() >= 36).await;
    // A figure for the record (printed with --nocapture), not asserted.
    println!(
        "all 36 events delivered {:?} after the receiver came back; {} attempts refused meanwhile",
        back.elapsed(),
        rx.refused_while_down()
    );
    assert_eq!(
        events.len(),
        36,
        "no event twice with one id, none unexpected"
    );
    for (user, story) in &expected {
        let got: Vec<String> = events
            .iter()
            .filter(|e| e["user"] == user.as_str())
            .map(|e| {
                format!(
                    "{} {}",
                    e["type"].as_str().unwrap(),
                    e["session"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(&got, story, "{user}'s events in order");
        let topic = format!("room.{user}");
        assert_eq!(
            topic_events(&events, &topic),
            ["topic.occupied", "topic.vacated"].repeat(3),
            "{topic}"
        );
    }
    assert_eq!(rx.bad_signatures(), 0);
    let retries = support::faults_data::metric(pods[0].admin, "gateway_events_retries_total").await
        + support::faults_data::metric(pods[1].admin, "gateway_events_retries_total").await;
    assert!(retries > 0.0);
}

/// A pod (a real process) records events while the receiver is down, reads them and retries,
/// then is killed with SIGKILL holding every partition's lease. The surviving pod takes the
/// leases over, claims what the dead one had read, and delivers it; the dead pod's connected
/// sessions end as `expired` once the resume window has passed, and their topic is vacated.
#[tokio::test]
async fn a_killed_pods_events_are_delivered_by_another_and_its_sessions_expire() {
    let (redis, nats, rx) = (
        RedisServer::start(),
        NatsServer::start(),
        Receiver::start().await,
    );
    rx.set_up(false);
    let mut args: Vec<String> = rx.flags();
    args.extend(
        [
            "--redis-url",
            &redis.url(),
            "--nats-url",
            &nats.url(),
            "--pod-name",
            "pod-doomed",
            "--heartbeat-interval",
            "200ms",
            "--resume-window",
            "3s",
            "--webhook-timeout",
            "1s",
            "--webhook-retry-max",
            "300ms",
            "--webhook-partitions",
            "2",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut doomed = support::process::Pod::start(&args);
    let doomed_admin = doomed.admin_addr();
    // The only pod yet: it takes both leases.
    wait_metric(doomed_admin, "gateway_events_leases", 2.0).await;
    let mut closed = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(&doomed.url()).await;
        c.send(json!({"type": "hello"})).await;
        closed.push(session_of(&c.expect("welcome").await));
        goodbye(c).await;
    }
    let mut open = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut c = Client::connect(&doomed.url()).await;
        c.send(json!({"type": "hello"})).await;
        open.push(session_of(&c.expect("welcome").await));
        c.subscribe("room.kept").await;
        clients.push(c);
    }
    // It read them and failed to deliver (the receiver is down).
    wait_metric_above(doomed_admin, "gateway_events_retries_total", 0.0).await;
    let survivor = TestGateway::with(|c| {
        events_on(c, &rx, &redis, &nats, "pod-survivor");
        c.events.webhook_partitions = 2;
        c.resume_window = Duration::from_secs(3);
    })
    .await;
    assert_eq!(
        support::faults_data::metric(survivor.admin, "gateway_events_leases").await,
        0.0
    );
    doomed.process.kill();
    drop(clients);
    rx.set_up(true);
    let events = rx
        .wait_for(
            "the dead pod's events and its sessions' expiry",
            LIMIT,
            |e| {
                closed.iter().all(|s| story(e, s).len() == 2)
                    && open.iter().all(|s| story(e, s).len() == 2)
                    && topic_events(e, "room.kept").len() == 2
            },
        )
        .await;
    for s in &closed {
        assert_eq!(
            story(&events, s),
            ["session.started", "session.ended:closed"]
        );
    }
    for s in &open {
        assert_eq!(
            story(&events, s),
            ["session.started", "session.ended:expired"]
        );
    }
    assert_eq!(
        topic_events(&events, "room.kept"),
        ["topic.occupied", "topic.vacated"]
    );
    assert_eq!(rx.bad_signatures(), 0);
    assert!(
        support::faults_data::metric(survivor.admin, "gateway_events_delivered_total").await
            >= 10.0
    );
}

/// The embedded default (no Redis): events are kept in the process and delivered with the same
/// rules; `publish` events where the namespace asks for them, presence joins and leaves.
#[tokio::test]
async fn embedded_pods_deliver_publish_and_presence_events() {
    let rx = Receiver::start().await;
    let gw = TestGateway::with(|c| {
        rx.configure(c);
        c.events.webhook_retry_max = Duration::from_millis(300);
        c.app.publish_events = true;
        c.app.presence = true;
        c.heartbeat_interval = Duration::from_millis(100);
    })
    .await;
    rx.set_up(false);
    let (mut c, welcome) = gw.hello().await;
    let session = session_of(&welcome);
    c.subscribe("room.7").await;
    let seq = c.publish("room.7", json!({"text": "hi"})).await;
    gw.publish_api("room.7", json!({"text": "from the server"}))
        .await;
    c.send(json!({"type": "unsubscribe", "topic": "room.7"}))
        .await;
    // Our own messages arrive first; skip them.
    for _ in 0..10 {
        if c.next().await["type"] == "unsubscribed" {
            break;
        }
    }
    // Refused for a while, then delivered: nothing lost in memory either.
    for _ in 0..100 {
        if rx.refused_while_down() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rx.refused_while_down() > 0);
    rx.set_up(true);
    let events = rx
        .wait_for("publish and presence events", LIMIT, |e| {
            of(e, "publish").len() == 2 && of(e, "presence.leave").len() == 1
        })
        .await;
    // Two partitions (the client's session, the topic for the server's): no order between them.
    let published = of(&events, "publish");
    let (client, server): (Vec<&Value>, Vec<&Value>) =
        published.iter().partition(|e| e.get("session").is_some());
    assert_eq!(client[0]["session"], session.as_str());
    assert_eq!(client[0]["data"]["seq"], seq);
    assert_eq!(client[0]["data"]["data"]["text"], "hi");
    assert_eq!(server[0]["data"]["data"]["text"], "from the server");
    assert_eq!(server[0]["topic"], "room.7");
    assert_eq!(
        story(&events, &session),
        [
            "session.started",
            "presence.join",
            "publish",
            "presence.leave"
        ]
    );
    assert_eq!(
        topic_events(&events, "room.7"),
        ["topic.occupied", "topic.vacated"]
    );
    assert_eq!(rx.bad_signatures(), 0);
}
