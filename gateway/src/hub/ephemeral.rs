//! The task of one ephemeral topic (a namespace with `history = false`) with local subscribers.
//!
//! No sequencer and no store: an arrival is handed to every local subscriber as it comes, in
//! backplane order, without a `seq`. Nothing is held, caught up or compared with history, and
//! a subscriber whose queue is full simply misses the message (at-most-once, as documented:
//! there is no history to read it from). The fan-out stays one shared frame per pod. Join/leave
//! notes (presence on an ephemeral topic) are put back in `pseq` order first, as on any topic
//! ([`crate::presence::order`]): they are sequenced even where messages are not.

use std::sync::Arc;

use backplane::{Backplane, Subject, Subscription};
use futures_util::StreamExt;
use protocol::Topic;
use tokio::sync::watch;
use tokio::time::{Duration, Instant, sleep_until};

use super::{Delivery, HubInner, Readiness, TopicEntry};
use crate::envelope::Envelope;
use crate::outbound::Offer;
use crate::presence::events::{Note, decode, offer_local};
use crate::presence::order::NoteOrder;

/// Runs the topic until its last subscriber leaves or the pod shuts down.
pub(super) async fn run(
    topic: Topic,
    entry: Arc<TopicEntry>,
    hub: Arc<HubInner>,
    ready: watch::Sender<Readiness>,
) {
    let subject = Subject::Topic(topic.clone());
    let sub = tokio::select! {
        _ = entry.stop.cancelled() => return,
        sub = hub.backplane.subscribe(&subject) => match sub {
            Ok(sub) => sub,
            Err(e) => {
                tracing::warn!(%topic, error = %e, "cannot open ephemeral topic");
                hub.remove(&topic, &entry);
                let _ = ready.send(Readiness::Failed(e.to_string()));
                return;
            }
        },
    };
    let _ = ready.send(Readiness::Ready);
    serve(&topic, &entry, &hub, sub, subject).await;
}

async fn serve(
    topic: &Topic,
    entry: &TopicEntry,
    hub: &HubInner,
    mut sub: Subscription,
    subject: Subject,
) {
    let mut notes = NoteOrder::default();
    loop {
        let notes_due = notes.deadline();
        tokio::select! {
            _ = entry.stop.cancelled() => return,
            _ = async { sleep_until(notes_due.expect("guarded")).await }, if notes_due.is_some() => {
                offer_notes(entry, &notes.release());
            }
            msg = sub.next() => {
                let Some(bytes) = msg else {
                    // The backplane ended the subscription: open a new one. What was published
                    // meanwhile is lost, as on any ephemeral topic.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    match hub.backplane.subscribe(&subject).await {
                        Ok(s) => sub = s,
                        Err(e) => tracing::warn!(%topic, error = %e, "resubscribe failed"),
                    }
                    continue;
                };
                if crate::presence::events::is_note(&bytes) {
                    match decode(topic, &bytes) {
                        Some(note) => offer_notes(entry, &notes.arrive(Arc::new(note), Instant::now())),
                        None => {
                            tracing::warn!(%topic, "dropping a malformed join/leave note");
                            hub.metrics.hub.drop("malformed");
                        }
                    }
                    continue;
                }
                match Envelope::decode(&bytes) {
                    Ok(env) if env.is_ephemeral() => release(topic, entry, hub, env),
                    // A sequenced message on a topic this pod holds ephemeral: the pods disagree
                    // about the namespaces. Say so rather than mix the two.
                    Ok(_) => {
                        hub.metrics.hub.drop("not_ephemeral");
                        tracing::warn!(%topic, "a message with a seq on an ephemeral topic: do all pods run the same --config?");
                    }
                    Err(e) => {
                        hub.metrics.hub.drop("malformed");
                        tracing::warn!(%topic, error = %e, "dropping backplane message");
                    }
                }
            }
        }
    }
}

fn offer_notes(entry: &TopicEntry, notes: &[Arc<Note>]) {
    if notes.is_empty() {
        return;
    }
    let subs = entry.subscribers.read().expect("subscribers lock");
    offer_local(notes, subs.values());
}

/// Hands the message to every local subscriber with room for it.
fn release(topic: &Topic, entry: &TopicEntry, hub: &HubInner, env: Envelope) {
    let delivery = Arc::new(Delivery::ephemeral(
        topic.clone(),
        env.data,
        env.published_us,
        env.exclude,
    ));
    let limits = hub.config.queue;
    let subs = entry.subscribers.read().expect("subscribers lock");
    for sub in subs.values() {
        if let Offer::Full = sub.control.offer_ephemeral(&delivery, limits) {
            hub.metrics.hub.drop("ephemeral_queue_full");
        }
    }
}
