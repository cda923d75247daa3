//! HAProxy agent-check: one line per TCP connection, then close.
//!
//! HAProxy (`agent-check agent-port …`) asks every second. The answer steers new upgrades at
//! once, before readiness probes or DNS notice anything: `drain` while the pod drains or is
//! full (existing connections stay; new ones go elsewhere), else `up ready` with a weight that
//! falls from 100% to 1% over the last 10% of capacity, so `balance leastconn` also accounts
//! for pods of different capacity.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::Shared;

/// The agent-check answer for `connections` of `capacity`.
pub fn answer(connections: usize, capacity: usize, draining: bool) -> String {
    if draining || connections >= capacity {
        return "drain\n".to_owned();
    }
    let free = (capacity - connections) as f64 / capacity as f64;
    let weight = (free * 1000.0).clamp(1.0, 100.0).round() as u32;
    format!("up ready {weight}%\n")
}

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((mut socket, _)) = accepted else {
            continue;
        };
        let line = answer(
            shared.connections.len(),
            shared.config.max_connections,
            shared.drain.is_draining(),
        );
        tokio::spawn(async move {
            let _ = socket.write_all(line.as_bytes()).await;
            let _ = socket.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::answer;

    #[test]
    fn weight_drain_and_full() {
        assert_eq!(answer(0, 1000, false), "up ready 100%\n");
        assert_eq!(answer(850, 1000, false), "up ready 100%\n");
        assert_eq!(answer(950, 1000, false), "up ready 50%\n");
        assert_eq!(answer(999, 1000, false), "up ready 1%\n");
        assert_eq!(answer(1000, 1000, false), "drain\n");
        assert_eq!(answer(10, 1000, true), "drain\n");
    }
}
