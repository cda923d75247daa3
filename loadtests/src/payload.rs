//! Payloads and the receive-side fast path.
//!
//! A payload is `{"ts":<send time, Unix µs>,"p":<publisher>,"n":<counter>,"pad":"xx…"}`, padded
//! to the requested size. The timestamp gives delivery latency (wall clock, so it also works
//! across worker processes); the counter numbers the raw baseline's messages, which have no
//! `seq`. Subscribers parse frames by hand instead of with serde: at 100k deliveries/s on a
//! two-core machine the load generator's own CPU is part of the measurement, and a full JSON
//! parse per delivery would make the generator, not the server, the bottleneck.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The JSON payload of publisher `p`'s `n`th message, about `size` bytes long.
pub fn make(p: u32, n: u64, size: usize) -> String {
    let mut s = format!(r#"{{"ts":{},"p":{p},"n":{n},"pad":""#, now_us());
    let fill = size.saturating_sub(s.len() + 2);
    s.extend(std::iter::repeat_n('x', fill));
    s.push_str("\"}");
    s
}

/// The fields of a delivered message that the bookkeeping needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered<'a> {
    pub topic: &'a str,
    /// The gateway's `seq`, or the payload counter `n` for the baseline.
    pub seq: u64,
    /// The publisher, from the payload (`p`).
    pub publisher: u64,
    pub sent_us: Option<u64>,
    /// Present when the gateway announced a new epoch with this message.
    pub epoch: Option<&'a str>,
}

fn number_after(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let digits = text[at..].bytes().take_while(u8::is_ascii_digit).count();
    text[at..at + digits].parse().ok()
}

fn string_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let at = text.find(key)? + key.len();
    let end = text[at..].find('"')?;
    Some(&text[at..at + end])
}

/// Parses a gateway `message` frame (`{"type":"message","topic":…,"seq":…,"data":…}`), or
/// `None` for any other frame. Relies on the gateway's field order, which it writes by hand.
pub fn parse_gateway(text: &str) -> Option<Delivered<'_>> {
    let rest = text.strip_prefix(r#"{"type":"message","topic":""#)?;
    let end = rest.find('"')?;
    let topic = &rest[..end];
    let rest = &rest[end..];
    let seq = number_after(rest, r#""seq":"#)?;
    let data_at = rest.find(r#""data":"#)?;
    let (head, data) = rest.split_at(data_at);
    Some(Delivered {
        topic,
        seq,
        publisher: number_after(data, r#""p":"#).unwrap_or(0),
        sent_us: number_after(data, r#""ts":"#),
        epoch: string_after(head, r#""epoch":""#),
    })
}

/// A baseline publish frame: `<topic> <payload>`.
pub fn baseline_frame(topic: &str, payload: &str) -> String {
    format!("{topic} {payload}")
}

/// Parses a baseline broadcast frame (`<topic> <payload>`); the sequence number is the
/// payload's counter.
pub fn parse_baseline(text: &str) -> Option<Delivered<'_>> {
    let (topic, payload) = text.split_once(' ')?;
    Some(Delivered {
        topic,
        seq: number_after(payload, r#""n":"#)?,
        publisher: number_after(payload, r#""p":"#)?,
        sent_us: number_after(payload, r#""ts":"#),
        epoch: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_the_requested_size_and_parses() {
        let p = make(7, 42, 100);
        assert_eq!(p.len(), 100);
        let v: serde_json::Value = serde_json::from_str(&p).unwrap();
        assert_eq!((v["p"].as_u64(), v["n"].as_u64()), (Some(7), Some(42)));
        // Too small a size still gives valid JSON.
        assert!(serde_json::from_str::<serde_json::Value>(&make(1, 1, 4)).is_ok());
    }

    #[test]
    fn gateway_frames_parse_by_hand() {
        let data = make(3, 9, 80);
        let text = format!(r#"{{"type":"message","topic":"t.1","seq":12,"data":{data}}}"#);
        let d = parse_gateway(&text).unwrap();
        assert_eq!((d.topic, d.seq, d.publisher, d.epoch), ("t.1", 12, 3, None));
        assert!(d.sent_us.unwrap() > 1_600_000_000_000_000);
        let text =
            format!(r#"{{"type":"message","topic":"t","seq":1,"epoch":"e9","data":{data}}}"#);
        assert_eq!(parse_gateway(&text).unwrap().epoch, Some("e9"));
        assert_eq!(parse_gateway(r#"{"type":"welcome"}"#), None);
        // A payload without our fields still yields the seq.
        let d = parse_gateway(r#"{"type":"message","topic":"t","seq":5,"data":"hi"}"#).unwrap();
        assert_eq!((d.seq, d.sent_us), (5, None));
    }

    #[test]
    fn baseline_frames_parse_by_hand() {
        let text = baseline_frame("t0", &make(2, 77, 100));
        let d = parse_baseline(&text).unwrap();
        assert_eq!((d.topic, d.seq, d.publisher), ("t0", 77, 2));
        assert_eq!(parse_baseline("ok"), None);
    }
}
