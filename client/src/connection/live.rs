//! One live connection: the upgrade, `hello`, the read loop, requests and timers.

use super::hello::HelloSubscriptions;
use super::*;

impl Connection {
    /// One connection, from the upgrade to its end.
    pub(super) async fn session(&mut self) -> End {
        let lost = |reason: &str| End::Lost {
            code: None,
            reason: reason.to_owned(),
            up_since: None,
        };
        let token = match self.current_token().await {
            Ok(t) => t,
            Err(e) => {
                self.emit(Event::Error(e)).await;
                return lost("");
            }
        };
        if self.config.urls.is_empty() {
            return lost("");
        }
        let url = self.config.urls[self.url_index % self.config.urls.len()].clone();
        let connect_deadline = Instant::now() + self.config.connect_timeout;
        let ws = match tokio::time::timeout_at(
            connect_deadline,
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await
        {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => {
                tracing::debug!(%url, error = %e, "connect failed");
                return lost("");
            }
            Err(_) => return lost(""),
        };
        let (mut sink, mut stream) = ws.split();
        // What the application asked for while this connection opened goes in its hello.
        while let Ok(cmd) = self.commands.try_recv() {
            if let Command::Close { reply } = cmd {
                let frame = CloseFrame {
                    code: CloseCode::Normal,
                    reason: "".into(),
                };
                let _ = sink.send(WsMessage::Close(Some(frame))).await;
                return End::Closed(Some(reply));
            }
            self.offline_command(cmd);
        }
        let hello_positions = self.topics.positions();
        let names = self.topics.names();
        let hello_subscribed = HelloSubscriptions::start(
            names
                .iter()
                .map(|t| (t.as_str(), hello_positions.contains_key(t))),
        );
        let hello = ClientFrame::Hello {
            token: token.as_deref(),
            resume: self.resume.as_deref(),
            positions: self.topics.sent_positions(),
            subscribe: hello_subscribed.topics(),
        }
        .to_text();
        if sink.send(WsMessage::text(hello)).await.is_err() {
            return lost("");
        }
        let mut live = Live {
            sink,
            up_since: None,
            welcome_deadline: Some(connect_deadline),
            pong_deadline: None,
            next_ping: None,
            refresh_at: None,
            close: None,
            close_deadline: None,
            hello_positions,
            hello_subscribed,
        };
        loop {
            let timer = live.next_timer();
            tokio::select! {
                frame = stream.next() => match frame {
                    Some(Ok(WsMessage::Text(text))) => {
                        live.pong_deadline = None;
                        if let Err(()) = self.on_frame(&mut live, text.as_str()).await {
                            return live.lost();
                        }
                    }
                    Some(Ok(WsMessage::Close(frame))) => {
                        live.close = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                        // The server drops the TCP connection after the close handshake; one
                        // that does not is not waited for long.
                        live.close_deadline = Some(Instant::now() + CLOSE_GRACE);
                    }
                    Some(Ok(_)) => live.pong_deadline = None,
                    Some(Err(_)) | None => return live.lost(),
                },
                cmd = self.commands.recv() => match cmd {
                    None => return live.closed(None).await,
                    Some(Command::Close { reply }) => return live.closed(Some(reply)).await,
                    Some(cmd) if live.up_since.is_some() => {
                        if self.online_command(&mut live, cmd).await.is_err() {
                            return live.lost();
                        }
                    }
                    Some(cmd) => self.offline_command(cmd),
                },
                _ = sleep_until(timer.unwrap_or_else(far_future)), if timer.is_some() => {
                    if self.on_timer(&mut live).await.is_err() {
                        return live.lost();
                    }
                }
            }
        }
    }

    pub(super) async fn send(&mut self, live: &mut Live, frame: ClientFrame<'_>) -> Result<(), ()> {
        live.sink
            .send(WsMessage::text(frame.to_text()))
            .await
            .map_err(|_| ())
    }

    pub(super) async fn send_subscribe(&mut self, live: &mut Live, topic: &str) -> Result<(), ()> {
        let since = self.topics.position(topic);
        let sent = self.topics.sent_position(topic);
        let reference = self.take_ref();
        let frame = ClientFrame::Subscribe {
            topic,
            since: sent.as_ref(),
            reference,
        };
        let sent = self.send(live, frame).await;
        self.pending.insert(
            reference,
            Pending::Subscribe {
                topic: topic.to_owned(),
                since,
            },
        );
        sent
    }

    pub(super) async fn send_publish(
        &mut self,
        live: &mut Live,
        p: QueuedPublish,
    ) -> Result<(), ()> {
        let reference = self.take_ref();
        let frame = ClientFrame::Publish {
            topic: &p.topic,
            data: &p.data,
            id: p.id.as_deref(),
            exclude_self: p.exclude_self,
            reference,
        };
        let sent = self.send(live, frame).await;
        self.pending.insert(reference, Pending::Publish(p.reply));
        sent
    }

    pub(super) async fn send_query(&mut self, live: &mut Live, q: QueuedQuery) -> Result<(), ()> {
        let reference = self.take_ref();
        let mut frame = q.frame;
        frame.insert("ref".to_owned(), reference.into());
        let text = serde_json::Value::Object(frame).to_string();
        let sent = live.sink.send(WsMessage::text(text)).await.map_err(|_| ());
        self.pending.insert(reference, Pending::Query(q.reply));
        sent
    }

    pub(super) async fn online_command(&mut self, live: &mut Live, cmd: Command) -> Result<(), ()> {
        match cmd {
            Command::Subscribe {
                topic,
                since,
                reply,
            } => {
                if self.confirmed.contains(&topic) {
                    let position = self.topics.position(&topic);
                    let _ = reply.send(position.ok_or(ClientError::Disconnected));
                    return Ok(());
                }
                let new = !self.topics.contains(&topic);
                self.topics.add(&topic, since);
                self.waiters.entry(topic.clone()).or_default().push(reply);
                if new {
                    self.send_subscribe(live, &topic).await?;
                }
                Ok(())
            }
            Command::Unsubscribe { topic, reply } => {
                if !self.topics.remove(&topic) {
                    let _ = reply.send(Ok(()));
                    return Ok(());
                }
                self.confirmed.remove(&topic);
                self.share_positions();
                for w in self.waiters.remove(&topic).unwrap_or_default() {
                    let _ = w.send(Err(ClientError::Closed));
                }
                let reference = self.take_ref();
                self.pending
                    .insert(reference, Pending::Unsubscribe(Some(reply)));
                self.send(
                    live,
                    ClientFrame::Unsubscribe {
                        topic: &topic,
                        reference,
                    },
                )
                .await
            }
            Command::Publish {
                topic,
                data,
                id,
                exclude_self,
                reply,
            } => {
                let p = QueuedPublish {
                    topic,
                    data,
                    id,
                    exclude_self,
                    reply,
                };
                self.send_publish(live, p).await
            }
            Command::Query { frame, reply } => {
                self.send_query(live, QueuedQuery { frame, reply }).await
            }
            Command::Close { reply } => {
                let _ = reply.send(());
                Ok(())
            }
        }
    }

    pub(super) async fn on_timer(&mut self, live: &mut Live) -> Result<(), ()> {
        let now = Instant::now();
        if [
            live.welcome_deadline,
            live.pong_deadline,
            live.close_deadline,
        ]
        .into_iter()
        .flatten()
        .any(|t| t <= now)
        {
            return Err(());
        }
        if live.next_ping.is_some_and(|t| t <= now) {
            live.next_ping = self.config.ping_interval.map(|i| now + i);
            if live.pong_deadline.is_none() {
                live.pong_deadline = Some(now + self.config.pong_timeout);
            }
            let reference = self.take_ref();
            self.pending.insert(reference, Pending::Ping);
            self.send(live, ClientFrame::Ping { reference }).await?;
        }
        if live.refresh_at.is_some_and(|t| t <= now) {
            live.refresh_at = None;
            if let Some(source) = self.config.token_source.clone() {
                match source.fetch().await {
                    Ok(token) => {
                        let reference = self.take_ref();
                        self.pending.insert(reference, Pending::Refresh);
                        let frame = ClientFrame::Refresh {
                            token: &token,
                            reference,
                        };
                        let sent = self.send(live, frame).await;
                        self.token = Some(token);
                        sent?;
                    }
                    Err(e) => {
                        self.emit(Event::Error(ClientError::Token(e.to_string())))
                            .await
                    }
                }
            }
        }
        Ok(())
    }

    /// When to send `refresh` for a token expiring at `exp`.
    pub(super) fn refresh_at(&self, exp: Option<u64>) -> Option<Instant> {
        let before = self.config.refresh_before?;
        self.config.token_source.as_ref()?;
        let exp = exp.or_else(|| self.token.as_deref().and_then(token_expiry))?;
        let remaining = Duration::from_secs(exp.saturating_sub(now_secs()));
        let wait = if remaining > before * 2 {
            remaining - before
        } else {
            remaining / 2
        };
        Some(Instant::now() + wait)
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

/// The state of one live connection.
pub(super) struct Live {
    pub(super) sink: SplitSink<Ws, WsMessage>,
    pub(super) up_since: Option<Instant>,
    pub(super) welcome_deadline: Option<Instant>,
    pub(super) pong_deadline: Option<Instant>,
    pub(super) next_ping: Option<Instant>,
    pub(super) refresh_at: Option<Instant>,
    pub(super) close: Option<(u16, String)>,
    pub(super) close_deadline: Option<Instant>,
    pub(super) hello_positions: BTreeMap<String, Position>,
    /// The topics of this connection's `hello.subscribe` not answered yet.
    pub(super) hello_subscribed: HelloSubscriptions,
}

impl Live {
    pub(super) fn next_timer(&self) -> Option<Instant> {
        [
            self.welcome_deadline,
            self.pong_deadline,
            self.next_ping,
            self.refresh_at,
            self.close_deadline,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub(super) fn lost(&mut self) -> End {
        let (code, reason) = match self.close.take() {
            Some((code, reason)) => (Some(code), reason),
            None => (None, String::new()),
        };
        End::Lost {
            code,
            reason,
            up_since: self.up_since,
        }
    }

    pub(super) async fn closed(mut self, reply: Option<oneshot::Sender<()>>) -> End {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let _ = self.sink.send(WsMessage::Close(Some(frame))).await;
        End::Closed(reply)
    }
}
