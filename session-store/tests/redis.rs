//! The conformance suite against a real `redis-server` (one per test, on a dynamic port), plus
//! what only Redis has: the key layout, partial key loss, several stores sharing one Redis, and
//! outages (killed, restarted, absent at startup).

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use fred::prelude::{
    Builder, Client, ClientLike, Config, HashesInterface, KeysInterface, ReconnectPolicy,
    StreamsInterface,
};
use protocol::{Payload, SessionId, Topic};
use session_store::conformance::Harness;
use session_store::{
    HistoryLimits, RedisConfig, RedisStore, SessionRecord, SessionStore, StoreError,
};
use test_support::{RedisServer, free_port};

struct Redis {
    server: RedisServer,
}

impl Harness for Redis {
    type Store = RedisStore;

    async fn store(&self, limits: HistoryLimits) -> RedisStore {
        connect(&self.server.url(), limits, Duration::from_secs(2)).await
    }

    async fn lose_history(&self, _store: &RedisStore, _limits: HistoryLimits) {
        let admin = admin(&self.server.url()).await;
        admin.flushall::<()>(false).await.expect("FLUSHALL");
    }
}

async fn redis() -> Redis {
    Redis {
        server: RedisServer::start(),
    }
}

session_store::conformance_tests!(redis);

fn config(url: &str, limits: HistoryLimits, call_timeout: Duration) -> RedisConfig {
    RedisConfig {
        limits,
        call_timeout,
        pool_size: 2,
        ..RedisConfig::new(url)
    }
}

async fn connect(url: &str, limits: HistoryLimits, call_timeout: Duration) -> RedisStore {
    RedisStore::connect(config(url, limits, call_timeout))
        .await
        .expect("connect")
}

/// A plain client for looking at (and tampering with) what the store wrote.
async fn admin(url: &str) -> Client {
    let client = Builder::from_config(Config::from_url(url).expect("url"))
        .set_policy(ReconnectPolicy::new_constant(0, 100))
        .build()
        .expect("client");
    client.init().await.expect("admin connects");
    client
}

fn topic(name: &str) -> Topic {
    Topic::new(name).expect("topic")
}

fn json(text: &str) -> Payload {
    Payload::parse(text).expect("JSON")
}

fn record() -> SessionRecord {
    SessionRecord {
        id: SessionId::generate(),
        secret: "ab".repeat(32),
        user: Some("carol".into()),
        subscriptions: Default::default(),
        confirmed: false,
        created_ms: 1,
        last_pod: "gateway-1".into(),
        granted: None,
        info: None,
    }
}

/// Polls `f` until it succeeds, failing the test after `within`.
async fn eventually<T, F, Fut>(within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("still failing after {within:?}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test]
async fn keys_follow_the_documented_layout() {
    let server = RedisServer::start();
    let ttl = Duration::from_secs(30);
    let limits = HistoryLimits {
        max_len: 10,
        ttl,
        ..HistoryLimits::default()
    };
    let store = RedisStore::connect(RedisConfig {
        key_prefix: "custom".into(),
        ..config(&server.url(), limits, Duration::from_secs(2))
    })
    .await
    .expect("connect");
    let t = topic("chat.room-1");
    let appended = store
        .append(&t, &json(r#"{"hi":1}"#), None)
        .await
        .expect("append");

    let admin = admin(&server.url()).await;
    let [seq, hist, epoch] = store.topic_keys(&t);
    assert_eq!(seq, "custom:seq:{chat.room-1}");
    assert_eq!(hist, "custom:hist:{chat.room-1}");
    assert_eq!(epoch, "custom:epoch:{chat.room-1}");
    assert_eq!(admin.get::<String, _>(&seq).await.expect("seq"), "1");
    // The epoch is stored with the incarnation (replication id) of the server that wrote it.
    let stored: String = admin.get(&epoch).await.expect("epoch");
    let (stored_epoch, incarnation) = stored.split_once('|').expect("epoch|run_id");
    assert_eq!(stored_epoch, appended.epoch.as_str());
    assert_eq!(incarnation.len(), 40, "replication id {incarnation}");
    let entries: Vec<(String, HashMap<String, String>)> = admin
        .xrange_values(&hist, "-", "+", None)
        .await
        .expect("xrange");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].0, "1-1");
    assert_eq!(entries[0].1["d"], r#"{"hi":1}"#);
    assert!(entries[0].1["t"].parse::<u64>().expect("t is ms") > 1_600_000_000_000);
    for key in [&seq, &hist, &epoch] {
        let pttl: i64 = admin.pttl(key).await.expect("pttl");
        assert!(pttl > 0 && pttl <= 30_000, "{key} pttl {pttl}");
    }

    let session = record();
    store
        .save_session(&session, 1, Duration::from_secs(5))
        .await
        .expect("save");
    let key = store.session_key(&session.id);
    assert_eq!(key, format!("custom:session:{}", session.id));
    let stored: String = admin.hget(&key, "r").await.expect("get session");
    let parsed: SessionRecord = serde_json::from_str(&stored).expect("session is JSON");
    assert_eq!(parsed, session);
    let pttl: i64 = admin.pttl(&key).await.expect("pttl");
    assert!(pttl > 0 && pttl <= 5_000, "session pttl {pttl}");
}

#[tokio::test]
async fn losing_either_key_starts_a_new_epoch() {
    let server = RedisServer::start();
    let limits = HistoryLimits::default();
    let store = connect(&server.url(), limits, Duration::from_secs(2)).await;
    let admin = admin(&server.url()).await;
    let t = topic("partial");
    let [seq_key, _, epoch_key] = store.topic_keys(&t);
    for i in 0..3 {
        store
            .append(&t, &json(&i.to_string()), None)
            .await
            .expect("append");
    }
    let first = store.top(&t).await.expect("top");

    // The seq is gone but the epoch survived (e.g. evicted): the old positions are void.
    admin.del::<(), _>(&seq_key).await.expect("del");
    let second = store
        .append(&t, &json("\"a\""), None)
        .await
        .expect("append");
    assert_eq!(second.seq, 1);
    assert_ne!(second.epoch, first.epoch);
    let page = store.history(&t, 0, 10_000).await.expect("history");
    assert_eq!(page.messages.len(), 1, "the stale stream was dropped");

    // The epoch is gone but the seq survived.
    admin.del::<(), _>(&epoch_key).await.expect("del");
    let top = store.top(&t).await.expect("top");
    assert_eq!(top.seq, 0);
    assert_ne!(top.epoch, second.epoch);
    let third = store
        .append(&t, &json("\"b\""), None)
        .await
        .expect("append");
    assert_eq!((third.seq, &third.epoch), (1, &top.epoch));
}

#[tokio::test]
async fn stores_on_one_redis_share_topics_and_sessions() {
    let server = RedisServer::start();
    let limits = HistoryLimits::default();
    let a = connect(&server.url(), limits, Duration::from_secs(2)).await;
    let b = connect(&server.url(), limits, Duration::from_secs(2)).await;
    let t = topic("shared");
    let top = a.top(&t).await.expect("top");
    assert_eq!(b.top(&t).await.expect("top"), top);
    for i in 0..6u64 {
        let store = if i % 2 == 0 { &a } else { &b };
        let appended = store.append(&t, &json("1"), None).await.expect("append");
        assert_eq!((appended.seq, &appended.epoch), (i + 1, &top.epoch));
    }
    assert_eq!(
        b.history(&t, 0, 10_000)
            .await
            .expect("history")
            .messages
            .len(),
        6
    );

    let session = record();
    a.save_session(&session, 1, Duration::from_secs(60))
        .await
        .expect("save");
    assert_eq!(
        b.load_session(&session.id).await.expect("load"),
        Some(session.clone())
    );
    b.delete_session(&session.id).await.expect("delete");
    assert_eq!(a.load_session(&session.id).await.expect("load"), None);
}

#[tokio::test]
async fn a_corrupt_session_is_reported_not_panicked() {
    let server = RedisServer::start();
    let store = connect(
        &server.url(),
        HistoryLimits::default(),
        Duration::from_secs(2),
    )
    .await;
    let id = SessionId::generate();
    let admin = admin(&server.url()).await;
    admin
        .hset::<(), _, _>(store.session_key(&id), ("r", "{not json"))
        .await
        .expect("hset");
    assert!(matches!(
        store.load_session(&id).await,
        Err(StoreError::Corrupt(_))
    ));
}

/// Every call fails within the call timeout (plus scheduling slack) instead of hanging.
async fn assert_all_calls_fail(store: &RedisStore, call_timeout: Duration) {
    let t = topic("outage");
    let session = record();
    let bound = call_timeout + Duration::from_millis(750);
    macro_rules! fails {
        ($call:expr) => {{
            let started = Instant::now();
            let result = $call.await;
            let took = started.elapsed();
            assert!(result.is_err(), "{} succeeded", stringify!($call));
            assert!(took < bound, "{} took {took:?}", stringify!($call));
        }};
    }
    fails!(store.append(&t, &json("1"), None));
    fails!(store.top(&t));
    fails!(store.history(&t, 0, 10_000));
    fails!(store.save_session(&session, 1, Duration::from_secs(5)));
    fails!(store.load_session(&session.id));
    fails!(store.delete_session(&session.id));
    fails!(store.ping());
}

#[tokio::test]
async fn calls_fail_fast_while_redis_is_down_and_recover_after_restart() {
    let mut server = RedisServer::start();
    let call_timeout = Duration::from_millis(500);
    let store = connect(&server.url(), HistoryLimits::default(), call_timeout).await;
    let t = topic("restart");
    let before = store.append(&t, &json("1"), None).await.expect("append");

    server.kill();
    assert_all_calls_fail(&store, call_timeout).await;

    // Back on the same port, empty: the same store reconnects by itself. Scripts are unknown to
    // the new server, so this also exercises the EVALSHA -> EVAL fallback.
    server.restart();
    eventually(Duration::from_secs(10), || store.ping()).await;
    let after = store
        .append(&t, &json("2"), None)
        .await
        .expect("append after restart");
    // seq 1: none of the appends that failed during the outage was written late.
    assert_eq!(after.seq, 1);
    assert_ne!(
        after.epoch, before.epoch,
        "the history was lost with the server"
    );
}

#[tokio::test]
async fn starts_without_redis_and_connects_when_it_appears() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let call_timeout = Duration::from_millis(300);
    let started = Instant::now();
    let store = connect(&url, HistoryLimits::default(), call_timeout).await;
    assert!(started.elapsed() < call_timeout + Duration::from_secs(1));
    assert_all_calls_fail(&store, call_timeout).await;

    let _server = RedisServer::start_on(port);
    eventually(Duration::from_secs(10), || store.ping()).await;
    let appended = store
        .append(&topic("late"), &json("1"), None)
        .await
        .expect("append");
    assert_eq!(appended.seq, 1);
}

#[tokio::test]
async fn bad_configuration_is_an_error() {
    let limits = HistoryLimits::default();
    let bad_url = RedisStore::connect(config("not a url", limits, Duration::from_secs(1))).await;
    assert!(matches!(bad_url, Err(StoreError::Unavailable(_))));
    let bad_prefix = RedisStore::connect(RedisConfig {
        key_prefix: "gw{x}".into(),
        ..config("redis://127.0.0.1:1", limits, Duration::from_secs(1))
    })
    .await;
    assert!(bad_prefix.is_err());
}

#[tokio::test]
async fn the_user_index_and_revocations_conform() {
    let r = redis().await;
    let store = connect(
        &r.server.url(),
        HistoryLimits::default(),
        Duration::from_secs(2),
    )
    .await;
    session_store::users::conformance(&store.users()).await;
    // One user's index lives under its own hash tag.
    let admin = admin(&r.server.url()).await;
    let users = store.users();
    session_store::UserSessions::add_session(
        &users,
        "erin",
        &protocol::SessionId::generate(),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let exists: u64 = admin.exists("gw:user:{erin}").await.unwrap();
    assert_eq!(exists, 1);
}

#[tokio::test]
async fn prefix_limits_cap_each_namespace_on_its_own() {
    let r = redis().await;
    let mut c = config(
        &r.server.url(),
        HistoryLimits::default(),
        Duration::from_secs(2),
    );
    c.prefix_limits = session_store::PrefixLimits::new(vec![(
        "small.".into(),
        HistoryLimits {
            max_len: 2,
            ..HistoryLimits::default()
        },
    )]);
    let store = RedisStore::connect(c).await.unwrap();
    for name in ["small.a", "big"] {
        let topic = protocol::Topic::new(name).unwrap();
        for i in 0..5 {
            let data = protocol::Payload::parse(&i.to_string()).unwrap();
            store.append(&topic, &data, None).await.unwrap();
        }
        let page = store.history(&topic, 0, 100).await.unwrap();
        let kept = if name == "big" { 5 } else { 2 };
        assert_eq!(page.messages.len(), kept, "{name}");
    }
}
