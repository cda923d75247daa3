//! `gateway disconnect` and `gateway revoke`: the server API's operator commands, sent to one
//! pod's admin port (which acts for the whole fleet).

use std::io::Write;
use std::time::Duration;

use clap::Args;

use super::{OpsError, Target, TargetArgs};

#[derive(Debug, Clone, Args)]
pub struct DisconnectArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// The user whose connections close (1008, no reconnect) on every pod, and whose sessions
    /// stop being resumable.
    #[arg(long)]
    pub user: String,
    /// Logged by the gateway with the disconnect.
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("who").required(true).args(["user", "jti"])))]
pub struct RevokeArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Revoke every token and session of this user.
    #[arg(long)]
    pub user: Option<String>,
    /// Revoke the token with this `jti` claim.
    #[arg(long)]
    pub jti: Option<String>,
    /// How long from now (e.g. `1h`, `30d`; tokens expire anyway, so the longest token
    /// lifetime is enough).
    #[arg(long = "for", value_parser = humantime::parse_duration)]
    pub duration: Duration,
}

/// `POST /api/disconnect`; prints the answer.
pub async fn disconnect(
    target: &Target,
    args: &DisconnectArgs,
    out: &mut impl Write,
) -> Result<(), OpsError> {
    target.check().await?;
    let body = serde_json::json!({"user": args.user, "reason": args.reason}).to_string();
    let answer = target
        .call_with("POST", "/api/disconnect", Some(body))
        .await?;
    writeln!(out, "{answer}")?;
    Ok(())
}

/// `POST /api/revoke`; prints the answer.
pub async fn revoke(
    target: &Target,
    args: &RevokeArgs,
    out: &mut impl Write,
) -> Result<(), OpsError> {
    target.check().await?;
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_add(args.duration)
        .as_secs();
    let mut body = serde_json::json!({"until": until});
    if let Some(user) = &args.user {
        body["user"] = user.clone().into();
    }
    if let Some(jti) = &args.jti {
        body["jti"] = jti.clone().into();
    }
    let answer = target
        .call_with("POST", "/api/revoke", Some(body.to_string()))
        .await?;
    writeln!(out, "{answer}")?;
    Ok(())
}
