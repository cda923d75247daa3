//! Sessions: saved, loaded, deleted and expired, with claims that fence older generations and
//! stay ahead of a rolled-back record.

use std::collections::BTreeMap;
use std::time::Duration;

use protocol::{Epoch, SessionId};

use crate::{Owner, SessionRecord, SessionStore};

use super::{Harness, LONG, limits, pos, topic};

fn record(id: SessionId, user: Option<&str>) -> SessionRecord {
    let mut subscriptions = BTreeMap::new();
    subscriptions.insert(topic("chat.room-1"), pos(41, &Epoch::new("a1b2c3d4")));
    subscriptions.insert(topic("user:alice"), pos(0, &Epoch::new("00ff00ff")));
    SessionRecord {
        id,
        secret: "5e".repeat(32),
        user: user.map(str::to_owned),
        subscriptions,
        confirmed: true,
        created_ms: 1_700_000_000_123,
        last_pod: "gateway-0".into(),
        granted: Some(crate::HookGrant {
            sub: vec!["chat.*".into()],
            publish: vec![],
            expire_at: Some(1_900_000_000),
        }),
        info: Some(serde_json::json!({"name": "Alice", "tags": ["a", 1]})),
    }
}

pub async fn sessions_save_load_delete<H: Harness>(h: &H) {
    let store = h.store(limits(100, LONG)).await;
    let id = SessionId::generate();
    assert_eq!(store.load_session(&id).await.expect("load"), None);

    let mut session = record(id.clone(), Some("alice"));
    store.save_session(&session, 1, LONG).await.expect("save");
    assert_eq!(
        store.load_session(&id).await.expect("load"),
        Some(session.clone())
    );

    session.subscriptions.clear();
    session.user = None;
    session.last_pod = "gateway-7".into();
    store.save_session(&session, 1, LONG).await.expect("save");
    assert_eq!(store.load_session(&id).await.expect("load"), Some(session));

    let other = record(SessionId::generate(), None);
    store.save_session(&other, 1, LONG).await.expect("save");
    store.delete_session(&id).await.expect("delete");
    assert_eq!(store.load_session(&id).await.expect("load"), None);
    assert_eq!(
        store.load_session(&other.id).await.expect("load"),
        Some(other)
    );
    store
        .delete_session(&id)
        .await
        .expect("deleting twice is fine");
}

pub async fn sessions_expire_after_ttl<H: Harness>(h: &H) {
    let store = h.store(limits(100, LONG)).await;
    let ttl = Duration::from_secs(3);
    let session = record(SessionId::generate(), Some("bob"));
    store.save_session(&session, 1, ttl).await.expect("save");
    assert!(
        store
            .load_session(&session.id)
            .await
            .expect("load")
            .is_some()
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // Saving again restarts the ttl: at 3.5 s the first save would have expired, the second not.
    store.save_session(&session, 1, ttl).await.expect("save");
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert!(
        store
            .load_session(&session.id)
            .await
            .expect("load")
            .is_some()
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(store.load_session(&session.id).await.expect("load"), None);
}

pub async fn session_claims_fence_older_generations<H: Harness>(h: &H) {
    let store = h.store(limits(100, LONG)).await;
    let id = SessionId::generate();
    let first = store
        .claim_session(&id, "pod-a", LONG)
        .await
        .expect("claim");
    assert_eq!(first.previous, None);
    let mut session = record(id.clone(), Some("alice"));
    // The saver's pod is the owner the next claim reports.
    session.last_pod = "pod-a".into();
    assert!(
        store
            .save_session(&session, first.generation, LONG)
            .await
            .expect("save")
    );

    let second = store
        .claim_session(&id, "pod-b", LONG)
        .await
        .expect("claim");
    assert!(second.generation > first.generation);
    assert_eq!(
        second.previous,
        Some(Owner {
            pod: "pod-a".into(),
            generation: first.generation
        })
    );
    // The older connection's record is kept, but it may not write any more.
    assert_eq!(
        store.load_session(&id).await.expect("load"),
        Some(session.clone())
    );
    let stale = SessionRecord {
        last_pod: "pod-a".into(),
        subscriptions: BTreeMap::new(),
        ..session.clone()
    };
    assert!(
        !store
            .save_session(&stale, first.generation, LONG)
            .await
            .expect("save")
    );
    session.last_pod = "pod-b".into();
    assert!(
        store
            .save_session(&session, second.generation, LONG)
            .await
            .expect("save")
    );
    assert_eq!(store.load_session(&id).await.expect("load"), Some(session));
}

pub async fn a_rolled_back_session_still_saves_and_claims_stay_ahead<H: Harness>(h: &H) {
    let store = h.store(limits(100, LONG)).await;
    let id = SessionId::generate();
    let live = store
        .claim_session(&id, "pod-a", LONG)
        .await
        .expect("claim");
    let mut session = record(id.clone(), None);
    session.last_pod = "pod-a".into();
    // The store lost the session (flushed, or restored from before the claim): the live
    // connection's save is not refused, and records it again.
    store.delete_session(&id).await.expect("delete");
    assert!(
        store
            .save_session(&session, live.generation, LONG)
            .await
            .expect("save")
    );
    let next = store
        .claim_session(&id, "pod-b", LONG)
        .await
        .expect("claim");
    assert!(next.generation > live.generation);
    assert_eq!(next.previous.map(|o| o.pod), Some("pod-a".to_owned()));
}
