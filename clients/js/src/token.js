// The token: its `exp` claim, the one a connection presents (fetched again through `getToken` when
// missing, expired or refused), and its refresh before it expires.
//
// `tokenMethods` are methods of `GatewayClient` (client.js adds them to its prototype).

import { GatewayError, asError } from './errors.js';

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

export function decodeBase64(s) {
  if (typeof atob === 'function') {
    const bin = atob(s);
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    return new TextDecoder().decode(bytes);
  }
  return globalThis.Buffer.from(s, 'base64').toString('utf8');
}

/** The token a connection presents, and its refresh. */
export const tokenMethods = {
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
  },

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
  },

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
  },
};
