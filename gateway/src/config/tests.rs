//! Defaults, contradictions, and flags against their docs.

use super::*;

#[test]
fn defaults_are_valid() {
    let c = Config::embedded_default();
    c.validate().unwrap();
    assert_eq!(c.max_message_size, 65_536);
    assert_eq!(c.resume_window, Duration::from_secs(120));
    assert_eq!(c.rebalance_stable_beats, 3);
}

/// Every flag has its `GATEWAY_*` variable and is documented (operations.md or, for the
/// security flags, security.md, or, for namespaces and hooks, backend.md), so the docs cannot
/// fall behind a new flag.
#[test]
fn every_flag_has_its_env_and_is_documented() {
    #[derive(clap::Parser)]
    struct Parse {
        #[command(flatten)]
        config: Config,
    }
    let docs = [
        include_str!("../../../docs/operations.md"),
        include_str!("../../../docs/security.md"),
        include_str!("../../../docs/backend.md"),
    ]
    .concat();
    let mentioned = |flag: &str| {
        docs.match_indices(flag).any(|(i, _)| {
            !docs[i + flag.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-')
        })
    };
    let command = <Parse as clap::CommandFactory>::command();
    let mut problems = Vec::new();
    for arg in command.get_arguments().filter(|a| !a.is_hide_set()) {
        let Some(long) = arg.get_long() else { continue };
        let env = format!("GATEWAY_{}", long.to_uppercase().replace('-', "_"));
        if arg.get_env().and_then(|e| e.to_str()) != Some(env.as_str()) {
            problems.push(format!("--{long} should read {env}"));
        }
        if !mentioned(&format!("--{long}")) {
            problems.push(format!(
                "--{long} is not in docs/operations.md, docs/security.md or docs/backend.md"
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn contradictions_are_refused() {
    let mut c = Config::embedded_default();
    c.idle_timeout = Duration::from_secs(1);
    assert!(matches!(
        c.validate(),
        Err(ConfigError::IdleNotAbovePing { .. })
    ));
    let mut c = Config::embedded_default();
    c.outbound_queue = 0;
    assert_eq!(
        c.validate().unwrap_err().to_string(),
        "--outbound-queue must be greater than zero"
    );
    let mut c = Config::embedded_default();
    c.rebalance_stable_beats = 0;
    assert_eq!(
        c.validate().unwrap_err().to_string(),
        "--rebalance-stable-beats must be greater than zero"
    );
    let mut c = Config::embedded_default();
    c.allowed_origins = vec!["example.com".into()];
    assert!(c.validate().is_err());
}

#[test]
fn listener_proxy_and_admin_settings_are_checked() {
    let with = |edit: &dyn Fn(&mut Config)| {
        let mut c = Config::embedded_default();
        edit(&mut c);
        c.validate().map_err(|e| e.to_string())
    };
    let proxy = || Some("127.0.0.1:8081".parse().unwrap());
    let msg = with(&|c| c.proxy_listen = proxy()).unwrap_err();
    assert!(
        msg.starts_with("--proxy-listen needs --trusted-proxies"),
        "{msg}"
    );
    let msg = with(&|c| {
        c.proxy_listen = proxy();
        c.security.trusted_proxies = vec!["::/0".parse().unwrap()];
    })
    .unwrap_err();
    assert!(msg.contains("::/0 would trust every address"), "{msg}");
    with(&|c| {
        c.proxy_listen = proxy();
        c.security.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
    })
    .unwrap();
    let msg = with(&|c| {
        c.proxy_listen = Some(c.listen);
        c.security.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
    })
    .unwrap_err();
    assert_eq!(msg, "--listen and --proxy-listen are both 127.0.0.1:8080");
    let msg = with(&|c| c.security.removed_proxy_protocol = Some("true".into())).unwrap_err();
    assert!(
        msg.contains("was removed") && msg.contains("--proxy-listen"),
        "{msg}"
    );
    let exposed = || "0.0.0.0:9090".parse().unwrap();
    let msg = with(&|c| c.admin_listen = exposed()).unwrap_err();
    assert!(msg.contains("set --admin-token-file"), "{msg}");
    with(&|c| {
        c.admin_listen = exposed();
        c.admin_token_file = Some("/run/secrets/admin".into());
    })
    .unwrap();
    with(&|c| {
        c.admin_listen = exposed();
        c.security.admin_insecure = true;
    })
    .unwrap();
    let msg = with(&|c| c.metrics_token_file = Some("/run/secrets/metrics".into())).unwrap_err();
    assert!(
        msg.starts_with("--metrics-token-file needs --admin-token-file"),
        "{msg}"
    );
}
