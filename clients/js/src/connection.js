// One connection at a time: opening a socket, the `hello` (resume token, positions, topics to
// subscribe), the `welcome` (which topics the resume restored), app-level pings that detect a
// dead connection, and closing for good.
//
// A socket's callbacks do nothing once `this._ws` is another socket, and `_open` checks its
// attempt's generation (`_gen`) after each await, so a socket or an attempt left behind (closed,
// timed out, superseded) cannot disturb its successor.
//
// `connectionMethods` are methods of `GatewayClient` (client.js adds them to its prototype).

import { GatewayError, asError } from './errors.js';
import { helloSubscriptions, samePosition } from './positions.js';
import { absoluteWsUrl } from './protocol.js';

/** Opening, keeping and closing the connection. */
export const connectionMethods = {
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
  },

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
  },

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
  },

  async _resolveUrl() {
    let u = this._url;
    if (typeof u === 'function') u = await u({ attempt: this._attempt, previous: this.url, pod: this.pod });
    else if (Array.isArray(u)) u = u[this._urlIndex % u.length];
    return absoluteWsUrl(String(u));
  },

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
  },

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
  },

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
  },

  _clearTimers(names = Object.keys(this._timers)) {
    for (const name of names) {
      if (name === 'save') continue;
      if (this._timers[name]) {
        clearTimeout(this._timers[name]);
        clearInterval(this._timers[name]);
        this._timers[name] = null;
      }
    }
  },

  _rejectConnect(err) {
    const waiters = this._connectWaiters;
    this._connectWaiters = [];
    for (const w of waiters) w.reject(err);
  },

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
  },

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
  },

  /** Round trip of one app-level ping, in milliseconds. */
  async ping() {
    const started = Date.now();
    await this._request({ type: 'ping' });
    return Date.now() - started;
  },
};
