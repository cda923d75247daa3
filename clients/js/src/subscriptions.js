// Subscriptions: one entry per topic (its position, its listeners), the `subscribe` frames and
// their replies, and the messages: each moves its topic's position by one `seq`, a duplicate is
// dropped and a hole or a new epoch is reported as a `gap`, never silently.
//
// `subscriptionMethods` are methods of `GatewayClient` (client.js adds them to its prototype).

import { GatewayError, callSafely } from './errors.js';
import { positionOf, samePosition } from './positions.js';
import { checkTopic } from './protocol.js';
import { Subscription } from './subscription.js';

/** Subscribing, and the frames that move a topic's position. */
export const subscriptionMethods = {
  /**
   * Subscribes `onMessage` to `topic`. `options.since` (`{seq, epoch}`) asks for the messages
   * after that position; without it, a position saved in `storage` is used, else delivery starts
   * with the next message; `options.last` (a count) starts that many messages before the latest
   * instead, the first time only (a room's recent messages on open; later subscribes resume from
   * the position). `options.onGap` is called like the `gap` event, for this topic;
   * `options.onJoin` / `options.onLeave` like the `join` / `leave` events.
   */
  subscribe(topic, onMessage, options = {}) {
    checkTopic(topic);
    if (typeof onMessage !== 'function') throw new TypeError('subscribe: onMessage must be a function');
    let entry = this._subs.get(topic);
    if (!entry) {
      entry = this._newEntry(topic, options.since || this._saved.get(topic) || null);
      if (options.last > 0 && entry.seq == null) entry.last = Math.floor(options.last);
      this._subs.set(topic, entry);
      this._saved.delete(topic);
      if (this.state === 'connected') this._sendSubscribe(entry);
    }
    const handle = new Subscription(this, entry, onMessage, options);
    entry.handles.add(handle);
    return handle;
  },

  _newEntry(topic, since) {
    const entry = {
      topic,
      handles: new Set(),
      seq: since ? since.seq : null,
      epoch: since ? since.epoch : null,
      pseq: since && since.pseq != null ? since.pseq : null,
      pepoch: since && since.pepoch != null ? since.pepoch : null,
      members: null,
      membersAt: null,
      last: null,
      confirmed: false,
      closed: false,
      server: false,
      ready: null,
      settle: null,
    };
    entry.ready = new Promise((resolve, reject) => (entry.settle = { resolve, reject }));
    entry.ready.catch(() => {});
    return entry;
  },

  _sendSubscribe(entry) {
    const frame = { type: 'subscribe', topic: entry.topic };
    const since = positionOf(entry);
    if (since) frame.since = since;
    else if (entry.last) frame.last = entry.last;
    const ref = this._nextRef++;
    frame.ref = ref;
    this._pending.set(ref, { kind: 'subscribe', frame, entry, since, last: !since && !!entry.last, sent: true });
    this._send(frame);
  },

  _removeHandle(handle) {
    const entry = handle._entry;
    entry.handles.delete(handle);
    if (entry.handles.size > 0 || entry.closed) return Promise.resolve();
    entry.closed = true;
    this._subs.delete(entry.topic);
    this._scheduleSave();
    entry.settle.reject(new GatewayError('unsubscribed', 'unsubscribed'));
    if (this.state !== 'connected') return Promise.resolve();
    return this._request({ type: 'unsubscribe', topic: entry.topic }, { queue: false }).then(
      () => undefined,
      (e) => {
        if (e.code === 'not_subscribed' || e.code === 'disconnected') return undefined;
        throw e;
      },
    );
  },

  _confirm(entry) {
    entry.confirmed = true;
    entry.settle.resolve(positionOf(entry));
  },

  _gap(entry, reason, from, to) {
    const gap = { topic: entry.topic, reason, from, to };
    let heard = this._emit('gap', gap);
    for (const h of entry.handles) {
      if (h._onGap) {
        callSafely(h._onGap, [gap]);
        heard = true;
      }
    }
    if (!heard && typeof console !== 'undefined') {
      console.warn(`gateway-client: gap on ${entry.topic} (${reason}) from`, from, 'to', to);
    }
  },

  /**
   * The subscription a reply without `ref` answers, when it answers the `hello`'s `subscribe`:
   * the replies come in array order, so it is the oldest one not answered yet (a `subscribed`
   * names its topic; an `error` does not). Null for anything else.
   */
  _helloReply(topic) {
    // Replies come in array order and name their topic (an `error` without one is about
    // something else: a resume's notice, a server-side subscription).
    const entry = this._helloSubscribed[0];
    if (!entry || topic == null || entry.topic !== topic) return null;
    this._helloSubscribed.shift();
    return { kind: 'subscribe', entry, since: null, last: false };
  },

  /** Unsubscribes a topic the gateway holds for this session that nothing here wants. */
  _unsubscribeOrphan(topic) {
    const ref = this._nextRef++;
    this._pending.set(ref, { kind: 'orphan', sent: true, timer: null, resolve() {}, reject() {} });
    this._send({ type: 'unsubscribe', topic, ref });
  },

  _onSubscribed(frame) {
    let req = frame.ref != null ? this._pending.get(frame.ref) : null;
    if (req) this._pending.delete(frame.ref);
    else if (frame.ref == null && frame.reason == null) {
      req = this._helloReply(frame.topic);
      // Unsubscribed while the hello was on its way: the gateway opened it anyway.
      if (req?.entry.closed && !this._subs.has(frame.topic)) return this._unsubscribeOrphan(frame.topic);
    }
    if (frame.reason === 'server' && !this._subs.has(frame.topic)) {
      // Subscribed by the application (connect hook or server API): its messages come as
      // `message` events; it is restored on resume like the client's own.
      const entry = this._newEntry(frame.topic, null);
      entry.server = true;
      entry.seq = frame.seq ?? null;
      entry.epoch = frame.epoch ?? null;
      this._subs.set(frame.topic, entry);
      this._confirm(entry);
      this._emit('subscribed', { topic: frame.topic, reason: 'server' });
      this._scheduleSave();
      return;
    }
    const entry = this._subs.get(frame.topic);
    if (!entry || (req && req.entry !== entry)) return;
    if (frame.pseq != null) {
      entry.pseq = frame.pseq;
      entry.pepoch = frame.pepoch;
    }
    const since = req ? req.since : null;
    const top = { seq: frame.seq, epoch: frame.epoch };
    if (since && frame.recovered === false) {
      if (!samePosition(since, top)) {
        this._gap(entry, since.epoch !== frame.epoch ? 'epoch_changed' : 'not_recovered', since, top);
      }
      entry.seq = frame.seq ?? null;
      entry.epoch = frame.epoch ?? null;
    } else if (since) {
      entry.epoch = frame.epoch ?? null;
    } else if (req && req.last && frame.recovered) {
      // The rewound messages follow, all of them older than `seq`: take each.
      entry.seq = null;
      entry.epoch = frame.epoch ?? null;
    } else {
      entry.seq = frame.seq ?? null;
      entry.epoch = frame.epoch ?? null;
    }
    entry.last = null;
    this._confirm(entry);
    this._scheduleSave();
  },

  /**
   * A message published with this session excluded: it takes the message's place in the order,
   * so the position moves past it exactly as a message would (a hole before it is still a gap),
   * but nothing reaches the application.
   */
  _onSkipped(frame) {
    const entry = this._subs.get(frame.topic);
    if (!entry || frame.seq == null) return;
    if (this._advance(entry, frame)) this._scheduleSave();
  },

  /**
   * Moves `entry` to `frame.seq` (a `message` or `skipped` frame of a topic with history),
   * reporting a new epoch or a hole as a gap. False when it is a duplicate.
   */
  _advance(entry, frame) {
    const seq = frame.seq;
    if (frame.epoch != null && entry.epoch != null && frame.epoch !== entry.epoch) {
      // The topic's history was lost on the server: sequence numbers start over.
      this._gap(entry, 'epoch_changed', positionOf(entry), { seq: seq - 1, epoch: frame.epoch });
      entry.seq = seq - 1;
      entry.epoch = frame.epoch;
    } else if (frame.epoch != null) {
      entry.epoch = frame.epoch;
    }
    if (entry.seq != null && seq <= entry.seq) {
      this._emit('duplicate', { topic: frame.topic, seq });
      return false;
    }
    if (entry.seq != null && seq > entry.seq + 1) {
      this._gap(entry, 'skipped', positionOf(entry), { seq: seq - 1, epoch: entry.epoch });
    }
    entry.seq = seq;
    return true;
  },

  _onMessage(frame) {
    const entry = this._subs.get(frame.topic);
    if (!entry) return;
    if (frame.seq == null) {
      // An ephemeral topic: no seq, no order to check, nothing to resume from.
      const message = { topic: frame.topic, seq: null, epoch: null, data: frame.data };
      for (const h of entry.handles) callSafely(h._onMessage, [message]);
      this._emit('message', message);
      return;
    }
    if (!this._advance(entry, frame)) return;
    const seq = frame.seq;
    const message = { topic: frame.topic, seq, epoch: entry.epoch, data: frame.data };
    for (const h of entry.handles) callSafely(h._onMessage, [message]);
    this._emit('message', message);
    this._scheduleSave();
  },

  _onUnsubscribed(frame) {
    if (frame.ref != null && this._pending.has(frame.ref)) return this._resolve(frame);
    // Removed by the server (e.g. a refreshed token no longer allows it).
    const entry = this._subs.get(frame.topic);
    if (!entry) return undefined;
    entry.closed = true;
    this._subs.delete(frame.topic);
    for (const h of entry.handles) h.closed = true;
    entry.settle.reject(new GatewayError(frame.reason || 'unsubscribed', `unsubscribed from ${frame.topic}`));
    this._emit('unsubscribed', { topic: frame.topic, reason: frame.reason || null });
    this._scheduleSave();
    return undefined;
  },
};
