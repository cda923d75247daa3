//! Flags of lifecycle events (design §13, `docs/backend.md` "Lifecycle events"): where the
//! batches go, how they are signed, and the bounds of delivery. Without `--webhook-url` no event
//! is recorded at all.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct EventsConfig {
    /// URL that lifecycle events are POSTed to, in signed batches `{events:[…]}`. Unset = no
    /// events are recorded (and nothing is spent on them).
    #[arg(long, env = "GATEWAY_WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// File holding the secret that signs event batches (`X-Gateway-Signature`), trailing
    /// newline ignored. Required with `--webhook-url`.
    #[arg(long, env = "GATEWAY_WEBHOOK_SECRET_FILE")]
    pub webhook_secret_file: Option<PathBuf>,

    /// Upper bound of one batch POST; a slower one is retried.
    #[arg(long, env = "GATEWAY_WEBHOOK_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub webhook_timeout: Duration,

    /// Events per POST at most.
    #[arg(long, env = "GATEWAY_WEBHOOK_BATCH_MAX", default_value_t = 100)]
    pub webhook_batch_max: usize,

    /// Longest wait between two attempts of a failed batch (the wait doubles from 200ms up to
    /// this, with full jitter).
    #[arg(long, env = "GATEWAY_WEBHOOK_RETRY_MAX", default_value = "10s", value_parser = humantime::parse_duration)]
    pub webhook_retry_max: Duration,

    /// Event streams (`<prefix>:events:{N}`); a user's events are all in one, in order, and
    /// one pod at a time delivers each. The same on every pod.
    #[arg(long, env = "GATEWAY_WEBHOOK_PARTITIONS", default_value_t = 16)]
    pub webhook_partitions: u32,

    /// Undelivered events kept per partition at most. Beyond it (a receiver down for long) the
    /// oldest are trimmed and counted in `gateway_events_dropped_total`.
    #[arg(long, env = "GATEWAY_WEBHOOK_BACKLOG_MAX", default_value_t = 1_000_000)]
    pub webhook_backlog_max: u64,
}

/// Why the event settings cannot work.
#[derive(Debug, thiserror::Error)]
pub enum EventsConfigError {
    #[error("--webhook-url {0:?} must be an http:// or https:// URL")]
    Url(String),
    #[error("--webhook-url needs --webhook-secret-file: event batches are always signed")]
    SecretMissing,
    #[error("--webhook-secret-file {path:?}: {error}")]
    Secret { path: PathBuf, error: String },
    #[error("--{0} must be greater than zero")]
    Zero(&'static str),
    #[error("--webhook-partitions ({0}) must be between 1 and 1024")]
    Partitions(u32),
}

impl EventsConfig {
    /// Whether events are on.
    pub fn enabled(&self) -> bool {
        self.webhook_url.is_some()
    }

    pub fn validate(&self) -> Result<(), EventsConfigError> {
        let Some(url) = &self.webhook_url else {
            return Ok(());
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(EventsConfigError::Url(url.clone()));
        }
        if self.webhook_secret_file.is_none() {
            return Err(EventsConfigError::SecretMissing);
        }
        if self.webhook_timeout.is_zero() {
            return Err(EventsConfigError::Zero("webhook-timeout"));
        }
        if self.webhook_retry_max.is_zero() {
            return Err(EventsConfigError::Zero("webhook-retry-max"));
        }
        if self.webhook_batch_max == 0 {
            return Err(EventsConfigError::Zero("webhook-batch-max"));
        }
        if self.webhook_backlog_max == 0 {
            return Err(EventsConfigError::Zero("webhook-backlog-max"));
        }
        if !(1..=1024).contains(&self.webhook_partitions) {
            return Err(EventsConfigError::Partitions(self.webhook_partitions));
        }
        Ok(())
    }

    /// The signing secret: the file's contents less one trailing newline.
    pub fn secret(&self) -> Result<Option<Vec<u8>>, EventsConfigError> {
        let Some(path) = &self.webhook_secret_file else {
            return Ok(None);
        };
        let error = |error: String| EventsConfigError::Secret {
            path: path.clone(),
            error,
        };
        let mut bytes = std::fs::read(path).map_err(|e| error(e.to_string()))?;
        if bytes.ends_with(b"\n") {
            bytes.pop();
            if bytes.ends_with(b"\r") {
                bytes.pop();
            }
        }
        if bytes.is_empty() {
            return Err(error("the file is empty".into()));
        }
        Ok(Some(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        events: EventsConfig,
    }

    fn parse(args: &[&str]) -> EventsConfig {
        Flags::parse_from(std::iter::once("gateway").chain(args.iter().copied())).events
    }

    #[test]
    fn without_a_url_nothing_is_checked_or_enabled() {
        let c = parse(&[]);
        assert!(!c.enabled());
        c.validate().unwrap();
    }

    #[test]
    fn bad_values_name_their_flag() {
        let cases: &[(&[&str], &str)] = &[
            (&["--webhook-url", "ftp://x"], "--webhook-url"),
            (&["--webhook-url", "http://x"], "--webhook-secret-file"),
            (
                &[
                    "--webhook-url",
                    "http://x",
                    "--webhook-secret-file",
                    "s",
                    "--webhook-batch-max",
                    "0",
                ],
                "--webhook-batch-max",
            ),
            (
                &[
                    "--webhook-url",
                    "http://x",
                    "--webhook-secret-file",
                    "s",
                    "--webhook-partitions",
                    "0",
                ],
                "--webhook-partitions",
            ),
            (
                &[
                    "--webhook-url",
                    "http://x",
                    "--webhook-secret-file",
                    "s",
                    "--webhook-timeout",
                    "0s",
                ],
                "--webhook-timeout",
            ),
            (
                &[
                    "--webhook-url",
                    "http://x",
                    "--webhook-secret-file",
                    "s",
                    "--webhook-backlog-max",
                    "0",
                ],
                "--webhook-backlog-max",
            ),
        ];
        for (args, flag) in cases {
            let error = parse(args).validate().unwrap_err().to_string();
            assert!(error.contains(flag), "{args:?}: {error}");
        }
    }

    #[test]
    fn the_secret_loses_one_trailing_newline_and_may_not_be_empty() {
        let dir = std::env::temp_dir().join(format!("events-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        std::fs::write(&file, "abc\n").unwrap();
        let mut c = parse(&["--webhook-url", "http://x"]);
        c.webhook_secret_file = Some(file.clone());
        assert_eq!(c.secret().unwrap().unwrap(), b"abc");
        std::fs::write(&file, "\n").unwrap();
        assert!(c.secret().unwrap_err().to_string().contains("empty"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
