//! A TCP proxy between one client and one server that a test can stall, slow, cut or close,
//! to break a single link (one gateway to Redis, one gateway to NATS, a replica to its primary)
//! while everything else keeps working.
//!
//! It runs a single-threaded tokio runtime on a thread of its own, so sync and async tests use
//! it alike, and the controls are plain atomics and `watch` channels, callable from any thread.
//! Each accepted connection is one task with one pump per direction; a pump reads chunks
//! (stamped with the time they are due), and writes each once it is due and the proxy is not
//! paused. Dropping the proxy stops the accept loop and then the runtime, which drops every
//! connection task and closes its sockets.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

const CHUNK: usize = 16 * 1024;
/// Chunks read ahead per direction while writes wait (delay or pause): past that, the proxy stops
/// reading and TCP backpressure reaches the sender, as on a stalled link.
const CHUNKS_IN_FLIGHT: usize = 64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Shared {
    /// Where new connections go: changed by `retarget`.
    target: Mutex<SocketAddr>,
    paused: watch::Sender<bool>,
    /// Bumped by `cut`: each connection watches it from its accept on.
    cuts: watch::Sender<u64>,
    refusing: AtomicBool,
    delay_nanos: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    open: AtomicU64,
    to_target: AtomicU64,
    from_target: AtomicU64,
}

impl Shared {
    fn delay(&self) -> Duration {
        Duration::from_nanos(self.delay_nanos.load(Relaxed))
    }

    fn target(&self) -> SocketAddr {
        *self.target.lock().expect("proxy target lock")
    }
}

/// A fault-injecting TCP proxy on a free loopback port, forwarding every connection to `target`.
///
/// Point one client at [`addr`](Self::addr) instead of the real server, then
/// [`pause`](Self::pause), [`delay`](Self::delay), [`cut`](Self::cut) or
/// [`refuse`](Self::refuse) that client's link, or [`retarget`](Self::retarget) it to
/// another server. Stopped on drop.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Dropping it ends the accept loop.
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on a free loopback port (already listening when this returns) and forwards to
    /// `target`: a [`RedisServer`](crate::RedisServer), [`RedisReplica`](crate::RedisReplica)
    /// or any address.
    pub fn start(target: impl Into<SocketAddr>) -> Self {
        let target = target.into();
        let listener = StdListener::bind("127.0.0.1:0").expect("bind a proxy port");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            target: Mutex::new(target),
            paused: watch::Sender::new(false),
            cuts: watch::Sender::new(0),
            refusing: AtomicBool::new(false),
            delay_nanos: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            open: AtomicU64::new(0),
            to_target: AtomicU64::new(0),
            from_target: AtomicU64::new(0),
        });
        let (stop, stopped) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("proxy runtime");
        let thread = std::thread::Builder::new()
            .name(format!("fault-proxy-{}", addr.port()))
            .spawn({
                let shared = shared.clone();
                move || {
                    runtime.block_on(accept_loop(listener, shared, stopped));
                    // Dropping the runtime here drops every connection task, closing its sockets.
                }
            })
            .expect("spawn proxy thread");
        Self {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where new connections are forwarded.
    pub fn target(&self) -> SocketAddr {
        self.shared.target()
    }

    /// Forwards connections accepted from now on to `target` instead: a failover behind a
    /// virtual IP or a DNS name, as Sentinel-managed VIPs or a Kubernetes Service do it. Open
    /// connections stay with the old target; [`cut`](Self::cut) them to make their clients
    /// reconnect to the new one.
    pub fn retarget(&self, target: impl Into<SocketAddr>) {
        *self.shared.target.lock().expect("proxy target lock") = target.into();
    }

    /// `scheme://127.0.0.1:port`, e.g. `proxy.url("redis")` or `proxy.url("nats")`.
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }

    /// Stops forwarding in both directions, connections staying open: bytes (and end-of-stream)
    /// wait in the proxy and then in the senders' socket buffers, as on a stalled link. Nothing
    /// that reaches the proxy after this returns is forwarded before [`resume`](Self::resume).
    pub fn pause(&self) {
        self.shared.paused.send_replace(true);
    }

    /// Forwards again, starting with whatever waited during the pause.
    pub fn resume(&self) {
        self.shared.paused.send_replace(false);
    }

    pub fn is_paused(&self) -> bool {
        *self.shared.paused.borrow()
    }

    /// Resets (RST) every connection open now, both its client and its server side, paused or
    /// not. Connections accepted afterwards are forwarded as usual.
    pub fn cut(&self) {
        self.shared.cuts.send_modify(|n| *n += 1);
    }

    /// While `true`, every new connection is reset as soon as it is accepted: the client's
    /// `connect` may succeed, but its first read or write fails. Open connections are untouched.
    pub fn refuse(&self, refusing: bool) {
        self.shared.refusing.store(refusing, Relaxed);
    }

    /// Holds each chunk `delay` after it was read before forwarding it (in each direction, so
    /// a request-reply round trip takes at least twice that). `Duration::ZERO` turns it off.
    /// Applies to chunks read from now on.
    pub fn delay(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.shared.delay_nanos.store(nanos, Relaxed);
    }

    /// Connections accepted and forwarded (refused ones not included).
    pub fn connections_accepted(&self) -> u64 {
        self.shared.accepted.load(Relaxed)
    }

    /// Connections reset on accept because of [`refuse`](Self::refuse).
    pub fn connections_refused(&self) -> u64 {
        self.shared.refused.load(Relaxed)
    }

    /// Forwarded connections not yet closed.
    pub fn connections_open(&self) -> u64 {
        self.shared.open.load(Relaxed)
    }

    /// Bytes written to the target (client to server).
    pub fn bytes_to_target(&self) -> u64 {
        self.shared.to_target.load(Relaxed)
    }

    /// Bytes written back to clients (server to client).
    pub fn bytes_from_target(&self) -> u64 {
        self.shared.from_target.load(Relaxed)
    }

    /// Bytes forwarded in both directions.
    pub fn bytes_forwarded(&self) -> u64 {
        self.bytes_to_target() + self.bytes_from_target()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            // A panic in the proxy thread already failed the test; do not panic again in drop.
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    listener: StdListener,
    shared: Arc<Shared>,
    mut stopped: oneshot::Receiver<()>,
) {
    let listener = TcpListener::from_std(listener).expect("register proxy listener");
    loop {
        let client = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                // Out of file descriptors and the like: wait, then keep serving.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        if shared.refusing.load(Relaxed) {
            shared.refused.fetch_add(1, Relaxed);
            reset(&client);
            continue;
        }
        shared.accepted.fetch_add(1, Relaxed);
        shared.open.fetch_add(1, Relaxed);
        // Subscribed here, so a `cut` after this accept reaches the connection; the target is
        // read here too, so a `retarget` applies to every connection accepted after it.
        let cuts = shared.cuts.subscribe();
        let target = shared.target();
        tokio::spawn(serve(client, target, shared.clone(), cuts));
    }
}

/// Closes with RST instead of FIN (zero linger), as a cut link looks to its ends.
fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

/// Decrements the open-connection count however the connection task ends.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
    }
}

async fn serve(
    mut client: TcpStream,
    target: SocketAddr,
    shared: Arc<Shared>,
    mut cuts: watch::Receiver<u64>,
) {
    let _open = OpenGuard(shared.clone());
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target));
    let mut server = tokio::select! {
        connected = connect => match connected {
            Ok(Ok(server)) => server,
            // The target is down: the client sees its connection reset.
            _ => return reset(&client),
        },
        _ = cuts.changed() => return reset(&client),
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let was_cut = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let up = pump(client_read, server_write, &shared, &shared.to_target);
        let down = pump(server_read, client_write, &shared, &shared.from_target);
        tokio::select! {
            _ = cuts.changed() => true,
            // Both directions ended (EOF each way), or one failed: close both sides.
            _ = async { tokio::try_join!(up, down) } => false,
        }
    };
    if was_cut {
        reset(&client);
        reset(&server);
    }
}

/// Forwards one direction until its end of stream (passed on as a half-close) or an error.
async fn pump(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    shared: &Shared,
    forwarded: &AtomicU64,
) -> std::io::Result<()> {
    let (chunks, mut due_chunks) = mpsc::channel::<(Instant, Vec<u8>)>(CHUNKS_IN_FLIGHT);
    let read = async move {
        let mut buf = vec![0; CHUNK];
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return Ok(()); // dropping `chunks` tells the writer, after what is queued
            }
            let due = Instant::now() + shared.delay();
            if chunks.send((due, buf[..n].to_vec())).await.is_err() {
                return Ok(());
            }
        }
    };
    let write = async move {
        let mut paused = shared.paused.subscribe();
        while let Some((due, chunk)) = due_chunks.recv().await {
            tokio::time::sleep_until(due).await;
            // Checked after the delay, right before writing; the borrow is released at once.
            let running = paused.wait_for(|paused| !*paused).await.is_ok();
            if !running {
                return Ok(());
            }
            to.write_all(&chunk).await?;
            forwarded.fetch_add(chunk.len() as u64, Relaxed);
        }
        // A stalled link delivers no FIN either.
        let running = paused.wait_for(|paused| !*paused).await.is_ok();
        if running {
            to.shutdown().await?;
        }
        Ok(())
    };
    tokio::try_join!(read, write).map(|_| ())
}

#[cfg(test)]
mod tests;
