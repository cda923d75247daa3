//! The calls the rest of the gateway makes, each one line at its cause and a no-op without
//! `--webhook-url`: a session attached (fresh: `session.started`) or detached, subscribed or
//! unsubscribed (`topic.occupied`/`vacated`), ended (`session.ended`), presence changes
//! (`presence.join`/`leave`) and publishes in namespaces with `publish_events`.

use protocol::Topic;
use serde_json::json;
use session_store::now_ms;

use super::store::{Ended, Tracker};
use super::{Event, Events, Kind, Why};
use crate::Shared;

/// A session is connected on this pod after a `hello`. A fresh one records `session.started`;
/// a resumed one the tracker did not know (events turned on since) has its topics added.
pub async fn attached<'a>(
    shared: &Shared,
    conn: u64,
    session: &str,
    user: Option<&str>,
    resumed: bool,
    topics: impl Iterator<Item = &'a Topic>,
) {
    let Some(events) = &shared.events else { return };
    let started = (!resumed).then(|| Event::new(Kind::SessionStarted).user(user).session(session));
    match events
        .tracker
        .attach(session, user, &shared.pod, conn, started.as_ref())
        .await
    {
        Ok(true) if resumed => {
            for topic in topics {
                subscribed(shared, session, topic).await;
            }
        }
        Ok(true) => {
            if let Some(started) = &started {
                events.record(session, started).await;
            }
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(%session, error = %e, "events: session not tracked"),
    }
}

/// A session's connection here ended; it may resume until one resume window from now.
pub async fn detached(shared: &Shared, conn: u64, session: &str) {
    let Some(events) = &shared.events else { return };
    let deadline = now_ms() + shared.config.resume_window.as_millis() as u64;
    let pod = &shared.pod;
    if let Err(e) = events
        .tracker
        .detach(session, pod, Some(conn), deadline)
        .await
    {
        tracing::warn!(%session, error = %e, "events: detach not recorded");
    }
}

/// A session subscribed `topic`: `topic.occupied` when it is the topic's first session.
pub async fn subscribed(shared: &Shared, session: &str, topic: &Topic) {
    let Some(events) = &shared.events else { return };
    let occupied = Event::new(Kind::TopicOccupied).topic(topic.as_str());
    match events.tracker.subscribe(session, topic, &occupied).await {
        Ok(true) => events.record(topic.as_str(), &occupied).await,
        Ok(false) => {}
        Err(e) => tracing::warn!(%topic, error = %e, "events: subscription not tracked"),
    }
}

/// A session unsubscribed `topic`: `topic.vacated` when it was the topic's last session.
pub async fn unsubscribed(shared: &Shared, session: &str, topic: &Topic) {
    let Some(events) = &shared.events else { return };
    let event = Event::vacated(topic);
    match events.tracker.unsubscribe(session, topic, &event).await {
        Ok(true) => events.record(topic.as_str(), &event).await,
        Ok(false) => {}
        Err(e) => tracing::warn!(%topic, error = %e, "events: unsubscription not tracked"),
    }
}

/// A session is over (`closed` or `disconnected`; `expired` is the sweeper's): one
/// `session.ended` (only if the tracker had not ended it already) and the topics it vacated.
pub async fn ended(shared: &Shared, session: &str, user: Option<&str>, why: Why) {
    let Some(events) = &shared.events else { return };
    let event = Event::new(Kind::SessionEnded)
        .user(user)
        .session(session)
        .data(json!({"why": why.as_str()}));
    match events.tracker.end(session, false, &event).await {
        Ok(Some(ended)) => record_ended(events, session, &ended).await,
        Ok(None) => {}
        Err(e) => tracing::warn!(%session, error = %e, "events: session end not recorded"),
    }
}

/// The `session.ended` (when this end decided it) and `topic.vacated` events of an end, in
/// that order.
pub async fn record_ended(events: &Events, session: &str, ended: &Ended) {
    if let Some(event) = &ended.ended {
        events.record(session, event).await;
    }
    for event in &ended.vacated {
        events
            .record(event.topic.as_deref().unwrap_or(""), event)
            .await;
    }
}

/// The joins and leaves the presence store decided (each once, fleet-wide), staged with them
/// by the Redis store; the memory store's are built here.
pub async fn presence(shared: &Shared, topic: &Topic, changes: &[crate::presence::Event]) {
    let Some(events) = &shared.events else { return };
    for change in changes {
        let kind = if change.join {
            Kind::PresenceJoin
        } else {
            Kind::PresenceLeave
        };
        let member = &change.member;
        if let Some((id, json)) = &change.staged {
            let key = member.user.as_deref().unwrap_or(&member.session);
            events
                .record_json(topic.as_str(), kind.as_str(), id, key, json)
                .await;
            continue;
        }
        let mut data = json!({"user_edge": change.user_edge});
        if let Some(info) = &member.info {
            data["info"] = info.clone();
        }
        let event = Event::new(kind)
            .user(member.user.as_deref())
            .session(&member.session)
            .topic(topic.as_str())
            .data(data);
        events.record(topic.as_str(), &event).await;
    }
}

/// The `publish` event of a message about to be stored on `topic` (namespaces with
/// `publish_events`), and how to stage it with the append: with Redis the append's own script
/// writes it into the topic's outbox (covered first), so a stored message always has its
/// event. `from`: the publishing session and user (`None`: the server API).
pub struct PendingPublish {
    event: Event,
    stage: Option<session_store::Stage>,
}

impl PendingPublish {
    pub fn stage(&self) -> Option<&session_store::Stage> {
        self.stage.as_ref()
    }
}

pub async fn publishing(
    shared: &Shared,
    topic: &Topic,
    from: Option<&(String, Option<String>)>,
) -> Option<PendingPublish> {
    let events = shared.events.as_ref()?;
    if !shared.namespaces.of(topic).publish_events {
        return None;
    }
    let mut event = Event::new(Kind::Publish).topic(topic.as_str());
    if let Some((session, user)) = from {
        event = event.session(session).user(user.as_deref());
    }
    let stage = match &events.outbox {
        Some(outbox) => {
            let key = outbox.key(topic.as_str());
            // Boxed: a fred future (~14 KB) would otherwise size every future awaiting this one.
            match Box::pin(outbox.cover(&key)).await {
                Ok(()) => {
                    // The event without `data` ends with '}': continued by the script.
                    let json = event.json();
                    let head = format!(r#"{},"data":{{"seq":"#, &json[..json.len() - 1]);
                    let id = event.id.clone();
                    Some(session_store::Stage { key, id, head })
                }
                Err(e) => {
                    // Appended after the message instead (and lost if the pod dies between).
                    tracing::debug!(%topic, error = %e, "publish event not staged");
                    None
                }
            }
        }
        None => None,
    };
    Some(PendingPublish { event, stage })
}

/// After the append: the `publish` event, with the message's `seq`, `epoch` and `data`,
/// appended (and removed from the outbox where it was staged). None for a duplicate: the first
/// publish had it.
pub async fn published(
    shared: &Shared,
    topic: &Topic,
    pending: Option<PendingPublish>,
    appended: &session_store::Appended,
    data: &protocol::Payload,
) {
    let (Some(events), Some(pending)) = (&shared.events, pending) else {
        return;
    };
    if appended.duplicate {
        return;
    }
    let event = pending.event.data(json!({
        "seq": appended.seq,
        "epoch": appended.epoch.as_str(),
        "data": data,
    }));
    events.record(topic.as_str(), &event).await;
}
