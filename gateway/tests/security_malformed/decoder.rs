//! The frame decoder over arbitrary JSON values: it never panics, refuses only with
//! `bad_request` or `unknown_type`, and what it accepts is exactly what the value says.

use proptest::prelude::*;
use protocol::client::{ClientFrame, DecodeError, decode};
use serde_json::{Value, json};

use super::random_frames::{FIELDS, KINDS};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        prop::sample::select(
            &[
                "hello",
                "subscribe",
                "unsubscribe",
                "publish",
                "ping",
                "refresh",
                "chat.a",
                "a b",
                ">",
                "a.*",
                "é",
                "",
            ][..]
        )
        .prop_map(Value::from),
        "\\PC{0,16}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    prop::sample::select(&FIELDS[..]).prop_map(String::from),
                    "[a-z]{0,4}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An object with a known `type` and arbitrary values in the other fields.
fn frame_value() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(&KINDS[..6]),
        prop::collection::btree_map(prop::sample::select(&FIELDS[1..]), json_value(), 0..5),
    )
        .prop_map(|(kind, fields)| {
            let mut m: serde_json::Map<String, Value> =
                fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            m.insert("type".into(), json!(kind));
            Value::Object(m)
        })
}

/// What decoding `v` must give, whatever `v` is.
fn decode_agrees(v: &Value) -> Result<(), TestCaseError> {
    let text = v.to_string();
    match decode(&text) {
        Err(e) => {
            prop_assert!(matches!(e.code().as_str(), "bad_request" | "unknown_type"));
            if let DecodeError::UnknownType { kind, .. } = &e {
                prop_assert!(!KINDS[..6].contains(&kind.as_str()));
                prop_assert!(kind.chars().count() <= 40);
            }
        }
        Ok(frame) => {
            // Only objects decode.
            let field = |name: &str, index: usize| match v {
                Value::Object(m) => m.get(name).cloned().unwrap_or(Value::Null),
                Value::Array(a) => a.get(index).cloned().unwrap_or(Value::Null),
                _ => Value::Null,
            };
            prop_assert!(v.is_object(), "{text} decoded");
            prop_assert_eq!(field("type", 0), json!(frame.kind()));
            match &frame {
                ClientFrame::Subscribe {
                    topic, reference, ..
                }
                | ClientFrame::History {
                    topic, reference, ..
                }
                | ClientFrame::Presence { topic, reference }
                | ClientFrame::PresenceStats { topic, reference }
                | ClientFrame::Unsubscribe { topic, reference } => {
                    prop_assert_eq!(field("topic", 2), json!(topic.as_str()));
                    prop_assert_eq!(field("ref", 1), json!(reference));
                }
                ClientFrame::Publish {
                    topic,
                    data,
                    exclude_self,
                    reference,
                    ..
                } => {
                    prop_assert_eq!(field("topic", 2), json!(topic.as_str()));
                    prop_assert_eq!(field("ref", 1), json!(reference));
                    // Only a JSON `true` asks for echo suppression; absent or `null` does not.
                    prop_assert_eq!(*exclude_self, field("exclude_self", 10) == json!(true));
                    // The payload is the client's JSON, byte for byte.
                    prop_assert_eq!(data.as_str(), field("data", 3).to_string());
                }
                ClientFrame::Ping { reference } => {
                    prop_assert_eq!(field("ref", 1), json!(reference));
                }
                ClientFrame::Refresh { token, reference } => {
                    prop_assert_eq!(field("token", 5), json!(token));
                    prop_assert_eq!(field("ref", 1), json!(reference));
                }
                ClientFrame::Hello { token, resume, .. } => {
                    prop_assert_eq!(field("token", 5), json!(token));
                    prop_assert_eq!(field("resume", 6), json!(resume));
                }
                ClientFrame::Rpc { reference, .. } => {
                    prop_assert_eq!(field("ref", 1), json!(reference));
                }
            }
            if let ClientFrame::Subscribe { topic, .. }
            | ClientFrame::Unsubscribe { topic, .. }
            | ClientFrame::Publish { topic, .. } = &frame
            {
                prop_assert!(protocol::Topic::new(topic.as_str()).is_ok());
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(2_000)
    })]

    /// Any JSON value: the decoder never panics, refuses with `bad_request`/`unknown_type`, and
    /// what it accepts is exactly what the value says.
    #[test]
    fn arbitrary_json_values_decode_consistently(v in json_value()) {
        decode_agrees(&v)?;
    }

    /// Frame-shaped values with arbitrary fields (far more of them reach the typed fields).
    #[test]
    fn frame_shaped_values_decode_consistently(v in frame_value()) {
        decode_agrees(&v)?;
    }
}
