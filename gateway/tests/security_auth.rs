//! Hostile clients against authentication and permissions: forged, expired and garbage tokens,
//! token expiry and refresh, grants, topic names that try to escape their subject, and resume
//! tokens presented by another user. Every attack runs next to a well-behaved witness client
//! that must keep receiving its messages.
//!
//! Layout: `tokens` (which tokens verify), `policy` (issuer, audience, optional mode),
//! `log_secrecy` (credentials never logged), `expiry_refresh`, `grants` (grants and topic
//! names) and `isolation` (look-alike topics across a cluster, another user's resume token);
//! the helpers they share are here.

mod support;

#[path = "security_auth/expiry_refresh.rs"]
mod expiry_refresh;
#[path = "security_auth/grants.rs"]
mod grants;
#[path = "security_auth/isolation.rs"]
mod isolation;
#[path = "security_auth/log_secrecy.rs"]
mod log_secrecy;
#[path = "security_auth/policy.rs"]
mod policy;
#[path = "security_auth/tokens.rs"]
mod tokens;

use gateway::auth::AuthMode;
use serde_json::{Value, json};
use support::hostile::{Witness, granting, hs256, key_path, secret_file};
use support::{Client, Closed, TestGateway};

/// A gateway requiring tokens: HS256 with the suite secret, RS256 with `rsa_public.pem`.
async fn auth_gateway(edit: impl FnOnce(&mut gateway::Config)) -> TestGateway {
    TestGateway::with(|c| {
        c.security.auth_mode = AuthMode::Required;
        c.security.jwt_secret_file = Some(secret_file());
        c.security.jwt_public_key = vec![key_path("rsa_public.pem")];
        edit(c);
    })
    .await
}

fn witness_token() -> String {
    hs256(&granting("witness", &["witness"], &[]))
}

async fn witness(gw: &TestGateway) -> Witness {
    Witness::join(&gw.ws_url(), gw.admin, Some(&witness_token())).await
}

fn refused(closed: &Closed, error: &str, reconnect: bool, what: &str) {
    assert_eq!(closed.code, 1008, "{what}: {closed:?}");
    assert_eq!(
        closed.reason,
        json!({"reconnect": reconnect, "error": error}),
        "{what}"
    );
}

/// Sends `frame` and returns the next frame, which must be an `error` with `code`.
async fn error_for(c: &mut Client, frame: Value, code: &str) -> Value {
    c.send(frame.clone()).await;
    let e = c.expect("error").await;
    assert_eq!(e["code"], code, "{frame} -> {e}");
    e
}
