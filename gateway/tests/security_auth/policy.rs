//! What a verified token must also carry (issuer, audience), and what a client without one gets
//! when authentication is optional.

use gateway::auth::AuthMode;
use serde_json::{Value, json};

use super::{auth_gateway, error_for, refused, witness};
use crate::support::TestGateway;
use crate::support::hostile::{
    Witness, claims, confused, granting, hello, hs256, now, secret_file,
};

#[tokio::test]
async fn issuer_and_audience_are_enforced() {
    let gw = auth_gateway(|c| {
        c.security.jwt_issuer = Some("https://idp.example.com/".into());
        c.security.jwt_audience = Some("realtime".into());
    })
    .await;
    let token = |iss: Option<&str>, aud: Option<Value>| {
        let mut c = granting("witness", &["witness"], &[]);
        if let Some(iss) = iss {
            c["iss"] = json!(iss);
        }
        if let Some(aud) = aud {
            c["aud"] = aud;
        }
        hs256(&c)
    };
    let good = token(Some("https://idp.example.com/"), Some(json!("realtime")));
    let mut w = Witness::join(&gw.ws_url(), gw.admin, Some(&good)).await;
    for (what, t) in [
        (
            "wrong issuer",
            token(Some("https://evil.example.com/"), Some(json!("realtime"))),
        ),
        (
            "issuer without its trailing slash",
            token(Some("https://idp.example.com"), Some(json!("realtime"))),
        ),
        ("no issuer", token(None, Some(json!("realtime")))),
        (
            "wrong audience",
            token(Some("https://idp.example.com/"), Some(json!("other"))),
        ),
        (
            "audience list without ours",
            token(Some("https://idp.example.com/"), Some(json!(["a", "b"]))),
        ),
        ("no audience", token(Some("https://idp.example.com/"), None)),
    ] {
        refused(
            &hello(&gw.ws_url(), Some(&t)).await.closed(),
            "unauthorized",
            false,
            what,
        );
        w.check().await;
    }
    let listed = token(
        Some("https://idp.example.com/"),
        Some(json!(["other", "realtime"])),
    );
    let (_c, welcome) = hello(&gw.ws_url(), Some(&listed)).await.welcome();
    assert_eq!(welcome["user"], "witness");
}

#[tokio::test]
async fn optional_mode_gives_anonymous_grants_and_still_refuses_bad_tokens() {
    let gw = TestGateway::with(|c| {
        c.security.auth_mode = AuthMode::Optional;
        c.security.jwt_secret_file = Some(secret_file());
        c.security.anon_subscribe = vec!["public.*".into()];
    })
    .await;
    let mut w = witness(&gw).await;
    let (mut anon, welcome) = hello(&gw.ws_url(), None).await.welcome();
    assert_eq!(welcome.get("user"), None, "{welcome}");
    anon.subscribe("public.news").await;
    error_for(
        &mut anon,
        json!({"type": "subscribe", "topic": "private.news", "ref": 1}),
        "forbidden",
    )
    .await;
    error_for(
        &mut anon,
        json!({"type": "publish", "topic": "public.news", "data": 1, "ref": 2}),
        "forbidden",
    )
    .await;
    error_for(
        &mut anon,
        json!({"type": "subscribe", "topic": "witness", "ref": 3}),
        "forbidden",
    )
    .await;
    w.check().await;
    // The anonymous client still receives what it may read.
    gw.publish_api("public.news", json!("hi")).await;
    assert_eq!(anon.expect("message").await["data"], "hi");
    // An invalid token is refused, not downgraded to anonymous.
    let mut expired = claims("alice");
    expired["exp"] = json!(now() - 60);
    refused(
        &hello(&gw.ws_url(), Some(&hs256(&expired))).await.closed(),
        "token_expired",
        true,
        "expired in optional mode",
    );
    refused(
        &hello(&gw.ws_url(), Some(&confused(&claims("alice"))))
            .await
            .closed(),
        "unauthorized",
        false,
        "forged in optional mode",
    );
    w.check().await;
    let (_c, welcome) = hello(
        &gw.ws_url(),
        Some(&hs256(&granting("alice", &["private.*"], &[]))),
    )
    .await
    .welcome();
    assert_eq!(welcome["user"], "alice");
}
