//! The admin port: it refuses to start exposed without a token, and once exposed (insecure or
//! with a token) it refuses wrong tokens.

use std::net::SocketAddr;
use std::process::Command;

use serde_json::json;

use crate::support;
use crate::support::hostile::{Witness, admin_publish, start_exposed};
use crate::support::http;

const BIN: &str = env!("CARGO_BIN_EXE_gateway");

#[test]
fn the_admin_port_refuses_to_start_exposed_without_a_token() {
    let public = test_support::free_port();
    let admin = test_support::free_port();
    for (args, env) in [
        (vec![format!("--admin-listen=0.0.0.0:{admin}")], None),
        (vec![format!("--admin-listen=[::]:{admin}")], None),
        (vec![], Some(format!("0.0.0.0:{admin}"))),
    ] {
        let mut cmd = Command::new(BIN);
        cmd.arg(format!("--listen=127.0.0.1:{public}")).args(&args);
        if let Some(addr) = &env {
            cmd.env("GATEWAY_ADMIN_LISTEN", addr);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{args:?} {env:?} started");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(
                "is not loopback: set --admin-token-file (GATEWAY_ADMIN_TOKEN_FILE), or \
                 --admin-insecure for development only"
            ),
            "{stderr}"
        );
    }
}

#[tokio::test]
async fn an_exposed_admin_port_starts_when_insecure_or_with_a_token_and_refuses_wrong_tokens() {
    let log = support::hostile::log_path("admin");
    let insecure = start_exposed("0.0.0.0", &["--admin-insecure"], "warn", &log);
    let admin: SocketAddr = ([127, 0, 0, 1], insecure.admin).into();
    assert_eq!(http(admin, "GET", "/metrics", None, None).await.0, 200);
    drop(insecure);

    let token = "admin-token-for-the-hostile-suite";
    let pod = start_exposed("0.0.0.0", &["--admin-token", token], "warn", &log);
    let _ = std::fs::remove_file(&log);
    let admin: SocketAddr = ([127, 0, 0, 1], pod.admin).into();
    let good = format!("Authorization: Bearer {token}\r\n");
    let mut w = Witness::join(&pod.url(), admin, None).await;
    w.admin_headers = Some(good.clone());
    let wrong = [
        String::new(),
        "Authorization: Bearer wrong\r\n".to_owned(),
        format!("Authorization: Bearer {token}x\r\n"),
        format!("Authorization: Bearer {}\r\n", &token[..token.len() - 1]),
        format!("Authorization: bearer {token}\r\n"),
        format!("Authorization: {token}\r\n"),
        format!("Authorization: Basic {token}\r\n"),
        "X-Gateway-Admin-Token: wrong\r\n".to_owned(),
        format!("X-Gateway-Admin-Token: {}\r\n", token.to_uppercase()),
    ];
    for headers in &wrong {
        for path in ["/metrics", "/admin/drain", "/scaler", "/admin/cluster"] {
            let (status, _) = http(admin, "GET", path, None, Some(headers)).await;
            assert_eq!(status, 401, "{path} with {headers:?}");
        }
        // A refused publish reaches nobody; a refused drain drains nothing.
        assert_eq!(
            admin_publish(admin, Some(headers), "witness", json!({"n": 0})).await,
            401
        );
        let (status, _) = http(admin, "POST", "/admin/drain", Some(""), Some(headers)).await;
        assert_eq!(status, 401);
        w.check().await;
    }
    let (status, _) = http(admin, "GET", "/metrics", None, Some(&good)).await;
    assert_eq!(status, 200);
    let (status, _) = http(
        admin,
        "GET",
        "/metrics",
        None,
        Some(&format!("X-Gateway-Admin-Token: {token}\r\n")),
    )
    .await;
    assert_eq!(status, 200);
    let (_, drain) = http(admin, "GET", "/admin/drain", None, Some(&good)).await;
    assert!(drain.contains(r#""draining":false"#), "{drain}");
}
