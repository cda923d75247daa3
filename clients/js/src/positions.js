// Positions of a subscription entry (`{seq, epoch}`, with `{pseq, pepoch}` on topics with
// join/leave events), compared the way resumes and replies need them.
//
// An entry is the client's state of one subscribed topic (made by `_newEntry` in
// subscriptions.js): its position, its listeners, its member list and whether the gateway
// confirmed it.

export function positionOf(entry) {
  if (entry.seq == null || entry.epoch == null) return null;
  const p = { seq: entry.seq, epoch: entry.epoch };
  // The presence position travels with it (join/leave topics): the gateway replays from there.
  if (entry.pseq != null && entry.pepoch != null) {
    p.pseq = entry.pseq;
    p.pepoch = entry.pepoch;
  }
  return p;
}

export function samePosition(a, b) {
  return !!a && !!b && a.seq === b.seq && a.epoch === b.epoch;
}

/** Whether join/leave event or list `at` (`{pseq, epoch}`) is already reflected by `entry`. */
export function presenceSeen(entry, pseq, epoch) {
  return entry.pepoch === epoch && entry.pseq != null && pseq <= entry.pseq;
}

/**
 * The subscriptions a `hello` opens itself, in its `subscribe` array: those that need nothing
 * but the topic name. One with a position goes in `positions` (a resume restores it) or, when
 * the session is new, needs a `subscribe` frame with `since`; one with `last` needs its
 * `subscribe` frame too. The gateway answers the array after `welcome`, one `subscribed` or
 * `error` per topic, in array order, without `ref`.
 */
export function helloSubscriptions(entries) {
  return [...entries].filter((entry) => positionOf(entry) == null && !entry.last);
}
