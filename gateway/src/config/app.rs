//! Flags of the application's backend in the loop: the default namespace's options, the
//! `--config` file of namespaces, and the HTTP hooks (see `docs/backend.md`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::namespaces::{Namespace, NamespaceError, Namespaces, PublishPolicy, TopicHook};

#[derive(Debug, Clone, Args)]
pub struct AppConfig {
    /// TOML file of `[[namespaces]]` (topic prefix → options); the flags below set the default
    /// namespace, which every table inherits what it leaves out from.
    #[arg(long = "config", env = "GATEWAY_CONFIG")]
    pub config_file: Option<PathBuf>,

    /// Whether the default namespace keeps history. `false`: ephemeral topics (no Redis on
    /// publish, at-most-once, no `seq`).
    #[arg(long, env = "GATEWAY_HISTORY", default_value_t = true, action = clap::ArgAction::Set)]
    pub history: bool,

    /// Who may publish in the default namespace: `client`, `hook` (clients, through the
    /// publish hook) or `server` (only the server API).
    #[arg(long, env = "GATEWAY_PUBLISH", value_enum, default_value_t = PublishPolicy::Client)]
    pub publish: PublishPolicy,

    /// Hooks the default namespace calls, comma-separated: `subscribe`, `publish`,
    /// `resubscribe` (re-check restored subscriptions on a resume, in one call).
    #[arg(long, env = "GATEWAY_HOOKS", value_enum, value_delimiter = ',')]
    pub hooks: Vec<TopicHook>,

    /// Presence in the default namespace (used by presence queries).
    #[arg(long, env = "GATEWAY_PRESENCE", default_value_t = false, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub presence: bool,

    /// Join/leave events in the default namespace (needs `--presence true`).
    #[arg(long, env = "GATEWAY_JOIN_LEAVE", default_value_t = false, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub join_leave: bool,

    /// Largest presence list answered in the default namespace (`limit_reached` above).
    #[arg(long, env = "GATEWAY_PRESENCE_MAX_LIST", default_value_t = 1_000)]
    pub presence_max_list: usize,

    /// Whether each message stored in the default namespace is also a `publish` lifecycle
    /// event (delivered to `--webhook-url`; not on ephemeral topics).
    #[arg(long, env = "GATEWAY_PUBLISH_EVENTS", default_value_t = false, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub publish_events: bool,

    /// Join/leave events kept per topic for recovery (a client that missed more gets a fresh
    /// `presence` list with `recovered: false`).
    #[arg(long, env = "GATEWAY_PRESENCE_LOG_SIZE", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub presence_log_size: u64,

    /// Largest presence `info` of a session, in bytes of compact JSON (from the token's `info`
    /// claim or the connect hook's answer): a larger one refuses the `hello` (`too_large`).
    #[arg(long, env = "GATEWAY_PRESENCE_INFO_MAX_BYTES", default_value_t = 1_024,
          value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub presence_info_max_bytes: u64,

    /// Base URL of the application's hooks: `POST {url}/connect|subscribe|publish|rpc`.
    /// Unset = no hooks (a namespace asking for one is refused at start).
    #[arg(long, env = "GATEWAY_HOOK_URL")]
    pub hook_url: Option<String>,

    /// File holding the secret that signs hook requests (`X-Gateway-Signature`), trailing
    /// newline ignored. Required with `--hook-url`.
    #[arg(long, env = "GATEWAY_HOOK_SECRET_FILE")]
    pub hook_secret_file: Option<PathBuf>,

    /// Upper bound of one hook call; a slower one counts as a failure (`unavailable`).
    #[arg(long, env = "GATEWAY_HOOK_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub hook_timeout: Duration,

    /// Hook calls in flight per pod at most; when all are busy a call is answered
    /// `unavailable` at once instead of queueing.
    #[arg(long, env = "GATEWAY_HOOK_CONCURRENCY", default_value_t = 64)]
    pub hook_concurrency: usize,

    /// Consecutive hook failures (errors, timeouts, 5xx) that open the breaker: calls are then
    /// answered `unavailable` without being sent, until one trial after `--hook-breaker-cooldown`
    /// succeeds.
    #[arg(long, env = "GATEWAY_HOOK_BREAKER_FAILURES", default_value_t = 5)]
    pub hook_breaker_failures: u32,

    /// How long an open breaker refuses calls before letting one trial through.
    #[arg(long, env = "GATEWAY_HOOK_BREAKER_COOLDOWN", default_value = "5s", value_parser = humantime::parse_duration)]
    pub hook_breaker_cooldown: Duration,
}

/// Why the application settings cannot work.
#[derive(Debug, thiserror::Error)]
pub enum AppConfigError {
    #[error(transparent)]
    Namespaces(#[from] NamespaceError),
    #[error("--hook-url {0:?} must be an http:// or https:// URL")]
    HookUrl(String),
    #[error("--hook-url needs --hook-secret-file: hook requests are always signed")]
    HookSecretMissing,
    #[error("--hook-secret-file {path:?}: {error}")]
    HookSecret { path: PathBuf, error: String },
    #[error("--{0} must be greater than zero")]
    Zero(&'static str),
    #[error("--publish-events needs --history true: ephemeral messages are not recorded")]
    PublishEventsWithoutHistory,
    #[error("--join-leave needs --presence true")]
    JoinLeaveWithoutPresence,
    #[error("--publish hook needs `publish` in --hooks")]
    PublishHookMissing,
    #[error(
        "namespace {prefix:?} calls the {hook} hook but no hook URL is set (--hook-url or the \
         namespace's hook_url)"
    )]
    NoHookUrl { prefix: String, hook: &'static str },
}

impl AppConfig {
    /// The default namespace, from the flags (history limits from the store's flags).
    pub fn default_namespace(
        &self,
        limits: session_store::HistoryLimits,
    ) -> Result<Namespace, AppConfigError> {
        if self.join_leave && !self.presence {
            return Err(AppConfigError::JoinLeaveWithoutPresence);
        }
        if self.presence_max_list == 0 {
            return Err(AppConfigError::Zero("presence-max-list"));
        }
        if self.publish_events && !self.history {
            return Err(AppConfigError::PublishEventsWithoutHistory);
        }
        let publish_hook = self.hooks.contains(&TopicHook::Publish);
        if self.publish == PublishPolicy::Hook && !publish_hook {
            return Err(AppConfigError::PublishHookMissing);
        }
        Ok(Namespace {
            prefix: String::new(),
            history: self.history.then_some(limits),
            publish: self.publish,
            subscribe_hook: self.hooks.contains(&TopicHook::Subscribe),
            publish_hook,
            resubscribe_hook: self.hooks.contains(&TopicHook::Resubscribe),
            hook_url: None,
            presence: self.presence,
            join_leave: self.join_leave,
            presence_max_list: self.presence_max_list,
            publish_events: self.publish_events,
        })
    }

    /// Every namespace: the default one and the `--config` file's, checked against the hook
    /// settings.
    pub fn namespaces(
        &self,
        limits: session_store::HistoryLimits,
    ) -> Result<Namespaces, AppConfigError> {
        let default = self.default_namespace(limits)?;
        let namespaces = match &self.config_file {
            Some(path) => Namespaces::load(path, default)?,
            None => Namespaces::single(default),
        };
        for ns in namespaces.any_topic_hooks() {
            if ns.hook_url.is_none() && self.hook_url.is_none() {
                let hook = if ns.subscribe_hook {
                    "subscribe"
                } else if ns.publish_hook {
                    "publish"
                } else {
                    "resubscribe"
                };
                return Err(AppConfigError::NoHookUrl {
                    prefix: ns.prefix.clone(),
                    hook,
                });
            }
        }
        Ok(namespaces)
    }

    /// Checks the hook flags (the secret file is read when hooks start).
    pub fn validate(&self) -> Result<(), AppConfigError> {
        if let Some(url) = &self.hook_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(AppConfigError::HookUrl(url.clone()));
            }
            if self.hook_secret_file.is_none() {
                return Err(AppConfigError::HookSecretMissing);
            }
        }
        if self.hook_concurrency == 0 {
            return Err(AppConfigError::Zero("hook-concurrency"));
        }
        if self.hook_breaker_failures == 0 {
            return Err(AppConfigError::Zero("hook-breaker-failures"));
        }
        if self.hook_timeout.is_zero() {
            return Err(AppConfigError::Zero("hook-timeout"));
        }
        Ok(())
    }

    /// The hook secret: the file's contents less one trailing newline.
    pub fn hook_secret(&self) -> Result<Option<Vec<u8>>, AppConfigError> {
        let Some(path) = &self.hook_secret_file else {
            return Ok(None);
        };
        let mut bytes = std::fs::read(path).map_err(|e| AppConfigError::HookSecret {
            path: path.clone(),
            error: e.to_string(),
        })?;
        if bytes.ends_with(b"\n") {
            bytes.pop();
            if bytes.ends_with(b"\r") {
                bytes.pop();
            }
        }
        if bytes.is_empty() {
            return Err(AppConfigError::HookSecret {
                path: path.clone(),
                error: "the file is empty".into(),
            });
        }
        Ok(Some(bytes))
    }
}
