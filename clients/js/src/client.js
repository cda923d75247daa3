// The client class: its state, its events, and the methods the other modules add to it.
//
// `GatewayClient` is one class whose methods are grouped by concern, one module each: the
// constructor (every field the client holds, with its meaning) and the event listeners are
// here; the rest come from the `*Methods` objects below, added to the prototype as a class body
// would add them (not enumerable), so the class is the same whichever module a method is in.

import { connectionMethods } from './connection.js';
import { callSafely } from './errors.js';
import { frameMethods } from './frames.js';
import { positionOf } from './positions.js';
import { presenceMethods } from './presence.js';
import { reconnectMethods } from './reconnect.js';
import { requestMethods } from './requests.js';
import { storageMethods } from './storage.js';
import { subscriptionMethods } from './subscriptions.js';
import { tokenMethods } from './token.js';

/**
 * A connection to the gateway that survives reconnects: see the README for the API.
 */
export class GatewayClient {
  constructor(url, options = {}) {
    if (!url || (Array.isArray(url) && url.length === 0)) throw new TypeError('GatewayClient: url is required');
    this._url = url;
    this._WS = options.WebSocket || globalThis.WebSocket;
    if (typeof this._WS !== 'function') {
      throw new TypeError('GatewayClient: no WebSocket implementation; pass options.WebSocket (e.g. the `ws` package)');
    }
    this._token = options.token ?? null;
    this._getToken = options.getToken || null;
    this._backoff = { initialMs: 500, maxMs: 30000, ...(options.backoff || {}) };
    this._maxAfterMs = options.maxAfterMs ?? 300000;
    this._storage = options.storage || null;
    this._storageKey = options.storageKey || 'gateway-client';
    this._pingIntervalMs = options.pingIntervalMs ?? 20000;
    this._pongTimeoutMs = options.pongTimeoutMs ?? 10000;
    this._connectTimeoutMs = options.connectTimeoutMs ?? 10000;
    this._requestTimeoutMs = options.requestTimeoutMs ?? 10000;
    this._refreshBeforeMs = options.refreshBeforeMs ?? 60000;
    this._autoRefresh = options.autoRefresh ?? true;
    this._random = options.random || Math.random;

    /** 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'closed' */
    this.state = 'idle';
    this.session = null;
    this.pod = null;
    this.user = null;
    this.url = null;

    this._resume = null;
    this._subs = new Map(); // topic -> entry
    this._saved = new Map(); // topic -> position loaded from storage, not subscribed yet
    this._listeners = new Map();
    this._pending = new Map(); // ref -> request
    this._queue = []; // requests waiting for a connection
    this._nextRef = 1;
    this._attempt = 0;
    this._urlIndex = 0;
    this._ws = null;
    this._gen = 0;
    this._wantOpen = false;
    this._tokenStale = false;
    this._welcome = null;
    this._everConnected = false;
    this._connectedAt = null;
    this._helloPositions = {};
    this._helloSubscribed = []; // entries in the last hello's `subscribe`, not answered yet
    this._connectWaiters = [];
    this._timers = { reconnect: null, connect: null, ping: null, pong: null, refresh: null, save: null };
    this._load();
  }

  /** Adds a listener; returns a function that removes it. */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
  }

  _emit(event, ...args) {
    const set = this._listeners.get(event);
    if (!set || set.size === 0) return false;
    for (const fn of [...set]) callSafely(fn, args);
    return true;
  }

  /**
   * Current positions of every subscribed topic: `{topic: {seq, epoch, pseq?, pepoch?}}`
   * (`pseq`/`pepoch`: the presence position on topics with join/leave events).
   */
  positions() {
    const out = {};
    for (const entry of this._subs.values()) {
      const p = positionOf(entry);
      if (p) out[entry.topic] = p;
    }
    return out;
  }

  _setState(state, info = {}) {
    if (this.state === state) return;
    const previous = this.state;
    this.state = state;
    this._emit('state', state, { previous, ...info });
  }
}

/**
 * Adds each group's methods to the prototype, non-enumerable like a class body's. A name
 * defined twice throws at load: two modules must not silently replace each other's method.
 */
function addMethods(cls, ...groups) {
  for (const group of groups) {
    for (const [name, descriptor] of Object.entries(Object.getOwnPropertyDescriptors(group))) {
      if (Object.prototype.hasOwnProperty.call(cls.prototype, name)) {
        throw new Error(`gateway-client: ${cls.name}.${name} is defined twice`);
      }
      Object.defineProperty(cls.prototype, name, { ...descriptor, enumerable: false });
    }
  }
}

addMethods(
  GatewayClient,
  connectionMethods,
  reconnectMethods,
  tokenMethods,
  requestMethods,
  subscriptionMethods,
  presenceMethods,
  frameMethods,
  storageMethods,
);
