//! Saving a connection's session (its subscriptions with the positions flushed to the client)
//! so any pod can resume it. Only the connection holding the session's latest generation may
//! save it; a refused save means a newer connection took the session over.

use session_store::{SessionRecord, SessionStore};

use crate::connection::Conn;

impl Conn {
    fn record(&self, confirmed: bool) -> Option<SessionRecord> {
        let s = self.session.as_ref()?;
        Some(SessionRecord {
            id: s.id.clone(),
            secret: s.secret.clone(),
            user: s.user.clone(),
            subscriptions: self
                .subs
                .iter()
                .map(|(t, sub)| (t.clone(), sub.sent.clone()))
                .collect(),
            confirmed,
            created_ms: s.created_ms,
            last_pod: self.shared.pod.clone(),
            granted: self.granted.clone(),
            info: s.info.clone(),
        })
    }

    /// Saves the record under this connection's generation; `Ok(false)` when a newer
    /// connection claimed the session.
    pub(crate) async fn store_session(
        &self,
        confirmed: bool,
    ) -> Result<bool, session_store::StoreError> {
        let (Some(record), Some(session)) = (self.record(confirmed), self.session.as_ref()) else {
            return Ok(true);
        };
        let started = std::time::Instant::now();
        let result = self
            .shared
            .store
            .save_session(
                &record,
                session.generation,
                self.shared.config.resume_window,
            )
            .await;
        self.shared.metrics.store.observe("save_session", started);
        result
    }

    /// Saves the session with the positions sent so far: the resume window starts now. A
    /// refused save means a newer connection claimed the session (its takeover message may
    /// have been lost): this one closes.
    pub(crate) async fn save_session(&self) {
        self.save_session_as(false).await;
    }

    /// [`Conn::save_session`], saying whether the client is known to have read everything sent.
    pub(crate) async fn save_session_as(&self, confirmed: bool) {
        let Some(session) = &self.session else { return };
        if self.control.is_disconnected() {
            // Disconnected by the server API: the session must not be resumable.
            return;
        }
        if self.control.is_taken_over()
            || !self.shared.connections.holds_session(self.id, &session.id)
        {
            // Taken over by a newer connection, which owns the record now.
            return;
        }
        match self.store_session(confirmed).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(session = %session.id, "session claimed by a newer connection");
                self.control.take_over();
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot save session; the client resumes from its own positions");
            }
        }
    }
}
