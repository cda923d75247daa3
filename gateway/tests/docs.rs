//! The documentation names what the code has: every namespace key and hook flag in
//! docs/backend.md, every server API route there too (frames: protocol/tests/docs.rs).

use clap::CommandFactory;

fn doc(path: &str) -> String {
    std::fs::read_to_string(format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[derive(clap::Parser)]
struct Serve {
    #[command(flatten)]
    config: gateway::Config,
}

#[test]
fn every_namespace_key_hook_flag_and_api_route_is_in_the_backend_doc() {
    let backend = doc("docs/backend.md");
    for key in [
        "prefix",
        "history",
        "history_size",
        "history_ttl",
        "publish",
        "hooks",
        "hook_url",
        "presence",
        "join_leave",
        "presence_max_list",
        "publish_events",
    ] {
        assert!(
            backend.contains(&format!("| `{key}` |")),
            "namespace key {key}"
        );
    }
    let command = Serve::command();
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        let ours = long.starts_with("hook")
            || long.starts_with("webhook")
            || [
                "config",
                "history",
                "publish",
                "hooks",
                "presence",
                "join-leave",
                "presence-max-list",
                "publish-events",
            ]
            .contains(&long);
        if ours {
            assert!(backend.contains(&format!("`--{long}`")), "flag --{long}");
        }
    }
    for route in [
        "/api/publish",
        "/api/broadcast",
        "/api/disconnect",
        "/api/subscribe",
        "/api/unsubscribe",
        "/api/revoke",
    ] {
        assert!(
            backend.contains(&format!("`POST {route}`")),
            "route {route}"
        );
    }
}
