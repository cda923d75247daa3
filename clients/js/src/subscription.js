// The handle `GatewayClient.subscribe` returns: one listener of a topic. Several handles may
// share one subscription entry; the topic is unsubscribed when the last one stops.

import { positionOf } from './positions.js';

/** A handle on one subscription listener, returned by `GatewayClient.subscribe`. */
export class Subscription {
  constructor(client, entry, onMessage, options) {
    this._client = client;
    this._entry = entry;
    this._onMessage = onMessage;
    this._onGap = options.onGap || null;
    this._onJoin = options.onJoin || null;
    this._onLeave = options.onLeave || null;
    this.topic = entry.topic;
    this.closed = false;
  }

  /** The last `{seq, epoch}` delivered on this topic (null before the first reply). */
  get position() {
    return this._entry.closed ? null : positionOf(this._entry);
  }

  /** Resolves once the gateway confirmed the subscription (rejects if it refused it). */
  get ready() {
    return this._entry.ready;
  }

  /** Stops this listener; the topic is unsubscribed when its last listener stops. */
  unsubscribe() {
    if (this.closed) return Promise.resolve();
    this.closed = true;
    return this._client._removeHandle(this);
  }
}
