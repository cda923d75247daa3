use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

fn settings(concurrency: usize) -> HookSettings {
    HookSettings {
        base_url: Some("http://app/hooks/".into()),
        secret: b"s".to_vec(),
        timeout: Duration::from_millis(300),
        concurrency,
        breaker_failures: 2,
        breaker_cooldown: Duration::from_secs(60),
    }
}

fn rpc_body() -> wire::RpcRequest<'static> {
    wire::RpcRequest {
        user: Some("u"),
        session: "s",
        method: "m",
        data: serde_json::from_str("null").unwrap(),
    }
}

#[tokio::test]
async fn answers_are_parsed_and_failures_open_the_breaker() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let transport = FnTransport::new(move |url, body| {
        assert_eq!(url, "http://app/hooks/rpc");
        assert!(
            std::str::from_utf8(body)
                .unwrap()
                .contains("\"method\":\"m\"")
        );
        match seen.fetch_add(1, Ordering::SeqCst) {
            0 => Ok(Reply {
                status: 200,
                body: Bytes::from_static(br#"{"data":[1]}"#),
            }),
            1 => Ok(Reply {
                status: 500,
                body: Bytes::new(),
            }),
            _ => Err("connection refused".into()),
        }
    });
    let hooks = Hooks::new(
        settings(4),
        AnyTransport::Fn(transport),
        Arc::new(crate::metrics::Metrics::new()),
    );
    let ok = hooks.rpc(&rpc_body()).await.unwrap().unwrap();
    assert_eq!(ok.data.unwrap().get(), "[1]");
    assert_eq!(
        hooks.rpc(&rpc_body()).await.unwrap().unwrap_err(),
        HookError::Failed("HTTP status 500".into())
    );
    assert!(matches!(
        hooks.rpc(&rpc_body()).await.unwrap(),
        Err(HookError::Failed(_))
    ));
    // Two consecutive failures: open; nothing more is sent.
    assert_eq!(
        hooks.rpc(&rpc_body()).await.unwrap().unwrap_err(),
        HookError::BreakerOpen
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_full_pod_refuses_at_once_instead_of_queueing() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/rpc",
        axum::routing::post(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "{}"
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut s = settings(1);
    s.base_url = Some(format!("http://{addr}"));
    let hooks = Hooks::new(
        s,
        AnyTransport::Http(HttpTransport::new().unwrap()),
        Arc::new(crate::metrics::Metrics::new()),
    );
    let slow = hooks.clone();
    let first = tokio::spawn(async move { slow.rpc(&rpc_body()).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        hooks.rpc(&rpc_body()).await.unwrap().unwrap_err(),
        HookError::Busy(1)
    );
    assert_eq!(
        first.await.unwrap().unwrap_err(),
        HookError::Timeout(Duration::from_millis(300))
    );
}
