//! Gateway processes with a captured log, on loopback or with the admin port on another host.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::process::Pod;

/// A gateway process on loopback whose stderr (its log, at `rust_log`) goes to `log`. `args`
/// must not set `--listen` or `--admin-listen`.
pub fn start_logged(args: &[&str], rust_log: &str, log: &Path) -> Pod {
    start_exposed("127.0.0.1", args, rust_log, log)
}

/// As [`start_logged`], with the admin port on `admin_host` (e.g. `0.0.0.0`). Ports are picked
/// free and picked again if another test took one in the meantime.
pub fn start_exposed(admin_host: &str, args: &[&str], rust_log: &str, log: &Path) -> Pod {
    for _ in 0..10 {
        let port = test_support::free_port();
        // Free for the admin host itself: a wildcard address collides with more sockets.
        let admin = std::net::TcpListener::bind((admin_host, 0))
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let mut process = test_support::spawn_guarded(
            Command::new(env!("CARGO_BIN_EXE_gateway"))
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .args(["--admin-listen", &format!("{admin_host}:{admin}")])
                .args(crate::support::process::unlimited(args))
                .args(args)
                .env("RUST_LOG", rust_log)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(log).unwrap()),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Pod {
                    process,
                    port,
                    admin,
                };
            }
            if process.wait_timeout(Duration::ZERO).is_some() {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                assert!(
                    text.contains("Address already in use"),
                    "gateway exited: {text}"
                );
                break;
            }
            assert!(Instant::now() < deadline, "gateway did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("no free ports for a gateway after 10 tries");
}

/// A fresh path for a log file in the target's temporary directory.
pub fn log_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "hostile-{name}-{}-{}.log",
        std::process::id(),
        test_support::free_port()
    ))
}
