//! The subscriptions a `hello` opens itself (its `subscribe` array), and the matching of the
//! gateway's answers to them.
//!
//! A topic goes in `hello.subscribe` when it needs nothing but its name: one with a position goes
//! in `hello.positions` instead (a resume restores it; a new session needs a `subscribe` frame
//! with `since`). The gateway answers the array after `welcome` (and a resume's replay) with one
//! `subscribed` or `error` per topic, in array order and without `ref`, each naming its topic: a
//! reply without `ref` answers the oldest topic not answered yet when it names that topic (an
//! `error` naming none is about something else: a resume's notice, a server-side subscription).
//! Pure: no I/O.

use std::collections::VecDeque;

/// The topics of the connection's `hello.subscribe` that have no reply yet, in array order.
#[derive(Debug, Default)]
pub(super) struct HelloSubscriptions {
    waiting: VecDeque<String>,
}

impl HelloSubscriptions {
    /// The topics a new `hello` subscribes, from `(topic, whether it has a position)`, in
    /// order; they wait for their replies from now on.
    pub(super) fn start<'a>(topics: impl IntoIterator<Item = (&'a str, bool)>) -> Self {
        let waiting = topics
            .into_iter()
            .filter(|(_, positioned)| !positioned)
            .map(|(topic, _)| topic.to_owned())
            .collect();
        HelloSubscriptions { waiting }
    }

    /// The topics, as `hello.subscribe` sends them.
    pub(super) fn topics(&self) -> Vec<&str> {
        self.waiting.iter().map(String::as_str).collect()
    }

    pub(super) fn contains(&self, topic: &str) -> bool {
        self.waiting.iter().any(|t| t == topic)
    }

    /// The topic a reply without `ref` answers (`topic`: the one it names, `None` when it names
    /// none), or `None` when it answers none of them.
    pub(super) fn reply(&mut self, topic: Option<&str>) -> Option<String> {
        let next = self.waiting.front()?;
        if topic != Some(next.as_str()) {
            return None;
        }
        self.waiting.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_topics_without_position_and_matches_replies_in_order() {
        let mut h = HelloSubscriptions::start([("a", false), ("b", true), ("c", false)]);
        assert_eq!(h.topics(), ["a", "c"]);
        assert!(h.contains("a") && !h.contains("b"));
        assert_eq!(h.reply(Some("c")), None, "a reply naming another topic");
        assert_eq!(h.reply(None), None, "an error about something else");
        assert_eq!(h.reply(Some("a")).as_deref(), Some("a"), "the oldest");
        assert_eq!(h.reply(Some("c")).as_deref(), Some("c"));
        assert_eq!(h.reply(Some("c")), None);
    }
}
