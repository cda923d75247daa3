//! The in-process backplane: subjects map to the bounded channels of their subscribers.
//!
//! Like NATS it is at-most-once: a subscriber whose channel is full misses the message (and
//! the gateway fills the gap from history), so a stuck consumer never grows memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::{Backplane, BackplaneError, Subject, Subscription};

/// Messages buffered per subscription before the backplane drops for it.
const SUBSCRIPTION_BUFFER: usize = 8_192;

#[derive(Debug, Clone)]
pub struct MemoryBackplane {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    subjects: Mutex<HashMap<Subject, Vec<mpsc::Sender<Bytes>>>>,
    reconnects: watch::Sender<u64>,
}

impl MemoryBackplane {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                subjects: Mutex::new(HashMap::new()),
                reconnects: watch::Sender::new(0),
            }),
        }
    }

    /// Ends every live subscription to `subject`: their streams return `None`, as a real
    /// backplane's can when it loses a subscription. Returns how many were ended. For tests and
    /// fault drills: whoever reads a subscription must cope with its end (e.g. resubscribe).
    pub fn close_subscriptions(&self, subject: &Subject) -> usize {
        let mut subjects = self.inner.subjects.lock().expect("subjects lock");
        subjects.remove(subject).map_or(0, |senders| {
            senders.iter().filter(|tx| !tx.is_closed()).count()
        })
    }
}

impl Default for MemoryBackplane {
    fn default() -> Self {
        Self::new()
    }
}

impl Backplane for MemoryBackplane {
    async fn publish(&self, subject: &Subject, payload: Bytes) -> Result<(), BackplaneError> {
        let mut subjects = self.inner.subjects.lock().expect("subjects lock");
        if let Some(senders) = subjects.get_mut(subject) {
            senders.retain(|tx| match tx.try_send(payload.clone()) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => true,
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
            if senders.is_empty() {
                subjects.remove(subject);
            }
        }
        Ok(())
    }

    async fn subscribe(&self, subject: &Subject) -> Result<Subscription, BackplaneError> {
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
        let mut subjects = self.inner.subjects.lock().expect("subjects lock");
        let senders = subjects.entry(subject.clone()).or_default();
        // Forget subscriptions dropped since the last publish, so idle subjects do not pile up.
        senders.retain(|tx| !tx.is_closed());
        senders.push(tx);
        Ok(Subscription::new(tokio_stream_from_receiver(rx)))
    }

    fn reconnects(&self) -> watch::Receiver<u64> {
        self.inner.reconnects.subscribe()
    }

    fn is_connected(&self) -> bool {
        true
    }

    /// No limit: payloads are shared in memory, never copied.
    fn max_payload(&self) -> Option<usize> {
        None
    }
}

fn tokio_stream_from_receiver(
    mut rx: mpsc::Receiver<Bytes>,
) -> impl futures_util::Stream<Item = Bytes> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use protocol::Topic;

    #[tokio::test]
    async fn publish_reaches_every_subscriber_and_only_them() {
        let bp = MemoryBackplane::new();
        let a = Subject::Topic(Topic::new("a").unwrap());
        let b = Subject::Topic(Topic::new("b").unwrap());
        let mut s1 = bp.subscribe(&a).await.unwrap();
        let mut s2 = bp.subscribe(&a).await.unwrap();
        let mut sb = bp.subscribe(&b).await.unwrap();
        bp.publish(&a, Bytes::from_static(b"x")).await.unwrap();
        assert_eq!(s1.next().await.unwrap(), "x");
        assert_eq!(s2.next().await.unwrap(), "x");
        bp.publish(&b, Bytes::from_static(b"y")).await.unwrap();
        assert_eq!(sb.next().await.unwrap(), "y");
        drop(s1);
        bp.publish(&a, Bytes::from_static(b"z")).await.unwrap();
        assert_eq!(s2.next().await.unwrap(), "z");
        assert_eq!(bp.inner.subjects.lock().unwrap()[&a].len(), 1);
        assert_eq!(bp.max_payload(), None);
    }

    #[tokio::test]
    async fn closed_subscriptions_end_and_new_ones_receive() {
        let bp = MemoryBackplane::new();
        let a = Subject::Heartbeat;
        let other = Subject::Control("p".into());
        let mut s1 = bp.subscribe(&a).await.unwrap();
        let mut kept = bp.subscribe(&other).await.unwrap();
        assert_eq!(bp.close_subscriptions(&a), 1);
        assert_eq!(s1.next().await, None);
        assert_eq!(bp.close_subscriptions(&a), 0);
        let mut s2 = bp.subscribe(&a).await.unwrap();
        bp.publish(&a, Bytes::from_static(b"x")).await.unwrap();
        assert_eq!(s2.next().await.unwrap(), "x");
        bp.publish(&other, Bytes::from_static(b"y")).await.unwrap();
        assert_eq!(kept.next().await.unwrap(), "y");
    }
}
