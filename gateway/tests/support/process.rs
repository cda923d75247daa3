//! Gateway processes (the real binary) for multi-pod and operator tests.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use test_support::{ProcessGuard, free_port, spawn_guarded};

pub struct Pod {
    pub process: ProcessGuard,
    pub port: u16,
    pub admin: u16,
}

impl Pod {
    pub fn start(args: &[&str]) -> Self {
        Self::start_retrying(None, args)
    }

    /// Starts on a given public port (e.g. one HAProxy already points at).
    pub fn start_on(port: u16, args: &[&str]) -> Self {
        Self::start_retrying(Some(port), args)
    }

    /// A port is free when chosen but released before the gateway binds it, so a parallel
    /// test can take it in between; the gateway then exits at once, and is started again on
    /// other ports (only the admin port, when the public one was given).
    fn start_retrying(port: Option<u16>, args: &[&str]) -> Self {
        let mut why = Vec::new();
        for _ in 0..5 {
            match Self::try_start(port.unwrap_or_else(free_port), free_port(), args) {
                Ok(pod) => return pod,
                Err(e) => why.push(e),
            }
        }
        panic!("gateway did not start: {why:?}")
    }

    fn try_start(port: u16, admin: u16, args: &[&str]) -> Result<Self, String> {
        let mut process = spawn_guarded(
            Command::new(env!("CARGO_BIN_EXE_gateway"))
                .args([
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--admin-listen",
                    &format!("127.0.0.1:{admin}"),
                ])
                .args(unlimited(args))
                .args(args)
                .env(
                    "RUST_LOG",
                    std::env::var("GATEWAY_TEST_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .stdout(Stdio::null())
                .stderr(Stdio::inherit()),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let listening = |p: u16| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok();
        while !(listening(port) && listening(admin)) {
            if let Some(status) = process.exited() {
                return Err(format!("ports {port}/{admin}: exited with {status}"));
            }
            assert!(Instant::now() < deadline, "gateway did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            process,
            port,
            admin,
        })
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.process.pid().unwrap()))
                .unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

impl Pod {
    pub fn admin_addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.admin).into()
    }

    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin)
    }

    /// Sends SIGTERM (as Kubernetes does on pod deletion).
    pub fn terminate(&self) {
        let pid = self.process.pid().expect("running").to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
    }
}

/// Abuse limits off unless the test sets them: tests connect many clients from one address.
pub fn unlimited(args: &[&str]) -> Vec<&'static str> {
    let mut out = Vec::new();
    for (flag, value) in [
        ("--max-conns-per-ip", "0"),
        ("--max-new-conns-per-ip", "0"),
        ("--max-frame-rate", "0"),
        ("--max-publish-bytes-rate", "0"),
    ] {
        if !args.contains(&flag) {
            out.extend([flag, value]);
        }
    }
    out
}
