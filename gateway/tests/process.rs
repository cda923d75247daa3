//! The `gateway` binary as an operator runs it: bad configuration, SIGTERM, a pod killed with
//! SIGKILL in a fleet, and memory bounded under a slow consumer.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use support::process::Pod;
use support::{Client, seqs};
use test_support::{NatsServer, RedisServer};

const BIN: &str = env!("CARGO_BIN_EXE_gateway");

async fn hello(url: &str) -> (Client, serde_json::Value) {
    let mut c = Client::connect(url).await;
    c.send(json!({"type": "hello"})).await;
    let w = c.expect("welcome").await;
    (c, w)
}

#[test]
fn bad_configuration_fails_fast_with_a_clear_message() {
    for (args, expected) in [
        (
            vec!["--outbound-queue", "0"],
            "--outbound-queue must be greater than zero",
        ),
        (
            vec!["--ping-interval", "30s", "--idle-timeout", "10s"],
            "--idle-timeout",
        ),
        (vec!["--handshake-timeout", "soon"], "invalid value 'soon'"),
        (
            vec!["--allowed-origins", "example.com"],
            "--allowed-origins",
        ),
        (
            vec!["--rebalance-stable-beats", "0"],
            "--rebalance-stable-beats must be greater than zero",
        ),
    ] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let help = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--redis-url",
        "GATEWAY_REDIS_URL",
        "--max-connections",
        "[default: 10000]",
        "GATEWAY_REBALANCE_STABLE_BEATS",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[tokio::test]
async fn sigterm_closes_clients_with_1001_and_exits_0() {
    let mut pod = Pod::start(&[]);
    let (mut a, _) = hello(&pod.url()).await;
    let pid = pod.process.pid().unwrap();
    let term = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let closed = a.closed().await;
    assert_eq!(closed.code, 1001);
    assert_eq!(closed.reason["reconnect"], true);
    let status = pod
        .process
        .wait_timeout(Duration::from_secs(20))
        .expect("exits in time");
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn a_pod_killed_with_sigkill_loses_nothing_for_a_client_that_resumes_elsewhere() {
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    let backends = ["--redis-url", &redis.url(), "--nats-url", &nats.url()];
    let mut a = Pod::start(&[&backends[..], &["--pod-name", "a"]].concat());
    let b = Pod::start(&[&backends[..], &["--pod-name", "b"]].concat());
    let (mut client, welcome) = hello(&a.url()).await;
    let epoch = client.subscribe("k").await["epoch"].clone();
    let (mut publisher, _) = hello(&b.url()).await;
    for i in 1..=3 {
        publisher.publish("k", json!(i)).await;
    }
    let mut got = seqs(&client.messages(3).await);
    a.process.kill();
    for i in 4..=10 {
        publisher.publish("k", json!(i)).await;
    }
    let mut resumed = Client::connect(&b.url()).await;
    resumed
        .send(json!({"type": "hello", "resume": welcome["resume"],
                     "positions": {"k": {"seq": got.last(), "epoch": epoch}}}))
        .await;
    let w = resumed.expect("welcome").await;
    assert_eq!(
        (w["resumed"].as_bool(), w["pod"].as_str()),
        (Some(true), Some("b"))
    );
    got.extend(seqs(&resumed.messages(7).await));
    assert_eq!(got, (1..=10).collect::<Vec<_>>());
    let _ = a.admin;
}

#[tokio::test]
async fn memory_stays_bounded_under_a_client_that_never_reads() {
    let pod = Pod::start(&[
        "--outbound-queue",
        "256",
        "--history-size",
        "100",
        "--write-timeout",
        "60s",
    ]);
    let (mut slow, _) = hello(&pod.url()).await;
    slow.subscribe("flood").await;
    let (mut publisher, _) = hello(&pod.url()).await;
    let data = "y".repeat(16 * 1024);
    // Warm up allocators, then measure growth over 64 MiB published to a client that never reads.
    for _ in 0..200 {
        publisher.publish("flood", json!(data)).await;
    }
    let before = pod.rss_kib();
    for _ in 0..4_000 {
        publisher.publish("flood", json!(data)).await;
    }
    let after = pod.rss_kib();
    let growth_mib = after.saturating_sub(before) / 1024;
    eprintln!("gateway RSS {before} KiB -> {after} KiB after 64 MiB to a stuck client");
    assert!(growth_mib < 32, "RSS grew by {growth_mib} MiB");
    assert_eq!(slow.closed().await.code, 1013);
}
