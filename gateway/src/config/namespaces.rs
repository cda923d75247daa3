//! Namespaces: per-topic-prefix options, from the `--config` file and the default-namespace
//! flags.
//!
//! ```toml
//! [[namespaces]]
//! prefix = "room."          # longest matching prefix wins; "" is the default namespace
//! history_size = 500
//! hooks = ["subscribe", "publish"]
//!
//! [[namespaces]]
//! prefix = "cursor."
//! history = false           # ephemeral: no Redis on publish, at-most-once, no `seq`
//! ```
//!
//! Every option a `[[namespaces]]` table leaves out is the default namespace's, which the flags
//! (`--history-size`, `--history`, `--publish`, `--hooks`, …) set. Unknown keys and bad values
//! fail the start with the key's path (`namespaces[2].history_size: …`).

use std::path::{Path, PathBuf};

use protocol::Topic;
use serde::Deserialize;
use session_store::{HistoryLimits, PrefixLimits};

/// Who may publish on a namespace's topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum PublishPolicy {
    /// Clients whose grants allow it (and the server API).
    Client,
    /// Clients, but only through the `publish` hook: the application approves each message.
    Hook,
    /// Only the server API (`/api/publish`, `/api/broadcast`); clients get `forbidden`.
    Server,
}

/// A hook a namespace can ask for (`connect` and `rpc` are not per namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TopicHook {
    /// `POST {hook_url}/subscribe` before a subscription is granted.
    Subscribe,
    /// `POST {hook_url}/publish` before a client's message is stored.
    Publish,
    /// `POST {hook_url}/resubscribe` on a resume: the subscriptions it restores in this
    /// namespace are re-checked, all in one call (the connect hook is not called on resumes).
    Resubscribe,
}

/// The options of one namespace, every one resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub prefix: String,
    /// `None`: ephemeral (no history, no `seq`, at-most-once).
    pub history: Option<HistoryLimits>,
    pub publish: PublishPolicy,
    pub subscribe_hook: bool,
    pub publish_hook: bool,
    pub resubscribe_hook: bool,
    /// The hooks' base URL for this namespace, instead of `--hook-url`.
    pub hook_url: Option<String>,
    pub presence: bool,
    pub join_leave: bool,
    pub presence_max_list: usize,
    /// Each stored message is also a `publish` lifecycle event (with `--webhook-url`).
    pub publish_events: bool,
}

impl Namespace {
    pub fn is_ephemeral(&self) -> bool {
        self.history.is_none()
    }
}

/// Every namespace, longest prefix first, and the default one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespaces {
    default: Namespace,
    /// Longest prefix first: the first match is the longest.
    entries: Vec<Namespace>,
}

impl Namespaces {
    /// Only the default namespace.
    pub fn single(default: Namespace) -> Self {
        Self {
            default,
            entries: Vec::new(),
        }
    }

    /// The namespace of `topic`: the longest matching prefix, else the default.
    pub fn of(&self, topic: &Topic) -> &Namespace {
        self.entries
            .iter()
            .find(|ns| topic.as_str().starts_with(ns.prefix.as_str()))
            .unwrap_or(&self.default)
    }

    /// Whether any namespace calls a hook (the hook client is then needed).
    pub fn any_topic_hooks(&self) -> impl Iterator<Item = &Namespace> {
        std::iter::once(&self.default)
            .chain(&self.entries)
            .filter(|ns| ns.subscribe_hook || ns.publish_hook || ns.resubscribe_hook)
    }

    /// The history limits by prefix, as the store applies them (ephemeral namespaces store
    /// nothing, so their limits do not matter).
    pub fn prefix_limits(&self) -> PrefixLimits {
        PrefixLimits::new(
            self.entries
                .iter()
                .filter_map(|ns| Some((ns.prefix.clone(), ns.history?)))
                .collect(),
        )
    }

    /// Reads `path` over the default namespace `default`.
    pub fn load(path: &Path, default: Namespace) -> Result<Self, NamespaceError> {
        let text = std::fs::read_to_string(path).map_err(|e| NamespaceError::Read {
            path: path.to_owned(),
            error: e.to_string(),
        })?;
        Self::parse(&text, default).map_err(|(key, message)| NamespaceError::Invalid {
            path: path.to_owned(),
            key,
            message,
        })
    }

    /// Parses the file's text; an error is `(key path, message)`.
    pub fn parse(text: &str, default: Namespace) -> Result<Self, (String, String)> {
        // A syntax error has no key path yet: name its line instead.
        let deserializer = toml::Deserializer::parse(text).map_err(|e| {
            let line = e
                .span()
                .map_or(1, |span| text[..span.start].matches('\n').count() + 1);
            (format!("line {line}"), e.message().to_owned())
        })?;
        let file: File = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            (key, e.into_inner().message().to_owned())
        })?;
        let mut default = default;
        let mut default_set = false;
        let mut entries: Vec<Namespace> = Vec::new();
        for (i, table) in file.namespaces.into_iter().enumerate() {
            let at = |field: &str| format!("namespaces[{i}].{field}");
            if table.prefix.len() >= Topic::MAX_LEN
                || !table
                    .prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
            {
                return Err((
                    at("prefix"),
                    format!(
                        "{:?} must be a topic prefix: [A-Za-z0-9_.:-], under 200 characters",
                        table.prefix
                    ),
                ));
            }
            let duplicate = if table.prefix.is_empty() {
                default_set
            } else {
                entries.iter().any(|ns| ns.prefix == table.prefix)
            };
            if duplicate {
                return Err((at("prefix"), format!("{:?} is listed twice", table.prefix)));
            }
            if table.prefix.is_empty() {
                // `""` is the default namespace: its options replace the flags'. Tables before
                // it were resolved over the flags' default, so it must come first.
                if !entries.is_empty() {
                    return Err((
                        at("prefix"),
                        "the default namespace \"\" must be the first table".into(),
                    ));
                }
                default = table.resolve(&default, at)?;
                default_set = true;
                continue;
            }
            let resolved = table.resolve(&default, at)?;
            entries.push(resolved);
        }
        entries.sort_by_key(|ns| std::cmp::Reverse(ns.prefix.len()));
        Ok(Self { default, entries })
    }
}

/// Why the namespaces could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("--config {path:?}: {error}")]
    Read { path: PathBuf, error: String },
    #[error("--config {path:?}: {}{message}", if key.is_empty() { String::new() } else { format!("{key}: ") })]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    namespaces: Vec<Table>,
}

/// One `[[namespaces]]` table as written: what is missing comes from the default namespace.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    prefix: String,
    history: Option<bool>,
    history_size: Option<usize>,
    /// A duration: `"10m"`, `"90s"`.
    history_ttl: Option<String>,
    publish: Option<PublishPolicy>,
    hooks: Option<Vec<TopicHook>>,
    hook_url: Option<String>,
    presence: Option<bool>,
    join_leave: Option<bool>,
    presence_max_list: Option<usize>,
    publish_events: Option<bool>,
}

impl Table {
    fn resolve(
        self,
        default: &Namespace,
        at: impl Fn(&str) -> String,
    ) -> Result<Namespace, (String, String)> {
        let history_on = self.history.unwrap_or(default.history.is_some());
        let history = if history_on {
            let base = default.history.unwrap_or_default();
            let ttl = match &self.history_ttl {
                Some(text) => humantime::parse_duration(text)
                    .map_err(|e| (at("history_ttl"), format!("{text:?}: {e}")))?,
                None => base.ttl,
            };
            if ttl.is_zero() {
                return Err((at("history_ttl"), "must be greater than zero".into()));
            }
            let max_len = self.history_size.unwrap_or(base.max_len);
            if max_len == 0 {
                return Err((
                    at("history_size"),
                    "must be greater than zero (for no history, set history = false)".into(),
                ));
            }
            Some(HistoryLimits {
                max_len,
                ttl,
                ..base
            })
        } else {
            for (key, set) in [
                ("history_size", self.history_size.is_some()),
                ("history_ttl", self.history_ttl.is_some()),
            ] {
                if set {
                    return Err((at(key), "has no effect with history = false".into()));
                }
            }
            None
        };
        let (subscribe_hook, publish_hook, resubscribe_hook) = match &self.hooks {
            Some(hooks) => (
                hooks.contains(&TopicHook::Subscribe),
                hooks.contains(&TopicHook::Publish),
                hooks.contains(&TopicHook::Resubscribe),
            ),
            None => (
                default.subscribe_hook,
                default.publish_hook,
                default.resubscribe_hook,
            ),
        };
        let publish = self.publish.unwrap_or(default.publish);
        if publish == PublishPolicy::Hook && !publish_hook {
            return Err((
                at("publish"),
                "\"hook\" needs \"publish\" in hooks (the hook approves each message)".into(),
            ));
        }
        if let Some(url) = &self.hook_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err((at("hook_url"), format!("{url:?} must be an http(s):// URL")));
        }
        let presence = self.presence.unwrap_or(default.presence);
        let join_leave = self.join_leave.unwrap_or(default.join_leave && presence);
        if join_leave && !presence {
            return Err((at("join_leave"), "needs presence = true".into()));
        }
        let presence_max_list = self.presence_max_list.unwrap_or(default.presence_max_list);
        if presence_max_list == 0 {
            return Err((at("presence_max_list"), "must be greater than zero".into()));
        }
        let publish_events = self.publish_events.unwrap_or(default.publish_events);
        if publish_events && history.is_none() {
            return Err((
                at("publish_events"),
                "needs history: ephemeral messages are not recorded".into(),
            ));
        }
        Ok(Namespace {
            prefix: self.prefix,
            history,
            publish,
            subscribe_hook,
            publish_hook,
            resubscribe_hook,
            hook_url: self.hook_url.or_else(|| default.hook_url.clone()),
            presence,
            join_leave,
            presence_max_list,
            publish_events,
        })
    }
}

#[cfg(test)]
mod tests;
