//! A connection's part in lifecycle events: one call per cause, from `session`, `server_side`,
//! `access` and `connection`, each a no-op without `--webhook-url`.
//!
//! "Closed for good" is the protocol's explicit goodbye: the client's own close frame with code
//! 1000 (what the SDKs' `close()` sends). With events on, such a session ends there and then
//! (its record is deleted, a later resume gets a fresh session) and `session.ended` says
//! `closed`. Any other end of a connection (1001 from a drain, 1012 from a rebalance, a
//! takeover, a network drop, a browser's 1001 on leaving the page) only detaches the session:
//! it may resume, and expires after the resume window if it does not.

use protocol::Topic;

use super::{Why, hooks};
use crate::connection::Conn;

/// The close code that ends a session for good when the client sends it.
pub const GOODBYE: u16 = 1000;

impl Conn {
    /// After a successful `hello`: `session.started` when fresh, and the session attached here.
    pub(crate) async fn events_attached(&self, resumed: bool) {
        let Some(session) = &self.session else { return };
        let id = session.id.to_string();
        let topics = self.subs.keys();
        hooks::attached(
            &self.shared,
            self.id,
            &id,
            session.user.as_deref(),
            resumed,
            topics,
        )
        .await;
    }

    pub(crate) async fn events_subscribed(&self, topic: &Topic) {
        let Some(session) = &self.session else { return };
        hooks::subscribed(&self.shared, session.id.as_str(), topic).await;
    }

    pub(crate) async fn events_unsubscribed(&self, topic: &Topic) {
        let Some(session) = &self.session else { return };
        hooks::unsubscribed(&self.shared, session.id.as_str(), topic).await;
    }

    /// Whether a client close frame with `code` ends the session for good: events are on,
    /// the code is [`GOODBYE`], and the server API has not ended it already.
    pub(crate) fn is_goodbye(&self, code: Option<u16>) -> bool {
        self.shared.events.is_some()
            && code == Some(GOODBYE)
            && self.session.is_some()
            && !self.control.is_disconnected()
    }

    /// Ends the session for good: its record deleted (nothing to resume), `session.ended`
    /// with `closed`, and the topics it vacated.
    pub(crate) async fn events_goodbye(&self) {
        let Some(session) = &self.session else { return };
        self.forget_session().await;
        let id = session.id.to_string();
        hooks::ended(&self.shared, &id, session.user.as_deref(), Why::Closed).await;
    }

    /// When the connection ends otherwise: the session is detached (resumable). A session the
    /// server API disconnected was ended by that call.
    pub(crate) async fn events_detached(&self) {
        if self.shared.events.is_none() || self.control.is_disconnected() {
            return;
        }
        let Some(session) = &self.session else { return };
        hooks::detached(&self.shared, self.id, session.id.as_str()).await;
    }
}
