//! The publish path: append to history (which assigns `seq`), then fan out on the backplane.
//!
//! One connection keeps several publishes in flight, so it is not held to one store round trip
//! per message. Its appends are issued on its own [`Lane`], in frame order, so the store gives
//! them `seq`s in that order (see `session_store::ordered`); they complete in that order too
//! ([`FuturesOrdered`]), and the connection task, taking them one after the other, fans each out
//! on the backplane and answers `published`, so backplane order and reply order are frame order
//! as well. `/api/publish` callers each run on their own task and their appends travel on the
//! pool side by side: no caller waits for another's round trip.
//!
//! Bounds, never queues: a connection with `--max-publishes-in-flight` publishes in flight stops
//! reading its socket until the oldest completes (TCP then pushes back on the client), and every
//! publish of the pod, WebSocket or HTTP, holds one of `--max-pod-publishes-in-flight` permits
//! from its append to its fan-out. Every in-flight publish is bounded by the store timeout.
//!
//! Replies stay in frame order for every frame, not only `published`: a frame that is not a
//! pipelined publish (a refused publish included) first waits for the publishes before it.

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use axum::extract::ws::WebSocket;
use backplane::{Backplane, Subject};
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use prometheus_client::metrics::gauge::Gauge;
use protocol::client::Ref;
use protocol::{ErrorCode, Payload, PublishId, ServerFrame, SessionId, Topic};
use session_store::{Appended, Lane, OrderedAppends, SessionStore};
use sync_wrapper::SyncWrapper;
use tokio::sync::OwnedSemaphorePermit;

use crate::connection::{Close, Conn};
use crate::envelope::{self, Envelope};
use crate::{PublishError, Shared};

/// A connection's publishes in flight, oldest first. Created on its first publish: most
/// connections never publish, and an idle one carries only the `Option`.
pub(crate) struct Pipeline {
    lane: Lane,
    /// Only ever used through `&mut`: the wrapper makes the connection `Sync` without a lock.
    in_flight: SyncWrapper<FuturesOrdered<InFlight>>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("lane", &self.lane)
            .finish()
    }
}

type InFlight = Pin<Box<dyn Future<Output = Done> + Send>>;

/// A publish whose append completed, to be fanned out and answered.
pub(crate) struct Done {
    topic: Topic,
    reference: Option<Ref>,
    result: Result<(Appended, Option<FanOut>), PublishError>,
    _slot: Slot,
}

/// What goes on the backplane for a completed append: the message and the session it excludes.
pub(crate) type FanOut = (Payload, Option<SessionId>);

/// One of the pod's publish permits, counted in `gateway_publishes_in_flight` while held.
struct Slot {
    _permit: OwnedSemaphorePermit,
    gauge: Gauge,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, gauge: &Gauge) -> Self {
        gauge.inc();
        Self {
            _permit: permit,
            gauge: gauge.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl Shared {
    /// Publishes on `topic` (the server API's path): appends to history, then publishes on the
    /// backplane. A backplane failure is not an error for the publisher: the message is in
    /// history, and every pod's topic task re-reads history to catch up. A retry with the same
    /// `id` returns the first publish's result and stores nothing; it fans out again the first
    /// one's message as history has it. `exclude`: the session that gets a `skipped` frame in
    /// the message's place (echo suppression), kept with the message in history for replays.
    pub async fn publish(
        &self,
        topic: &Topic,
        data: Payload,
        id: Option<&PublishId>,
        exclude: Option<&SessionId>,
    ) -> Result<Appended, PublishError> {
        self.check_publishable(topic, &data)?;
        let permit = self.publish_permits.clone().acquire_owned().await;
        let _slot = Slot::new(
            permit.expect("the publish semaphore is never closed"),
            &self.metrics.publish.in_flight,
        );
        let started = Instant::now();
        let event = crate::events::hooks::publishing(self, topic, None).await;
        let extras = session_store::Extras {
            exclude,
            stage: event.as_ref().and_then(|e| e.stage()),
        };
        let appended = self.store.append_with(topic, &data, id, extras).await?;
        self.metrics.store.observe("append", started);
        crate::events::hooks::published(self, topic, event, &appended, &data).await;
        let message = self
            .to_fan_out(topic, &appended, (data, exclude.cloned()))
            .await;
        self.fan_out(topic, &appended, message).await;
        Ok(appended)
    }

    /// What to fan out for a completed append: its own message, or for a retry (a duplicate)
    /// what history holds under its seq (the first attempt's data and exclusion). The first
    /// attempt may never have reached the backplane (it failed after the append, or waited for
    /// replicas in vain), and the retry's data may differ from what was stored; subscribers that
    /// have it drop the repeat by `seq`.
    async fn to_fan_out(
        &self,
        topic: &Topic,
        appended: &Appended,
        message: FanOut,
    ) -> Option<FanOut> {
        if !appended.duplicate {
            return Some(message);
        }
        match self.store.history(topic, appended.seq - 1, 1).await {
            Ok(page) => page
                .messages
                .into_iter()
                .next()
                .filter(|stored| stored.seq == appended.seq && page.top.epoch == appended.epoch)
                .map(|stored| (stored.data, stored.exclude)),
            Err(e) => {
                tracing::debug!(%topic, seq = appended.seq, error = %e, "duplicate not fanned out again; subscribers catch up from history");
                None
            }
        }
    }

    async fn fan_out(&self, topic: &Topic, appended: &Appended, message: Option<FanOut>) {
        let Some((data, exclude)) = message else {
            return;
        };
        let published_us = envelope::now_us();
        // This pod's subscribers first, from this task: the backplane's copy comes back to the
        // topic's task as a duplicate (and is what every other pod delivers).
        self.hub.release_local(
            topic,
            appended.seq,
            &appended.epoch,
            data.clone(),
            published_us,
            exclude.clone(),
        );
        let envelope = Envelope {
            seq: appended.seq,
            epoch: appended.epoch.clone(),
            published_us,
            data,
            exclude,
        };
        let started = Instant::now();
        if let Err(e) = self
            .backplane
            .publish(&Subject::Topic(topic.clone()), envelope.encode())
            .await
        {
            tracing::warn!(%topic, seq = appended.seq, error = %e, "backplane publish failed; subscribers catch up from history");
        }
        self.metrics
            .hub
            .backplane_publish
            .observe(started.elapsed().as_secs_f64());
    }
}

/// The oldest in-flight publish once its append completed; never, while none is in flight.
pub(crate) async fn next_done(pipeline: &mut Option<Box<Pipeline>>) -> Done {
    if let Some(p) = pipeline {
        let in_flight = p.in_flight.get_mut();
        if !in_flight.is_empty()
            && let Some(done) = in_flight.next().await
        {
            return done;
        }
    }
    std::future::pending().await
}

impl Conn {
    /// Whether this connection has `--max-publishes-in-flight` publishes in flight (it reads
    /// no frame until one completes).
    pub(crate) fn publishing_full(&mut self) -> bool {
        let max = self.shared.config.max_publishes_in_flight;
        self.publishes
            .as_mut()
            .is_some_and(|p| p.in_flight.get_mut().len() >= max)
    }

    /// Issues a checked publish on this connection's lane; its reply is written when it and
    /// every publish before it completed ([`Conn::published`]). `exclude`: this connection's
    /// session, when the frame asked for `exclude_self`.
    pub(crate) async fn issue_publish(
        &mut self,
        socket: &mut WebSocket,
        topic: Topic,
        data: Payload,
        id: Option<PublishId>,
        exclude: Option<SessionId>,
        reference: Option<Ref>,
    ) -> Result<(), Close> {
        let permit = self.publish_permit(socket).await?;
        let shared = self.shared.clone();
        let slot = Slot::new(permit, &shared.metrics.publish.in_flight);
        let pipeline = self.publishes.get_or_insert_with(|| {
            Box::new(Pipeline {
                lane: Lane::new(self.id),
                in_flight: SyncWrapper::new(FuturesOrdered::new()),
            })
        });
        let from = shared.events.as_ref().and_then(|_| {
            let session = self.session.as_ref()?;
            Some((session.id.to_string(), session.user.clone()))
        });
        let event = crate::events::hooks::publishing(&shared, &topic, from.as_ref()).await;
        let started = Instant::now();
        let extras = session_store::Extras {
            exclude: exclude.as_ref(),
            stage: event.as_ref().and_then(|e| e.stage()),
        };
        let issued =
            shared
                .store
                .issue_append_with(&mut pipeline.lane, &topic, &data, id.as_ref(), extras);
        pipeline.in_flight.get_mut().push_back(Box::pin(async move {
            let result = match issued.await {
                Ok(appended) => {
                    shared.metrics.store.observe("append", started);
                    crate::events::hooks::published(&shared, &topic, event, &appended, &data).await;
                    let message = shared.to_fan_out(&topic, &appended, (data, exclude)).await;
                    Ok((appended, message))
                }
                Err(e) => Err(e.into()),
            };
            Done {
                topic,
                reference,
                result,
                _slot: slot,
            }
        }));
        Ok(())
    }

    /// One of the pod's publish permits. While the pod has none free, this connection's own
    /// publishes go on completing (and are answered), so waiting never holds permits that
    /// only this task could release.
    async fn publish_permit(
        &mut self,
        socket: &mut WebSocket,
    ) -> Result<OwnedSemaphorePermit, Close> {
        let permits = self.shared.publish_permits.clone();
        loop {
            if let Ok(permit) = permits.clone().try_acquire_owned() {
                return Ok(permit);
            }
            if self
                .publishes
                .as_mut()
                .is_none_or(|p| p.in_flight.get_mut().is_empty())
            {
                let permit = permits.acquire_owned().await;
                return Ok(permit.expect("the publish semaphore is never closed"));
            }
            tokio::select! {
                permit = permits.clone().acquire_owned() => {
                    return Ok(permit.expect("the publish semaphore is never closed"));
                }
                done = next_done(&mut self.publishes) => self.published(socket, done).await?,
            }
        }
    }

    /// Fans out a completed publish and answers it. The `unavailable` reply says how to retry:
    /// the append may have run before it failed (e.g. a replica acknowledgement timed out), and
    /// only a retry with the same id is safe from storing it twice.
    pub(crate) async fn published(
        &mut self,
        socket: &mut WebSocket,
        done: Done,
    ) -> Result<(), Close> {
        let Done {
            topic,
            reference,
            result,
            _slot,
        } = done;
        let reply = match result {
            Ok((appended, message)) => {
                self.shared.fan_out(&topic, &appended, message).await;
                ServerFrame::Published {
                    topic,
                    seq: Some(appended.seq),
                    reference,
                }
            }
            Err(e) => {
                let message = match e.code() {
                    ErrorCode::Unavailable => format!("{e}; retry with the same publish id"),
                    _ => e.to_string(),
                };
                ServerFrame::error(e.code(), message, reference)
            }
        };
        drop(_slot);
        self.reply(socket, &reply).await
    }

    /// Fans out and answers every publish in flight, oldest first.
    pub(crate) async fn settle_publishes(&mut self, socket: &mut WebSocket) -> Result<(), Close> {
        while self
            .publishes
            .as_mut()
            .is_some_and(|p| !p.in_flight.get_mut().is_empty())
        {
            let done = next_done(&mut self.publishes).await;
            self.published(socket, done).await?;
        }
        Ok(())
    }

    /// On the way out: every publish in flight is still fanned out (it is stored, or will be:
    /// subscribers should not wait for the next publish to learn of it), and answered while the
    /// socket takes replies. Bounded by the store timeout, which bounds each append.
    pub(crate) async fn settle_publishes_on_close(&mut self, socket: &mut WebSocket, answer: bool) {
        let Some(mut pipeline) = self.publishes.take() else {
            return;
        };
        let mut answer = answer;
        let bound = self.shared.config.store_timeout + self.shared.config.close_grace;
        let _ = tokio::time::timeout(bound, async {
            while let Some(done) = pipeline.in_flight.get_mut().next().await {
                if answer {
                    answer = self.published(socket, done).await.is_ok();
                } else if let Ok((appended, message)) = done.result {
                    self.shared.fan_out(&done.topic, &appended, message).await;
                }
            }
        })
        .await;
    }
}
