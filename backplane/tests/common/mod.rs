//! The behaviour every [`Backplane`] must have, written once and run against each
//! implementation (`tests/memory.rs`, `tests/nats.rs`) through [`conformance_suite!`].
//!
//! Each check takes two backplanes standing for two pods that share one fan-out (for memory,
//! clones of one instance; for NATS, two clients of one server).

#![allow(dead_code)] // Each test binary uses a different subset of the helpers.

use std::time::Duration;

use backplane::{Backplane, Subject, Subscription};
use bytes::Bytes;
use futures_util::StreamExt;
use protocol::{SessionId, Topic};

/// Generous: CI machines stall, and a correct implementation answers in milliseconds.
pub const WAIT: Duration = Duration::from_secs(15);

pub fn topic(name: &str) -> Subject {
    Subject::Topic(Topic::new(name).expect("valid topic name"))
}

/// The next payload, failing the test if none arrives in time.
pub async fn next(sub: &mut Subscription) -> Bytes {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("timed out waiting for a message")
        .expect("subscription ended")
}

async fn publish(bp: &impl Backplane, subject: &Subject, payload: impl Into<Bytes>) {
    bp.publish(subject, payload.into())
        .await
        .unwrap_or_else(|e| panic!("publish to {subject}: {e}"));
}

async fn subscribe(bp: &impl Backplane, subject: &Subject) -> Subscription {
    bp.subscribe(subject)
        .await
        .unwrap_or_else(|e| panic!("subscribe to {subject}: {e}"))
}

/// Subscribes on pod `b` to every subject, publishes each subject's index from pod `a`, then an
/// end marker: each subscription must see exactly its own index and then the marker.
async fn assert_separate<B: Backplane>(a: &B, b: &B, subjects: &[Subject]) {
    let mut subs = Vec::new();
    for s in subjects {
        subs.push(subscribe(b, s).await);
    }
    for (i, s) in subjects.iter().enumerate() {
        publish(a, s, i.to_string()).await;
    }
    for s in subjects {
        publish(a, s, "end").await;
    }
    for (i, (s, sub)) in subjects.iter().zip(&mut subs).enumerate() {
        assert_eq!(next(sub).await, i.to_string(), "first message on {s}");
        assert_eq!(
            next(sub).await,
            "end",
            "{s} received another subject's message"
        );
    }
}

pub async fn publish_reaches_every_subscriber_of_the_subject_and_no_other<B: Backplane>(
    a: B,
    b: B,
) {
    let (x, y) = (topic("room.x"), topic("room.y"));
    let mut a1 = subscribe(&a, &x).await;
    let mut a2 = subscribe(&a, &x).await;
    let mut b1 = subscribe(&b, &x).await;
    let mut other = subscribe(&b, &y).await;
    publish(&a, &x, "for x").await;
    publish(&a, &y, "for y").await;
    for sub in [&mut a1, &mut a2, &mut b1] {
        assert_eq!(next(sub).await, "for x");
    }
    // Had "for x" reached it, it would come first: one publisher's messages stay in order.
    assert_eq!(next(&mut other).await, "for y");
}

pub async fn topics_that_differ_only_in_punctuation_never_cross<B: Backplane>(a: B, b: B) {
    let names = [
        "a.b", "a:b", "a_b", "a-b", "ab", "a..b", "a.b.", ".a.b", "a", "b", "A.b", "a.b.c",
        "a.b:c", "a2Eb", "a_2Eb", "a-2Eb", "a.2Eb", "a_2eb", "t", "hb", "s", "ctl",
    ];
    let subjects: Vec<Subject> = names.iter().map(|n| topic(n)).collect();
    assert_separate(&a, &b, &subjects).await;
}

pub async fn delivery_is_complete_and_ordered_after_subscribe_returns<B: Backplane>(a: B, b: B) {
    const N: usize = 2_000;
    let t = topic("ordered");
    // Publish immediately after subscribing, from the other pod too: nothing may be lost.
    let mut remote = subscribe(&b, &t).await;
    let mut local = subscribe(&a, &t).await;
    for i in 0..N {
        publish(&a, &t, i.to_string()).await;
    }
    for sub in [&mut remote, &mut local] {
        for i in 0..N {
            assert_eq!(next(sub).await, i.to_string());
        }
    }
}

pub async fn dropping_a_subscription_stops_delivery<B: Backplane>(a: B, b: B) {
    let t = topic("drop.me");
    let dropped = subscribe(&a, &t).await;
    let mut kept = subscribe(&a, &t).await;
    let mut remote = subscribe(&b, &t).await;
    drop(dropped);
    for i in 0..100 {
        publish(&a, &t, i.to_string()).await;
    }
    for sub in [&mut kept, &mut remote] {
        for i in 0..100 {
            assert_eq!(next(sub).await, i.to_string());
        }
    }
    drop(kept);
    drop(remote);
    // Nobody listens any more: publishing still succeeds.
    for _ in 0..10 {
        publish(&a, &t, "into the void").await;
    }
    // A new subscription starts fresh: nothing its own pod published before it was made. (Across
    // pods "before" is undefined: a publish returns once queued, not once the server has it.)
    let mut fresh = subscribe(&a, &t).await;
    publish(&a, &t, "fresh").await;
    assert_eq!(next(&mut fresh).await, "fresh");
}

pub async fn two_pods_see_each_others_publishes<B: Backplane>(a: B, b: B) {
    let t = topic("shared");
    let mut on_a = subscribe(&a, &t).await;
    let mut on_b = subscribe(&b, &t).await;
    publish(&a, &t, "from a").await;
    publish(&b, &t, "from b").await;
    for sub in [&mut on_a, &mut on_b] {
        // Order between two publishers is not defined.
        let mut got = vec![next(sub).await, next(sub).await];
        got.sort();
        assert_eq!(got, ["from a", "from b"]);
    }
}

pub async fn session_heartbeat_and_control_subjects_are_separate<B: Backplane>(a: B, b: B) {
    let id = SessionId::generate();
    let subjects = vec![
        Subject::Heartbeat,
        Subject::Session(id.clone()),
        Subject::Session(SessionId::generate()),
        Subject::Control("pod-1".into()),
        Subject::Control("pod-2".into()),
        Subject::Control("pod.1".into()),
        Subject::Control("pod~2E1".into()),
        Subject::Control("pod 1".into()),
        Subject::Control(String::new()),
        Subject::Control("*".into()),
        Subject::Control(">".into()),
        Subject::Control("pöd-ü".into()),
        // Topics whose names look like the other subjects' layout.
        topic(id.as_str()),
        topic("hb"),
        topic("pod-1"),
        topic("ctl.pod-1"),
        topic("s"),
    ];
    assert_separate(&a, &b, &subjects).await;
}

pub async fn connected_and_publishing_without_subscribers_is_fine<B: Backplane>(a: B, b: B) {
    assert!(a.is_connected() && b.is_connected());
    publish(&a, &topic("nobody.listens"), "x").await;
    publish(&b, &Subject::Heartbeat, "beat").await;
}

/// Stamps one `#[tokio::test]` per behaviour into module `$module`. `$setup` is an async fn
/// returning `(guard, pod_a, pod_b)`; the guard keeps whatever the pods need alive.
macro_rules! conformance_suite {
    ($module:ident, $setup:path) => {
        conformance_suite!(@each $module, $setup;
            publish_reaches_every_subscriber_of_the_subject_and_no_other,
            topics_that_differ_only_in_punctuation_never_cross,
            delivery_is_complete_and_ordered_after_subscribe_returns,
            dropping_a_subscription_stops_delivery,
            two_pods_see_each_others_publishes,
            session_heartbeat_and_control_subjects_are_separate,
            connected_and_publishing_without_subscribers_is_fine,
        );
    };
    (@each $module:ident, $setup:path; $($name:ident),* $(,)?) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (_guard, a, b) = $setup().await;
                    crate::common::$name(a, b).await;
                }
            )*
        }
    };
}
