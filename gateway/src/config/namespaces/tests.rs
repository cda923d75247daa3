use std::time::Duration;

use super::*;

fn default() -> Namespace {
    Namespace {
        prefix: String::new(),
        history: Some(HistoryLimits::default()),
        publish: PublishPolicy::Client,
        subscribe_hook: false,
        publish_hook: false,
        resubscribe_hook: false,
        hook_url: None,
        presence: false,
        join_leave: false,
        presence_max_list: 1_000,
        publish_events: false,
    }
}

fn topic(t: &str) -> Topic {
    Topic::new(t).unwrap()
}

fn error(text: &str) -> String {
    let (key, message) = Namespaces::parse(text, default()).unwrap_err();
    format!("{key}: {message}")
}

#[test]
fn every_option_is_read_and_the_longest_prefix_wins() {
    let ns = Namespaces::parse(
        r#"
        [[namespaces]]
        prefix = ""
        history_size = 50

        [[namespaces]]
        prefix = "room."
        history_size = 500
        history_ttl = "1h"
        publish = "hook"
        hooks = ["subscribe", "publish", "resubscribe"]
        hook_url = "http://app.internal:8000/hooks"
        presence = true
        join_leave = true
        presence_max_list = 200

        [[namespaces]]
        prefix = "room.vip."
        publish = "server"
        hooks = []

        [[namespaces]]
        prefix = "cursor."
        history = false
        "#,
        default(),
    )
    .unwrap();
    let room = ns.of(&topic("room.a"));
    assert_eq!(room.prefix, "room.");
    let limits = room.history.unwrap();
    assert_eq!(
        (limits.max_len, limits.ttl),
        (500, Duration::from_secs(3600))
    );
    assert_eq!(room.publish, PublishPolicy::Hook);
    assert!(room.subscribe_hook && room.publish_hook && room.resubscribe_hook);
    assert_eq!(
        room.hook_url.as_deref(),
        Some("http://app.internal:8000/hooks")
    );
    assert!(room.presence && room.join_leave);
    assert_eq!(room.presence_max_list, 200);
    let vip = ns.of(&topic("room.vip.x"));
    assert_eq!(vip.publish, PublishPolicy::Server);
    assert!(!vip.subscribe_hook && !vip.publish_hook);
    // Left out: the default namespace's (here the file's "" table: 50 messages).
    assert_eq!(vip.history.unwrap().max_len, 50);
    assert!(ns.of(&topic("cursor.1")).is_ephemeral());
    let other = ns.of(&topic("news"));
    assert_eq!(
        (other.prefix.as_str(), other.history.unwrap().max_len),
        ("", 50)
    );
    let limits = ns.prefix_limits();
    assert_eq!(
        limits
            .get(&topic("room.vip.x"), HistoryLimits::default())
            .max_len,
        50
    );
    assert_eq!(
        limits
            .get(&topic("room.x"), HistoryLimits::default())
            .max_len,
        500
    );
}

#[test]
fn an_empty_file_is_the_default_namespace() {
    let ns = Namespaces::parse("", default()).unwrap();
    assert_eq!(ns, Namespaces::single(default()));
}

#[test]
fn bad_keys_and_values_name_the_key_path() {
    let cases = [
        (
            "[[namespaces]]\nprefix = \"a.\"\n[[namespaces]]\nprefix = \"b.\"\n[[namespaces]]\nprefix = \"c.\"\nhistory_size = -1",
            "namespaces[2].history_size: invalid value: integer `-1`, expected usize",
        ),
        (
            "[[namespaces]]\nprefix = \"a.\"\nhistory_sise = 5",
            "namespaces[0].history_sise: unknown field `history_sise`",
        ),
        (
            "[[namespaces]]\nprefix = \"a.\"\npublish = \"anyone\"",
            "namespaces[0].publish: unknown variant `anyone`, expected one of `client`, `hook`, `server`",
        ),
        (
            "[[namespaces]]\nprefix = \"a.\"\nhooks = [\"connect\"]",
            "namespaces[0].hooks[0]: unknown variant `connect`, expected one of `subscribe`, `publish`, `resubscribe`",
        ),
        (
            "[[namespaces]]\nprefix = \"a.\"\nhistory_ttl = \"soon\"",
            "namespaces[0].history_ttl: \"soon\": expected number at 0",
        ),
        (
            "[[namespaces]]\nprefix = \"a.\"\nhistory_ttl = \"0s\"",
            "namespaces[0].history_ttl: must be greater than zero",
        ),
        (
            "[[namespaces]]\nprefix = \"a.\"\nhistory_size = 0",
            "namespaces[0].history_size: must be greater than zero (for no history, set history = false)",
        ),
        (
            "[[namespaces]]\nprefix = \"a.\"\nhistory = false\nhistory_size = 5",
            "namespaces[0].history_size: has no effect with history = false",
        ),
        (
            "[[namespaces]]\nprefix = \"a.\"\npublish = \"hook\"",
            "namespaces[0].publish: \"hook\" needs \"publish\" in hooks (the hook approves each message)",
        ),
        (
            "[[namespaces]]\nprefix = \"a.\"\njoin_leave = true",
            "namespaces[0].join_leave: needs presence = true",
        ),
        (
            "[[namespaces]]\nprefix = \"a.\"\npresence = true\npresence_max_list = 0",
            "namespaces[0].presence_max_list: must be greater than zero",
        ),
        (
            "[[namespaces]]\nprefix = \"a.\"\nhistory = false\npublish_events = true",
            "namespaces[0].publish_events: needs history: ephemeral messages are not recorded",
        ),
        (
            "[[namespaces]]\nprefix = \"a.\"\npublish_event = true",
            "namespaces[0].publish_event: unknown field `publish_event`",
        ),
        (
            "[[namespaces]]\nprefix = \"a b\"",
            "namespaces[0].prefix: \"a b\" must be a topic prefix: [A-Za-z0-9_.:-], under 200 characters",
        ),
        (
            "[[namespaces]]\nprefix = \"a.\"\n[[namespaces]]\nprefix = \"a.\"",
            "namespaces[1].prefix: \"a.\" is listed twice",
        ),
        (
            "[[namespaces]]\nprefix = \"a.\"\n[[namespaces]]\nprefix = \"\"",
            "namespaces[1].prefix: the default namespace \"\" must be the first table",
        ),
        (
            "[[namespaces]]\nprefix = \"a.\"\nhook_url = \"ftp://x\"",
            "namespaces[0].hook_url: \"ftp://x\" must be an http(s):// URL",
        ),
        (
            "[[namespaces]]\nhistory = true",
            "namespaces[0]: missing field `prefix`",
        ),
        (
            "namespace = []",
            "namespace: unknown field `namespace`, expected `namespaces`",
        ),
        (
            "[[namespaces]]\nprefix = \"a.\"\n[[namespaces]\n",
            "line 3: unclosed array table, expected `]`",
        ),
    ];
    for (text, expected) in cases {
        let got = error(text);
        assert!(
            got.starts_with(expected),
            "{text:?}\n got: {got}\nwant: {expected}"
        );
    }
}

#[test]
fn a_missing_file_and_the_error_format_name_the_flag() {
    let e = Namespaces::load(std::path::Path::new("/nonexistent/gateway.toml"), default())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("--config \"/nonexistent/gateway.toml\": "),
        "{e}"
    );
}
