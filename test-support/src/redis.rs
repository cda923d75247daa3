//! `redis-server` on a loopback port: throwaway (empty on every start) or persistent (restarted
//! from its own snapshot or AOF files after a `kill -9`).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{ProcessGuard, TempDir, spawn_listening};
use crate::resp::{info_field, redis_cmd};
use crate::{find_binary, free_port};

/// How a persistent [`RedisServer`] keeps its data across a kill and restart.
///
/// Neither mode snapshots on its own (`--save ''`): what survives a restart is decided by the
/// test, which makes "the snapshot is older than the last writes" reproducible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// An RDB file, written only by [`RedisServer::save`]. A restart comes back with the data
    /// as of the last `save()` and loses every write after it: a stale-snapshot restart.
    Rdb,
    /// An append-only file with `appendfsync everysec`. Redis writes each command to the file
    /// before it replies, and fsyncs once a second; a `kill -9` (unlike a machine crash) keeps
    /// what was written, so a restart comes back with (nearly) every acknowledged write.
    AofEverysec,
}

pub(crate) fn redis_server_bin() -> PathBuf {
    find_binary(
        "redis-server",
        "REDIS_SERVER_BIN",
        "`apt-get install redis-server`",
    )
}

/// Starts `redis-server` with its working directory in `dir`, the settings every test server
/// shares, and `extra` arguments; returns once it answers `PING` and has loaded its data.
///
/// Full syncs to replicas go over the socket without delay (`repl-diskless-sync-delay 0`; the
/// default waits 5 s for more replicas), and a replica loads them without a temp file.
pub(crate) fn spawn_redis(port: u16, dir: &Path, extra: &[&str]) -> ProcessGuard {
    spawn_redis_with(None, port, dir, extra)
}

/// [`spawn_redis`], reading `config` first when given: a server with a config file can
/// `CONFIG REWRITE` it (Sentinel does, when it promotes or demotes a server).
pub(crate) fn spawn_redis_with(
    config: Option<&Path>,
    port: u16,
    dir: &Path,
    extra: &[&str],
) -> ProcessGuard {
    let dir = dir.to_str().expect("temp dir path is UTF-8");
    let mut cmd = Command::new(redis_server_bin());
    if let Some(config) = config {
        cmd.arg(config);
    }
    let mut process = spawn_listening(
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--daemonize", "no", "--dir", dir, "--save", ""])
            .args([
                "--repl-diskless-sync",
                "yes",
                "--repl-diskless-sync-delay",
                "0",
            ])
            .args(["--repl-diskless-load", "swapdb"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        port,
        "redis-server",
    );
    wait_ready(port, &mut process);
    process
}

/// Waits until the server answers `PING` (not `-LOADING`) and `INFO` says loading is over.
fn wait_ready(port: u16, process: &mut ProcessGuard) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = String::new();
    loop {
        let ready = redis_cmd(addr, &["PING"]).and_then(|pong| {
            let info = redis_cmd(addr, &["INFO", "persistence"])?;
            last = format!("PING: {pong}, loading: {:?}", info_field(&info, "loading"));
            Ok(pong == "PONG"
                && info_field(&info, "loading") == Some("0")
                && info_field(&info, "async_loading").is_none_or(|v| v == "0"))
        });
        match ready {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => last = e.to_string(),
        }
        if let Some(status) = process.exited() {
            panic!("redis-server on port {port} exited while loading: {status}");
        }
        if Instant::now() > deadline {
            panic!("redis-server on port {port} not ready within 10 s (last: {last})");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `redis-server` on a loopback port.
///
/// [`start`](Self::start) gives a throwaway server, empty after every restart;
/// [`start_persistent`](Self::start_persistent) one that can be snapshotted, killed with
/// SIGKILL and restarted from its own files. Either way its files live in a private temp
/// directory, removed on drop.
#[derive(Debug)]
pub struct RedisServer {
    pub port: u16,
    // Declared before `dir`, so the server is dead before its directory is removed.
    process: ProcessGuard,
    persistence: Option<Persistence>,
    dir: TempDir,
}

impl RedisServer {
    /// A server without persistence.
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Starts on a given port: used to bring a killed server back at the same address.
    pub fn start_on(port: u16) -> Self {
        Self::launch(port, None)
    }

    /// A server whose data survives [`kill_9`](Self::kill_9) and
    /// [`restart_from_files`](Self::restart_from_files) as `persistence` allows.
    pub fn start_persistent(persistence: Persistence) -> Self {
        Self::launch(free_port(), Some(persistence))
    }

    fn launch(port: u16, persistence: Option<Persistence>) -> Self {
        let dir = TempDir::new("gw-redis");
        let process = spawn_redis(port, dir.path(), &Self::persistence_args(persistence));
        Self {
            port,
            process,
            persistence,
            dir,
        }
    }

    fn persistence_args(persistence: Option<Persistence>) -> Vec<&'static str> {
        match persistence {
            None | Some(Persistence::Rdb) => vec!["--appendonly", "no"],
            Some(Persistence::AofEverysec) => {
                vec!["--appendonly", "yes", "--appendfsync", "everysec"]
            }
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The directory holding `dump.rdb` and `appendonlydir/`, for tests that inspect or damage
    /// the files between a kill and a restart.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn persistence(&self) -> Option<Persistence> {
        self.persistence
    }

    /// Runs one command and returns its reply as text (see [`redis_cmd`]); panics on an error
    /// reply or when the server cannot be reached.
    pub fn cmd(&self, args: &[&str]) -> String {
        self.try_cmd(args)
            .unwrap_or_else(|e| panic!("redis {args:?} on port {}: {e}", self.port))
    }

    /// Like [`cmd`](Self::cmd), for tests that expect a failure.
    pub fn try_cmd(&self, args: &[&str]) -> io::Result<String> {
        redis_cmd(self.addr(), args)
    }

    /// Writes a snapshot now. `SAVE` blocks the server until the file is complete, so the
    /// snapshot is on disk when this returns. With AOF on, a restart loads the AOF instead.
    pub fn save(&self) {
        let reply = self.cmd(&["SAVE"]);
        assert_eq!(reply, "OK", "SAVE on port {}", self.port);
    }

    /// This process's `run_id`: a restart gets a new one, so a client can tell it apart.
    pub fn run_id(&self) -> String {
        let info = self.cmd(&["INFO", "server"]);
        info_field(&info, "run_id")
            .unwrap_or_else(|| panic!("no run_id in INFO server: {info}"))
            .to_owned()
    }

    /// Kills the server with SIGKILL: no shutdown save, no AOF flush, as a crash would be.
    pub fn kill_9(&mut self) {
        self.process.kill();
    }

    /// Same as [`kill_9`](Self::kill_9).
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Kills the server (if running) and starts it again on the same port. A throwaway server
    /// comes back empty; a persistent one loads its files, as
    /// [`restart_from_files`](Self::restart_from_files).
    pub fn restart(&mut self) {
        self.process.kill();
        if self.persistence.is_none() {
            self.dir.clear();
        }
        let args = Self::persistence_args(self.persistence);
        self.process = spawn_redis(self.port, self.dir.path(), &args);
    }

    /// Starts a persistent server again on the same port and directory (SIGKILLing it first
    /// if it still runs), and returns once the data is loaded: `PING` answers and `INFO` no
    /// longer says loading.
    pub fn restart_from_files(&mut self) {
        assert!(
            self.persistence.is_some(),
            "restart_from_files needs RedisServer::start_persistent"
        );
        self.restart();
    }
}

impl From<&RedisServer> for SocketAddr {
    fn from(server: &RedisServer) -> Self {
        server.addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    #[test]
    fn throwaway_server_stops_on_drop_and_restarts_empty() {
        let mut redis = RedisServer::start();
        redis.cmd(&["SET", "k", "v"]);
        redis.save(); // even a snapshot does not survive a throwaway restart
        redis.restart();
        assert_eq!(redis.cmd(&["EXISTS", "k"]), "0");
        let (port, dir) = (redis.port, redis.data_dir().to_owned());
        drop(redis);
        std::thread::sleep(Duration::from_millis(100));
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
        assert!(!dir.exists(), "{} left behind", dir.display());
    }

    #[test]
    fn rdb_restart_keeps_writes_before_the_save_and_loses_later_ones() {
        let mut redis = RedisServer::start_persistent(Persistence::Rdb);
        redis.cmd(&["SET", "before", "1"]);
        redis.save();
        redis.cmd(&["SET", "after", "2"]);
        let first_run = redis.run_id();

        redis.kill_9();
        assert!(
            redis.try_cmd(&["PING"]).is_err(),
            "killed server still answers"
        );
        redis.restart_from_files();

        assert_ne!(redis.run_id(), first_run, "a restart is a new process");
        assert_eq!(redis.cmd(&["GET", "before"]), "1");
        assert_eq!(
            redis.cmd(&["EXISTS", "after"]),
            "0",
            "written after the SAVE"
        );
        assert!(redis.data_dir().join("dump.rdb").is_file());
        let dir = redis.data_dir().to_owned();
        drop(redis);
        assert!(!dir.exists(), "{} left behind", dir.display());
    }

    #[test]
    fn aof_everysec_restart_keeps_acknowledged_writes() {
        let mut redis = RedisServer::start_persistent(Persistence::AofEverysec);
        let info = redis.cmd(&["INFO", "persistence"]);
        assert_eq!(info_field(&info, "aof_enabled"), Some("1"));
        redis.cmd(&["SET", "a", "1"]);
        for _ in 0..10 {
            redis.cmd(&["INCR", "n"]);
        }
        // One fsync period: everysec promises at most a second of writes at risk.
        std::thread::sleep(Duration::from_millis(1100));

        redis.kill_9();
        redis.restart_from_files();

        assert_eq!(redis.cmd(&["GET", "a"]), "1");
        assert_eq!(redis.cmd(&["GET", "n"]), "10");
        assert!(redis.data_dir().join("appendonlydir").is_dir());
    }
}
