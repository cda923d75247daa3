//! What the gateway sends, applied to the client's state.

use super::live::Live;
use super::*;

impl Connection {
    pub(super) async fn gap(&self, gap: Option<Gap>) {
        if let Some(gap) = gap {
            self.emit(Event::Gap(gap)).await;
        }
    }

    /// Reports what a `message` or `skipped` frame did. A skipped one only moves the position
    /// (shared, so the next `hello` presents it), with nothing for the application.
    async fn outcome(&mut self, topic: String, outcome: Option<Outcome>) {
        match outcome {
            Some(Outcome::Deliver(m)) => {
                self.share_positions();
                self.emit(Event::Message(m)).await;
            }
            Some(Outcome::Skipped) => self.share_positions(),
            Some(Outcome::Duplicate { seq }) => {
                self.emit(Event::Duplicate { topic, seq }).await;
            }
            None => {}
        }
    }

    pub(super) async fn confirm(&mut self, topic: &str) {
        let Some(position) = self.topics.position(topic) else {
            return;
        };
        self.confirmed.insert(topic.to_owned());
        for w in self.waiters.remove(topic).unwrap_or_default() {
            let _ = w.send(Ok(position.clone()));
        }
        self.share_positions();
        self.emit(Event::Subscribed {
            topic: topic.to_owned(),
            position,
        })
        .await;
    }

    pub(super) async fn on_frame(&mut self, live: &mut Live, text: &str) -> Result<(), ()> {
        let frame = match ServerFrame::parse(text) {
            Ok(f) => f,
            Err(e) => {
                let message = format!("unreadable frame from the gateway: {e}");
                self.emit(Event::Error(ClientError::Server {
                    code: "bad_frame".into(),
                    message,
                }))
                .await;
                return Ok(());
            }
        };
        match frame {
            ServerFrame::Message(MessageFrame {
                topic,
                seq,
                epoch,
                data,
            }) => {
                let (gap, outcome) = self.topics.message(&topic, seq, epoch, Some(data));
                self.gap(gap).await;
                self.outcome(topic, outcome).await;
            }
            ServerFrame::Skipped(SkippedFrame { topic, seq, epoch }) => {
                let (gap, outcome) = self.topics.message(&topic, seq, epoch, None);
                self.gap(gap).await;
                self.outcome(topic, outcome).await;
            }
            ServerFrame::Welcome(Welcome {
                session,
                resume,
                pod,
                user,
                resumed,
                topics,
            }) => {
                live.welcome_deadline = None;
                live.up_since = Some(Instant::now());
                live.next_ping = self.config.ping_interval.map(|i| Instant::now() + i);
                live.refresh_at = self.refresh_at(None);
                self.resume = Some(resume);
                self.share_positions();
                let restored = if resumed { topics } else { BTreeMap::new() };
                // Restored topics first: their replay follows the welcome.
                for (topic, t) in &restored {
                    if !self.topics.contains(topic) {
                        let reference = self.take_ref();
                        self.pending.insert(reference, Pending::Unsubscribe(None));
                        self.send(live, ClientFrame::Unsubscribe { topic, reference })
                            .await?;
                        continue;
                    }
                    if let (Some(pseq), Some(pepoch)) = (t.pseq, &t.pepoch) {
                        self.topics.presence.set(topic, pseq, pepoch.clone());
                    }
                    let gap = self
                        .topics
                        .restored(topic, t, live.hello_positions.get(topic));
                    self.gap(gap).await;
                    self.confirm(topic).await;
                }
                self.emit(Event::Connected {
                    session,
                    pod,
                    user,
                    resumed,
                })
                .await;
                for topic in self.topics.names() {
                    if !restored.contains_key(&topic) && !live.hello_subscribed.contains(&topic) {
                        self.send_subscribe(live, &topic).await?;
                    }
                }
                for queued in std::mem::take(&mut self.queue) {
                    // A caller that gave up (its request timed out) was told it failed: sending
                    // a publish now would store a message it believes was not.
                    match queued {
                        Queued::Publish(p) if !p.reply.is_closed() => {
                            self.send_publish(live, p).await?
                        }
                        Queued::Query(q) if !q.reply.is_closed() => {
                            self.send_query(live, q).await?
                        }
                        Queued::Publish(_) | Queued::Query(_) => {}
                    }
                }
            }
            ServerFrame::Subscribed(Subscribed {
                topic,
                seq,
                epoch,
                recovered,
                pseq,
                pepoch,
                reason,
                reference,
            }) => {
                if reference.is_none()
                    && reason.is_none()
                    && live.hello_subscribed.reply(Some(&topic)).is_some()
                    && !self.topics.contains(&topic)
                {
                    // Unsubscribed while the hello was on its way: the gateway opened it anyway.
                    let reference = self.take_ref();
                    self.pending.insert(reference, Pending::Unsubscribe(None));
                    return self
                        .send(
                            live,
                            ClientFrame::Unsubscribe {
                                topic: &topic,
                                reference,
                            },
                        )
                        .await;
                }
                if let (Some(pseq), Some(pepoch)) = (pseq, pepoch)
                    && self.topics.contains(&topic)
                {
                    self.topics.presence.set(&topic, pseq, pepoch);
                }
                let since = match reference.and_then(|r| self.pending.remove(&r)) {
                    Some(Pending::Subscribe { topic: t, since }) if t == topic => since,
                    _ => None,
                };
                let top = Position { seq, epoch };
                let gap = self
                    .topics
                    .subscribed(&topic, top, recovered, since.as_ref());
                self.gap(gap).await;
                self.confirm(&topic).await;
            }
            ServerFrame::Published(Published { seq, reference }) => {
                if let Some(Pending::Publish(reply)) =
                    reference.and_then(|r| self.pending.remove(&r))
                {
                    let _ = reply.send(Ok(seq));
                }
            }
            ServerFrame::Unsubscribed(Unsubscribed {
                topic,
                reason,
                reference,
            }) => match reference.and_then(|r| self.pending.remove(&r)) {
                Some(Pending::Unsubscribe(reply)) => {
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(()));
                    }
                }
                _ => {
                    // Removed by the gateway (e.g. a refreshed token no longer grants it).
                    self.topics.remove(&topic);
                    self.confirmed.remove(&topic);
                    self.share_positions();
                    self.emit(Event::Unsubscribed { topic, reason }).await;
                }
            },
            ServerFrame::Answer { reference, frame } => {
                if let Some(Pending::Query(reply)) = reference.and_then(|r| self.pending.remove(&r))
                {
                    let _ = reply.send(Ok(frame));
                }
            }
            ServerFrame::Pong(Reference { reference }) => {
                if let Some(r) = reference {
                    self.pending.remove(&r);
                }
            }
            ServerFrame::Refreshed(Refreshed { exp, reference }) => {
                if let Some(r) = reference {
                    self.pending.remove(&r);
                }
                live.refresh_at = self.refresh_at(exp);
                self.emit(Event::Refreshed { exp }).await;
            }
            ServerFrame::Error(ErrorFrame {
                code,
                message,
                topic,
                reference,
            }) => {
                let error = ClientError::Server { code, message };
                let pending = match reference {
                    Some(r) => self.pending.remove(&r),
                    // Without `ref`: the answer to a topic of `hello.subscribe`, if one waits.
                    None => live
                        .hello_subscribed
                        .reply(topic.as_deref())
                        .map(|topic| Pending::Subscribe { topic, since: None }),
                };
                match pending {
                    Some(Pending::Publish(reply)) => drop(reply.send(Err(error))),
                    Some(Pending::Query(reply)) => drop(reply.send(Err(error))),
                    Some(Pending::Subscribe { topic, .. }) => {
                        self.topics.remove(&topic);
                        self.share_positions();
                        for w in self.waiters.remove(&topic).unwrap_or_default() {
                            let _ = w.send(Err(error.clone()));
                        }
                        self.emit(Event::Error(error)).await;
                    }
                    Some(Pending::Unsubscribe(reply)) => {
                        let result = if error.code() == Some("not_subscribed") {
                            Ok(())
                        } else {
                            Err(error)
                        };
                        if let Some(reply) = reply {
                            let _ = reply.send(result);
                        }
                    }
                    Some(Pending::Ping | Pending::Refresh) | None => {
                        self.emit(Event::Error(error)).await;
                    }
                }
            }
            ServerFrame::Presence(frame, join) => {
                if self.topics.contains(&frame.topic)
                    && self
                        .topics
                        .presence
                        .event(&frame.topic, frame.pseq, &frame.epoch)
                {
                    self.emit(Event::Presence(crate::PresenceEvent {
                        topic: frame.topic,
                        join,
                        pseq: frame.pseq,
                        epoch: frame.epoch,
                        member: frame.member,
                    }))
                    .await;
                }
            }
            ServerFrame::FreshList(list) => {
                if let (Some(pseq), Some(epoch)) = (list.pseq, list.epoch)
                    && self.topics.contains(&list.topic)
                {
                    self.topics.presence.set(&list.topic, pseq, epoch.clone());
                    self.emit(Event::PresenceList {
                        topic: list.topic,
                        members: list.members,
                        pseq,
                        epoch,
                    })
                    .await;
                }
            }
            ServerFrame::Other => {}
        }
        Ok(())
    }
}
