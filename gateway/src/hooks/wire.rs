//! The JSON of hook requests and answers (design §10, `docs/backend.md`).

use std::collections::BTreeMap;

use protocol::RawJson;
use serde::{Deserialize, Serialize};

/// `POST {hook_url}/connect`: a fresh `hello`.
#[derive(Debug, Serialize)]
pub struct ConnectRequest<'a> {
    pub client_ip: String,
    pub pod: &'a str,
    /// The verified token's user and expiry, when the `hello` carried a valid token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_claims: Option<TokenClaims<'a>>,
    pub headers: BTreeMap<&'static str, &'a str>,
    /// The upgrade URL's query string (without `?`), `""` when none.
    pub query: &'a str,
}

#[derive(Debug, Serialize)]
pub struct TokenClaims<'a> {
    pub sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
}

/// `POST {hook_url}/subscribe`.
#[derive(Debug, Serialize)]
pub struct SubscribeRequest<'a> {
    pub user: Option<&'a str>,
    pub session: &'a str,
    pub topic: &'a str,
}

/// `POST {hook_url}/resubscribe`: a resume's restored subscriptions, re-checked in one call.
#[derive(Debug, Serialize)]
pub struct ResubscribeRequest<'a> {
    pub user: Option<&'a str>,
    pub session: &'a str,
    pub topics: Vec<&'a str>,
}

/// The topics the application no longer allows; the others are restored.
#[derive(Debug, Deserialize)]
pub struct ResubscribeAnswer {
    #[serde(default)]
    pub refuse: Vec<String>,
}

/// `POST {hook_url}/publish`: before the append.
#[derive(Debug, Serialize)]
pub struct PublishRequest<'a> {
    pub user: Option<&'a str>,
    pub session: &'a str,
    pub topic: &'a str,
    pub data: &'a RawJson,
}

/// `POST {hook_url}/rpc`.
#[derive(Debug, Serialize)]
pub struct RpcRequest<'a> {
    pub user: Option<&'a str>,
    pub session: &'a str,
    pub method: &'a str,
    pub data: &'a RawJson,
}

/// The application's refusal: `{"error": {"code": …, "message": …}}`.
#[derive(Debug, Clone, Deserialize)]
pub struct Refusal {
    pub code: String,
    #[serde(default)]
    pub message: String,
}

#[derive(Debug, Deserialize)]
pub struct GrantsAnswer {
    #[serde(default)]
    pub sub: Vec<String>,
    #[serde(default, rename = "pub")]
    pub publish: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct ConnectAnswer {
    pub user: Option<String>,
    pub grants: Option<GrantsAnswer>,
    /// Unix seconds: the connection closes then (`token_expired`) unless refreshed.
    pub expire_at: Option<u64>,
    /// Topics subscribed for the client right after `welcome`.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// The session's presence `info` (wins over the token's `info` claim).
    pub info: Option<serde_json::Value>,
    pub error: Option<Refusal>,
    /// With `error`: whether the client should try again later.
    #[serde(default)]
    pub reconnect: bool,
}

#[derive(Debug, Deserialize)]
pub struct SubscribeAnswer {
    pub error: Option<Refusal>,
}

#[derive(Debug, Deserialize)]
pub struct DataAnswer {
    /// `publish`: what to store instead; `rpc`: the result.
    pub data: Option<Box<RawJson>>,
    pub error: Option<Refusal>,
}
