//! Child processes that cannot outlive their test, and scratch directories that cannot outlive
//! their server.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A child process killed (SIGKILL, by PID) and reaped when dropped.
#[derive(Debug)]
pub struct ProcessGuard {
    child: Option<Child>,
}

impl ProcessGuard {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits up to `limit` for the process to exit by itself; `None` if it is still running.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process now (an abrupt stop, as a crash would be).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The exit status if the process has already stopped, without waiting.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawns any command as a guarded child (for gateway processes in multi-pod tests).
pub fn spawn_guarded(cmd: &mut Command) -> ProcessGuard {
    ProcessGuard {
        child: Some(cmd.spawn().expect("spawn child process")),
    }
}

/// Spawns a server and waits until it accepts TCP connections on `port`, so a test never races
/// the server's startup.
pub(crate) fn spawn_listening(cmd: &mut Command, port: u16, what: &str) -> ProcessGuard {
    try_spawn_listening(cmd, port, what).unwrap_or_else(|why| panic!("{why}"))
}

/// How many times [`on_fresh_ports`] tries before it gives up.
const PORT_ATTEMPTS: usize = 5;

/// Runs `start` (which chooses its own free ports) until it succeeds, at most
/// [`PORT_ATTEMPTS`] times. A port is free when chosen but is released before the server binds
/// it, so a parallel test's outgoing connection or server can take it in between; the server
/// then exits at once ("Address already in use") and another set of ports is tried.
pub(crate) fn on_fresh_ports<T>(what: &str, mut start: impl FnMut() -> Result<T, String>) -> T {
    let mut why = Vec::new();
    for _ in 0..PORT_ATTEMPTS {
        match start() {
            Ok(started) => return started,
            Err(e) => why.push(e),
        }
    }
    panic!("{what} did not start on {PORT_ATTEMPTS} sets of free ports: {why:?}")
}

/// [`spawn_listening`], saying why instead of panicking, so a caller can retry on other ports
/// (a port that was free when chosen may have been taken since by a parallel test).
pub(crate) fn try_spawn_listening(
    cmd: &mut Command,
    port: u16,
    what: &str,
) -> Result<ProcessGuard, String> {
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let mut guard = ProcessGuard { child: Some(child) };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(guard);
        }
        if let Some(status) = guard.exited() {
            return Err(format!(
                "{what} exited before listening on port {port}: {status}"
            ));
        }
        if Instant::now() > deadline {
            guard.kill();
            return Err(format!("{what} did not listen on port {port} within 10 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A fresh directory under the system temp dir, removed (with its contents) on drop.
///
/// Each server gets its own, so whatever it writes (snapshots, AOF files, a replica's sync
/// file) lands there and never in the test's working directory.
#[derive(Debug)]
pub(crate) struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub(crate) fn new(prefix: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        // A leftover from an earlier run that had the same PID holds nothing of ours.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        Self { path }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Empties the directory, for a restart that must not find the previous run's files.
    pub(crate) fn clear(&self) {
        let _ = std::fs::remove_dir_all(&self.path);
        std::fs::create_dir_all(&self.path)
            .unwrap_or_else(|e| panic!("create {}: {e}", self.path.display()));
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
