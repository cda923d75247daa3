//! Presence: members keyed on the session, on one node and across pods sharing Redis and
//! NATS; drains move members without a join or leave; unsubscribe and expiry leave once; stats
//! stay cheap at 10,000 members.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use support::{Client, TestGateway};
use test_support::{NatsServer, RedisServer};

fn presence_on(c: &mut gateway::Config) {
    c.app.presence = true;
    c.heartbeat_interval = Duration::from_millis(200);
}

async fn pod(redis: &RedisServer, nats: &NatsServer, name: &str) -> TestGateway {
    TestGateway::fleet_pod(redis, nats, name, presence_on).await
}

/// The session ids listed by a `presence` request.
async fn members(c: &mut Client, topic: &str) -> BTreeSet<String> {
    c.send(json!({"type": "presence", "topic": topic, "ref": 1}))
        .await;
    let reply = loop {
        let v = c.next().await;
        if v["type"] == "presence" {
            break v;
        }
        assert_ne!(v["type"], "error", "{v}");
    };
    reply["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["session"].as_str().unwrap().to_owned())
        .collect()
}

async fn stats(c: &mut Client, topic: &str) -> (u64, u64) {
    c.send(json!({"type": "presence_stats", "topic": topic, "ref": 2}))
        .await;
    let v = c.expect("presence_stats").await;
    (v["members"].as_u64().unwrap(), v["users"].as_u64().unwrap())
}

/// `(joins, leaves)` counted by `pods`' metrics.
async fn events(pods: &[&TestGateway]) -> (u64, u64) {
    let (mut joins, mut leaves) = (0, 0);
    for gw in pods {
        let (_, text) = gw.admin_get("/metrics").await;
        for line in text
            .lines()
            .filter(|l| l.starts_with("gateway_presence_events_total"))
        {
            let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            if line.contains("kind=\"join\"") {
                joins += n;
            } else {
                leaves += n;
            }
        }
    }
    (joins, leaves)
}

/// Polls (bounded) until `check` holds.
async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut check: F) {
    for _ in 0..150 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never: {what}");
}

#[tokio::test]
async fn members_and_stats_on_one_node() {
    let gw = TestGateway::with(|c| {
        presence_on(c);
        c.app.presence_max_list = 2;
    })
    .await;
    let (mut a, wa) = gw.hello().await;
    let (mut b, wb) = gw.hello().await;
    a.subscribe("room").await;
    b.subscribe("room").await;
    let want: BTreeSet<String> = [&wa, &wb]
        .iter()
        .map(|w| w["session"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(members(&mut a, "room").await, want);
    // Anonymous sessions count as one user each.
    assert_eq!(stats(&mut b, "room").await, (2, 2));
    assert_eq!(events(&[&gw]).await, (2, 0));

    // Above --presence-max-list: refused, stats still answer.
    let (mut c, _) = gw.hello().await;
    c.subscribe("room").await;
    c.send(json!({"type": "presence", "topic": "room", "ref": 9}))
        .await;
    let e = c.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_u64()),
        (Some("limit_reached"), Some(9))
    );
    assert_eq!(stats(&mut c, "room").await, (3, 3));

    // Unsubscribe: exactly one leave, at once.
    c.send(json!({"type": "unsubscribe", "topic": "room"}))
        .await;
    c.expect("unsubscribed").await;
    assert_eq!(stats(&mut a, "room").await, (2, 2));
    assert_eq!(events(&[&gw]).await, (3, 1));
    // The admin API: counts with the topic's state, and the list.
    let (_, body) = gw.admin_get("/api/topics/room").await;
    let state: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        state["presence"],
        json!({"members": 2, "users": 2}),
        "{state}"
    );
    assert_eq!(state["subscribers"], 2);
    let (status, body) = gw.admin_get("/api/topics/room/presence").await;
    assert_eq!(status, 200, "{body}");
    let listed: Value = serde_json::from_str(&body).unwrap();
    let sessions: BTreeSet<String> = listed["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["session"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(sessions, want);
    // Subscribing again twice over is one join.
    c.subscribe("room").await;
    c.subscribe("room").await;
    assert_eq!(events(&[&gw]).await, (4, 1));
}

#[tokio::test]
async fn a_disconnected_member_stays_while_resumable_then_leaves_once() {
    let gw = TestGateway::with(|c| {
        presence_on(c);
        c.resume_window = Duration::from_secs(2);
    })
    .await;
    let (mut witness, _) = gw.hello().await;
    witness.subscribe("room").await;
    let (mut a, welcome) = gw.hello().await;
    a.subscribe("room").await;
    let session = welcome["session"].as_str().unwrap().to_owned();
    // The socket vanishes: still present, and a resume changes nothing.
    drop(a);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(members(&mut witness, "room").await.contains(&session));
    let mut a = gw.client().await;
    a.send(json!({"type": "hello", "resume": welcome["resume"]}))
        .await;
    assert_eq!(a.expect("welcome").await["resumed"], true);
    assert_eq!(events(&[&gw]).await, (2, 0));
    // Gone for good: one leave once the resume window passed.
    drop(a);
    eventually("the member expires", async || {
        !members(&mut witness, "room").await.contains(&session)
    })
    .await;
    eventually("its leave is counted", async || {
        events(&[&gw]).await == (2, 1)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        events(&[&gw]).await,
        (2, 1),
        "one leave, however many sweeps"
    );
    assert_eq!(stats(&mut witness, "room").await, (1, 1));
}

#[tokio::test]
async fn presence_needs_subscribe_permission() {
    let gw = TestGateway::with(|c| {
        presence_on(c);
        c.security.auth_mode = gateway::auth::AuthMode::Optional;
        c.security.jwt_secret_file = Some(support::hostile::secret_file());
        c.security.anon_subscribe = vec!["public.*".into()];
    })
    .await;
    let (mut anon, _) = gw.hello().await;
    for kind in ["presence", "presence_stats"] {
        anon.send(json!({"type": kind, "topic": "private.x", "ref": 4}))
            .await;
        let e = anon.expect("error").await;
        assert_eq!(
            (e["code"].as_str(), e["ref"].as_u64()),
            (Some("forbidden"), Some(4))
        );
    }
    assert_eq!(stats(&mut anon, "public.y").await, (0, 0));
}

/// Three pods; the one holding half the members drains. Its clients resume on the others: the
/// presence list never changes and no join or leave happens.
#[tokio::test]
async fn a_drain_moves_members_without_join_or_leave() {
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    let pods = [
        pod(&redis, &nats, "pod-0").await,
        pod(&redis, &nats, "pod-1").await,
        pod(&redis, &nats, "pod-2").await,
    ];
    let all: Vec<&TestGateway> = pods.iter().collect();
    let (mut witness, _) = pods[1].hello().await;
    witness.subscribe("room").await;
    let mut moving = Vec::new();
    for _ in 0..4 {
        let (mut c, w) = pods[0].hello().await;
        c.subscribe("room").await;
        moving.push((c, w));
    }
    let mut staying = Vec::new();
    for gw in &pods[1..] {
        for _ in 0..2 {
            let (mut c, _) = gw.hello().await;
            c.subscribe("room").await;
            staying.push(c);
        }
    }
    let before = members(&mut witness, "room").await;
    assert_eq!(before.len(), 9);
    let counted = events(&all).await;
    assert_eq!(counted, (9, 0));

    let (status, _) = pods[0].admin_post("/admin/drain", "").await;
    assert_eq!(status, 202);
    for (i, (c, welcome)) in moving.iter_mut().enumerate() {
        assert_eq!(c.closed().await.code, 1001);
        // The witness sees the same members while the sockets move.
        assert_eq!(members(&mut witness, "room").await, before);
        let mut resumed = pods[1 + i % 2].client().await;
        resumed
            .send(json!({"type": "hello", "resume": welcome["resume"]}))
            .await;
        assert_eq!(resumed.expect("welcome").await["resumed"], true);
        *c = resumed;
    }
    // Past several beats and sweeps: still the same members, still no event.
    for _ in 0..10 {
        assert_eq!(members(&mut witness, "room").await, before);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(events(&all).await, counted);
    assert_eq!(stats(&mut witness, "room").await, (9, 9));

    // An unsubscribe on another pod: exactly one leave, fleet-wide.
    let c = &mut moving[0].0;
    c.send(json!({"type": "unsubscribe", "topic": "room"}))
        .await;
    c.expect("unsubscribed").await;
    assert_eq!(members(&mut witness, "room").await.len(), 8);
    assert_eq!(events(&all).await, (9, 1));
}

/// 10,000 members (written as three pods would, straight into Redis): `presence_stats` costs
/// two HLENs whatever the size, and the list is refused above `--presence-max-list`.
#[tokio::test]
async fn stats_stay_cheap_at_ten_thousand_members() {
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    let gw = pod(&redis, &nats, "pod-0").await;
    let far = 4_102_444_800_000u64; // 2100-01-01, in ms
    for pod in 0..3 {
        for chunk in 0..10 {
            let mut members = vec!["HSET".to_owned(), "gw:presence:{big}".to_owned()];
            let mut users = vec!["HSET".to_owned(), "gw:presence-users:{big}".to_owned()];
            for i in 0..334 {
                let n = pod * 3_340 + chunk * 334 + i;
                if n >= 10_000 {
                    break;
                }
                members.push(format!("s{n}"));
                members.push(format!("pod-{pod}|{far}|u:user{n}"));
                users.push(format!("u:user{n}"));
                users.push("1".into());
            }
            let args: Vec<&str> = members.iter().map(String::as_str).collect();
            redis.cmd(&args);
            let args: Vec<&str> = users.iter().map(String::as_str).collect();
            redis.cmd(&args);
        }
    }
    let (mut c, _) = gw.hello().await;
    c.subscribe("big").await;
    assert_eq!(stats(&mut c, "big").await, (10_001, 10_001));
    let calls = |info: &str, cmd: &str| -> u64 {
        info.lines()
            .find(|l| l.starts_with(&format!("cmdstat_{cmd}:")))
            .and_then(|l| l.split("calls=").nth(1))
            .and_then(|v| v.split(',').next())
            .map_or(0, |v| v.parse().unwrap())
    };
    let total = |info: &str| -> u64 {
        info.lines()
            .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info:"))
            .filter_map(|l| l.split("calls=").nth(1))
            .filter_map(|v| v.split(',').next())
            .map(|v| v.parse::<u64>().unwrap())
            .sum()
    };
    // Other Redis traffic (heartbeat batches, session saves) runs meanwhile: take the
    // smallest difference of several rounds of 20 calls.
    let (mut best, mut best_hlen) = (u64::MAX, u64::MAX);
    for _ in 0..5 {
        let before = redis.cmd(&["INFO", "commandstats"]);
        for _ in 0..20 {
            assert_eq!(stats(&mut c, "big").await.0, 10_001);
        }
        let after = redis.cmd(&["INFO", "commandstats"]);
        best_hlen = best_hlen.min(calls(&after, "hlen") - calls(&before, "hlen"));
        best = best.min(total(&after) - total(&before));
    }
    assert_eq!(best_hlen, 40, "two HLENs per presence_stats");
    assert!(best <= 45, "{best} Redis commands for 20 presence_stats");
    c.send(json!({"type": "presence", "topic": "big", "ref": 3}))
        .await;
    let e: Value = c.expect("error").await;
    assert_eq!(e["code"], "limit_reached");
}

/// A pod killed with SIGKILL writes nothing more: its members stay present while their sessions
/// could resume, then the sweeper (another pod) removes them with one leave each.
#[tokio::test]
async fn a_dead_pods_members_age_out_once() {
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    let sweeper = TestGateway::with({
        let (r, n) = (redis.url(), nats.url());
        move |c| {
            presence_on(c);
            c.redis_url = Some(r);
            c.nats_url = vec![n];
            c.pod_name = Some("pod-0".into());
            c.resume_window = Duration::from_secs(3);
        }
    })
    .await;
    let (redis_url, nats_url) = (redis.url(), nats.url());
    let mut doomed = support::process::Pod::start(&[
        "--redis-url",
        &redis_url,
        "--nats-url",
        &nats_url,
        "--pod-name",
        "pod-9",
        "--presence",
        "--heartbeat-interval",
        "200ms",
        "--resume-window",
        "3s",
    ]);
    let (mut witness, _) = sweeper.hello().await;
    witness.subscribe("room").await;
    let mut victims = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(&doomed.url()).await;
        c.send(json!({"type": "hello"})).await;
        c.expect("welcome").await;
        c.subscribe("room").await;
        victims.push(c);
    }
    assert_eq!(members(&mut witness, "room").await.len(), 4);
    doomed.process.kill();
    drop(victims);
    // Resumable for a while yet: still listed.
    assert_eq!(members(&mut witness, "room").await.len(), 4);
    eventually("the dead pod's members are swept", async || {
        members(&mut witness, "room").await.len() == 1
    })
    .await;
    // Counts include members not swept yet: within a sweep interval they drop too.
    eventually("the counts drop", async || {
        stats(&mut witness, "room").await == (1, 1)
    })
    .await;
    // The leaves were counted by the sweeper, once each.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(events(&[&sweeper]).await.1, 3);
}

/// Members carry their user; a user's tabs are one user; a refreshed token that no longer grants
/// the topic is a leave.
#[tokio::test]
async fn users_are_counted_once_and_revoked_grants_leave() {
    use support::hostile::{granting, hs256};
    let gw = TestGateway::with(|c| {
        presence_on(c);
        c.security.auth_mode = gateway::auth::AuthMode::Required;
        c.security.jwt_secret_file = Some(support::hostile::secret_file());
    })
    .await;
    let token = hs256(&granting("ann", &["room.*"], &[]));
    let mut tabs = Vec::new();
    for _ in 0..2 {
        let mut c = gw.client().await;
        c.send(json!({"type": "hello", "token": token})).await;
        c.expect("welcome").await;
        c.subscribe("room.1").await;
        tabs.push(c);
    }
    let mut bob = gw.client().await;
    bob.send(json!({"type": "hello", "token": hs256(&granting("bob", &["room.*"], &[]))}))
        .await;
    bob.expect("welcome").await;
    bob.subscribe("room.1").await;
    assert_eq!(stats(&mut bob, "room.1").await, (3, 2));
    bob.send(json!({"type": "presence", "topic": "room.1"}))
        .await;
    let listed = bob.expect("presence").await;
    let users: BTreeSet<&str> = listed["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap())
        .collect();
    assert_eq!(users, BTreeSet::from(["ann", "bob"]));

    let narrower = hs256(&granting("ann", &["other.*"], &[]));
    tabs[0]
        .send(json!({"type": "refresh", "token": narrower}))
        .await;
    assert_eq!(tabs[0].expect("unsubscribed").await["reason"], "forbidden");
    tabs[0].expect("refreshed").await;
    assert_eq!(stats(&mut bob, "room.1").await, (2, 2));
    assert_eq!(events(&[&gw]).await, (3, 1));
}
