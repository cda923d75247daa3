// Requests that expect a reply by `ref` (publish, rpc, history, and the presence queries of
// presence.js): sent now when connected, else queued until the next `welcome`, each with its
// timeout; on a lost connection those in flight fail (their outcome is unknown) and queued ones
// wait for the reconnect.
//
// `requestMethods` are methods of `GatewayClient` (client.js adds them to its prototype).

import { GatewayError } from './errors.js';
import { checkTopic } from './protocol.js';

/** Requests and their replies. */
export const requestMethods = {
  /** Sends `frame` with a fresh `ref` now, or once connected; resolves with the reply frame. */
  _request(frame, { queue = true } = {}) {
    const ref = this._nextRef++;
    frame.ref = ref;
    return new Promise((resolve, reject) => {
      const req = { frame, resolve, reject, sent: false, timer: null };
      req.timer = setTimeout(() => {
        this._pending.delete(ref);
        const i = this._queue.indexOf(req);
        if (i >= 0) this._queue.splice(i, 1);
        reject(new GatewayError('timeout', `no reply to ${frame.type} within ${this._requestTimeoutMs} ms`));
      }, this._requestTimeoutMs);
      this._pending.set(ref, req);
      if (this.state === 'connected' && this._ws) {
        req.sent = this._send(frame);
      } else if (queue) {
        this._queue.push(req);
      } else {
        this._pending.delete(ref);
        clearTimeout(req.timer);
        reject(new GatewayError('disconnected', 'not connected'));
      }
    });
  },

  _resolve(frame) {
    if (frame.ref == null) return;
    const req = this._pending.get(frame.ref);
    if (!req) return;
    this._pending.delete(frame.ref);
    clearTimeout(req.timer);
    req.resolve(frame);
  },

  _flushQueue() {
    const queued = this._queue;
    this._queue = [];
    for (const req of queued) {
      if (!this._pending.has(req.frame.ref)) continue;
      req.sent = this._send(req.frame);
    }
  },

  /** Rejects requests in flight (their outcome is unknown); queued ones too when `all`. */
  _failRequests(err, all) {
    for (const [ref, req] of this._pending) {
      if (req.kind === 'subscribe') {
        // Subscriptions are sent again after the reconnect.
        this._pending.delete(ref);
        continue;
      }
      if (!req.sent && !all) continue;
      this._pending.delete(ref);
      clearTimeout(req.timer);
      req.reject(err);
    }
    if (all) this._queue = [];
    else this._queue = this._queue.filter((req) => !req.sent && this._pending.has(req.frame.ref));
  },

  /**
   * Publishes `data` (any JSON value) on `topic`; resolves with its `seq` (null on an
   * ephemeral topic, which has none). With `options.id` (a
   * publish id) a retry after a lost connection or `unavailable` gets the first attempt's `seq`.
   * With `options.excludeSelf: true` this client is not sent its own message: the gateway sends
   * a `skipped` frame in its place, so the topic's position moves past it (no `gap`, no
   * `message` event), live and on resumes.
   */
  async publish(topic, data, options = {}) {
    checkTopic(topic);
    if (data === undefined) throw new TypeError('publish: data must be a JSON value');
    if (!this._wantOpen && this.state !== 'connected') throw new GatewayError('closed', 'connect() first');
    const frame = { type: 'publish', topic, data };
    if (options.id != null) frame.id = String(options.id);
    if (options.excludeSelf) frame.exclude_self = true;
    const reply = await this._request(frame);
    return reply.seq ?? null;
  },

  /**
   * Calls `method` of the application's rpc hook with `data` (any JSON value, optional);
   * resolves with the answer's `data`, rejects with a GatewayError carrying the `error` code
   * (`unavailable` when the application did not answer).
   */
  async rpc(method, data) {
    if (typeof method !== 'string' || !/^[A-Za-z0-9_.:/-]{1,100}$/.test(method)) {
      throw new TypeError('rpc: method must be 1-100 characters of A-Z a-z 0-9 _ . : / -');
    }
    if (!this._wantOpen && this.state !== 'connected') throw new GatewayError('closed', 'connect() first');
    const frame = { type: 'rpc', method };
    if (data !== undefined) frame.data = data;
    const reply = await this._request(frame);
    return reply.data;
  },

  /**
   * Reads a page of `topic`'s history without subscribing; resolves with
   * `{seq, epoch, recovered?, messages: [{seq, data}]}` (`seq`/`epoch`: the topic's latest).
   * Without `since`: the latest `limit` messages, oldest first (newest first with `reverse`).
   * With `since` (`{seq, epoch}`): the messages after it, or before it with `reverse`. To render
   * the last messages and then go live without a gap, subscribe with `since` set to the last
   * message of the page.
   */
  async history(topic, { since, limit, reverse } = {}) {
    checkTopic(topic);
    if (!this._wantOpen && this.state !== 'connected') throw new GatewayError('closed', 'connect() first');
    const frame = { type: 'history', topic };
    if (since) frame.since = { seq: since.seq, epoch: since.epoch };
    if (limit != null) frame.limit = limit;
    if (reverse) frame.reverse = true;
    const reply = await this._request(frame);
    const page = { seq: reply.seq, epoch: reply.epoch, messages: reply.messages };
    if (reply.recovered != null) page.recovered = reply.recovered;
    return page;
  },
};
