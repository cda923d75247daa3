//! A member's `info` (design §12): from the token's `info` claim or the connect hook's answer
//! (the hook wins), bounded by `--presence-info-max-bytes`, listed in `presence`, carried by
//! `join`/`leave` on every pod and kept through a resume on another pod; and server-side
//! subscriptions (`/api/subscribe`, `/api/unsubscribe`) join and leave like a client's; the
//! webhook's presence events carry it as `data.info`.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::backend::Backend;
use support::hostile::{granting, hs256, secret_file};
use support::webhook::{Receiver, of};
use support::{Client, TestGateway};
use test_support::{NatsServer, RedisServer};

fn presence_on(c: &mut gateway::Config) {
    c.app.presence = true;
    c.app.join_leave = true;
    c.heartbeat_interval = Duration::from_millis(200);
    c.security.auth_mode = gateway::auth::AuthMode::Optional;
    c.security.jwt_secret_file = Some(secret_file());
}

async fn pod(redis: &RedisServer, nats: &NatsServer, name: &str) -> TestGateway {
    TestGateway::fleet_pod(redis, nats, name, presence_on).await
}

/// A token of `user` granting every topic, with `info` as its `info` claim when given.
fn token(user: &str, info: Option<Value>) -> String {
    let mut c = granting(user, &["*"], &["*"]);
    if let Some(info) = info {
        c["info"] = info;
    }
    hs256(&c)
}

async fn hello(gw: &TestGateway, frame: Value) -> (Client, Value) {
    let mut c = gw.client().await;
    c.send(frame).await;
    let welcome = c.expect("welcome").await;
    (c, welcome)
}

/// The next frame of `kind`, skipping join/leave events heard meanwhile.
async fn reply(c: &mut Client, kind: &str) -> Value {
    loop {
        let v = c.next().await;
        if v["type"] != "join" && v["type"] != "leave" {
            assert_eq!(v["type"], kind, "{v}");
            return v;
        }
    }
}

/// Subscribes to `topic`, skipping the `subscribed` of the hook's server-side subscriptions.
async fn subscribe(c: &mut Client, topic: &str) {
    c.send(json!({"type": "subscribe", "topic": topic})).await;
    while c.expect("subscribed").await["topic"] != topic {}
}

/// The member listed for `session` in a fresh `presence` list of `topic`.
async fn listed(c: &mut Client, topic: &str, session: &Value) -> Value {
    c.send(json!({"type": "presence", "topic": topic, "ref": 7}))
        .await;
    let list = reply(c, "presence").await;
    list["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| &m["session"] == session)
        .cloned()
        .unwrap_or_else(|| panic!("{session} not in {list}"))
}

#[tokio::test]
async fn info_from_a_token_reaches_other_pods_and_survives_a_resume() {
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    let pods = [
        pod(&redis, &nats, "pod-0").await,
        pod(&redis, &nats, "pod-1").await,
    ];
    let (mut witness, wit) = hello(
        &pods[1],
        json!({"type": "hello", "token": token("wit", None)}),
    )
    .await;
    witness.subscribe("room").await;
    let info = json!({"name": "Ann", "avatar": "a.png", "tags": [1, "x|y", "é"]});
    let (mut ann, welcome) = hello(
        &pods[0],
        json!({"type": "hello", "token": token("ann", Some(info.clone()))}),
    )
    .await;
    ann.subscribe("room").await;
    let join = witness.expect("join").await;
    assert_eq!(join["member"]["session"], welcome["session"]);
    assert_eq!(join["member"]["user"], "ann");
    assert_eq!(join["member"]["info"], info, "{join}");
    assert_eq!(
        listed(&mut witness, "room", &welcome["session"]).await["info"],
        info
    );
    // A member without info has no `info` field.
    let plain = listed(&mut witness, "room", &wit["session"]).await;
    assert!(plain.get("info").is_none(), "{plain}");

    // Ann's connection ends; she resumes on the other pod with a token that has no info: the
    // session keeps the info it started with (the record has it).
    ann.leave().await;
    let (mut ann, resumed) = hello(
        &pods[1],
        json!({"type": "hello", "token": token("ann", None), "resume": welcome["resume"]}),
    )
    .await;
    assert_eq!(resumed["resumed"], true, "{resumed}");
    assert_eq!(resumed["session"], welcome["session"]);
    ann.send(json!({"type": "unsubscribe", "topic": "room"}))
        .await;
    reply(&mut ann, "unsubscribed").await;
    let leave = witness.expect("leave").await;
    assert_eq!(leave["member"]["info"], info, "{leave}");
    ann.subscribe("room").await;
    let again = witness.expect("join").await;
    assert_eq!(again["member"]["info"], info, "{again}");
    assert_eq!(again["pseq"], leave["pseq"].as_u64().unwrap() + 1);
}

#[tokio::test]
async fn the_connect_hook_info_wins_and_oversized_info_is_refused() {
    let backend = Backend::start(None);
    let (url, secret) = (backend.url(), backend.secret_file.clone());
    let gw = TestGateway::with(move |c| {
        presence_on(c);
        c.app.hook_url = Some(url);
        c.app.hook_secret_file = Some(secret);
        c.app.presence_info_max_bytes = 100;
    })
    .await;
    let connect = |query: String| {
        let url = format!("{}?{query}", gw.ws_url());
        async move { Client::connect(&url).await }
    };
    let mut witness = connect("user=wit".into()).await;
    witness.send(json!({"type": "hello"})).await;
    witness.expect("welcome").await;
    subscribe(&mut witness, "chat.room").await;

    // Both a claim and the hook's answer: the hook's is the member's.
    let mut ann = connect("name=Hooked".into()).await;
    let claim = Some(json!({"name": "FromToken"}));
    ann.send(json!({"type": "hello", "token": token("ann", claim.clone())}))
        .await;
    let welcome = ann.expect("welcome").await;
    subscribe(&mut ann, "chat.room").await;
    let join = witness.expect("join").await;
    assert_eq!(join["member"]["session"], welcome["session"]);
    assert_eq!(join["member"]["user"], "ann");
    assert_eq!(join["member"]["info"], json!({"name": "Hooked"}), "{join}");

    // The hook answers nothing about info: the claim's stays.
    let mut bob = connect(String::new()).await;
    bob.send(json!({"type": "hello", "token": token("bob", claim)}))
        .await;
    bob.expect("welcome").await;
    subscribe(&mut bob, "chat.room").await;
    let join = witness.expect("join").await;
    assert_eq!(
        join["member"]["info"],
        json!({"name": "FromToken"}),
        "{join}"
    );

    // Too large from the hook, and from the token: `too_large`, then a close that says not
    // to retry.
    let long = "x".repeat(200);
    let mut big = connect(format!("user=big&name={long}")).await;
    big.send(json!({"type": "hello"})).await;
    let mut big_token = connect(String::new()).await;
    let claim = Some(json!({ "name": long }));
    big_token
        .send(json!({"type": "hello", "token": token("cat", claim)}))
        .await;
    for c in [&mut big, &mut big_token] {
        let error = c.expect("error").await;
        assert_eq!(error["code"], "too_large", "{error}");
        let closed = c.closed().await;
        assert_eq!(closed.code, 1008);
        assert_eq!(
            closed.reason["error"], "info_too_large",
            "{:?}",
            closed.reason
        );
        assert_eq!(closed.reason["reconnect"], false, "{:?}", closed.reason);
    }
    // Nobody joined for them: the next event the witness hears is dan's.
    let mut dan = connect("user=dan".into()).await;
    dan.send(json!({"type": "hello"})).await;
    let dan_welcome = dan.expect("welcome").await;
    subscribe(&mut dan, "chat.room").await;
    let join = witness.expect("join").await;
    assert_eq!(join["member"]["session"], dan_welcome["session"], "{join}");
}

#[tokio::test]
async fn server_side_subscriptions_join_and_leave() {
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    let pods = [
        pod(&redis, &nats, "pod-0").await,
        pod(&redis, &nats, "pod-1").await,
    ];
    let (mut witness, _) = hello(
        &pods[1],
        json!({"type": "hello", "token": token("wit", None)}),
    )
    .await;
    witness.subscribe("alerts").await;
    let info = json!({"name": "Ann"});
    let (mut ann, welcome) = hello(
        &pods[0],
        json!({"type": "hello", "token": token("ann", Some(info.clone()))}),
    )
    .await;
    let api = |path: &'static str| {
        let gw = &pods[1];
        async move {
            let body = json!({"user": "ann", "topic": "alerts"}).to_string();
            let (status, text) = gw.admin_post(path, &body).await;
            assert_eq!(status, 200, "{path}: {text}");
        }
    };
    api("/api/subscribe").await;
    let subscribed = ann.expect("subscribed").await;
    assert_eq!(subscribed["reason"], "server");
    let join = witness.expect("join").await;
    assert_eq!(join["member"]["session"], welcome["session"]);
    assert_eq!(join["member"]["info"], info, "{join}");
    // Ann follows the topic's join/leave events from her own join on.
    assert_eq!(subscribed["pseq"], join["pseq"], "{subscribed}");
    assert_eq!(subscribed["pepoch"], join["epoch"]);
    let (mut bob, bob_welcome) = hello(
        &pods[1],
        json!({"type": "hello", "token": token("bob", None)}),
    )
    .await;
    bob.subscribe("alerts").await;
    let bob_join = ann.expect("join").await;
    assert_eq!(bob_join["member"]["session"], bob_welcome["session"]);
    assert_eq!(witness.expect("join").await, bob_join);

    api("/api/unsubscribe").await;
    assert_eq!(ann.expect("unsubscribed").await["reason"], "server");
    let leave = witness.expect("leave").await;
    assert_eq!(leave["member"]["session"], welcome["session"]);
    assert_eq!(leave["member"]["info"], info);
    // One leave: the next event is bob's own leave, right after it.
    bob.send(json!({"type": "unsubscribe", "topic": "alerts"}))
        .await;
    reply(&mut bob, "unsubscribed").await;
    let next = witness.expect("leave").await;
    assert_eq!(next["member"]["session"], bob_welcome["session"], "{next}");
    assert_eq!(next["pseq"], leave["pseq"].as_u64().unwrap() + 1);
}

/// The webhook's `presence.join` and `presence.leave` carry the member's info as `data.info`
/// (and leave it out for a member without).
#[tokio::test]
async fn webhook_presence_events_carry_the_info() {
    let rx = Receiver::start().await;
    let gw = TestGateway::with(|c| {
        presence_on(c);
        rx.configure(c);
        c.events.webhook_retry_max = Duration::from_millis(300);
    })
    .await;
    let info = json!({"name": "Ann"});
    let (mut ann, welcome) = hello(
        &gw,
        json!({"type": "hello", "token": token("ann", Some(info.clone()))}),
    )
    .await;
    let (mut bob, bob_welcome) =
        hello(&gw, json!({"type": "hello", "token": token("bob", None)})).await;
    for c in [&mut ann, &mut bob] {
        c.subscribe("room.9").await;
        c.send(json!({"type": "unsubscribe", "topic": "room.9"}))
            .await;
        reply(c, "unsubscribed").await;
    }
    let events = rx
        .wait_for("both leaves", Duration::from_secs(60), |e| {
            of(e, "presence.leave").len() == 2
        })
        .await;
    for kind in ["presence.join", "presence.leave"] {
        let of_kind = of(&events, kind);
        let find = |s: &Value| *of_kind.iter().find(|e| e["session"] == *s).unwrap();
        assert_eq!(find(&welcome["session"])["data"]["info"], info, "{kind}");
        let plain = &find(&bob_welcome["session"])["data"];
        assert!(plain.get("info").is_none(), "{kind}: {plain}");
    }
}

/// Members written straight into Redis, one as a pod from before `info` wrote them and one with
/// info: both are listed (the old one without info), and when they expire the sweep (Lua)
/// reads each one's user key and info correctly: one leave each, and the counts come back.
#[tokio::test]
async fn members_stored_with_and_without_info_are_listed_and_swept() {
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    let gw = pod(&redis, &nats, "pod-0").await;
    let (mut witness, _) = hello(&gw, json!({"type": "hello", "token": token("wit", None)})).await;
    witness.subscribe("room").await;
    let hour_ahead = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 3_600_000;
    let info = r#"{"name":"N|e:w"}"#;
    let put = |expiry: u128| {
        let old = format!("|{expiry}|u:old");
        let new = format!("|{expiry}|i{}:{info}u:new", info.len());
        redis.cmd(&["HSET", "gw:presence:{room}", "old-s", &old, "new-s", &new]);
    };
    put(hour_ahead);
    redis.cmd(&["HINCRBY", "gw:presence-users:{room}", "u:old", "1"]);
    redis.cmd(&["HINCRBY", "gw:presence-users:{room}", "u:new", "1"]);
    let old = listed(&mut witness, "room", &json!("old-s")).await;
    assert_eq!(old["user"], "old");
    assert!(old.get("info").is_none(), "{old}");
    let new = listed(&mut witness, "room", &json!("new-s")).await;
    assert_eq!(new["user"], "new");
    assert_eq!(new["info"], json!({"name": "N|e:w"}));

    put(1);
    let mut leaves = [witness.expect("leave").await, witness.expect("leave").await];
    leaves.sort_by_key(|l| l["member"]["session"].as_str().unwrap().to_owned());
    assert_eq!(
        leaves[0]["member"],
        json!({"user": "new", "session": "new-s", "info": {"name": "N|e:w"}})
    );
    assert_eq!(
        leaves[1]["member"],
        json!({"user": "old", "session": "old-s"})
    );
    witness
        .send(json!({"type": "presence_stats", "topic": "room", "ref": 3}))
        .await;
    let stats = reply(&mut witness, "presence_stats").await;
    assert_eq!(
        (stats["members"].as_u64(), stats["users"].as_u64()),
        (Some(1), Some(1)),
        "{stats}"
    );
}
