//! Flags of presence (see `docs/protocol.md`, "Presence"). They set the default namespace's
//! options; per-prefix namespaces override them once they exist.

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct PresenceConfig {
    /// Keep presence (who is subscribed, by session and user) for topics.
    #[arg(long, env = "GATEWAY_PRESENCE")]
    pub presence: bool,

    /// Largest member list a `presence` request gets; above it `limit_reached` (use
    /// `presence_stats`).
    #[arg(long, env = "GATEWAY_PRESENCE_MAX_LIST", default_value_t = 1000)]
    pub presence_max_list: usize,
}
