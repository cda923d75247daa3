//! The application's backend in the loop: hooks against the example chat backend (a real
//! Python process), namespaces and ephemeral topics, with real gateways (and real Redis and
//! NATS where pods share state).

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::backend::Backend;
use support::{Client, TestGateway};
use test_support::{NatsServer, RedisServer};

/// A namespaces file in a fresh temporary directory (kept for the test's life).
fn namespaces(text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("gw-ns-{}", test_support::free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

const CHAT: &str = r#"
[[namespaces]]
prefix = "chat."
hooks = ["subscribe", "publish", "resubscribe"]

[[namespaces]]
prefix = "cursor."
history = false
"#;

async fn gateway(backend: &Backend, edit: impl FnOnce(&mut gateway::Config)) -> TestGateway {
    let file = namespaces(CHAT);
    let (url, secret) = (backend.url(), backend.secret_file.clone());
    TestGateway::with(move |c| {
        c.app.hook_url = Some(url);
        c.app.hook_secret_file = Some(secret);
        c.app.config_file = Some(file);
        edit(c);
    })
    .await
}

async fn hello_as(gw: &TestGateway, user: &str) -> (Client, Value) {
    let mut c = Client::connect(&format!("{}?user={user}", gw.ws_url())).await;
    c.send(json!({"type": "hello"})).await;
    let welcome = c.expect("welcome").await;
    (c, welcome)
}

/// The next frame of `kind`, skipping others (e.g. messages arriving meanwhile).
async fn next_of(c: &mut Client, kind: &str) -> Value {
    loop {
        let v = c.next().await;
        if v["type"] == kind {
            return v;
        }
    }
}

#[tokio::test]
async fn the_connect_hook_sets_user_grants_and_server_subscriptions_or_refuses() {
    let backend = Backend::start(None);
    let gw = gateway(&backend, |_| {}).await;
    let (mut alice, welcome) = hello_as(&gw, "alice").await;
    assert_eq!(welcome["user"], "alice");
    let sub = alice.expect("subscribed").await;
    assert_eq!(
        (&sub["topic"], &sub["reason"]),
        (&json!("user.alice"), &json!("server"))
    );
    // Grants are the hook's: chat.* yes, news no.
    alice
        .send(json!({"type": "subscribe", "topic": "news", "ref": 1}))
        .await;
    let e = alice.expect("error").await;
    assert_eq!((&e["code"], &e["ref"]), (&json!("forbidden"), &json!(1)));
    assert_eq!(alice.subscribe("chat.lobby").await["topic"], "chat.lobby");

    let (mut banned, _) = (
        Client::connect(&format!("{}?user=banned", gw.ws_url())).await,
        (),
    );
    banned.send(json!({"type": "hello"})).await;
    let e = banned.expect("error").await;
    assert_eq!(e["message"], "this user is banned");
    let closed = banned.closed().await;
    assert_eq!(closed.code, 1008);
    assert_eq!(
        closed.reason,
        json!({"reconnect": false, "error": "banned"})
    );

    let mut nobody = gw.client().await;
    nobody.send(json!({"type": "hello"})).await;
    nobody.expect("error").await;
    assert_eq!(nobody.closed().await.reason["error"], "unauthorized");
    assert_eq!(backend.calls("connect").await, 3);
    gw.shutdown().await;
}

#[tokio::test]
async fn resumes_after_a_drain_call_no_connect_hook_and_keep_the_hooks_grants() {
    let (redis, nats) = (RedisServer::start(), NatsServer::start());
    let backend = Backend::start(None);
    let shared = |name: &'static str| {
        let (r, n) = (redis.url(), nats.url());
        move |c: &mut gateway::Config| {
            c.redis_url = Some(r);
            c.nats_url = vec![n];
            c.pod_name = Some(name.into());
        }
    };
    let a = gateway(&backend, shared("pod-a")).await;
    let b = gateway(&backend, shared("pod-b")).await;
    a.ready().await;
    b.ready().await;
    const N: usize = 6;
    let mut clients = Vec::new();
    for i in 0..N {
        let (mut c, welcome) = hello_as(&a, &format!("u{i}")).await;
        c.expect("subscribed").await;
        c.subscribe("chat.room").await;
        clients.push((c, welcome["resume"].as_str().unwrap().to_owned()));
    }
    assert_eq!(backend.calls("connect").await, N as u64);
    // A server-side subscription the application will refuse when the session resumes.
    let body = json!({"user": "u0", "topic": "chat.secret-u0"}).to_string();
    assert_eq!(a.admin_post("/api/subscribe", &body).await.0, 200);
    assert_eq!(
        next_of(&mut clients[0].0, "subscribed").await["reason"],
        "server"
    );
    let (status, _) = a.admin_post("/admin/drain", "").await;
    assert_eq!(status, 202);
    for (i, (c, resume)) in clients.iter_mut().enumerate() {
        assert_eq!(c.closed().await.code, 1001);
        let mut again = b.client().await;
        again.send(json!({"type": "hello", "resume": resume})).await;
        let welcome = again.expect("welcome").await;
        assert_eq!(
            (&welcome["resumed"], &welcome["user"]),
            (&json!(true), &json!(format!("u{i}")))
        );
        assert!(welcome["topics"]["chat.room"].is_object(), "{welcome}");
        assert!(
            welcome["topics"].get("chat.secret-u0").is_none(),
            "re-checked: {welcome}"
        );
        // The hook's grants came back with the session: news is still refused.
        again
            .send(json!({"type": "subscribe", "topic": "news", "ref": 5}))
            .await;
        assert_eq!(next_of(&mut again, "error").await["code"], "forbidden");
        *c = again;
    }
    assert_eq!(
        backend.calls("connect").await,
        N as u64,
        "no connect hook on resume"
    );
    assert_eq!(
        backend.calls("resubscribe").await,
        N as u64,
        "one re-check per resume"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn the_publish_hook_refuses_without_using_a_seq_and_its_replacement_is_what_history_keeps() {
    let backend = Backend::start(None);
    let gw = gateway(&backend, |_| {}).await;
    let (mut alice, _) = hello_as(&gw, "alice").await;
    alice.expect("subscribed").await;
    let (mut bob, _) = hello_as(&gw, "bob").await;
    bob.expect("subscribed").await;
    let sub = bob.subscribe("chat.room").await;
    let epoch = sub["epoch"].clone();
    assert_eq!(alice.publish("chat.room", json!({"text": "hi"})).await, 1);
    alice
        .send(json!({"type": "publish", "topic": "chat.room", "data": {"text": "cheap SPAM"}, "ref": 7}))
        .await;
    let e = alice.expect("error").await;
    assert_eq!(
        (&e["code"], &e["message"], &e["ref"]),
        (&json!("forbidden"), &json!("no spam, please"), &json!(7))
    );
    assert_eq!(
        alice.publish("chat.room", json!({"text": "again"})).await,
        2,
        "contiguous"
    );
    let got = bob.messages(2).await;
    assert_eq!(got[0]["data"], json!({"text": "hi", "by": "alice"}));
    assert_eq!(
        (got[1]["seq"].as_u64(), &got[1]["data"]["by"]),
        (Some(2), &json!("alice"))
    );
    // A later reader recovering from history sees the approved form too.
    let (mut carol, _) = hello_as(&gw, "carol").await;
    carol.expect("subscribed").await;
    carol
        .send(
            json!({"type": "subscribe", "topic": "chat.room", "since": {"seq": 0, "epoch": epoch}}),
        )
        .await;
    assert_eq!(carol.expect("subscribed").await["recovered"], true);
    let replay = carol.messages(2).await;
    assert_eq!(replay[0]["data"], json!({"text": "hi", "by": "alice"}));
    // The subscribe hook refuses private rooms with the application's message.
    carol
        .send(json!({"type": "subscribe", "topic": "chat.secret-room", "ref": 3}))
        .await;
    let e = carol.expect("error").await;
    assert_eq!(
        (&e["code"], &e["message"]),
        (&json!("forbidden"), &json!("this room is private"))
    );
    assert!(backend.calls("publish").await >= 3);
    gw.shutdown().await;
}

#[tokio::test]
async fn rpc_round_trips_errors_and_timeouts_carry_the_ref() {
    let backend_gw_admin = test_support::free_port();
    let backend = Backend::start(Some(&format!("http://127.0.0.1:{backend_gw_admin}")));
    let gw = gateway(&backend, |c| {
        c.admin_listen = ([127, 0, 0, 1], backend_gw_admin).into();
        c.app.hook_timeout = Duration::from_millis(500);
    })
    .await;
    let (mut alice, _) = hello_as(&gw, "alice").await;
    alice.expect("subscribed").await;
    alice.subscribe("chat.lobby").await;
    alice
        .send(json!({"type": "rpc", "method": "echo", "data": {"n": [1, 2]}, "ref": 1}))
        .await;
    assert_eq!(
        alice.expect("rpc_result").await,
        json!({"type": "rpc_result", "ref": 1, "data": {"n": [1, 2]}})
    );
    alice
        .send(json!({"type": "rpc", "method": "whoami", "ref": 2}))
        .await;
    assert_eq!(alice.expect("rpc_result").await["data"]["user"], "alice");
    alice
        .send(json!({"type": "rpc", "method": "fail", "ref": 3}))
        .await;
    let e = alice.expect("error").await;
    assert_eq!((&e["code"], &e["ref"]), (&json!("bad_request"), &json!(3)));
    alice
        .send(json!({"type": "rpc", "method": "sleep", "data": {"seconds": 3}, "ref": 4}))
        .await;
    let e = alice.expect("error").await;
    assert_eq!((&e["code"], &e["ref"]), (&json!("unavailable"), &json!(4)));
    // The application calls the server API from an RPC: the lobby gets its announcement.
    alice
        .send(json!({"type": "rpc", "method": "announce", "data": {"text": "welcome"}, "ref": 5}))
        .await;
    // The result is written when the hook answers; the message it caused may come either side.
    let (one, two) = (alice.next().await, alice.next().await);
    let (m, result) = if one["type"] == "message" {
        (one, two)
    } else {
        (two, one)
    };
    assert_eq!(m["data"], json!({"text": "welcome", "by": "system"}));
    assert_eq!(
        (&result["type"], &result["ref"]),
        (&json!("rpc_result"), &json!(5))
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_slow_backend_is_bounded_then_the_breaker_answers_at_once_and_others_keep_receiving() {
    let backend = Backend::start(None);
    let gw = gateway(&backend, |c| {
        c.app.hook_timeout = Duration::from_millis(400);
        c.app.hook_concurrency = 2;
        c.app.hook_breaker_failures = 2;
        c.app.hook_breaker_cooldown = Duration::from_secs(120);
    })
    .await;
    // A witness on a topic without hooks, fed by the server API throughout.
    let (mut witness, _) = hello_as(&gw, "witness").await;
    witness.expect("subscribed").await;
    witness.subscribe("cursor.board").await;
    let mut publishers = Vec::new();
    for i in 0..5 {
        let (mut c, _) = hello_as(&gw, &format!("p{i}")).await;
        c.expect("subscribed").await;
        publishers.push(c);
    }
    backend.delay(3_000).await;
    for (i, p) in publishers.iter_mut().enumerate() {
        p.send(json!({"type": "publish", "topic": "chat.room", "data": {"text": "x"}, "ref": i}))
            .await;
    }
    let mut fed = 0;
    for p in publishers.iter_mut() {
        // While publishers wait for the hook, the witness keeps getting what is published.
        gw.publish_api("cursor.board", json!(fed)).await;
        assert_eq!(witness.expect("message").await["data"], fed);
        fed += 1;
        let e = p.expect("error").await;
        assert_eq!(e["code"], "unavailable", "{e}");
    }
    // Two timeouts (busy refusals say nothing about the backend): the breaker is open and
    // refuses at once.
    let p = &mut publishers[0];
    p.send(json!({"type": "publish", "topic": "chat.room", "data": {"text": "y"}, "ref": 9}))
        .await;
    let e = p.expect("error").await;
    assert!(e["message"].as_str().unwrap().contains("breaker"), "{e}");
    gw.publish_api("cursor.board", json!(fed)).await;
    assert_eq!(witness.expect("message").await["data"], fed);
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(metrics.contains("gateway_hook_breaker_open 1"), "{metrics}");
    assert!(
        metrics.contains(r#"gateway_hook_calls_total{hook="publish",outcome="busy"}"#),
        "{metrics}"
    );
    assert!(
        backend.calls("publish").await <= 2,
        "never more than --hook-concurrency in flight"
    );
    gw.shutdown().await;
}

/// Calls per Redis command, from `INFO commandstats`.
fn command_calls(redis: &RedisServer) -> Vec<(String, u64)> {
    let info = redis.cmd(&["INFO", "commandstats"]);
    let mut out: Vec<(String, u64)> = info
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .filter(|(name, _)| name != "info")
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn ephemeral_topics_fan_out_across_pods_without_a_redis_command_or_a_seq() {
    let (redis, nats) = (RedisServer::start(), NatsServer::start());
    let file = namespaces("[[namespaces]]\nprefix = \"cursor.\"\nhistory = false\n");
    let pod = |name: &'static str| {
        let (r, n, f) = (redis.url(), nats.url(), file.clone());
        TestGateway::with(move |c| {
            c.redis_url = Some(r);
            c.nats_url = vec![n];
            c.pod_name = Some(name.into());
            c.app.config_file = Some(f);
        })
    };
    let (a, b) = (pod("pod-a").await, pod("pod-b").await);
    // Ephemeral publishes need NATS: nothing is stored to catch up from.
    a.ready().await;
    b.ready().await;
    let (mut reader, _) = a.hello().await;
    let sub = reader.subscribe("cursor.1").await;
    assert_eq!(sub["recovered"], false);
    assert!(
        sub.get("seq").is_none() && sub.get("epoch").is_none(),
        "{sub}"
    );
    reader
        .send(json!({"type": "subscribe", "topic": "cursor.2", "since": {"seq": 3, "epoch": "x"}}))
        .await;
    assert_eq!(
        reader.expect("subscribed").await["recovered"],
        false,
        "never claimed"
    );
    let (mut writer, _) = b.hello().await;
    // The pods' subscriptions are live; from here on nothing may touch Redis.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = command_calls(&redis);
    for i in 0..20 {
        writer
            .send(json!({"type": "publish", "topic": "cursor.1", "data": i, "ref": i}))
            .await;
        let published = writer.expect("published").await;
        assert!(published.get("seq").is_none(), "{published}");
    }
    let api = b.publish_api("cursor.1", json!("api")).await;
    assert_eq!(api["ephemeral"], true);
    let got = reader.messages(21).await;
    let data: Vec<Value> = got.iter().map(|m| m["data"].clone()).collect();
    let mut expected: Vec<Value> = (0..20).map(|i| json!(i)).collect();
    expected.push(json!("api"));
    assert_eq!(data, expected, "in order");
    assert!(got.iter().all(|m| m.get("seq").is_none()));
    assert_eq!(
        command_calls(&redis),
        before,
        "no Redis command for ephemeral publishes"
    );
    a.shutdown().await;
    b.shutdown().await;
}

async fn start_error(edit: impl FnOnce(&mut gateway::Config)) -> String {
    let mut c = support::config();
    edit(&mut c);
    let listeners = gateway::Listeners {
        public: tokio::net::TcpListener::bind(c.listen).await.unwrap(),
        admin: tokio::net::TcpListener::bind(c.admin_listen).await.unwrap(),
        proxy: None,
        agent: None,
    };
    gateway::run(listeners, c, std::future::pending())
        .await
        .unwrap_err()
        .to_string()
}

#[tokio::test]
async fn bad_namespaces_and_hook_settings_fail_the_start_naming_the_key() {
    let file = namespaces(
        "[[namespaces]]\nprefix = \"a.\"\n\n[[namespaces]]\nprefix = \"b.\"\nhistory_size = 0\n",
    );
    let e = start_error(|c| c.app.config_file = Some(file)).await;
    assert!(
        e.contains("namespaces[1].history_size: must be greater than zero"),
        "{e}"
    );
    let file = namespaces("[[namespaces]]\nprefix = \"a.\"\nhooks = [\"publish\"]\n");
    let e = start_error(|c| c.app.config_file = Some(file)).await;
    assert!(
        e.contains("namespace \"a.\" calls the publish hook but no hook URL is set"),
        "{e}"
    );
    let e = start_error(|c| c.app.hook_url = Some("http://127.0.0.1:1".into())).await;
    assert!(e.contains("--hook-url needs --hook-secret-file"), "{e}");
    let e = start_error(|c| c.app.config_file = Some("/nonexistent/gateway.toml".into())).await;
    assert!(e.contains("--config \"/nonexistent/gateway.toml\""), "{e}");
}
