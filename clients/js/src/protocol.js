// The wire protocol's version, and the checks the SDK makes before a frame leaves: topic names
// the gateway accepts, and WebSocket URLs made absolute (a page may pass a path like `/ws`).

export const PROTOCOL_VERSION = 1;

/** Topic names the gateway accepts: 1-200 characters of `[A-Za-z0-9_.:-]`. */
export const TOPIC_RE = /^[A-Za-z0-9_.:-]{1,200}$/;

export function checkTopic(topic) {
  if (typeof topic !== 'string' || !TOPIC_RE.test(topic)) {
    throw new TypeError(`invalid topic ${JSON.stringify(topic)}: 1-200 characters of A-Z a-z 0-9 _ . : -`);
  }
}

export function absoluteWsUrl(u) {
  if (/^wss?:\/\//i.test(u)) return u;
  const loc = globalThis.location;
  if (loc && typeof loc.host === 'string' && loc.host) {
    if (/^https?:\/\//i.test(u)) return u.replace(/^http/i, 'ws');
    const scheme = loc.protocol === 'https:' ? 'wss:' : 'ws:';
    return `${scheme}//${loc.host}${u.startsWith('/') ? '' : '/'}${u}`;
  }
  return u.replace(/^http/i, 'ws');
}
