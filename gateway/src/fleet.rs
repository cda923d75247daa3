//! Fleet-wide commands of the server API, on the backplane's fleet subject: every pod acts on
//! its own connections of the user named.
//!
//! - `disconnect`: each connection of the user closes with 1008
//!   `{"reconnect":false,"error":"disconnected"}` without saving its session (the API deleted
//!   the user's session records first, from the per-user index, so none can be resumed);
//! - `subscribe` / `unsubscribe`: each connection of the user applies it on its own task and
//!   saves its session, so the subscription follows a resume to any pod.
//!
//! At-most-once like every backplane message: the API answers with what it asked, and a pod
//! that misses the message (NATS down at that moment) leaves those connections as they were.

use std::sync::Arc;

use backplane::{Backplane, Subject, Subscription};
use bytes::Bytes;
use protocol::Topic;
use serde::{Deserialize, Serialize};

use crate::Shared;
use crate::cluster::Feed;
use crate::control::ServerCommand;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FleetMessage {
    Disconnect { user: String },
    Subscribe { user: String, topic: Topic },
    Unsubscribe { user: String, topic: Topic },
}

/// Sends `message` to every pod (this one included).
pub async fn send(
    shared: &Shared,
    message: &FleetMessage,
) -> Result<(), backplane::BackplaneError> {
    let payload = Bytes::from(serde_json::to_vec(message).expect("fleet messages serialize"));
    shared.backplane.publish(&Subject::Fleet, payload).await
}

/// Applies fleet messages to this pod's connections until shutdown.
pub async fn run(shared: Arc<Shared>, ready: Option<Subscription>) {
    let mut feed = Feed::new(&shared.backplane, &shared.shutdown, Subject::Fleet, ready);
    while let Some(bytes) = feed.next().await {
        match serde_json::from_slice::<FleetMessage>(&bytes) {
            Ok(message) => apply(&shared, message),
            Err(e) => tracing::warn!(error = %e, "malformed fleet message"),
        }
    }
}

fn apply(shared: &Shared, message: FleetMessage) {
    let (user, action) = match message {
        FleetMessage::Disconnect { user } => (user, None),
        FleetMessage::Subscribe { user, topic } => (user, Some(ServerCommand::Subscribe(topic))),
        FleetMessage::Unsubscribe { user, topic } => {
            (user, Some(ServerCommand::Unsubscribe(topic)))
        }
    };
    let controls = shared.connections.of_user(&user);
    tracing::debug!(%user, connections = controls.len(), ?action, "fleet command");
    for control in controls {
        match &action {
            None => control.disconnect(),
            Some(command) => control.command(command.clone()),
        }
    }
}
