//! Reading the scripts' replies: the `{seq, epoch, ...}` head every topic script returns and the
//! `id, data, exclude` triples of a history reply.

use fred::prelude::Value;
use protocol::{Epoch, Payload, Position, SessionId};

use super::calls::corrupt;
use crate::{StoreError, StoredMessage};

/// Reads the `{seq, epoch, ...}` head that every topic script returns.
pub(super) fn parse_top(items: &mut std::vec::IntoIter<Value>) -> Result<Position, StoreError> {
    let seq = items
        .next()
        .and_then(|v| v.as_u64())
        .ok_or_else(|| corrupt("script reply without seq"))?;
    let epoch = items
        .next()
        .and_then(Value::into_string)
        .ok_or_else(|| corrupt("script reply without epoch"))?;
    Ok(Position {
        seq,
        epoch: Epoch::new(epoch),
    })
}

/// Reads one `id, data, exclude` triple of a history reply.
pub(super) fn parse_message(
    id: Value,
    data: Option<Value>,
    exclude: Option<Value>,
) -> Result<StoredMessage, StoreError> {
    let id = id
        .into_string()
        .ok_or_else(|| corrupt("history entry id is not text"))?;
    let seq = id
        .split_once('-')
        .and_then(|(seq, _)| seq.parse::<u64>().ok())
        .ok_or_else(|| corrupt(format!("history entry id {id:?}")))?;
    let text = data
        .and_then(Value::into_string)
        .ok_or_else(|| corrupt(format!("history entry {id} has no text payload")))?;
    let data = Payload::parse(&text)
        .map_err(|e| corrupt(format!("history entry {id} is not JSON: {e}")))?;
    let exclude = exclude
        .and_then(Value::into_string)
        .ok_or_else(|| corrupt(format!("history entry {id} has no exclusion field")))?;
    let exclude = match exclude.as_str() {
        "" => None,
        s => Some(
            SessionId::parse(s)
                .map_err(|e| corrupt(format!("history entry {id} excludes {s:?}: {e}")))?,
        ),
    };
    Ok(StoredMessage { seq, data, exclude })
}
