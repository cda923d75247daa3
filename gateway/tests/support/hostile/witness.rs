//! The witness: a well-behaved client that must keep receiving, in order, what is published to
//! it while an attack runs next to it.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tokio::task::JoinHandle;

use super::hello::{admin_publish, hello_on};
use crate::support::Client;

/// A well-behaved client subscribed to `witness`: during every attack it must keep receiving
/// what is published to it, in order.
pub struct Witness {
    pub client: Client,
    pub admin: SocketAddr,
    /// Extra request headers for the admin API (its token).
    pub admin_headers: Option<String>,
    pub topic: String,
    /// Messages published to the topic so far (the `n` of the next one).
    pub sent: u64,
}

impl Witness {
    /// Says hello on `client` (with `token`) and subscribes to `witness`.
    pub async fn on(client: Client, admin: SocketAddr, token: Option<&str>) -> Self {
        Self::on_topic(client, admin, token, "witness").await
    }

    /// Says hello on `client` (with `token`) and subscribes to `topic`.
    pub async fn on_topic(
        client: Client,
        admin: SocketAddr,
        token: Option<&str>,
        topic: &str,
    ) -> Self {
        let (mut client, _) = hello_on(client, token, json!({})).await.welcome();
        client.subscribe(topic).await;
        Self {
            client,
            admin,
            admin_headers: None,
            topic: topic.into(),
            sent: 0,
        }
    }

    pub async fn join(url: &str, admin: SocketAddr, token: Option<&str>) -> Self {
        Self::on(Client::connect(url).await, admin, token).await
    }

    /// Publishes one message through the admin API and asserts it is the next frame.
    pub async fn check(&mut self) {
        self.sent += 1;
        let status = admin_publish(
            self.admin,
            self.admin_headers.as_deref(),
            &self.topic,
            json!({"n": self.sent}),
        )
        .await;
        assert_eq!(status, 200, "admin publish for the witness");
        self.receive(1).await;
    }

    /// Starts publishing `n` messages, one every `every`, in the background: run the attack,
    /// then [`Self::receive`] them.
    pub fn stream(&mut self, n: u64, every: Duration) -> JoinHandle<()> {
        let (admin, headers, topic, first) = (
            self.admin,
            self.admin_headers.clone(),
            self.topic.clone(),
            self.sent + 1,
        );
        self.sent += n;
        tokio::spawn(async move {
            for i in first..first + n {
                let status =
                    admin_publish(admin, headers.as_deref(), &topic, json!({"n": i})).await;
                assert_eq!(status, 200);
                tokio::time::sleep(every).await;
            }
        })
    }

    /// Asserts that the next `n` frames are the witness's next messages, in order and complete.
    pub async fn receive(&mut self, n: u64) {
        let first = self.sent + 1 - n;
        for i in first..=self.sent {
            let m = self.client.next().await;
            assert_eq!(m["type"], "message", "witness got {m}");
            assert_eq!(m["data"]["n"], i, "witness got {m}");
        }
    }
}
