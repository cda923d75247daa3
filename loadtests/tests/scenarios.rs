//! Every scenario end to end at tiny scale against real gateways (and the baseline), asserting
//! wsload's own bookkeeping. No timing assertions: the machine is shared and noisy.

mod support;

use loadtests::scenario::{connect, drain, fanout, rebalance, storm, throughput};
use serde_json::Value;
use support::{Fault, Pod, baseline, faulty_proxy, parse};
use test_support::{NatsServer, RedisServer};

fn totals(report: &Value) -> (u64, u64, u64, u64, u64) {
    let t = &report["totals"];
    let n = |k: &str| {
        t[k].as_u64()
            .unwrap_or_else(|| panic!("totals.{k} in {report}"))
    };
    (
        n("expected"),
        n("delivered"),
        n("lost"),
        n("duplicates"),
        n("order_violations"),
    )
}

fn assert_clean(report: &Value) {
    let (expected, delivered, lost, dups, order) = totals(report);
    assert!(expected > 0, "nothing was expected: {report}");
    assert_eq!(
        (delivered, lost, dups, order),
        (expected, 0, 0, 0),
        "{report}"
    );
    assert_eq!(report["failed_sessions"], 0, "{report}");
}

fn fanout_flags(url: &str) -> Vec<String> {
    [
        "--url",
        url,
        "--subscribers",
        "20",
        "--topics",
        "2",
        "--publishers",
        "2",
        "--rate",
        "40",
        "--duration",
        "2",
        "--max-duration",
        "60",
    ]
    .map(str::to_owned)
    .to_vec()
}

async fn fanout_via(url: &str, extra: &[&str]) -> Value {
    let mut flags = fanout_flags(url);
    flags.extend(extra.iter().map(|s| s.to_string()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    fanout::run(parse(&flags)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_on_one_gateway_loses_nothing() {
    let pod = Pod::start(|_| {}).await;
    let report = fanout_via(&pod.ws_url(), &[]).await;
    assert_clean(&report);
    assert_eq!(report["pods"]["pod-0"], 20, "{report}");
    assert!(report["published"]["acked"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_on_the_baseline_loses_nothing() {
    let url = baseline().await;
    let report = fanout_via(&url, &["--target", "baseline"]).await;
    assert_clean(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_step_mode_records_steps() {
    let url = baseline().await;
    let report = fanout_via(
        &url,
        &[
            "--target",
            "baseline",
            "--step",
            "--max-rate",
            "100",
            "--step-factor",
            "2",
        ],
    )
    .await;
    // 40 then 80 msg/s; 160 is above --max-rate (unless p99 stopped it first).
    let steps = report["steps"].as_array().unwrap();
    assert!(!steps.is_empty() && steps.len() <= 2, "{report}");
    assert_clean(&report);
}

/// The overload run: its rate is twice the best an earlier step report held within its bound;
/// with `--gateway-pid` (here this process, which runs the pod) the server's CPU per delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_takes_its_rate_from_a_step_report_and_reads_server_cpu() {
    let pod = Pod::start(|_| {}).await;
    let earlier = serde_json::json!({"max_p99_ms": 50.0, "steps": [
        {"publish_rate": 10.0, "latency": {"p99_ms": 5.0}},
        {"publish_rate": 20.0, "latency": {"p99_ms": 500.0}},
    ]});
    let path = std::env::temp_dir().join(format!("wsload-steps-{}.json", std::process::id()));
    std::fs::write(&path, earlier.to_string()).unwrap();
    let pid = std::process::id().to_string();
    let report = fanout_via(
        &pod.ws_url(),
        &["--rate-from", path.to_str().unwrap(), "--gateway-pid", &pid],
    )
    .await;
    std::fs::remove_file(&path).unwrap();
    assert_clean(&report);
    assert_eq!(report["steps"][0]["publish_rate"], 20.0, "{report}");
    assert!(
        report["server_cpu_ns_per_delivery"].as_f64().unwrap() > 0.0,
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_message_is_reported_lost() {
    let pod = Pod::start(|_| {}).await;
    let proxy = faulty_proxy(pod.ws_url(), Fault::Drop).await;
    let report = fanout_via(&proxy, &["--settle", "2"]).await;
    let (expected, delivered, lost, dups, order) = totals(&report);
    assert_eq!((lost, dups, order), (1, 0, 0), "{report}");
    assert_eq!(delivered, expected - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_message_is_reported_as_a_duplicate() {
    let pod = Pod::start(|_| {}).await;
    let proxy = faulty_proxy(pod.ws_url(), Fault::Duplicate).await;
    let report = fanout_via(&proxy, &[]).await;
    let (expected, delivered, lost, dups, order) = totals(&report);
    assert_eq!((lost, dups, order), (0, 1, 0), "{report}");
    assert_eq!(delivered, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_of_order_message_is_an_order_violation() {
    let pod = Pod::start(|_| {}).await;
    let proxy = faulty_proxy(pod.ws_url(), Fault::Swap).await;
    let report = fanout_via(&proxy, &[]).await;
    let (expected, delivered, lost, dups, order) = totals(&report);
    assert_eq!((lost, dups, order), (0, 0, 1), "{report}");
    assert_eq!(delivered, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_opens_every_session_and_reads_rss() {
    let pod = Pod::start(|_| {}).await;
    let pid = std::process::id().to_string();
    let url = pod.ws_url();
    let args: connect::ConnectArgs = parse(&[
        "--url",
        &url,
        "--clients",
        "20",
        "--topics",
        "3",
        "--gateway-pid",
        &pid,
        "--hold",
        "0",
    ]);
    let report = connect::run(args).await.unwrap();
    assert_eq!(
        (report["ready"].as_u64(), report["failed"].as_u64()),
        (Some(20), Some(0))
    );
    assert!(
        report["gateway_rss_after"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert!(report["handshakes_per_s"].as_f64().unwrap() > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_spreads_over_worker_processes() {
    // The workers are this crate's own binary, which cargo builds for integration tests.
    let Some(exe) = option_env!("CARGO_BIN_EXE_wsload") else {
        return;
    };
    let pod = Pod::start(|_| {}).await;
    let out = tokio::process::Command::new(exe)
        .args([
            "connect",
            "--url",
            &pod.ws_url(),
            "--clients",
            "20",
            "--per-worker",
            "8",
        ])
        .args(["--hold", "0", "--json", "/dev/stdout"])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json_start = text.find('{').unwrap();
    let report: Value = serde_json::from_str(&text[json_start..]).unwrap();
    assert_eq!(
        (report["workers"].as_u64(), report["ready"].as_u64()),
        (Some(3), Some(20))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_brings_every_session_back() {
    let pod = Pod::start(|_| {}).await;
    let url = pod.ws_url();
    let args: storm::StormArgs = parse(&["--url", &url, "--clients", "20", "--topics", "2"]);
    let report = storm::run(args).await.unwrap();
    assert_eq!(report["accepted"], 20, "{report}");
    assert_eq!(report["failed_sessions"], 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_counts_every_acknowledged_publish_and_reads_redis_cpu() {
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    let pod = Pod::in_fleet(&redis.url(), &nats.url(), "tp", |_| {}).await;
    let (url, node) = (pod.ws_url(), redis.addr().to_string());
    let args: throughput::ThroughputArgs = parse(&[
        "--url",
        &url,
        "--redis",
        &node,
        "--publishers",
        "3",
        "--window",
        "8",
        "--topics",
        "5",
        "--messages",
        "600",
        "--duration",
        "60",
        "--store-limit",
        "1000",
    ]);
    let report = throughput::run(args).await.unwrap();
    assert_eq!(report["acked"], 600, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert!(report["redis_cpu_s"].as_f64().unwrap() >= 0.0, "{report}");
    assert!(
        report["ratio_to_store_limit"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    // Every publish was stored once: the topics' seqs add up to the count.
    let keys = redis.cmd(&["KEYS", "gw:seq:*"]);
    let stored: u64 = keys
        .lines()
        .map(|key| {
            redis
                .cmd(&["GET", key.trim()])
                .trim()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!((keys.lines().count(), stored), (5, 600));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_of_one_pod_loses_nothing() {
    let (redis, nats) = (RedisServer::start(), NatsServer::start());
    let mut pods = Vec::new();
    for i in 0..3 {
        // No rebalancing: it would move clients off pod-0 before the drain does.
        let name = format!("pod-{i}");
        pods.push(Pod::in_fleet(&redis.url(), &nats.url(), &name, |c| c.rebalance_rate = 0).await);
    }
    let (u0, u1, u2, admin) = (
        pods[0].ws_url(),
        pods[1].ws_url(),
        pods[2].ws_url(),
        pods[0].admin_url(),
    );
    let args: drain::DrainArgs = parse(&[
        "--url",
        &u0,
        "--reconnect-url",
        &u1,
        "--reconnect-url",
        &u2,
        "--admin",
        &admin,
        "--clients",
        "20",
        "--topics",
        "2",
        "--publishers",
        "1",
        "--rate",
        "20",
        "--warmup",
        "1",
        "--tail",
        "1",
    ]);
    let report = drain::run(args).await.unwrap();
    assert_eq!(report["goaways_1001"], 20, "{report}");
    assert_eq!(report["resumed"], 20, "{report}");
    assert_clean(&report);
    assert_eq!(report["pods_first"]["pod-0"], 20, "{report}");
    assert!(report["pods_last"].get("pod-0").is_none(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_onto_a_new_pod_loses_nothing() {
    let (redis, nats) = (RedisServer::start(), NatsServer::start());
    let mut pods = Vec::new();
    for i in 0..3 {
        pods.push(Pod::in_fleet(&redis.url(), &nats.url(), &format!("pod-{i}"), |_| {}).await);
    }
    let (u0, u1, new_url, new_admin) = (
        pods[0].ws_url(),
        pods[1].ws_url(),
        pods[2].ws_url(),
        pods[2].admin_url(),
    );
    let args: rebalance::RebalanceArgs = parse(&[
        "--url",
        &u0,
        "--url",
        &u1,
        "--new-url",
        &new_url,
        "--new-admin",
        &new_admin,
        "--clients",
        "30",
        "--topics",
        "2",
        "--rate",
        "20",
        "--timeout",
        "8",
        "--tail",
        "1",
    ]);
    let report = rebalance::run(args).await.unwrap();
    // Whether and when the fleet converges is the benchmark's question, not the test's.
    assert_eq!(report["new_pod_seen"], true, "{report}");
    assert_clean(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_the_topics_in_hello_waits_for_each_subscribed() {
    let pod = Pod::start(|_| {}).await;
    let url = pod.ws_url();
    let args: connect::ConnectArgs = parse(&[
        "--url",
        &url,
        "--clients",
        "20",
        "--topics",
        "3",
        "--hold",
        "0",
        "--hello-subscribe",
    ]);
    let report = connect::run(args).await.unwrap();
    // A session is ready only once `subscribed` arrived for its topic: a gateway that ignored
    // `hello.subscribe` would leave every session waiting until it failed.
    assert_eq!(
        (report["ready"].as_u64(), report["failed"].as_u64()),
        (Some(20), Some(0)),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_on_an_ephemeral_namespace_stores_nothing() {
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    let file = std::env::temp_dir().join(format!("wsload-ephemeral-{}.toml", std::process::id()));
    std::fs::write(
        &file,
        "[[namespaces]]\nprefix = \"eph.\"\nhistory = false\n",
    )
    .unwrap();
    let config = file.clone();
    let pod = Pod::in_fleet(&redis.url(), &nats.url(), "eph", move |c| {
        c.app.config_file = Some(config);
    })
    .await;
    let (url, node) = (pod.ws_url(), redis.addr().to_string());
    let args: throughput::ThroughputArgs = parse(&[
        "--url",
        &url,
        "--redis",
        &node,
        "--publishers",
        "2",
        "--window",
        "8",
        "--topics",
        "4",
        "--topic-prefix",
        "eph.",
        "--messages",
        "300",
        "--duration",
        "60",
    ]);
    let report = throughput::run(args).await.unwrap();
    assert_eq!(
        (report["acked"].as_u64(), report["errors"].as_u64()),
        (Some(300), Some(0)),
        "{report}"
    );
    // Acknowledged without a seq and without touching history: no topic key in Redis.
    assert_eq!(redis.cmd(&["KEYS", "gw:seq:*"]).trim(), "", "{report}");
    let _ = std::fs::remove_file(&file);
}
