//! Appends in flight at once, applied in the order they were issued.
//!
//! A publisher that waits for each append before sending the next one tops out at one append
//! per store round trip. [`OrderedAppends::issue_append`] hands the append to the store
//! *before it returns* and gives back a future of its result, so a publisher can keep many in
//! flight. Appends issued on one [`Lane`] are applied in issue order, so the `seq`s a topic
//! gives them follow that order: the Redis store sends a lane's commands on one pooled
//! connection (Redis runs one connection's commands in the order they arrive; in a Cluster a
//! topic's keys live in one slot, so its commands reach one node over one connection), and the
//! memory store applies an append before `issue_append` returns.
//!
//! What order survives a failure: an append that fails (timeout, dropped connection, a
//! replica acknowledgement missing) may or may not have been stored, like any append; the
//! ones issued after it keep their order. A retry with the same publish id then returns the
//! first attempt's `seq` if it was stored, else stores it after everything issued before the
//! retry. Among the appends that *succeed*, `seq` order is issue order, except for a retried
//! id, which answers what its first attempt got.
//!
//! A separate trait rather than more [`SessionStore`](crate::SessionStore) methods: only
//! publishers need it, and it says something `append` does not (when the work is handed over).

use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use protocol::{Payload, PublishId, Topic};

use crate::{Appended, Extras, StoreError};

/// One publisher's ordered path into the store (e.g. one WebSocket connection's). Not `Clone`:
/// order is only defined among the appends of one lane, issued one after the other.
#[derive(Debug)]
pub struct Lane {
    /// Picks the store connection (the same key always picks the same one).
    pub(crate) key: usize,
    pub(crate) state: Arc<LaneState>,
}

/// What a lane's in-flight appends share: how many were issued. Issuing and any later
/// re-send happen under its lock, so a re-send knows nothing was issued after it.
#[derive(Debug, Default)]
pub(crate) struct LaneState {
    pub(crate) issued: Mutex<u64>,
    /// Added to the lane's key when picking its store connection: raised when an append timed
    /// out, so a lane whose connection stopped answering moves to the next one instead of
    /// failing every later publish on it. (Seen with a pooled Cluster client after `TRYAGAIN`
    /// during a slot migration.) The appends still in flight on the old connection have
    /// failed or will fail `unavailable`: retried with their publish ids, none is stored twice.
    pub(crate) moved: std::sync::atomic::AtomicUsize,
}

impl Lane {
    /// A lane on the store connection picked by `key` (any number: a connection id will do).
    pub fn new(key: u64) -> Self {
        Self {
            key: usize::try_from(key).unwrap_or(usize::MAX),
            state: Arc::default(),
        }
    }
}

/// A store call already handed to the store; awaiting it gives its result.
pub struct Issued<T>(IssuedState<T>);

enum IssuedState<T> {
    Done(Ready<T>),
    Pending(Pin<Box<dyn Future<Output = T> + Send>>),
}

impl<T> std::fmt::Debug for Issued<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.0 {
            IssuedState::Done(_) => "done",
            IssuedState::Pending(_) => "pending",
        };
        f.debug_tuple("Issued").field(&state).finish()
    }
}

impl<T: Send + 'static> Issued<T> {
    /// Runs `call` up to its first wait, now: a store call whose request is written to its
    /// connection's queue before it first waits (fred's are) is thereby sent, in the order of
    /// the `now` calls. Polling with a no-op waker is sound: whoever awaits the result polls it
    /// again with a real one, and futures must honour the latest waker.
    pub fn now(call: impl Future<Output = T> + Send + 'static) -> Self {
        let mut call = Box::pin(call);
        match call.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(value) => Self(IssuedState::Done(ready(value))),
            Poll::Pending => Self(IssuedState::Pending(call)),
        }
    }
}

impl<T> Future for Issued<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match &mut self.get_mut().0 {
            IssuedState::Done(value) => Pin::new(value).poll(cx),
            IssuedState::Pending(call) => call.as_mut().poll(cx),
        }
    }
}

/// The result of an issued append.
pub type IssuedAppend = Issued<Result<Appended, StoreError>>;

/// Stores that take appends without waiting for the previous ones (see the module docs).
pub trait OrderedAppends: Send + Sync + 'static {
    /// Hands the append to the store before returning; appends issued on `lane` are applied in
    /// the order of these calls. Same semantics as [`SessionStore::append`](crate::SessionStore::append)
    /// otherwise: `id` deduplicates within the dedup window.
    fn issue_append(
        &self,
        lane: &mut Lane,
        topic: &Topic,
        data: &Payload,
        id: Option<&PublishId>,
    ) -> IssuedAppend {
        self.issue_append_with(lane, topic, data, id, Extras::default())
    }

    /// [`OrderedAppends::issue_append`], with [`Extras`] (see
    /// [`SessionStore::append_with`](crate::SessionStore::append_with)).
    fn issue_append_with(
        &self,
        lane: &mut Lane,
        topic: &Topic,
        data: &Payload,
        id: Option<&PublishId>,
        extras: Extras<'_>,
    ) -> IssuedAppend;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn now_runs_the_call_up_to_its_first_wait() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let log = sent.clone();
        let issued = Issued::now(async move {
            log.lock().unwrap().push("sent");
            rx.await.unwrap()
        });
        assert_eq!(
            *sent.lock().unwrap(),
            ["sent"],
            "the call ran before any await"
        );
        tx.send(7).unwrap();
        assert_eq!(issued.await, 7);
        assert_eq!(Issued::now(async { 3 }).await, 3);
    }
}
