//! `haproxy` with a configuration written by the test.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::process::{ProcessGuard, spawn_listening};
use crate::{find_binary, free_port};

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
        let process = spawn_listening(
            Command::new(bin)
                .arg("-db")
                .arg("-f")
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit()),
            wait_port,
            "haproxy",
        );
        Self {
            process,
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
