// Client SDK of the WebSocket gateway (wire protocol v1).
//
// A dependency-free ES module for browsers (`<script type="module">`) and Node (pass a
// WebSocket implementation such as the `ws` package when there is no global one).
//
// What it guarantees on top of the gateway's own guarantees:
// - Reconnects with full-jitter exponential backoff (bounded), and follows the server's close
//   advice: `after_ms` is honoured, `reconnect:false` stops, `token_expired` fetches a new token
//   through `getToken` and resumes.
// - Resumes losslessly: keeps the resume token and each topic's `{seq, epoch}` position (in
//   `storage` too, when given), presents them in `hello`, re-subscribes with `since` when the
//   session could not be resumed, drops duplicates by `seq`, and reports every loss as a `gap`
//   event: never silently.
// - Follows join/leave events (namespaces with `join_leave`) in `pseq` order: resumes with each
//   topic's `{pseq, pepoch}` so the gateway replays what was missed, keeps the room's member
//   list current (`members(topic)`, the `members` event), and takes a fresh `presence` list
//   (`recovered: false`) when the events could not be replayed.
// - Detects dead connections (no close frame) with app-level pings and a pong timeout.
// - Refreshes the token with `refresh` before it expires.

export const PROTOCOL_VERSION = 1;

/** Topic names the gateway accepts: 1-200 characters of `[A-Za-z0-9_.:-]`. */
const TOPIC_RE = /^[A-Za-z0-9_.:-]{1,200}$/;

/** A connection that stayed up this long resets the backoff. */
const STABLE_MS = 5000;

/** Error with a machine-readable `code` (the gateway's error codes, or the SDK's own). */
export class GatewayError extends Error {
  constructor(code, message, details) {
    super(message || code);
    this.name = 'GatewayError';
    this.code = code;
    if (details) Object.assign(this, details);
  }
}

/**
 * Full-jitter exponential backoff: a delay drawn uniformly from
 * `[0, min(maxMs, initialMs * 2^attempt)]`.
 */
export function backoffDelay(attempt, backoff = {}, random = Math.random) {
  const initialMs = backoff.initialMs ?? 500;
  const maxMs = backoff.maxMs ?? 30000;
  const cap = Math.min(maxMs, initialMs * 2 ** Math.min(Math.max(attempt, 0), 30));
  return Math.floor(random() * cap);
}

/** The reconnect advice of a close reason (`{"reconnect":bool,"after_ms"?:n,"error"?:s}`), or null. */
export function parseCloseReason(reason) {
  if (typeof reason !== 'string' || reason[0] !== '{') return null;
  try {
    const v = JSON.parse(reason);
    if (v === null || typeof v !== 'object' || typeof v.reconnect !== 'boolean') return null;
    const advice = { reconnect: v.reconnect };
    if (Number.isFinite(v.after_ms) && v.after_ms >= 0) advice.after_ms = v.after_ms;
    if (typeof v.error === 'string') advice.error = v.error;
    return advice;
  } catch {
    return null;
  }
}

/** The `exp` claim (seconds since the Unix epoch) of a JWT, or null. The signature is not checked. */
export function tokenExpiry(token) {
  if (typeof token !== 'string') return null;
  const part = token.split('.')[1];
  if (!part) return null;
  try {
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const padded = b64 + '='.repeat((4 - (b64.length % 4)) % 4);
    const json = decodeBase64(padded);
    const exp = JSON.parse(json).exp;
    return Number.isFinite(exp) ? exp : null;
  } catch {
    return null;
  }
}

function decodeBase64(s) {
  if (typeof atob === 'function') {
    const bin = atob(s);
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    return new TextDecoder().decode(bytes);
  }
  return globalThis.Buffer.from(s, 'base64').toString('utf8');
}

/**
 * The subscriptions a `hello` opens itself, in its `subscribe` array: those that need nothing
 * but the topic name. One with a position goes in `positions` (a resume restores it) or, when
 * the session is new, needs a `subscribe` frame with `since`; one with `last` needs its
 * `subscribe` frame too. The gateway answers the array after `welcome`, one `subscribed` or
 * `error` per topic, in array order, without `ref`.
 */
function helloSubscriptions(entries) {
  return [...entries].filter((entry) => positionOf(entry) == null && !entry.last);
}

function samePosition(a, b) {
  return !!a && !!b && a.seq === b.seq && a.epoch === b.epoch;
}

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

function positionOf(entry) {
  if (entry.seq == null || entry.epoch == null) return null;
  const p = { seq: entry.seq, epoch: entry.epoch };
  // The presence position travels with it (join/leave topics): the gateway replays from there.
  if (entry.pseq != null && entry.pepoch != null) {
    p.pseq = entry.pseq;
    p.pepoch = entry.pepoch;
  }
  return p;
}

/** Whether join/leave event or list `at` (`{pseq, epoch}`) is already reflected by `entry`. */
function presenceSeen(entry, pseq, epoch) {
  return entry.pepoch === epoch && entry.pseq != null && pseq <= entry.pseq;
}

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

  // ---- events ---------------------------------------------------------------------------

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

  // ---- connection -----------------------------------------------------------------------

  /** Opens the connection (and keeps it open). Resolves with the first `welcome`. */
  connect() {
    if (this.state === 'connected') return Promise.resolve(this._welcome);
    const p = new Promise((resolve, reject) => this._connectWaiters.push({ resolve, reject }));
    p.catch(() => {});
    if (!this._wantOpen) {
      this._wantOpen = true;
      this._attempt = 0;
      this._open();
    }
    return p;
  }

  /** Closes the connection for good (code 1000); the session stays resumable for a while. */
  close() {
    const wasOpen = this._wantOpen || this._ws;
    this._wantOpen = false;
    this._gen++;
    this._clearTimers();
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      try {
        ws.close(1000, '');
      } catch {
        // already closing
      }
    }
    this._failRequests(new GatewayError('closed', 'the client was closed'), true);
    for (const entry of this._subs.values()) entry.confirmed = false;
    this._rejectConnect(new GatewayError('closed', 'the client was closed'));
    this._saveNow();
    this._everConnected = false;
    this._connectedAt = null;
    if (wasOpen || this.state !== 'closed') this._setState('closed', { code: 1000 });
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

  async _open() {
    const gen = ++this._gen;
    if (this.state !== 'connecting' && this.state !== 'reconnecting') {
      this._setState(this._everConnected ? 'reconnecting' : 'connecting', { attempt: this._attempt });
    }
    let url;
    let token;
    try {
      url = await this._resolveUrl();
      token = await this._currentToken();
    } catch (e) {
      if (gen !== this._gen || !this._wantOpen) return;
      this._emit('error', asError(e, 'token'));
      this._scheduleReconnect({ code: 0, reason: '', advice: null, error: 'token' });
      return;
    }
    if (gen !== this._gen || !this._wantOpen) return;
    let ws;
    try {
      ws = new this._WS(url);
    } catch (e) {
      this._emit('error', asError(e, 'bad_url'));
      this._scheduleReconnect({ code: 0, reason: '', advice: null, error: 'bad_url' });
      return;
    }
    this.url = url;
    this._ws = ws;
    this._timers.connect = setTimeout(() => {
      if (this._ws !== ws) return;
      this._abandon(ws);
      this._onSocketClosed({ code: 1006, reason: '', error: 'connect_timeout' });
    }, this._connectTimeoutMs);
    ws.onopen = () => {
      if (this._ws !== ws) return;
      this._sendHello(token);
    };
    ws.onmessage = (ev) => {
      if (this._ws !== ws) return;
      this._onData(ev.data);
    };
    ws.onerror = () => {
      // A close event follows; it carries what matters.
    };
    ws.onclose = (ev) => {
      if (this._ws !== ws) return;
      this._ws = null;
      this._onSocketClosed({ code: ev.code, reason: ev.reason || '' });
    };
  }

  async _resolveUrl() {
    let u = this._url;
    if (typeof u === 'function') u = await u({ attempt: this._attempt, previous: this.url, pod: this.pod });
    else if (Array.isArray(u)) u = u[this._urlIndex % u.length];
    return absoluteWsUrl(String(u));
  }

  async _currentToken() {
    if (!this._getToken) return this._token;
    const exp = tokenExpiry(this._token);
    const expired = exp != null && exp * 1000 - Date.now() < 1000;
    if (this._token == null || this._tokenStale || expired) {
      const token = await this._getToken();
      this._token = token ?? null;
      this._tokenStale = false;
    }
    return this._token;
  }

  _sendHello(token) {
    const hello = { type: 'hello' };
    if (token) hello.token = token;
    if (this._resume) hello.resume = this._resume;
    const positions = this.positions();
    if (Object.keys(positions).length > 0) hello.positions = positions;
    this._helloPositions = positions;
    this._helloSubscribed = helloSubscriptions(this._subs.values());
    if (this._helloSubscribed.length > 0) hello.subscribe = this._helloSubscribed.map((entry) => entry.topic);
    this._send(hello);
  }

  /** Drops a socket without waiting for a close handshake (it may be dead). */
  _abandon(ws) {
    if (this._ws === ws) this._ws = null;
    ws.onopen = ws.onmessage = ws.onclose = null;
    ws.onerror = () => {};
    try {
      if (typeof ws.terminate === 'function') ws.terminate();
      else ws.close(4000, 'unresponsive');
    } catch {
      // nothing to do
    }
  }

  _onSocketClosed({ code, reason, error }) {
    this._clearTimers(['connect', 'ping', 'pong', 'refresh']);
    if (this._connectedAt != null && Date.now() - this._connectedAt >= STABLE_MS) this._attempt = 0;
    this._connectedAt = null;
    const advice = parseCloseReason(reason);
    this._failRequests(new GatewayError('disconnected', 'the connection closed before the reply'), false);
    this._helloSubscribed = [];
    for (const entry of this._subs.values()) entry.confirmed = false;
    this._saveNow();
    const info = { code, reason, advice, error: error || advice?.error };
    this._emit('close', info);
    if (!this._wantOpen) {
      this._setState('closed', info);
      return;
    }
    if (advice?.error === 'disconnected') this._emit('disconnected', info);
    if (advice && advice.reconnect === false) {
      this._stop(new GatewayError(advice.error || 'closed', `closed by the gateway (${code}${advice.error ? ` ${advice.error}` : ''}), not reconnecting`, { closeCode: code }), info);
      return;
    }
    if (advice?.error === 'token_expired') {
      if (!this._getToken) {
        this._stop(new GatewayError('token_expired', 'the token expired and no getToken was given'), info);
        return;
      }
      this._tokenStale = true;
    }
    this._scheduleReconnect(info);
  }

  _stop(err, info) {
    this._wantOpen = false;
    this._clearTimers();
    this._failRequests(err, true);
    this._emit('error', err);
    this._rejectConnect(err);
    this._setState('closed', info);
  }

  _scheduleReconnect(info) {
    const advice = info.advice;
    const delayMs =
      advice && advice.after_ms != null
        ? Math.min(advice.after_ms, this._maxAfterMs)
        : backoffDelay(this._attempt, this._backoff, this._random);
    const attempt = ++this._attempt;
    this._urlIndex++;
    const detail = { ...info, attempt, delayMs };
    this._setState(this._everConnected ? 'reconnecting' : 'connecting', detail);
    this._emit('reconnecting', detail);
    clearTimeout(this._timers.reconnect);
    this._timers.reconnect = setTimeout(() => {
      this._timers.reconnect = null;
      if (this._wantOpen) this._open();
    }, delayMs);
  }

  _clearTimers(names = Object.keys(this._timers)) {
    for (const name of names) {
      if (name === 'save') continue;
      if (this._timers[name]) {
        clearTimeout(this._timers[name]);
        clearInterval(this._timers[name]);
        this._timers[name] = null;
      }
    }
  }

  _rejectConnect(err) {
    const waiters = this._connectWaiters;
    this._connectWaiters = [];
    for (const w of waiters) w.reject(err);
  }

  _send(frame) {
    const ws = this._ws;
    if (!ws) return false;
    try {
      ws.send(JSON.stringify(frame));
      return true;
    } catch (e) {
      this._emit('error', asError(e, 'send'));
      return false;
    }
  }

  // ---- liveness -------------------------------------------------------------------------

  _startPing() {
    if (!(this._pingIntervalMs > 0)) return;
    this._timers.ping = setInterval(() => {
      if (this.state !== 'connected') return;
      this._send({ type: 'ping' });
      if (!this._timers.pong) {
        const ws = this._ws;
        this._timers.pong = setTimeout(() => {
          this._timers.pong = null;
          if (!ws || this._ws !== ws) return;
          this._abandon(ws);
          this._onSocketClosed({ code: 1006, reason: '', error: 'pong_timeout' });
        }, this._pongTimeoutMs);
      }
    }, this._pingIntervalMs);
  }

  /** Round trip of one app-level ping, in milliseconds. */
  async ping() {
    const started = Date.now();
    await this._request({ type: 'ping' });
    return Date.now() - started;
  }

  // ---- token refresh --------------------------------------------------------------------

  _scheduleRefresh(expSec) {
    clearTimeout(this._timers.refresh);
    this._timers.refresh = null;
    if (!this._getToken || !this._autoRefresh) return;
    const exp = expSec ?? tokenExpiry(this._token);
    if (exp == null) return;
    const remaining = exp * 1000 - Date.now();
    const delay = remaining > 2 * this._refreshBeforeMs ? remaining - this._refreshBeforeMs : Math.max(0, remaining / 2);
    this._timers.refresh = setTimeout(() => {
      this._timers.refresh = null;
      this.refresh().catch((e) => this._emit('error', asError(e, 'refresh')));
    }, delay);
  }

  /** Fetches a new token with `getToken` (or uses `token`) and sends `refresh`. */
  async refresh(token) {
    if (token === undefined) {
      if (!this._getToken) throw new GatewayError('no_token', 'refresh needs getToken or a token');
      token = await this._getToken();
    }
    this._token = token;
    if (this.state !== 'connected') return null;
    const reply = await this._request({ type: 'refresh', token });
    const exp = reply.exp ?? tokenExpiry(token);
    this._emit('refreshed', { exp: exp ?? null });
    this._scheduleRefresh(exp);
    return exp ?? null;
  }

  // ---- requests -------------------------------------------------------------------------

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
  }

  _flushQueue() {
    const queued = this._queue;
    this._queue = [];
    for (const req of queued) {
      if (!this._pending.has(req.frame.ref)) continue;
      req.sent = this._send(req.frame);
    }
  }

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
  }

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
  }

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
  }

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
  }

  /** The members present in `topic` (`[{user?, session, info?}]`); rejects `limit_reached` on big topics. */
  async presence(topic) {
    checkTopic(topic);
    if (!this._wantOpen && this.state !== 'connected') throw new GatewayError('closed', 'connect() first');
    const reply = await this._request({ type: 'presence', topic });
    return reply.members;
  }

  /**
   * The members of `topic` as the join/leave events keep them (`[{user?, session, info?}]`), or null
   * until a list is known: call `presence(topic)` once after subscribing, then the events (and
   * any fresh list the gateway sends) keep it current; the `members` event tells each change.
   */
  members(topic) {
    const entry = this._subs.get(topic);
    return entry && entry.members ? [...entry.members.values()] : null;
  }

  /** The presence position of `topic` (`{pseq, epoch}`), or null on a topic without events. */
  presencePosition(topic) {
    const entry = this._subs.get(topic);
    return entry && entry.pseq != null ? { pseq: entry.pseq, epoch: entry.pepoch } : null;
  }

  // A member list at position `{pseq, epoch}`: replaces the tracked members unless the events
  // already went past it (a list answered while later events were on their way).
  _takeList(entry, frame) {
    if (entry.membersAt && presenceSeen({ pseq: entry.membersAt.pseq, pepoch: entry.membersAt.epoch }, frame.pseq, frame.epoch)) {
      return;
    }
    entry.members = new Map(frame.members.map((m) => [m.session, m]));
    entry.membersAt = { pseq: frame.pseq, epoch: frame.epoch };
    if (!presenceSeen(entry, frame.pseq, frame.epoch)) {
      entry.pseq = frame.pseq;
      entry.pepoch = frame.epoch;
    }
    this._emit('members', { topic: entry.topic, members: [...entry.members.values()] });
  }

  /** `{members, users}` of `topic`'s presence: cheap at any size. */
  async presenceStats(topic) {
    checkTopic(topic);
    if (!this._wantOpen && this.state !== 'connected') throw new GatewayError('closed', 'connect() first');
    const reply = await this._request({ type: 'presence_stats', topic });
    return { members: reply.members, users: reply.users };
  }

  // ---- subscriptions --------------------------------------------------------------------

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
  }

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
  }

  _sendSubscribe(entry) {
    const frame = { type: 'subscribe', topic: entry.topic };
    const since = positionOf(entry);
    if (since) frame.since = since;
    else if (entry.last) frame.last = entry.last;
    const ref = this._nextRef++;
    frame.ref = ref;
    this._pending.set(ref, { kind: 'subscribe', frame, entry, since, last: !since && !!entry.last, sent: true });
    this._send(frame);
  }

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
  }

  _confirm(entry) {
    entry.confirmed = true;
    entry.settle.resolve(positionOf(entry));
  }

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
  }

  // ---- frames from the gateway ---------------------------------------------------------

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
  }

  _resolve(frame) {
    if (frame.ref == null) return;
    const req = this._pending.get(frame.ref);
    if (!req) return;
    this._pending.delete(frame.ref);
    clearTimeout(req.timer);
    req.resolve(frame);
  }

  _onWelcome(frame) {
    clearTimeout(this._timers.connect);
    this._timers.connect = null;
    this.session = frame.session;
    this.pod = frame.pod;
    this.user = frame.user ?? null;
    this._resume = frame.resume;
    this._welcome = frame;
    this._connectedAt = Date.now();
    this._everConnected = true;
    const restored = frame.resumed ? frame.topics || {} : {};
    // Restored topics first: their replay follows the welcome.
    for (const [topic, t] of Object.entries(restored)) {
      const entry = this._subs.get(topic);
      if (!entry) {
        // Restored from the session but no longer wanted here.
        this._unsubscribeOrphan(topic);
        continue;
      }
      const sent = this._helloPositions[topic] || null;
      const top = { seq: t.seq, epoch: t.epoch };
      if (t.pseq != null) {
        // The presence position the gateway follows from (missed events or a list follow).
        entry.pseq = t.pseq;
        entry.pepoch = t.pepoch;
      }
      if (t.recovered) {
        // Missed messages follow, from the position the gateway resumed from.
        if (!sent) entry.seq = null;
        entry.epoch = t.epoch;
      } else {
        if (sent && !samePosition(sent, top)) {
          this._gap(entry, sent.epoch !== t.epoch ? 'epoch_changed' : 'not_recovered', sent, top);
        }
        entry.seq = t.seq ?? null;
        entry.epoch = t.epoch ?? null;
      }
      this._confirm(entry);
    }
    this._setState('connected', { pod: frame.pod, resumed: !!frame.resumed });
    this._emit('welcome', frame);
    for (const entry of this._subs.values()) {
      if (!(entry.topic in restored) && !this._helloSubscribed.includes(entry)) this._sendSubscribe(entry);
    }
    this._flushQueue();
    this._startPing();
    this._scheduleRefresh(null);
    this._scheduleSave();
    const waiters = this._connectWaiters;
    this._connectWaiters = [];
    for (const w of waiters) w.resolve(frame);
  }

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
  }

  /** Unsubscribes a topic the gateway holds for this session that nothing here wants. */
  _unsubscribeOrphan(topic) {
    const ref = this._nextRef++;
    this._pending.set(ref, { kind: 'orphan', sent: true, timer: null, resolve() {}, reject() {} });
    this._send({ type: 'unsubscribe', topic, ref });
  }

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
  }

  /**
   * A message published with this session excluded: it takes the message's place in the order,
   * so the position moves past it exactly as a message would (a hole before it is still a gap),
   * but nothing reaches the application.
   */
  _onSkipped(frame) {
    const entry = this._subs.get(frame.topic);
    if (!entry || frame.seq == null) return;
    if (this._advance(entry, frame)) this._scheduleSave();
  }

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
  }

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
  }

  // A join or leave: the gateway sends each topic's events in pseq order (replaying what a
  // resume missed); one already reflected (an older list's) is only skipped.
  _onPresenceEvent(frame) {
    const entry = this._subs.get(frame.topic);
    if (!entry) return;
    if (presenceSeen(entry, frame.pseq, frame.epoch)) {
      this._emit('duplicate', { topic: frame.topic, pseq: frame.pseq });
      return;
    }
    entry.pseq = frame.pseq;
    entry.pepoch = frame.epoch;
    const event = { topic: frame.topic, pseq: frame.pseq, epoch: frame.epoch, member: frame.member };
    for (const h of entry.handles) {
      const fn = frame.type === 'join' ? h._onJoin : h._onLeave;
      if (fn) callSafely(fn, [event]);
    }
    this._emit(frame.type, event);
    const at = entry.membersAt;
    if (entry.members && !(at && presenceSeen({ pseq: at.pseq, pepoch: at.epoch }, frame.pseq, frame.epoch))) {
      if (frame.type === 'join') entry.members.set(frame.member.session, frame.member);
      else entry.members.delete(frame.member.session);
      entry.membersAt = { pseq: frame.pseq, epoch: frame.epoch };
      this._emit('members', { topic: entry.topic, members: [...entry.members.values()] });
    }
    this._scheduleSave();
  }

  // A list sent in place of join/leave events the gateway could not replay (trimmed log, a
  // lost log's new epoch): it replaces the members, and events follow on from its position.
  _onFreshList(frame) {
    const entry = this._subs.get(frame.topic);
    if (!entry) return;
    entry.members = null;
    entry.membersAt = null;
    entry.pseq = null;
    this._takeList(entry, frame);
    this._emit('presence', { topic: frame.topic, members: frame.members, pseq: frame.pseq, epoch: frame.epoch, recovered: false });
    this._scheduleSave();
  }

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
  }

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
  }

  // ---- storage --------------------------------------------------------------------------

  _load() {
    if (!this._storage) return;
    try {
      const raw = this._storage.getItem(this._storageKey);
      if (!raw) return;
      const v = JSON.parse(raw);
      if (typeof v.resume === 'string') this._resume = v.resume;
      for (const [topic, p] of Object.entries(v.positions || {})) {
        if (TOPIC_RE.test(topic) && Number.isFinite(p?.seq) && typeof p?.epoch === 'string') {
          const saved = { seq: p.seq, epoch: p.epoch };
          if (Number.isFinite(p.pseq) && typeof p.pepoch === 'string') {
            saved.pseq = p.pseq;
            saved.pepoch = p.pepoch;
          }
          this._saved.set(topic, saved);
        }
      }
    } catch {
      // A corrupt entry is ignored: the client starts a new session.
    }
  }

  _scheduleSave() {
    if (!this._storage || this._timers.save) return;
    this._timers.save = setTimeout(() => {
      this._timers.save = null;
      this._saveNow();
    }, 50);
  }

  _saveNow() {
    if (!this._storage) return;
    clearTimeout(this._timers.save);
    this._timers.save = null;
    const positions = Object.fromEntries(this._saved);
    Object.assign(positions, this.positions());
    try {
      this._storage.setItem(this._storageKey, JSON.stringify({ v: 1, resume: this._resume, positions }));
    } catch {
      // Storage full or refused: resume still works within this page's lifetime.
    }
  }
}

function checkTopic(topic) {
  if (typeof topic !== 'string' || !TOPIC_RE.test(topic)) {
    throw new TypeError(`invalid topic ${JSON.stringify(topic)}: 1-200 characters of A-Z a-z 0-9 _ . : -`);
  }
}

function absoluteWsUrl(u) {
  if (/^wss?:\/\//i.test(u)) return u;
  const loc = globalThis.location;
  if (loc && typeof loc.host === 'string' && loc.host) {
    if (/^https?:\/\//i.test(u)) return u.replace(/^http/i, 'ws');
    const scheme = loc.protocol === 'https:' ? 'wss:' : 'ws:';
    return `${scheme}//${loc.host}${u.startsWith('/') ? '' : '/'}${u}`;
  }
  return u.replace(/^http/i, 'ws');
}

function asError(e, code) {
  return e instanceof Error ? Object.assign(e, { code: e.code || code }) : new GatewayError(code, String(e));
}

function callSafely(fn, args) {
  try {
    fn(...args);
  } catch (e) {
    // A listener's bug must not break delivery to the others: report it like an uncaught error.
    setTimeout(() => {
      throw e;
    }, 0);
  }
}

export default GatewayClient;
