// Frames from the gateway: each is decoded and handed to its handler, in the order it came (a
// presence list is taken here, before later frames, not when its caller's await resumes).
// `error` frames are handled here: one answers a request, a subscription (by `ref`, or a
// `hello`'s topic in order), or nothing, and is then an `error` event.
//
// `frameMethods` are methods of `GatewayClient` (client.js adds them to its prototype).

import { GatewayError } from './errors.js';

/** Decoding and routing the frames from the gateway. */
export const frameMethods = {
  _onData(data) {
    if (this._timers.pong) {
      clearTimeout(this._timers.pong);
      this._timers.pong = null;
    }
    let frame;
    try {
      frame = JSON.parse(typeof data === 'string' ? data : new TextDecoder().decode(data));
    } catch {
      this._emit('error', new GatewayError('bad_frame', 'the gateway sent a frame that is not JSON'));
      return;
    }
    switch (frame.type) {
      case 'message':
        return this._onMessage(frame);
      case 'skipped':
        return this._onSkipped(frame);
      case 'welcome':
        return this._onWelcome(frame);
      case 'subscribed':
        return this._onSubscribed(frame);
      case 'unsubscribed':
        return this._onUnsubscribed(frame);
      case 'join':
      case 'leave':
        return this._onPresenceEvent(frame);
      case 'error':
        return this._onError(frame);
      case 'published':
      case 'pong':
      case 'refreshed':
      case 'presence':
        if (frame.ref == null) return this._onFreshList(frame);
        // Taken here, in frame order (not when the caller's await resumes, after later frames).
        if (frame.pseq != null && this._subs.has(frame.topic)) this._takeList(this._subs.get(frame.topic), frame);
        return this._resolve(frame);
      case 'history':
      case 'presence_stats':
      case 'rpc_result':
        return this._resolve(frame);
      default:
        return undefined;
    }
  },

  _onError(frame) {
    const err = new GatewayError(frame.code || 'internal', frame.message || frame.code);
    const req = frame.ref != null ? this._pending.get(frame.ref) : this._helloReply(frame.topic);
    if (!req) {
      this._emit('error', err);
      return;
    }
    if (frame.ref != null) this._pending.delete(frame.ref);
    if (req.kind === 'subscribe') {
      const entry = req.entry;
      err.topic = entry.topic;
      if (this._subs.get(entry.topic) === entry) this._subs.delete(entry.topic);
      entry.closed = true;
      for (const h of entry.handles) h.closed = true;
      entry.settle.reject(err);
      this._emit('error', err);
      return;
    }
    clearTimeout(req.timer);
    req.reject(err);
  },
};
