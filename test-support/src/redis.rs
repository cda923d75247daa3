//! `redis-server` on a loopback port: throwaway (empty on every start) or persistent (restarted
//! from its own snapshot or AOF files after a `kill -9`); plaintext or TLS-only; open, with a
//! password, or with an ACL user.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{ProcessGuard, TempDir, on_fresh_ports, try_spawn_listening};
use crate::resp::{Endpoint, Login, command, info_field};
use crate::tls::{ClientAuth, TlsFiles};
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
///
/// Returns why the server exited before it listened (its port taken since it was chosen), so
/// the caller can try other ports.
pub(crate) fn try_spawn_redis(
    port: u16,
    dir: &Path,
    extra: &[&str],
) -> Result<ProcessGuard, String> {
    try_spawn_redis_with(None, port, dir, extra, &Security::default())
}

/// How a server is reached and who may use it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Security {
    /// TLS-only on the port; the harness uses a Unix socket in the server's directory.
    tls: Option<(TlsFiles, ClientAuth)>,
    /// `requirepass` (no user) or an ACL user (the `default` user is then off).
    login: Option<Login>,
}

impl Security {
    fn args(&self, port: u16, dir: &Path) -> Vec<String> {
        let mut args = Vec::new();
        match &self.tls {
            None => args.extend(["--port".to_owned(), port.to_string()]),
            Some((files, client_auth)) => {
                let path = |p: PathBuf| p.to_str().expect("UTF-8 path").to_owned();
                let auth = match client_auth {
                    ClientAuth::Optional => "optional",
                    ClientAuth::Required => "yes",
                };
                args.extend(
                    [
                        "--port",
                        "0",
                        "--tls-port",
                        &port.to_string(),
                        "--tls-cert-file",
                        &path(files.server_cert()),
                        "--tls-key-file",
                        &path(files.server_key()),
                        "--tls-ca-cert-file",
                        &path(files.ca()),
                        "--tls-auth-clients",
                        auth,
                        "--unixsocket",
                        &path(unix_socket(dir)),
                        "--unixsocketperm",
                        "700",
                    ]
                    .map(str::to_owned),
                );
            }
        }
        match &self.login {
            None => {}
            Some(Login {
                user: None,
                password,
            }) => {
                args.extend(["--requirepass".to_owned(), password.clone()]);
            }
            Some(Login {
                user: Some(user),
                password,
            }) => {
                args.extend(["--user", "default", "off", "--user", user, "on"].map(str::to_owned));
                args.extend([
                    format!(">{password}"),
                    "~*".into(),
                    "&*".into(),
                    "+@all".into(),
                ]);
            }
        }
        args
    }

    fn endpoint(&self, port: u16, dir: &Path) -> Endpoint {
        match self.tls {
            None => Endpoint::Tcp(SocketAddr::from(([127, 0, 0, 1], port))),
            Some(_) => Endpoint::Unix(unix_socket(dir)),
        }
    }
}

fn unix_socket(dir: &Path) -> PathBuf {
    dir.join("redis.sock")
}

/// [`try_spawn_redis`] with `security`, reading `config` first when given: a server with a config
/// file can `CONFIG REWRITE` it (Sentinel does, when it promotes or demotes a server).
pub(crate) fn spawn_redis_with(
    config: Option<&Path>,
    port: u16,
    dir: &Path,
    extra: &[&str],
    security: &Security,
) -> ProcessGuard {
    try_spawn_redis_with(config, port, dir, extra, security).unwrap_or_else(|why| panic!("{why}"))
}

/// [`spawn_redis_with`], returning why the server exited before it listened.
pub(crate) fn try_spawn_redis_with(
    config: Option<&Path>,
    port: u16,
    dir: &Path,
    extra: &[&str],
    security: &Security,
) -> Result<ProcessGuard, String> {
    let dir_str = dir.to_str().expect("temp dir path is UTF-8");
    let mut cmd = Command::new(redis_server_bin());
    if let Some(config) = config {
        cmd.arg(config);
    }
    let mut process = try_spawn_listening(
        cmd.args(security.args(port, dir))
            .args(["--bind", "127.0.0.1"])
            .args(["--daemonize", "no", "--dir", dir_str, "--save", ""])
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
    )?;
    wait_ready(
        port,
        &security.endpoint(port, dir),
        security.login.as_ref(),
        &mut process,
    )?;
    Ok(process)
}

/// Waits until the server answers `PING` (not `-LOADING`) and `INFO` says loading is over.
///
/// A server that exits meanwhile is an error, not a panic: what answered the connect may have
/// been another process's listener on the port this one could not bind.
fn wait_ready(
    port: u16,
    endpoint: &Endpoint,
    login: Option<&Login>,
    process: &mut ProcessGuard,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = String::new();
    loop {
        let ready = command(endpoint, login, &["PING"]).and_then(|pong| {
            let info = command(endpoint, login, &["INFO", "persistence"])?;
            last = format!("PING: {pong}, loading: {:?}", info_field(&info, "loading"));
            Ok(pong == "PONG"
                && info_field(&info, "loading") == Some("0")
                && info_field(&info, "async_loading").is_none_or(|v| v == "0"))
        });
        match ready {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = e.to_string(),
        }
        if let Some(status) = process.exited() {
            return Err(format!(
                "redis-server on port {port} exited before it was ready: {status} (last: {last})"
            ));
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
    security: Security,
    dir: TempDir,
}

impl RedisServer {
    /// A server without persistence.
    pub fn start() -> Self {
        Self::launch_fresh(None, Security::default())
    }

    /// Starts on a given port: used to bring a killed server back at the same address.
    pub fn start_on(port: u16) -> Self {
        Self::launch(port, None)
    }

    /// A server whose data survives [`kill_9`](Self::kill_9) and
    /// [`restart_from_files`](Self::restart_from_files) as `persistence` allows.
    pub fn start_persistent(persistence: Persistence) -> Self {
        Self::launch_fresh(Some(persistence), Security::default())
    }

    /// A TLS-only server (no plaintext port) with `files`' server certificate, trusting `files`'
    /// CA for client certificates. Clients need `rediss://127.0.0.1:{port}` and the CA; the
    /// harness's own commands ([`cmd`](Self::cmd)) go over a Unix socket.
    pub fn start_tls(files: &TlsFiles, client_auth: ClientAuth) -> Self {
        Self::launch_fresh(
            None,
            Security {
                tls: Some((files.clone(), client_auth)),
                login: None,
            },
        )
    }

    /// A server that requires `password` (`requirepass`, the `default` user).
    pub fn start_with_password(password: &str) -> Self {
        Self::with_login(None, password)
    }

    /// A server whose only user is the ACL user `user` (the `default` user is off).
    pub fn start_with_acl_user(user: &str, password: &str) -> Self {
        Self::with_login(Some(user), password)
    }

    fn with_login(user: Option<&str>, password: &str) -> Self {
        let login = Login {
            user: user.map(str::to_owned),
            password: password.to_owned(),
        };
        Self::launch_fresh(
            None,
            Security {
                tls: None,
                login: Some(login),
            },
        )
    }

    fn launch(port: u16, persistence: Option<Persistence>) -> Self {
        Self::try_launch(port, persistence, Security::default())
            .unwrap_or_else(|why| panic!("{why}"))
    }

    /// Starts on a port of its own choosing, retried on others if that one was taken.
    fn launch_fresh(persistence: Option<Persistence>, security: Security) -> Self {
        on_fresh_ports("redis-server", || {
            Self::try_launch(free_port(), persistence, security.clone())
        })
    }

    fn try_launch(
        port: u16,
        persistence: Option<Persistence>,
        security: Security,
    ) -> Result<Self, String> {
        let dir = TempDir::new("gw-redis");
        let process = try_spawn_redis_with(
            None,
            port,
            dir.path(),
            &Self::persistence_args(persistence),
            &security,
        )?;
        Ok(Self {
            port,
            process,
            persistence,
            security,
            dir,
        })
    }

    fn persistence_args(persistence: Option<Persistence>) -> Vec<&'static str> {
        match persistence {
            None | Some(Persistence::Rdb) => vec!["--appendonly", "no"],
            Some(Persistence::AofEverysec) => {
                vec!["--appendonly", "yes", "--appendfsync", "everysec"]
            }
        }
    }

    /// `redis://127.0.0.1:{port}`, or `rediss://` for a TLS server. Credentials are not in it.
    pub fn url(&self) -> String {
        let scheme = if self.security.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
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

    /// Runs one command and returns its reply as text (see [`redis_cmd`](crate::redis_cmd)),
    /// logged in and over the Unix socket when the server needs it; panics on an error
    /// reply or when the server cannot be reached.
    pub fn cmd(&self, args: &[&str]) -> String {
        self.try_cmd(args)
            .unwrap_or_else(|e| panic!("redis {args:?} on port {}: {e}", self.port))
    }

    /// Like [`cmd`](Self::cmd), for tests that expect a failure.
    pub fn try_cmd(&self, args: &[&str]) -> io::Result<String> {
        let endpoint = self.security.endpoint(self.port, self.dir.path());
        command(&endpoint, self.security.login.as_ref(), args)
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
        self.process = spawn_redis_with(None, self.port, self.dir.path(), &args, &self.security);
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
    fn a_taken_port_is_reported_not_waited_on_so_another_can_be_tried() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = taken.local_addr().expect("address").port();
        let dir = TempDir::new("gw-redis-taken");
        let why = try_spawn_redis(port, dir.path(), &[]).expect_err("the port is taken");
        assert!(why.contains("exited before"), "{why}");
        let mut attempts = 0;
        let redis = on_fresh_ports("redis-server", || {
            attempts += 1;
            let port = if attempts == 1 { port } else { free_port() };
            try_spawn_redis(port, dir.path(), &[]).map(|p| (port, p))
        });
        assert_eq!(attempts, 2);
        assert_ne!(redis.0, port);
    }

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
