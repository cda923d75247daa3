//! The example chat backend (`examples/chat-backend/backend.py`) as a real process: the
//! application the hooks call in tests.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use test_support::{ProcessGuard, free_port, spawn_guarded};

pub const SECRET: &str = "hook-secret-for-tests";

pub struct Backend {
    pub process: ProcessGuard,
    pub port: u16,
    pub secret_file: PathBuf,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Backend {
    /// Starts the backend; `admin_url` is the gateway admin port its `announce` RPC calls.
    pub fn start(admin_url: Option<&str>) -> Self {
        let dir = std::env::temp_dir().join(format!("chat-backend-{}", free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret_file = dir.join("hook.secret");
        std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/chat-backend/backend.py"
        );
        let port = free_port();
        let mut cmd = Command::new("python3");
        cmd.arg(script)
            .args(["--port", &port.to_string()])
            .arg("--secret-file")
            .arg(&secret_file)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(url) = admin_url {
            cmd.args(["--admin-url", url]);
        }
        let process = spawn_guarded(&mut cmd);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the example backend did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            process,
            port,
            secret_file,
            _dir: tempdir::Dir(dir),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// Calls per hook so far.
    pub async fn calls(&self, hook: &str) -> u64 {
        let (status, body) = super::http(self.addr(), "GET", "/stats", None, None).await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["calls"][hook].as_u64().unwrap_or(0)
    }

    /// Makes every hook answer `ms` late.
    pub async fn delay(&self, ms: u64) {
        let body = format!("{{\"delay_ms\": {ms}}}");
        let (status, _) = super::http(self.addr(), "POST", "/control", Some(&body), None).await;
        assert_eq!(status, 200);
    }

    /// Points a gateway's configuration at this backend.
    pub fn configure(&self, c: &mut gateway::Config) {
        c.app.hook_url = Some(self.url());
        c.app.hook_secret_file = Some(self.secret_file.clone());
    }
}
