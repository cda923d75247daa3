//! A decided event is never lost to a failed append (design §13): the script that decides an
//! event stages it, and what a pod could not append the sweeper relays. Real Redis, NATS, a
//! gateway and a webhook receiver that checks every signature.

mod support;

use std::time::Duration;

use serde_json::json;
use support::TestGateway;
use support::faults_data::metric;
use support::lifecycle::*;
use support::webhook::{Receiver, of};
use test_support::{NatsServer, RedisServer};

/// Sorted, so events relayed from different outboxes compare whatever their arrival order.
fn sorted(mut story: Vec<String>) -> Vec<String> {
    story.sort();
    story
}

fn sorted_numbers(mut numbers: Vec<u64>) -> Vec<u64> {
    numbers.sort_unstable();
    numbers
}

/// The event log refuses every append for a while (each partition's key holds a string, so
/// `XADD` fails) as users connect, subscribe with presence, and one closes for good: the
/// decisions are made (and messages stored) and their events only staged. Once the log takes appends again, every
/// event arrives, signed, and the pod counts them relayed. A witness subscriber receives every
/// message published meanwhile.
#[tokio::test]
async fn events_whose_append_failed_arrive_once_the_log_takes_appends_again() {
    let (redis, nats, rx) = (
        RedisServer::start(),
        NatsServer::start(),
        Receiver::start().await,
    );
    let gw = TestGateway::with(|c| {
        events_on(c, &rx, &redis, &nats, "pod-a");
        c.events.webhook_partitions = 2;
        c.app.presence = true;
        c.app.publish_events = true;
    })
    .await;
    let streams = ["gw:events:{0}", "gw:events:{1}"];
    for stream in streams {
        redis.cmd(&["SET", stream, "not a stream"]);
    }
    let (mut witness, _) = hello_as(&gw, "wit").await;
    witness.subscribe("room.w").await;
    let (mut ann, ann_welcome) = hello_as(&gw, "ann").await;
    ann.subscribe("room.1").await;
    let (mut bob, bob_welcome) = hello_as(&gw, "bob").await;
    bob.subscribe("room.1").await;
    let mut seqs = Vec::new();
    for i in 0..3 {
        seqs.push(bob.publish("room.1", json!({"from": "bob", "i": i})).await);
    }
    goodbye(bob).await;
    let (ann_s, bob_s) = (session_of(&ann_welcome), session_of(&bob_welcome));
    for i in 0..20 {
        gw.publish_api("room.w", json!({"i": i})).await;
    }
    let failed = r#"gateway_events_append_failed_total{type="session.ended"}"#;
    wait_metric(gw.admin, failed, 1.0).await;
    assert!(rx.received().is_empty(), "nothing could be appended");
    assert_eq!(metric(gw.admin, "gateway_events_relayed_total").await, 0.0);

    for stream in streams {
        redis.cmd(&["DEL", stream]);
    }
    let events = rx
        .wait_for("every staged event", LIMIT, |e| {
            story(e, &bob_s).len() >= 7
                && of(e, "publish").len() >= 23
                && story(e, &ann_s).len() >= 2
                && !topic_events(e, "room.1").is_empty()
        })
        .await;
    assert_eq!(
        sorted(story(&events, &ann_s)),
        ["presence.join", "session.started"]
    );
    assert_eq!(
        sorted(story(&events, &bob_s)),
        [
            "presence.join",
            "presence.leave",
            "publish",
            "publish",
            "publish",
            "session.ended:closed",
            "session.started"
        ]
    );
    // Each message's event, staged by the script that stored it: its seq, epoch and data.
    let published = of(&events, "publish");
    assert_eq!(published.len(), 23, "no publish event twice");
    let mut bobs: Vec<_> = published
        .iter()
        .filter(|e| e["session"] == bob_s.as_str())
        .map(|e| {
            (
                e["data"]["seq"].as_u64().unwrap(),
                e["data"]["data"]["i"].clone(),
            )
        })
        .collect();
    bobs.sort_by_key(|(seq, _)| *seq);
    let expected: Vec<_> = seqs.iter().zip(0..3).map(|(s, i)| (*s, json!(i))).collect();
    assert_eq!(bobs, expected);
    assert!(published.iter().all(|e| e["data"]["epoch"].is_string()));
    let server: Vec<_> = published
        .iter()
        .filter(|e| e["topic"] == "room.w")
        .map(|e| e["data"]["data"]["i"].as_u64().unwrap())
        .collect();
    assert_eq!(sorted_numbers(server), (0..20).collect::<Vec<_>>());
    assert_eq!(topic_events(&events, "room.1"), ["topic.occupied"]);
    let leave = events
        .iter()
        .find(|e| e["type"] == "presence.leave")
        .unwrap();
    assert_eq!(leave["user"], "bob");
    assert_eq!(leave["data"]["user_edge"], true);
    assert_eq!(rx.bad_signatures(), 0);
    // At least the seven above, the 23 publishes, and the witness's (started, occupied, join).
    assert!(metric(gw.admin, "gateway_events_relayed_total").await >= 33.0);
    let messages = witness.messages(20).await;
    let got: Vec<u64> = messages
        .iter()
        .map(|m| m["data"]["i"].as_u64().unwrap())
        .collect();
    assert_eq!(got, (0..20).collect::<Vec<_>>());
    // Nothing is left staged once relayed (an emptied outbox hash is gone).
    tokio::time::timeout(Duration::from_secs(30), async {
        while !redis.cmd(&["KEYS", "gw:ev-outbox:*"]).trim().is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("nothing left staged");
}
