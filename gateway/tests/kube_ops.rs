//! `gateway drain --pod` and `gateway status --pod` against a faked Kubernetes API server: a
//! local HTTP server that answers pod lookups and forwards pod-proxy requests to a real
//! gateway's admin port, recording what it was asked.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use gateway::ops::{DrainArgs, OpsError, StatusArgs, Target, TargetArgs};
use serde_json::json;
use support::{TestGateway, http};

#[derive(Clone)]
struct Fake {
    admin: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": reason, "code": code});
    (StatusCode::from_u16(code).unwrap(), axum::Json(body)).into_response()
}

async fn get_pod(State(f): State<Fake>, Path((ns, pod)): Path<(String, String)>) -> Response {
    f.seen.lock().unwrap().push(format!("GET pod {ns}/{pod}"));
    match pod.as_str() {
        "gw-0" => axum::Json(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "namespace": ns}}),
        )
        .into_response(),
        "secret" => status(
            403,
            "Forbidden",
            "pods \"secret\" is forbidden: User cannot get resource pods",
        ),
        _ => status(404, "NotFound", &format!("pods \"{pod}\" not found")),
    }
}

async fn proxy(
    State(f): State<Fake>,
    Path((ns, pod, rest)): Path<(String, String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let token = headers
        .get("x-gateway-admin-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    f.seen
        .lock()
        .unwrap()
        .push(format!("{method} proxy {ns}/{pod}/{rest} token={token}"));
    let extra = format!("X-Gateway-Admin-Token: {token}\r\n");
    let (code, body) = http(
        f.admin,
        method.as_str(),
        &format!("/{rest}"),
        None,
        Some(&extra),
    )
    .await;
    (StatusCode::from_u16(code).unwrap(), body).into_response()
}

async fn fake_api(admin: SocketAddr) -> (String, Fake) {
    let fake = Fake {
        admin,
        seen: Arc::default(),
    };
    let app = Router::new()
        .route("/api/v1/namespaces/{ns}/pods/{pod}", get(get_pod))
        .route(
            "/api/v1/namespaces/{ns}/pods/{pod}/proxy/{*rest}",
            any(proxy),
        )
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, fake)
}

fn target(url: &str, pod: &str, token: Option<&str>) -> Target {
    let config = kube::Config::new(url.parse().unwrap());
    Target::Pod {
        client: kube::Client::try_from(config).unwrap(),
        namespace: "gateway".into(),
        pod: pod.into(),
        port: 9090,
        token: token.map(Into::into),
    }
}

fn args() -> TargetArgs {
    TargetArgs {
        local: false,
        url: None,
        pod: None,
        namespace: None,
        admin_port: 9090,
        admin_listen: "127.0.0.1:9090".parse().unwrap(),
        admin_token: None,
        admin_token_file: None,
    }
}

#[tokio::test]
async fn drain_through_the_pod_proxy() {
    let gw = TestGateway::with(|c| c.admin_token = Some("tok".into())).await;
    let (mut a, _) = gw.hello().await;
    let (url, fake) = fake_api(gw.admin).await;
    let drain = DrainArgs {
        target: args(),
        timeout: Duration::from_secs(20),
        poll: Duration::from_millis(50),
    };
    let mut out = Vec::new();
    gateway::ops::drain(&target(&url, "gw-0", Some("tok")), &drain, &mut out)
        .await
        .unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains("drained test-pod"), "{out}");
    assert_eq!(a.closed().await.code, 1001);
    let seen = fake.seen.lock().unwrap().clone();
    assert_eq!(seen[0], "GET pod gateway/gw-0");
    assert_eq!(
        seen[1],
        "POST proxy gateway/gw-0:9090/admin/drain token=tok"
    );
    assert!(
        seen[2..]
            .iter()
            .all(|s| s == "GET proxy gateway/gw-0:9090/admin/drain token=tok"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn status_through_the_pod_proxy() {
    let gw = TestGateway::with(|c| c.heartbeat_interval = Duration::from_millis(100)).await;
    let (_a, _) = gw.hello().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (url, _) = fake_api(gw.admin).await;
    let status_args = StatusArgs {
        target: args(),
        tolerance: 0.1,
    };
    let mut out = Vec::new();
    let even = gateway::ops::status(&target(&url, "gw-0", None), &status_args, &mut out)
        .await
        .unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(even, "{out}");
    assert!(out.contains("test-pod") && out.contains("100.0%"), "{out}");
}

#[tokio::test]
async fn missing_pod_and_rbac_refusal_are_clear_errors() {
    let gw = TestGateway::start().await;
    let (url, fake) = fake_api(gw.admin).await;
    let drain = DrainArgs {
        target: args(),
        timeout: Duration::from_secs(5),
        poll: Duration::from_millis(50),
    };
    let err = gateway::ops::drain(&target(&url, "nope", None), &drain, &mut Vec::new())
        .await
        .unwrap_err();
    assert!(matches!(err, OpsError::PodNotFound { .. }), "{err}");
    assert_eq!(err.to_string(), "pod nope not found in namespace gateway");
    let err = gateway::ops::drain(&target(&url, "secret", None), &drain, &mut Vec::new())
        .await
        .unwrap_err();
    assert!(matches!(err, OpsError::Forbidden(_)), "{err}");
    assert!(err.to_string().contains("pods/proxy create"), "{err}");
    // Neither reached the proxy: nothing was drained.
    assert!(
        fake.seen
            .lock()
            .unwrap()
            .iter()
            .all(|s| s.starts_with("GET pod"))
    );
}
