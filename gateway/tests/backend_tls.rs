//! TLS and credentials towards Redis and NATS, against real servers: TLS-only `redis-server`
//! and `nats-server` with a throwaway CA, servers that demand client certificates, passwords,
//! ACL users, tokens and nkeys given in files.
//!
//! What a pod does when TLS or a login fails at connection time (no CA, wrong name, plaintext
//! server, wrong password): it starts, stays unready (`/readyz` 503) and keeps retrying, as for
//! an unreachable backend. What it can tell at start (a missing file, a TLS flag with a
//! plaintext URL, an unsupported scheme) fails the start with the flag in the message.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use gateway::{Config, ConfigError, GatewayError, Listeners};
use serde_json::json;
use support::{TestGateway, http};
use test_support::{
    ClientAuth, FaultProxy, NatsServer, NatsServerAuth, RedisServer, TlsFiles, info_field,
};
use tokio::net::TcpListener;

/// How long a pod that must not become ready is watched.
const UNREADY_FOR: Duration = Duration::from_secs(3);

async fn readyz(gw: &TestGateway) -> (u16, String) {
    http(gw.public, "GET", "/readyz", None, None).await
}

/// Polls `/readyz` until 200; panics with the last answer after 10 s.
async fn wait_ready(gw: &TestGateway) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = readyz(gw).await;
        if status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not ready within 10 s: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts `/readyz` never answers 200 for [`UNREADY_FOR`]; returns the last answer.
async fn stays_unready(gw: &TestGateway) -> String {
    let deadline = Instant::now() + UNREADY_FOR;
    let mut last = String::new();
    while Instant::now() < deadline {
        let (status, body) = readyz(gw).await;
        assert_ne!(status, 200, "became ready: {body}");
        last = body;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    last
}

/// A pod with quick store timeouts, so `/readyz` answers fast while the store is down.
async fn pod(name: &str, edit: impl FnOnce(&mut Config)) -> TestGateway {
    let name = name.to_owned();
    TestGateway::with(move |c| {
        c.pod_name = Some(name);
        c.store_timeout = Duration::from_millis(500);
        c.topic_resync_interval = Duration::from_millis(500);
        edit(c);
    })
    .await
}

/// A secret file next to the TLS files, ending in a newline as editors and `echo` write it.
fn secret_file(files: &TlsFiles, name: &str, secret: &str) -> PathBuf {
    let path = files.dir().join(name);
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    path
}

/// A message published on `a` reaches a subscriber on `b` (through the backplane), with its
/// `seq` from the store.
async fn round_trip(a: &TestGateway, b: &TestGateway, topic: &str) {
    let (mut sub, _) = b.hello().await;
    sub.subscribe(topic).await;
    let (mut publisher, _) = a.hello().await;
    assert_eq!(publisher.publish(topic, json!("over tls")).await, 1);
    let msgs = sub.messages(1).await;
    assert_eq!(msgs[0]["data"], "over tls");
    assert_eq!(msgs[0]["seq"], 1);
}

fn tls_redis(c: &mut Config, redis: &RedisServer, files: &TlsFiles) {
    c.redis_url = Some(redis.url());
    c.backends.redis_ca_file = Some(files.ca());
}

fn tls_nats(c: &mut Config, nats: &NatsServer, files: &TlsFiles) {
    c.nats_url = vec![nats.url()];
    c.backends.nats_ca_file = Some(files.ca());
}

#[tokio::test]
async fn pods_work_over_tls_only_redis_and_nats_with_the_ca_file() {
    let files = TlsFiles::generate();
    let redis = RedisServer::start_tls(&files, ClientAuth::Optional);
    let nats = NatsServer::start_tls(&files, ClientAuth::Optional);
    assert!(redis.url().starts_with("rediss://") && nats.url().starts_with("tls://"));
    let a = pod("tls-a", |c| {
        tls_redis(c, &redis, &files);
        tls_nats(c, &nats, &files);
    })
    .await;
    let b = pod("tls-b", |c| {
        tls_redis(c, &redis, &files);
        // nats:// upgraded because TLS is required.
        c.nats_url = vec![format!("nats://127.0.0.1:{}", nats.port)];
        c.backends.nats_ca_file = Some(files.ca());
        c.backends.nats_require_tls = true;
    })
    .await;
    wait_ready(&a).await;
    wait_ready(&b).await;
    round_trip(&a, &b, "tls-news").await;
    // The pods' connections are TLS ones (the harness uses the Unix socket).
    let info = redis.cmd(&["INFO", "clients"]);
    let clients: u32 = info_field(&info, "connected_clients")
        .unwrap()
        .parse()
        .unwrap();
    assert!(clients >= 8, "two pools of 4 (and the harness): {info}");
}

#[tokio::test]
async fn without_the_ca_a_pod_stays_unready_and_says_why() {
    let files = TlsFiles::generate();
    let redis = RedisServer::start_tls(&files, ClientAuth::Optional);
    let nats = NatsServer::start_tls(&files, ClientAuth::Optional);
    // The system roots do not know the test CA.
    let system_roots = pod("no-ca-redis", |c| c.redis_url = Some(redis.url())).await;
    let body = stays_unready(&system_roots).await;
    assert_eq!(body, "backend unavailable: redis");
    // A CA that did not sign the server's certificate.
    let wrong_ca = pod("wrong-ca-nats", |c| {
        c.nats_url = vec![nats.url()];
        c.backends.nats_ca_file = Some(files.other_ca());
    })
    .await;
    assert_eq!(stays_unready(&wrong_ca).await, "backend unavailable: nats");
    let wrong_ca_redis = pod("wrong-ca-redis", |c| {
        c.redis_url = Some(redis.url());
        c.backends.redis_ca_file = Some(files.other_ca());
    })
    .await;
    stays_unready(&wrong_ca_redis).await;
}

#[tokio::test]
async fn a_tls_url_never_falls_back_to_a_plaintext_redis() {
    let files = TlsFiles::generate();
    let plain = RedisServer::start();
    let proxy = FaultProxy::start(&plain);
    plain.cmd(&["CONFIG", "RESETSTAT"]);
    let password = secret_file(&files, "redis-password", "pw-never-in-clear");
    let gw = pod("tls-to-plain", |c| {
        c.redis_url = Some(proxy.url("rediss"));
        c.backends.redis_ca_file = Some(files.ca());
        c.backends.redis_password_file = Some(password);
    })
    .await;
    stays_unready(&gw).await;
    assert!(
        proxy.bytes_to_target() > 0,
        "the pod did dial the plaintext server"
    );
    // Redis counts every command it ran, failed ones (a wrong AUTH) included: only the
    // harness's own are there. The TLS ClientHello is no command (an unknown one at most).
    let stats = plain.cmd(&["INFO", "commandstats"]);
    let commands: Vec<&str> = stats
        .lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter_map(|l| l.split(':').next())
        .filter(|c| !matches!(*c, "info" | "config|resetstat"))
        .collect();
    assert!(commands.is_empty(), "commands reached Redis: {stats}");
}

#[tokio::test]
async fn required_tls_never_falls_back_to_a_plaintext_nats() {
    let files = TlsFiles::generate();
    let nats = NatsServer::start_with_auth(NatsServerAuth::Token("tok-en".into()));
    let token = secret_file(&files, "nats-token", "tok-en");
    // The control: with the token and no TLS, the pod gets in.
    let plain = pod("token-plain", |c| {
        c.nats_url = vec![nats.url()];
        c.backends.nats_token_file = Some(token.clone());
    })
    .await;
    wait_ready(&plain).await;
    // The same server and token with TLS required: refused, not sent in the clear.
    let tls = pod("token-tls-required", |c| {
        c.nats_url = vec![nats.url()];
        c.backends.nats_token_file = Some(token);
        c.backends.nats_require_tls = true;
        c.backends.nats_ca_file = Some(files.ca());
    })
    .await;
    assert_eq!(stays_unready(&tls).await, "backend unavailable: nats");
}

#[tokio::test]
async fn the_tls_server_name_is_what_the_certificate_is_checked_against() {
    let files = TlsFiles::generate();
    let redis = RedisServer::start_tls(&files, ClientAuth::Optional);
    // Dialled by IP, verified as `localhost`, a DNS name the certificate carries.
    let right = pod("name-localhost", |c| {
        tls_redis(c, &redis, &files);
        c.backends.redis_tls_server_name = Some("localhost".into());
    })
    .await;
    wait_ready(&right).await;
    // The IP alone would pass: the name given is the one checked.
    let wrong = pod("name-wrong", |c| {
        tls_redis(c, &redis, &files);
        c.backends.redis_tls_server_name = Some("redis.wrong.invalid".into());
    })
    .await;
    stays_unready(&wrong).await;
}

#[tokio::test]
async fn client_certificates_get_pods_into_servers_that_demand_them() {
    let files = TlsFiles::generate();
    let redis = RedisServer::start_tls(&files, ClientAuth::Required);
    let nats = NatsServer::start_tls(&files, ClientAuth::Required);
    let with_certs = |c: &mut Config| {
        tls_redis(c, &redis, &files);
        tls_nats(c, &nats, &files);
        c.backends.redis_client_cert = Some(files.client_cert());
        c.backends.redis_client_key = Some(files.client_key());
        c.backends.nats_client_cert = Some(files.client_cert());
        c.backends.nats_client_key = Some(files.client_key());
    };
    let a = pod("mtls-a", with_certs).await;
    let b = pod("mtls-b", with_certs).await;
    wait_ready(&a).await;
    wait_ready(&b).await;
    round_trip(&a, &b, "mtls").await;

    let no_cert_redis = pod("no-cert-redis", |c| tls_redis(c, &redis, &files)).await;
    stays_unready(&no_cert_redis).await;
    let no_cert_nats = pod("no-cert-nats", |c| tls_nats(c, &nats, &files)).await;
    assert_eq!(
        stays_unready(&no_cert_nats).await,
        "backend unavailable: nats"
    );
}

#[tokio::test]
async fn redis_passwords_and_acl_users_come_from_files() {
    let files = TlsFiles::generate();
    let redis = RedisServer::start_with_password("requirepass-pw");
    let password = secret_file(&files, "redis-password", "requirepass-pw");
    let gw = pod("redis-password", |c| {
        c.redis_url = Some(redis.url());
        c.backends.redis_password_file = Some(password);
    })
    .await;
    wait_ready(&gw).await;
    let (mut client, _) = gw.hello().await;
    assert_eq!(client.publish("pw", json!(1)).await, 1);

    let acl = RedisServer::start_with_acl_user("gateway", "acl-pw");
    let acl_password = secret_file(&files, "acl-password", "acl-pw");
    let gw = pod("redis-acl", |c| {
        c.redis_url = Some(acl.url());
        c.backends.redis_username = Some("gateway".into());
        c.backends.redis_password_file = Some(acl_password.clone());
    })
    .await;
    wait_ready(&gw).await;
    let (mut client, _) = gw.hello().await;
    assert_eq!(client.publish("acl", json!(1)).await, 1);
    let clients = acl.cmd(&["CLIENT", "LIST"]);
    assert!(clients.contains("user=gateway"), "{clients}");

    // The right password for another user: refused, so the pod stays unready.
    let wrong_user = pod("redis-acl-wrong-user", |c| {
        c.redis_url = Some(acl.url());
        c.backends.redis_username = Some("someone".into());
        c.backends.redis_password_file = Some(acl_password);
    })
    .await;
    stays_unready(&wrong_user).await;
}

#[tokio::test]
async fn nats_tokens_users_and_nkeys_come_from_files() {
    let files = TlsFiles::generate();
    let token_server = NatsServer::start_with_auth(NatsServerAuth::Token("t0k3n".into()));
    let token = secret_file(&files, "token", "t0k3n");
    let gw = pod("nats-token", |c| {
        c.nats_url = vec![token_server.url()];
        c.backends.nats_token_file = Some(token);
    })
    .await;
    wait_ready(&gw).await;

    let user_server = NatsServer::start_with_auth(NatsServerAuth::UserPassword {
        user: "gw".into(),
        password: "nats-pw".into(),
    });
    let password = secret_file(&files, "nats-password", "nats-pw");
    let gw = pod("nats-user", |c| {
        c.nats_url = vec![user_server.url()];
        c.backends.nats_user = Some("gw".into());
        c.backends.nats_password_file = Some(password);
    })
    .await;
    wait_ready(&gw).await;
    let wrong = secret_file(&files, "wrong-password", "not-it");
    let refused = pod("nats-user-wrong", |c| {
        c.nats_url = vec![user_server.url()];
        c.backends.nats_user = Some("gw".into());
        c.backends.nats_password_file = Some(wrong);
    })
    .await;
    assert_eq!(stays_unready(&refused).await, "backend unavailable: nats");

    let user = nkeys::KeyPair::new_user();
    let nkey_server = NatsServer::start_with_auth(NatsServerAuth::NKeys(vec![user.public_key()]));
    let seed = secret_file(&files, "nkey", &user.seed().unwrap());
    let gw = pod("nats-nkey", |c| {
        c.nats_url = vec![nkey_server.url()];
        c.backends.nats_nkey_file = Some(seed);
    })
    .await;
    wait_ready(&gw).await;
}

/// A NATS JWT (`ed25519-nkey`) about `subject`, signed by `issuer`.
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, nats: serde_json::Value) -> String {
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "jti": format!("T{}", &subject[1..20]),
        "iat": iat,
        "iss": issuer.public_key(),
        "name": subject[..8].to_string(),
        "sub": subject,
        "nats": nats,
    });
    let header = b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let signed = format!("{header}.{}", b64(claims.to_string().as_bytes()));
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", b64(&signature))
}

#[tokio::test]
async fn nats_creds_files_log_in_under_decentralized_auth() {
    let files = TlsFiles::generate();
    let (operator, account, user) = (
        nkeys::KeyPair::new_operator(),
        nkeys::KeyPair::new_account(),
        nkeys::KeyPair::new_user(),
    );
    let unlimited = json!({"subs": -1, "data": -1, "payload": -1});
    let operator_jwt = nats_jwt(
        &operator,
        &operator.public_key(),
        json!({"type": "operator", "version": 2}),
    );
    let account_jwt = nats_jwt(
        &operator,
        &account.public_key(),
        json!({
            "limits": {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                       "wildcards": true, "conn": -1, "leaf": -1},
            "type": "account", "version": 2,
        }),
    );
    let mut user_claims = unlimited.clone();
    user_claims["type"] = json!("user");
    user_claims["version"] = json!(2);
    let user_jwt = nats_jwt(&account, &user.public_key(), user_claims);
    let nats = NatsServer::start_with_auth(NatsServerAuth::Operator {
        operator_jwt,
        accounts: vec![(account.public_key(), account_jwt)],
    });
    let creds = format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\n\
         -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
        user.seed().unwrap()
    );
    let creds = secret_file(&files, "user.creds", &creds);
    let gw = pod("nats-creds", |c| {
        c.nats_url = vec![nats.url()];
        c.backends.nats_creds_file = Some(creds);
    })
    .await;
    wait_ready(&gw).await;
    // Without them: refused.
    let anonymous = pod("nats-no-creds", |c| c.nats_url = vec![nats.url()]).await;
    assert_eq!(stays_unready(&anonymous).await, "backend unavailable: nats");
}

/// Runs a gateway expected to fail at start; its error.
async fn start_error(edit: impl FnOnce(&mut Config)) -> GatewayError {
    let mut c = support::config();
    edit(&mut c);
    let listeners = Listeners {
        public: TcpListener::bind(c.listen).await.unwrap(),
        proxy: None,
        admin: TcpListener::bind(c.admin_listen).await.unwrap(),
        agent: None,
    };
    let run = gateway::run(listeners, c, std::future::pending());
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("a bad configuration fails at once")
        .expect_err("the gateway refused to start")
}

#[tokio::test]
async fn what_can_be_told_at_start_fails_the_start_naming_the_flag() {
    let files = TlsFiles::generate();
    let redis = RedisServer::start();
    let nats = NatsServer::start();

    let err = start_error(|c| {
        c.redis_url = Some(redis.url());
        c.backends.redis_ca_file = Some(files.ca());
    })
    .await;
    assert!(matches!(err, GatewayError::Config(ConfigError::Backend(_))));
    assert!(
        err.to_string()
            .contains("--redis-ca-file is a TLS setting but the connection would be plaintext"),
        "{err}"
    );

    let err = start_error(|c| {
        c.redis_url = Some("rediss://127.0.0.1:1".into());
        c.backends.redis_password_file = Some(files.dir().join("missing"));
    })
    .await
    .to_string();
    assert!(err.contains("--redis-password-file "), "{err}");
    assert!(err.contains("No such file"), "{err}");

    let err = start_error(|c| {
        c.redis_url = Some("redis+unix:///tmp/redis.sock".into());
    })
    .await
    .to_string();
    assert!(err.contains("--redis-url: scheme \"redis+unix\""), "{err}");

    let err = start_error(|c| {
        c.nats_url = vec![nats.url()];
        c.backends.nats_client_cert = Some(files.client_cert());
        c.backends.nats_client_key = Some(files.client_key());
    })
    .await
    .to_string();
    assert!(err.contains("--nats-client-cert is a TLS setting"), "{err}");

    // A key file that is no key: the message names the flag, not the contents.
    let not_a_key = secret_file(&files, "not-a-key", "secret-bytes-xyz");
    let err = start_error(|c| {
        c.redis_url = Some("rediss://127.0.0.1:1".into());
        c.backends.redis_ca_file = Some(files.ca());
        c.backends.redis_client_cert = Some(files.client_cert());
        c.backends.redis_client_key = Some(not_a_key.clone());
    })
    .await
    .to_string();
    assert!(err.contains("--redis-client-key "), "{err}");
    assert!(!err.contains("secret-bytes-xyz"), "{err}");

    let err = start_error(|c| {
        c.nats_url = vec![nats.url()];
        c.backends.nats_creds_file = Some(not_a_key.clone());
    })
    .await
    .to_string();
    assert!(err.contains("--nats-creds-file "), "{err}");
    assert!(!err.contains("secret-bytes-xyz"), "{err}");

    let err = start_error(|c| {
        c.nats_url = vec![nats.url()];
        c.backends.nats_nkey_file = Some(not_a_key);
    })
    .await
    .to_string();
    assert!(err.contains("--nats-nkey-file "), "{err}");
    assert!(!err.contains("secret-bytes-xyz"), "{err}");
}

#[tokio::test]
async fn secrets_stay_out_of_debug_output_errors_and_admin_endpoints() {
    let files = TlsFiles::generate();
    let redis = RedisServer::start_with_password("redis-secret-1");
    let nats = NatsServer::start_with_auth(NatsServerAuth::UserPassword {
        user: "gw".into(),
        password: "nats-secret-2".into(),
    });
    let mut c = support::config();
    c.redis_url = Some(redis.url());
    c.nats_url = vec![nats.url()];
    c.backends.redis_password_file = Some(secret_file(&files, "r", "redis-secret-1"));
    c.backends.nats_user = Some("gw".into());
    c.backends.nats_password_file = Some(secret_file(&files, "n", "nats-secret-2"));

    let secrets = ["redis-secret-1", "nats-secret-2"];
    let clean = |what: &str, text: &str| {
        for s in secrets {
            assert!(!text.contains(s), "{what} shows a secret: {text}");
        }
    };
    clean("the config's Debug", &format!("{c:?}"));
    let mut store = session_store::RedisConfig::new(redis.url());
    c.backends.redis(&mut store).unwrap();
    assert_eq!(store.password.as_deref(), Some("redis-secret-1"), "loaded");
    clean("RedisConfig's Debug", &format!("{store:?}"));
    let mut bus = backplane::NatsConfig::new([nats.url()], "pod");
    c.backends.nats(&mut bus).unwrap();
    clean("NatsConfig's Debug", &format!("{bus:?}"));

    let edit = c.clone();
    let gw = pod("secrets", move |c| *c = edit).await;
    wait_ready(&gw).await;
    for path in ["/metrics", "/admin/cluster", "/admin/drain", "/scaler"] {
        let (_, body) = gw.admin_get(path).await;
        clean(path, &body);
    }
    let (_, body) = readyz(&gw).await;
    clean("/readyz", &body);

    // A wrong password is reported (unready) without the password tried.
    let edit = {
        let mut c = c.clone();
        c.backends.redis_password_file = Some(secret_file(&files, "r2", "redis-secret-1-not"));
        c
    };
    let wrong = pod("secrets-wrong", move |c| *c = edit).await;
    let body = stays_unready(&wrong).await;
    clean("/readyz of a refused login", &body);

    // Passwords inline in the URL are masked in the start-up error that quotes the URL.
    let err = start_error(|c| {
        c.redis_url = Some("redis://:redis-secret-1@127.0.0.1:1".into());
        c.backends.redis_ca_file = Some(files.ca());
    })
    .await
    .to_string();
    assert!(err.contains("redis://***@127.0.0.1:1"), "{err}");
    clean("a start-up error", &err);
}
