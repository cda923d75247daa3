//! Malformed input: a raw WebSocket client writes thousands of broken, hostile and random frames
//! (bad UTF-8, reserved opcodes and bits, unmasked frames, lying lengths, fragmented control
//! frames, stray continuations, JSON bombs) to a running gateway process and checks the designed
//! answer to every one of them, while a witness keeps receiving and the process stays alive
//! with bounded memory. Plus a property test of the frame decoder over arbitrary JSON values.
//!
//! Layout: `model` (the designed answer to each frame), `replay` (sending frames on a session
//! and checking the answers), `scripted` (hand-written attacks), `random_frames` (the seeded
//! fuzzer) and `decoder` (the property tests of the decoder); the test against the running
//! gateway is here.

mod support;

#[path = "security_malformed/decoder.rs"]
mod decoder;
#[path = "security_malformed/model.rs"]
mod model;
#[path = "security_malformed/random_frames.rs"]
mod random_frames;
#[path = "security_malformed/replay.rs"]
mod replay;
#[path = "security_malformed/scripted.rs"]
mod scripted;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use support::hostile::{
    Incoming, RawWs, Witness, granting, hs256, log_path, secret_file, start_logged,
};
use support::http;

use random_frames::fuzz_connection;
use replay::{Tally, run_script};
use scripted::scripted;

/// The largest message the gateway under attack reads (large enough for 100k-deep JSON): a
/// publish of its largest payload, `--max-message-size`, with room for the rest of the frame.
const MAX: usize = 256 * 1024;
/// `--max-message-size` of the gateway under attack.
const MAX_PAYLOAD: usize = MAX - gateway::sizes::CLIENT_FRAME_ROOM;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_malformed_frames_get_their_designed_answers_and_the_pod_survives() {
    let log = log_path("malformed");
    let secret = secret_file();
    let max = MAX_PAYLOAD.to_string();
    let mut pod = start_logged(
        &[
            "--auth",
            "required",
            "--jwt-secret-file",
            secret.to_str().unwrap(),
            "--max-message-size",
            &max,
        ],
        "warn",
        &log,
    );
    let addr: SocketAddr = ([127, 0, 0, 1], pod.port).into();
    let admin = pod.admin_addr();
    let token = hs256(&granting("fuzz", &["*"], &["*"]));
    let mut w = Witness::join(
        &pod.url(),
        admin,
        Some(&hs256(&granting("witness", &["witness"], &[]))),
    )
    .await;
    w.check().await;
    let rss_before = pod.rss_kib();
    let tally = Arc::new(Mutex::new(Tally::default()));

    // The scripted attacks, each on its own connection.
    let feed = w.stream(100, Duration::from_millis(10));
    for (what, frames, designed) in scripted() {
        let answers = run_script(addr, &token, what, &frames, &tally).await;
        assert_eq!(
            answers.last(),
            Some(&designed),
            "{what}: the model disagrees"
        );
    }
    // Before hello: token attacks close the connection.
    for token in ["t".repeat(200_000), String::new(), "a.b.c".into()] {
        let mut ws = RawWs::connect(addr).await;
        ws.send_json(json!({"type": "hello", "token": token})).await;
        match ws.next_reply().await {
            Incoming::Close(Some(1008), reason) => assert!(reason.contains("unauthorized")),
            other => panic!("hello with a bad token: {other:?}"),
        }
    }
    feed.await.unwrap();
    w.receive(100).await;

    // Random frames from many connections at once.
    let seed = std::env::var("HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("random frames: seed {seed} (rerun with HOSTILE_SEED={seed})");
    let feed = w.stream(200, Duration::from_millis(10));
    let before = tally.lock().unwrap().frames;
    futures_util::stream::iter(0..800u64)
        .map(|i| fuzz_connection(addr, token.clone(), seed, i, tally.clone()))
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    feed.await.unwrap();
    w.receive(200).await;

    {
        let tally = tally.lock().unwrap();
        eprintln!(
            "{} frames on {} connections ({} random); answers: {:?}",
            tally.frames,
            tally.connections,
            tally.frames - before,
            tally.answers
        );
        assert!(tally.frames >= 2_500, "only {} frames", tally.frames);
    }

    // Alive, healthy, bounded, no panic.
    assert!(
        pod.process.wait_timeout(Duration::ZERO).is_none(),
        "the gateway exited"
    );
    assert_eq!(
        http(addr, "GET", "/healthz", None, None).await,
        (200, "ok".into())
    );
    w.check().await;
    let rss_after = pod.rss_kib();
    eprintln!("RSS {rss_before} KiB before, {rss_after} KiB after");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(!text.contains("panicked"), "{text}");
}
