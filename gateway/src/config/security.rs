//! Flags of authentication and abuse limits (see `docs/security.md`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use ipnet::IpNet;

use crate::abuse::{FrameLimits, IpLimits, parse_trusted_proxy};
use crate::auth::{AuthConfig, AuthMode, SECRET_ENV};

#[derive(Debug, Clone, Args)]
pub struct SecurityConfig {
    /// Authentication: `off` (everyone may do everything: the embedded default), `optional`
    /// (anonymous users get the anonymous grants) or `required` (no or bad token: close 1008).
    #[arg(long = "auth", env = "GATEWAY_AUTH", value_enum, default_value_t = AuthMode::Off)]
    pub auth_mode: AuthMode,

    /// HS256 secret in a file (the secret itself may instead come from GATEWAY_JWT_SECRET).
    #[arg(long, env = "GATEWAY_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,

    /// PEM public keys (RS256, ES256/ES384 or EdDSA, from the key type); repeat or comma-separate.
    #[arg(long, env = "GATEWAY_JWT_PUBLIC_KEY", value_delimiter = ',')]
    pub jwt_public_key: Vec<PathBuf>,

    /// JWKS URL, fetched at startup and every --jwks-refresh.
    #[arg(long, env = "GATEWAY_JWKS_URL")]
    pub jwks_url: Option<String>,

    /// JWKS file (with --jwks-url: the copy used until the URL first answers).
    #[arg(long, env = "GATEWAY_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,

    #[arg(long, env = "GATEWAY_JWKS_REFRESH", default_value = "5m", value_parser = humantime::parse_duration)]
    pub jwks_refresh: Duration,

    /// Required `iss` claim.
    #[arg(long, env = "GATEWAY_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim.
    #[arg(long, env = "GATEWAY_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Clock leeway for `exp` and `nbf`.
    #[arg(long, env = "GATEWAY_JWT_LEEWAY", default_value = "5s", value_parser = humantime::parse_duration)]
    pub jwt_leeway: Duration,

    /// Topic patterns authenticated users may subscribe to when their token has no `gw` claim.
    #[arg(long, env = "GATEWAY_DEFAULT_SUBSCRIBE", value_delimiter = ',')]
    pub default_subscribe: Vec<String>,

    /// Topic patterns authenticated users may publish to when their token has no `gw` claim.
    #[arg(long, env = "GATEWAY_DEFAULT_PUBLISH", value_delimiter = ',')]
    pub default_publish: Vec<String>,

    /// Topic patterns anonymous users may subscribe to (`--auth optional`).
    #[arg(long, env = "GATEWAY_ANON_SUBSCRIBE", value_delimiter = ',')]
    pub anon_subscribe: Vec<String>,

    /// Topic patterns anonymous users may publish to (`--auth optional`).
    #[arg(long, env = "GATEWAY_ANON_PUBLISH", value_delimiter = ',')]
    pub anon_publish: Vec<String>,

    /// Frames per second per connection (burst: twice that); 0 = unlimited.
    #[arg(long, env = "GATEWAY_MAX_FRAME_RATE", default_value_t = 50)]
    pub max_frame_rate: u32,

    /// Published bytes per second per connection; 0 = unlimited.
    #[arg(
        long,
        env = "GATEWAY_MAX_PUBLISH_BYTES_RATE",
        default_value_t = 262_144
    )]
    pub max_publish_bytes_rate: u32,

    /// Concurrent connections per client address; 0 = unlimited.
    #[arg(long, env = "GATEWAY_MAX_CONNS_PER_IP", default_value_t = 1_000)]
    pub max_conns_per_ip: u32,

    /// New connections per second per client address; 0 = unlimited.
    #[arg(long, env = "GATEWAY_MAX_NEW_CONNS_PER_IP", default_value_t = 100)]
    pub max_new_conns_per_ip: u32,

    /// The load balancer's addresses (CIDRs or addresses, comma-separated; no default): the only
    /// peers `--proxy-listen` accepts, and the peers whose `X-Forwarded-For` is believed.
    /// `0.0.0.0/0` and `::/0` are refused.
    #[arg(long, env = "GATEWAY_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_trusted_proxy)]
    pub trusted_proxies: Vec<IpNet>,

    /// Removed: PROXY headers are read only on `--proxy-listen`. Still parsed so that a
    /// deployment that sets it fails at start with a message instead of misreading traffic.
    #[arg(long = "proxy-protocol", env = "GATEWAY_PROXY_PROTOCOL", hide = true, num_args = 0..=1, default_missing_value = "true")]
    pub removed_proxy_protocol: Option<String>,

    /// Time to send the HTTP upgrade request (and PROXY header) before the socket is closed.
    #[arg(long, env = "GATEWAY_HEADER_READ_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// Handshakes (upgrade to `welcome`) in flight per pod; above it upgrades get 503.
    #[arg(long, env = "GATEWAY_MAX_HANDSHAKES", default_value_t = 1_024)]
    pub max_handshakes: usize,

    /// Development only: allow the admin port on a non-loopback address without an operator
    /// token (anyone who reaches it may drain pods and publish).
    #[arg(long, env = "GATEWAY_ADMIN_INSECURE")]
    pub admin_insecure: bool,
}

/// A PROXY-protocol or trusted-proxy setting that cannot be safe.
#[derive(Debug, thiserror::Error)]
pub enum ProxyConfigError {
    #[error(
        "--proxy-protocol (GATEWAY_PROXY_PROTOCOL) was removed: PROXY v2 headers are read only on \
         --proxy-listen (GATEWAY_PROXY_LISTEN), from --trusted-proxies; --listen serves probes \
         and direct clients without them. Unset GATEWAY_PROXY_PROTOCOL and set --proxy-listen"
    )]
    Removed,
    #[error(
        "--proxy-listen needs --trusted-proxies (GATEWAY_TRUSTED_PROXIES): the load balancer's \
         CIDRs; there is no default"
    )]
    NoTrustedProxies,
    #[error("--trusted-proxies {0} would trust every address: list the load balancer's CIDRs")]
    TrustsEveryone(IpNet),
}

impl SecurityConfig {
    /// Refuses PROXY-protocol settings that would let any peer claim any client address.
    pub fn validate_proxies(&self, proxy_listener: bool) -> Result<(), ProxyConfigError> {
        if self.removed_proxy_protocol.is_some() {
            return Err(ProxyConfigError::Removed);
        }
        if let Some(net) = self.trusted_proxies.iter().find(|n| n.prefix_len() == 0) {
            return Err(ProxyConfigError::TrustsEveryone(*net));
        }
        if proxy_listener && self.trusted_proxies.is_empty() {
            return Err(ProxyConfigError::NoTrustedProxies);
        }
        Ok(())
    }

    /// Whether `peer` is one of `--trusted-proxies`.
    pub fn is_trusted_proxy(&self, peer: std::net::IpAddr) -> bool {
        let peer = crate::abuse::canonical(peer);
        self.trusted_proxies.iter().any(|net| net.contains(&peer))
    }

    pub fn auth_config(&self) -> AuthConfig {
        AuthConfig {
            mode: self.auth_mode,
            jwt_secret_file: self.jwt_secret_file.clone(),
            jwt_secret_env: std::env::var(SECRET_ENV).ok().filter(|s| !s.is_empty()),
            jwt_public_keys: self.jwt_public_key.clone(),
            jwks_url: self.jwks_url.clone(),
            jwks_file: self.jwks_file.clone(),
            jwks_refresh: self.jwks_refresh,
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            leeway: self.jwt_leeway,
            default_subscribe: self.default_subscribe.clone(),
            default_publish: self.default_publish.clone(),
            anon_subscribe: self.anon_subscribe.clone(),
            anon_publish: self.anon_publish.clone(),
            ..AuthConfig::default()
        }
    }

    pub fn frame_limits(&self, max_message_size: usize) -> FrameLimits {
        FrameLimits::new(
            self.max_frame_rate,
            self.max_publish_bytes_rate,
            max_message_size,
        )
    }

    pub fn ip_limits(&self) -> IpLimits {
        IpLimits::new(self.max_conns_per_ip, self.max_new_conns_per_ip)
    }

    /// No limits on client addresses, frames or handshakes: for load tests from one machine.
    pub fn unlimited(&mut self) {
        self.max_frame_rate = 0;
        self.max_publish_bytes_rate = 0;
        self.max_conns_per_ip = 0;
        self.max_new_conns_per_ip = 0;
    }
}
