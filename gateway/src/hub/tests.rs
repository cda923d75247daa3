//! The hub on the memory store and backplane: messages this pod publishes are released by the
//! publisher's own call, in `seq` order, and what it cannot release is left to the topic task.

use std::sync::Arc;
use std::time::Duration;

use backplane::{Backplane, MemoryBackplane, Subject};
use protocol::{Payload, Topic};
use session_store::{HistoryLimits, MemoryStore, SessionStore};
use tokio_util::sync::CancellationToken;

use super::{Hub, HubConfig, Subscriber};
use crate::control::ConnControl;
use crate::envelope::{self, Envelope};
use crate::metrics::{Metrics, ReasonLabel};
use crate::outbound::QueueLimits;
use crate::{Bus, Store};

struct Fixture {
    hub: Hub,
    store: Store,
    bus: Bus,
    metrics: Arc<Metrics>,
    reader: Arc<ConnControl>,
    topic: Topic,
    _shutdown: tokio_util::sync::DropGuard,
}

async fn fixture() -> Fixture {
    // History keeps more than the sequencer's hold, so every gap here can be filled.
    let limits = HistoryLimits {
        max_len: 2 * crate::sequencer::MAX_HELD,
        ..HistoryLimits::default()
    };
    let store = Store::Memory(MemoryStore::new(limits));
    let bus = Bus::Memory(MemoryBackplane::new());
    let metrics = Arc::new(Metrics::new());
    let namespaces = crate::Namespaces::single(
        crate::Config::embedded_default()
            .app
            .default_namespace(HistoryLimits::default())
            .unwrap(),
    );
    let config = HubConfig {
        gap_timeout: Duration::from_millis(50),
        // No resync round during a test: only the task's own paths fill gaps.
        resync_interval: Duration::from_secs(3600),
        queue: QueueLimits {
            messages: 100_000,
            bytes: 1 << 30,
        },
        namespaces,
    };
    let shutdown = CancellationToken::new();
    let hub = Hub::new(
        store.clone(),
        bus.clone(),
        metrics.clone(),
        config,
        shutdown.clone(),
    );
    let topic = Topic::new("news").unwrap();
    let reader = Arc::new(ConnControl::new());
    hub.subscribe(
        &topic,
        1,
        Subscriber {
            control: reader.clone(),
        },
    )
    .await
    .unwrap();
    Fixture {
        hub,
        store,
        bus,
        metrics,
        reader,
        topic,
        _shutdown: shutdown.drop_guard(),
    }
}

impl Fixture {
    /// Appends `n` messages and returns their (seq, data), in `seq` order.
    async fn append(&self, n: usize) -> Vec<(u64, protocol::Epoch, Payload)> {
        let mut out = Vec::new();
        for i in 0..n {
            let data = Payload::parse(&format!("{{\"n\":{i}}}")).unwrap();
            let appended = self.store.append(&self.topic, &data, None).await.unwrap();
            out.push((appended.seq, appended.epoch, data));
        }
        out
    }

    fn release(&self, (seq, epoch, data): &(u64, protocol::Epoch, Payload)) {
        self.hub.release_local(
            &self.topic,
            *seq,
            epoch,
            data.clone(),
            envelope::now_us(),
            None,
        );
    }

    /// The `seq`s queued for the reader since the last call.
    fn queued(&self) -> Vec<u64> {
        let batch = self.reader.take_queued();
        assert!(
            batch.lagging.is_empty(),
            "the reader's queue never fills here"
        );
        batch.deliveries.iter().map(|d| d.seq).collect()
    }

    /// Waits (bounded) until the reader has `n` more messages queued, collecting them.
    async fn queued_within(&self, n: usize) -> Vec<u64> {
        let mut got = Vec::new();
        for _ in 0..200 {
            got.extend(self.queued());
            if got.len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        got
    }

    fn dropped(&self, reason: &'static str) -> u64 {
        self.metrics
            .hub
            .dropped
            .get_or_create(&ReasonLabel { reason })
            .get()
    }
}

#[tokio::test]
async fn a_local_publish_is_queued_by_the_publishers_call_and_its_backplane_copy_is_not_delivered_again()
 {
    let f = fixture().await;
    let messages = f.append(3).await;
    for m in &messages {
        f.release(m);
    }
    // No await in between: the publisher's call itself put them in the reader's queue.
    assert_eq!(f.queued(), vec![1, 2, 3]);
    assert_eq!(f.metrics.hub.released_locally.get(), 3);
    // The backplane's copies reach the topic task, which drops them as already released.
    for (seq, epoch, data) in &messages {
        let envelope = Envelope {
            seq: *seq,
            epoch: epoch.clone(),
            published_us: envelope::now_us(),
            data: data.clone(),
            exclude: None,
        };
        f.bus
            .publish(&Subject::Topic(f.topic.clone()), envelope.encode())
            .await
            .unwrap();
    }
    // A later message from another pod shows the task has read past the copies.
    let later = f.append(1).await;
    let envelope = Envelope {
        seq: later[0].0,
        epoch: later[0].1.clone(),
        published_us: envelope::now_us(),
        data: later[0].2.clone(),
        exclude: None,
    };
    f.bus
        .publish(&Subject::Topic(f.topic.clone()), envelope.encode())
        .await
        .unwrap();
    assert_eq!(f.queued_within(1).await, vec![4]);
    assert_eq!(
        f.dropped("duplicate"),
        0,
        "the pod's own copies are expected"
    );
}

#[tokio::test]
async fn local_publishes_completing_out_of_order_are_queued_in_seq_order() {
    let f = fixture().await;
    let messages = f.append(3).await;
    f.release(&messages[2]);
    f.release(&messages[1]);
    assert_eq!(f.queued(), Vec::<u64>::new(), "held behind seq 1");
    f.release(&messages[0]);
    assert_eq!(f.queued(), vec![1, 2, 3]);
}

#[tokio::test]
async fn a_local_publish_behind_a_gap_nobody_fills_is_caught_up_from_history() {
    let f = fixture().await;
    let messages = f.append(3).await;
    // Seq 1 and 2 never reach this pod (neither released here nor on the backplane): the task
    // learns of the held message from the publisher and fills the gap after the gap timeout.
    f.release(&messages[2]);
    assert_eq!(f.queued_within(3).await, vec![1, 2, 3]);
    assert_eq!(f.metrics.hub.gap_fills.get(), 1);
}

#[tokio::test]
async fn a_local_publish_at_the_holds_bound_makes_the_task_catch_up_at_once() {
    let f = fixture().await;
    let n = crate::sequencer::MAX_HELD + 1;
    let messages = f.append(n).await;
    // Everything but seq 1, newest first: the hold fills up at its bound.
    for m in messages[1..].iter().rev() {
        f.release(m);
    }
    let got = f.queued_within(n).await;
    assert_eq!(got, (1..=n as u64).collect::<Vec<_>>());
    assert_eq!(f.metrics.hub.gap_fills.get(), 0, "no gap timer: the bound");
}
