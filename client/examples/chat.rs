//! A complete client: subscribes to a topic, prints every message (and every gap), and publishes
//! each line typed on stdin. It survives drains, pod crashes and token expiry on its own.
//!
//! ```sh
//! cargo run --release -p gateway &                       # a gateway on 127.0.0.1:8080
//! cargo run -p gateway-client --example chat -- ws://127.0.0.1:8080/ws chat
//! ```
//!
//! Several URLs (comma-separated) are tried in turn on each reconnect.

use futures_util::StreamExt;
use gateway_client::{ClientConfig, Event};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let urls = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:8080/ws".into());
    let topic = args.next().unwrap_or_else(|| "chat".into());
    let mut config = ClientConfig::new(urls.split(','));
    if let Ok(token) = std::env::var("GATEWAY_CLIENT_TOKEN") {
        config = config.token(token);
    }
    let (client, mut events) = gateway_client::connect(config);
    let from = client.subscribe(&topic, None).await?;
    eprintln!("subscribed to {topic} after seq {}", from.seq);

    let publisher = client.clone();
    let publish_topic = topic.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match publisher.publish(&publish_topic, &line, None).await {
                Ok(seq) => eprintln!("published as seq {seq}"),
                Err(e) => eprintln!("publish failed: {e}"),
            }
        }
        publisher.close().await;
    });

    while let Some(event) = events.next().await {
        match event {
            Event::Message(m) => println!("{} #{} {}", m.topic, m.seq, m.data.get()),
            Event::Gap(g) => eprintln!(
                "gap on {} ({}): reload its state",
                g.topic,
                g.reason.as_str()
            ),
            Event::Connected { pod, resumed, .. } => {
                eprintln!("connected to {pod:?} (resumed: {resumed})")
            }
            Event::Disconnected { code, reason, .. } => {
                eprintln!("disconnected: {code:?} {reason}")
            }
            Event::Closed { error } => {
                if let Some(e) = error {
                    eprintln!("stopped: {e}");
                }
                break;
            }
            _ => {}
        }
    }
    Ok(())
}
