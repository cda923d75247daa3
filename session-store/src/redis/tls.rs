//! TLS and credentials of the Redis connections: which URLs mean TLS, and how a caller's rustls
//! configuration and server name reach every connection fred opens (the configured servers,
//! discovered cluster nodes, the primary a Sentinel names).

use std::net::IpAddr;
use std::sync::Arc;

use fred::rustls::ClientConfig;
use fred::types::config::{
    Config, HostMapping, Server, ServerConfig, TlsConfig, TlsConnector, TlsHostMapping,
};

use crate::StoreError;

/// TLS settings for a TLS URL (`rediss://`, `rediss-cluster://`, `rediss-sentinel://`).
#[derive(Clone)]
pub struct RedisTls {
    /// The rustls client configuration: trusted roots, client certificate (mTLS), verifier.
    pub client: Arc<ClientConfig>,
    /// Name sent as SNI (and verified by rustls's default verifier) instead of the host the URL
    /// or the cluster names, e.g. when connecting by IP to a server whose certificate names a
    /// DNS name. A Sentinel's primary is dialled by the address the Sentinel announces: to
    /// verify it against this name too, `client` must carry a verifier that does so (the
    /// gateway's does).
    pub server_name: Option<String>,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls")
            .field(
                "client_auth",
                &self.client.client_auth_cert_resolver.has_certs(),
            )
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// Whether `url` asks for TLS: a `rediss` or `valkeys` scheme (plain, `-cluster`, `-sentinel`).
pub(crate) fn url_uses_tls(url: &str) -> bool {
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    scheme.starts_with("rediss") || scheme.starts_with("valkeys")
}

/// Parses `url` into a fred configuration whose connections all use `tls` when the URL asks
/// for TLS. A TLS URL without `tls` gets fred's default (the system's roots); `tls` with a
/// plaintext URL is refused rather than ignored.
pub(crate) fn fred_config(url: &str, tls: Option<&RedisTls>) -> Result<Config, StoreError> {
    let invalid = |e: fred::error::Error| {
        StoreError::Unavailable(format!("invalid redis url: {}", e.details()))
    };
    let uses_tls = url_uses_tls(url);
    let Some(tls) = tls else {
        return Config::from_url(url).map_err(invalid);
    };
    if !uses_tls {
        return Err(StoreError::Unavailable(
            "TLS settings were given for a plaintext redis URL: use rediss://".into(),
        ));
    }
    // Parsed as plaintext so that fred does not build (and possibly fail on) its default TLS
    // configuration, which is replaced below.
    let (scheme, rest) = url.split_once("://").unwrap_or_default();
    let plain_scheme = scheme
        .replacen("rediss", "redis", 1)
        .replacen("valkeys", "valkey", 1);
    let mut config = Config::from_url(&format!("{plain_scheme}://{rest}")).map_err(invalid)?;
    let mut hostnames = TlsHostMapping::None;
    if let Some(name) = &tls.server_name {
        let servers: Vec<&mut Server> = match &mut config.server {
            ServerConfig::Centralized { server } => vec![server],
            ServerConfig::Clustered { hosts, .. } | ServerConfig::Sentinel { hosts, .. } => {
                hosts.iter_mut().collect()
            }
        };
        for server in servers {
            server.tls_server_name = Some(name.as_str().into());
        }
        // Nodes a cluster announces by IP get the same name.
        hostnames = TlsHostMapping::Custom(Arc::new(FixedName(name.clone())));
    }
    config.tls = Some(TlsConfig {
        connector: TlsConnector::from(ClientConfig::clone(&tls.client)),
        hostnames,
    });
    Ok(config)
}

/// Every cluster node announced by IP is verified against one name.
#[derive(Debug)]
struct FixedName(String);

impl HostMapping for FixedName {
    fn map(&self, _ip: &IpAddr, _default_host: &str) -> Option<String> {
        Some(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fred::rustls::RootCertStore;
    use fred::rustls::crypto::ring::default_provider;

    fn tls(server_name: Option<&str>) -> RedisTls {
        let client = ClientConfig::builder_with_provider(Arc::new(default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        RedisTls {
            client: Arc::new(client),
            server_name: server_name.map(str::to_owned),
        }
    }

    fn names(config: &Config) -> Vec<Option<String>> {
        let servers: Vec<&Server> = match &config.server {
            ServerConfig::Centralized { server } => vec![server],
            ServerConfig::Clustered { hosts, .. } | ServerConfig::Sentinel { hosts, .. } => {
                hosts.iter().collect()
            }
        };
        servers
            .iter()
            .map(|s| s.tls_server_name.as_ref().map(|n| n.to_string()))
            .collect()
    }

    #[test]
    fn every_topology_gets_the_tls_settings_and_the_name() {
        let named = tls(Some("redis.internal"));
        let urls = [
            "rediss://10.0.0.1:6379",
            "rediss-cluster://10.0.0.1:7000?node=10.0.0.2:7001",
            "rediss-sentinel://10.0.0.1:26379?sentinelServiceName=main&node=10.0.0.2:26379",
        ];
        for url in urls {
            let config = fred_config(url, Some(&named)).unwrap();
            let tls = config.tls.as_ref().expect("TLS kept");
            assert!(matches!(tls.hostnames, TlsHostMapping::Custom(_)), "{url}");
            let names = names(&config);
            assert!(!names.is_empty());
            assert!(
                names.iter().all(|n| n.as_deref() == Some("redis.internal")),
                "{url}: {names:?}"
            );
        }
        let config = fred_config("rediss-cluster://h:7000", Some(&tls(None))).unwrap();
        assert_eq!(config.tls.as_ref().unwrap().hostnames, TlsHostMapping::None);
        assert_eq!(names(&config), vec![None]);
    }

    #[test]
    fn tls_settings_with_a_plaintext_url_are_refused() {
        for url in [
            "redis://h:1",
            "redis-cluster://h:1",
            "redis-sentinel://h:1?sentinelServiceName=m",
        ] {
            assert!(fred_config(url, Some(&tls(None))).is_err(), "{url}");
        }
        assert!(fred_config("redis://h:1", None).unwrap().tls.is_none());
        assert!(url_uses_tls("rediss-sentinel://h:1") && !url_uses_tls("redis://h:1"));
    }
}
