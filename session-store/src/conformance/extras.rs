//! What an append carries besides its payload: a publish id, deduplicated within the window,
//! and an excluded session, kept with its message in every read.

use protocol::{PublishId, SessionId};

use crate::{ReverseHistory, SessionStore};

use super::{Harness, LONG, json, limits, seqs, topic};

pub async fn publish_ids_deduplicate<H: Harness>(h: &H) {
    let store = h.store(limits(100, LONG)).await;
    let t = topic("conf.dedup");
    let id = PublishId::new("order-17").expect("id");
    let first = store
        .append(&t, &json("1"), Some(&id))
        .await
        .expect("append");
    assert!(!first.duplicate);
    let retry = store
        .append(&t, &json("1"), Some(&id))
        .await
        .expect("append");
    assert!(retry.duplicate);
    assert_eq!((retry.seq, &retry.epoch), (first.seq, &first.epoch));
    assert_eq!(
        store.top(&t).await.expect("top").seq,
        first.seq,
        "nothing stored twice"
    );
    let other = PublishId::new("order-18").expect("id");
    let next = store
        .append(&t, &json("2"), Some(&other))
        .await
        .expect("append");
    assert_eq!((next.seq, next.duplicate), (first.seq + 1, false));
    // Ids are per topic.
    let elsewhere = store
        .append(&topic("conf.dedup-other"), &json("1"), Some(&id))
        .await
        .expect("append");
    assert!(!elsewhere.duplicate);
    assert_eq!(
        seqs(&store.history(&t, 0, 100).await.expect("history")),
        vec![1, 2]
    );
}

/// A message appended with an excluded session keeps it in history, in every read direction and
/// through the ordered path; a duplicate keeps the first append's exclusion.
fn excluding(session: &SessionId) -> crate::Extras<'_> {
    crate::Extras {
        exclude: Some(session),
        stage: None,
    }
}

pub async fn exclusions_are_kept_with_their_messages<H: Harness>(h: &H) {
    use crate::{Lane, OrderedAppends};
    let store = h.store(limits(100, LONG)).await;
    let t = topic("conf.exclude");
    let (a, b) = (SessionId::generate(), SessionId::generate());
    store.append(&t, &json("1"), None).await.expect("append");
    let id = PublishId::new("x-1").expect("id");
    store
        .append_with(&t, &json("2"), Some(&id), excluding(&a))
        .await
        .expect("append");
    let again = store
        .append_with(&t, &json("2"), Some(&id), excluding(&b))
        .await
        .expect("append");
    assert!(again.duplicate);
    let mut lane = Lane::new(1);
    store
        .issue_append_with(&mut lane, &t, &json("3"), None, excluding(&b))
        .await
        .expect("ordered append");
    store
        .issue_append(&mut lane, &t, &json("4"), None)
        .await
        .expect("ordered append");
    let expected = vec![(1, None), (2, Some(a)), (3, Some(b)), (4, None)];
    let forward = store.history(&t, 0, 100).await.expect("history");
    let got: Vec<_> = forward
        .messages
        .into_iter()
        .map(|m| (m.seq, m.exclude))
        .collect();
    assert_eq!(got, expected);
    let backward = store.history_before(&t, None, 100).await.expect("history");
    let mut got: Vec<_> = backward
        .messages
        .into_iter()
        .map(|m| (m.seq, m.exclude))
        .collect();
    got.reverse();
    assert_eq!(got, expected);
}
