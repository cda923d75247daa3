//! Topic permissions: which topics a connection may subscribe to and publish on.
//!
//! Grants come from a token's `gw` claim (`{"sub": [patterns], "pub": [patterns]}`) or, without
//! the claim, from the configured defaults. A pattern is an exact topic (`news`) or a prefix
//! ending in `*` (`chat.*`; `*` alone is every topic). `{user}` expands to the token's `sub`
//! (`user.{user}.*`), but only when `sub` is made of `[A-Za-z0-9_:-]`: otherwise a `{user}`
//! pattern matches nothing. The dot is left out on purpose: it is the hierarchy separator, so a
//! user called `bob.x` must not get `user.bob.x.*`, a corner of `bob`'s own space.
//!
//! A malformed pattern in a token grants nothing (it is dropped, never widened); a malformed
//! pattern in the configuration is refused at startup by [`check_pattern`].

use std::fmt;

use protocol::Topic;

/// The placeholder replaced by the token's `sub`.
pub const USER_PLACEHOLDER: &str = "{user}";

/// Longest `sub` that `{user}` expands to.
const MAX_USER_LEN: usize = 128;

/// Patterns taken from one list at most; the rest are ignored (bounds the work per frame).
pub const MAX_PATTERNS: usize = 256;

/// One compiled pattern, `{user}` already expanded.
#[derive(Clone, PartialEq, Eq)]
enum Pattern {
    Exact(Box<str>),
    /// Matches every topic starting with this (possibly empty) prefix.
    Prefix(Box<str>),
}

impl Pattern {
    fn matches(&self, topic: &str) -> bool {
        match self {
            Pattern::Exact(t) => **t == *topic,
            Pattern::Prefix(p) => topic.starts_with(&**p),
        }
    }

    /// Compiles `template` for `user`; `None` when the pattern is malformed or uses `{user}`
    /// without a usable user.
    fn compile(template: &str, user: Option<&str>) -> Option<Self> {
        let expanded;
        let text = if template.contains(USER_PLACEHOLDER) {
            let user = user.filter(|u| user_expandable(u))?;
            expanded = template.replace(USER_PLACEHOLDER, user);
            expanded.as_str()
        } else {
            template
        };
        if let Some(prefix) = text.strip_suffix('*') {
            if prefix.len() >= Topic::MAX_LEN || !prefix.bytes().all(topic_byte) {
                return None;
            }
            Some(Pattern::Prefix(prefix.into()))
        } else {
            Topic::new(text).ok()?;
            Some(Pattern::Exact(text.into()))
        }
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(t) => write!(f, "{t}"),
            Pattern::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

fn topic_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-')
}

/// Whether `{user}` may expand to `user`: 1–128 characters of `[A-Za-z0-9_:-]`.
pub fn user_expandable(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= MAX_USER_LEN
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'-'))
}

/// Why a configured pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "pattern {0:?} must be a topic ([A-Za-z0-9_.:-], 1-200 characters) or a prefix ending in `*`, \
     optionally with {{user}}"
)]
pub struct InvalidPattern(pub String);

/// Checks a configured pattern (with `{user}` standing for a plausible user id).
pub fn check_pattern(pattern: &str) -> Result<(), InvalidPattern> {
    let rest = pattern.replace(USER_PLACEHOLDER, "u");
    if rest.contains(['{', '}']) || Pattern::compile(&rest, None).is_none() {
        return Err(InvalidPattern(pattern.to_owned()));
    }
    Ok(())
}

/// A set of topics: everything, or the union of some patterns.
#[derive(Clone, PartialEq, Eq)]
pub struct TopicSet {
    all: bool,
    patterns: Vec<Pattern>,
}

impl TopicSet {
    /// Every topic.
    pub fn all() -> Self {
        Self {
            all: true,
            patterns: Vec::new(),
        }
    }

    /// No topic.
    pub fn none() -> Self {
        Self {
            all: false,
            patterns: Vec::new(),
        }
    }

    /// The union of `patterns` for `user` (malformed ones and, without a usable user, `{user}`
    /// ones are dropped). At most [`MAX_PATTERNS`] are read.
    pub fn from_patterns<S: AsRef<str>>(patterns: &[S], user: Option<&str>) -> Self {
        let patterns: Vec<Pattern> = patterns
            .iter()
            .take(MAX_PATTERNS)
            .filter_map(|p| Pattern::compile(p.as_ref(), user))
            .collect();
        let all = patterns
            .iter()
            .any(|p| matches!(p, Pattern::Prefix(prefix) if prefix.is_empty()));
        if all {
            return Self::all();
        }
        Self {
            all: false,
            patterns,
        }
    }

    pub fn contains(&self, topic: &Topic) -> bool {
        self.contains_str(topic.as_str())
    }

    fn contains_str(&self, topic: &str) -> bool {
        self.all || self.patterns.iter().any(|p| p.matches(topic))
    }

    pub fn is_empty(&self) -> bool {
        !self.all && self.patterns.is_empty()
    }
}

impl fmt::Debug for TopicSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.all {
            f.write_str("[*]")
        } else {
            f.debug_list().entries(&self.patterns).finish()
        }
    }
}

/// What a connection may do: the topics it may subscribe to and those it may publish on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grants {
    pub subscribe: TopicSet,
    pub publish: TopicSet,
}

impl Grants {
    /// Everything (auth mode `off`).
    pub fn all() -> Self {
        Self {
            subscribe: TopicSet::all(),
            publish: TopicSet::all(),
        }
    }

    /// Nothing.
    pub fn none() -> Self {
        Self {
            subscribe: TopicSet::none(),
            publish: TopicSet::none(),
        }
    }

    /// Grants from subscribe and publish patterns, `{user}` expanded to `user`.
    pub fn from_patterns<S: AsRef<str>>(
        subscribe: &[S],
        publish: &[S],
        user: Option<&str>,
    ) -> Self {
        Self {
            subscribe: TopicSet::from_patterns(subscribe, user),
            publish: TopicSet::from_patterns(publish, user),
        }
    }

    pub fn can_subscribe(&self, topic: &Topic) -> bool {
        self.subscribe.contains(topic)
    }

    pub fn can_publish(&self, topic: &Topic) -> bool {
        self.publish.contains(topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    fn set(patterns: &[&str], user: Option<&str>) -> TopicSet {
        TopicSet::from_patterns(patterns, user)
    }

    #[test]
    fn exact_patterns_match_only_themselves() {
        let s = set(&["news", "chat.lobby"], None);
        assert!(s.contains(&t("news")));
        assert!(s.contains(&t("chat.lobby")));
        assert!(!s.contains(&t("news2")));
        assert!(!s.contains(&t("new")));
        assert!(!s.contains(&t("chat.lobby.x")));
        assert!(!s.contains(&t("chat")));
    }

    #[test]
    fn star_suffix_is_a_prefix() {
        let s = set(&["chat.*"], None);
        assert!(s.contains(&t("chat.lobby")));
        assert!(s.contains(&t("chat.a.b.c")));
        assert!(!s.contains(&t("chat")));
        assert!(!s.contains(&t("chatter")));
        assert!(!s.contains(&t("news.chat.x")));
        // A prefix without a dot is a plain string prefix.
        let s = set(&["chat*"], None);
        assert!(s.contains(&t("chatter")));
        assert!(s.contains(&t("chat")));
    }

    #[test]
    fn lone_star_is_everything() {
        let s = set(&["*"], None);
        assert_eq!(s, TopicSet::all());
        assert!(s.contains(&t("anything.at:all")));
        assert!(!s.is_empty());
    }

    #[test]
    fn user_placeholder_expands_to_the_subject() {
        let s = set(&["user.{user}", "inbox.{user}.*"], Some("alice"));
        assert!(s.contains(&t("user.alice")));
        assert!(s.contains(&t("inbox.alice.1")));
        assert!(!s.contains(&t("user.bob")));
        assert!(!s.contains(&t("user.alice2")));
        assert!(!s.contains(&t("inbox.bob.1")));
        // Repeated placeholders expand everywhere.
        let s = set(&["dm.{user}.{user}"], Some("a-1"));
        assert!(s.contains(&t("dm.a-1.a-1")));
    }

    #[test]
    fn unsafe_users_expand_to_nothing() {
        for user in [
            "", "bob.x", "a*", "a b", "ünï", "a>b", "a/b", "x.{user}", "{user}",
        ] {
            let s = set(&["user.{user}", "user.{user}.*", "p{user}*"], Some(user));
            assert!(s.is_empty(), "{user:?} expanded to {s:?}");
        }
        assert!(set(&["user.{user}"], None).is_empty());
        let long = "a".repeat(129);
        assert!(set(&["u.{user}"], Some(&long)).is_empty());
        // Other patterns of the same list still apply.
        let s = set(&["user.{user}", "news"], Some("a.b"));
        assert!(s.contains(&t("news")));
        assert!(!s.contains(&t("user.a.b")));
    }

    #[test]
    fn malformed_patterns_grant_nothing() {
        for p in [
            "",
            "chat.*.x",
            "**",
            "a b",
            "chat.>",
            "chät",
            "{usr}",
            "*x",
            "chat.{user",
        ] {
            assert!(
                set(&[p], Some("alice")).is_empty(),
                "{p:?} granted something"
            );
            assert!(check_pattern(p).is_err(), "{p:?} accepted in config");
        }
        let long = "a".repeat(201);
        assert!(set(&[long.as_str()], None).is_empty());
    }

    #[test]
    fn configured_patterns_are_checked() {
        for p in [
            "*",
            "news",
            "chat.*",
            "user.{user}",
            "user.{user}.*",
            "a:b-c_d",
        ] {
            check_pattern(p).unwrap();
        }
        let e = check_pattern("chat.*.x").unwrap_err();
        assert!(e.to_string().contains("chat.*.x"));
    }

    #[test]
    fn grants_split_subscribe_and_publish() {
        let g = Grants::from_patterns(&["chat.*", "news"], &["chat.{user}"], Some("alice"));
        assert!(g.can_subscribe(&t("chat.bob")));
        assert!(g.can_subscribe(&t("news")));
        assert!(!g.can_publish(&t("news")));
        assert!(g.can_publish(&t("chat.alice")));
        assert!(!g.can_publish(&t("chat.bob")));
        assert!(Grants::all().can_publish(&t("x")));
        assert!(!Grants::none().can_subscribe(&t("x")));
    }

    #[test]
    fn pattern_lists_are_bounded() {
        let many: Vec<String> = (0..MAX_PATTERNS + 10).map(|i| format!("t{i}")).collect();
        let s = TopicSet::from_patterns(&many, None);
        assert!(s.contains(&t("t0")));
        assert!(!s.contains(&t(&format!("t{}", MAX_PATTERNS + 5))));
    }

    proptest! {
        /// Whatever the patterns and the user, a granted topic is always a valid topic that
        /// some pattern really covers: a prefix pattern never matches outside its prefix.
        #[test]
        fn prefix_grants_stay_under_their_prefix(
            prefix in "[a-z]{1,8}\\.",
            topic in "[a-zA-Z0-9_.:-]{1,40}",
            user in "\\PC{0,12}",
        ) {
            let s = set(&[&format!("{prefix}*"), "{user}.x"], Some(&user));
            let topic = t(&topic);
            if s.contains(&topic) {
                let own = format!("{}.x", user);
                prop_assert!(
                    topic.as_str().starts_with(&prefix)
                        || (user_expandable(&user) && topic.as_str() == own)
                );
            }
        }

        #[test]
        fn arbitrary_patterns_never_panic(p in "\\PC{0,40}", user in "\\PC{0,20}") {
            let s = set(&[p.as_str()], Some(&user));
            let _ = s.contains(&t("a"));
            let _ = check_pattern(&p);
        }
    }
}
