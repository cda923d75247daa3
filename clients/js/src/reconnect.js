// Reconnecting: the full-jitter backoff, the close reason's advice (`after_ms`, `reconnect:false`,
// `token_expired`), and what the client does when a socket closes or cannot open.
//
// `reconnectMethods` are methods of `GatewayClient` (client.js adds them to its prototype).

import { GatewayError } from './errors.js';

/** A connection that stayed up this long resets the backoff. */
export const STABLE_MS = 5000;

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

/** What the client does when a connection ends: reconnect after a delay, or stop. */
export const reconnectMethods = {
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
  },

  _stop(err, info) {
    this._wantOpen = false;
    this._clearTimers();
    this._failRequests(err, true);
    this._emit('error', err);
    this._rejectConnect(err);
    this._setState('closed', info);
  },

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
  },
};
