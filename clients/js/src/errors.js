// The SDK's error type, and how errors that are nobody's return value are reported: a listener's
// own error must not stop delivery to the others.

/** Error with a machine-readable `code` (the gateway's error codes, or the SDK's own). */
export class GatewayError extends Error {
  constructor(code, message, details) {
    super(message || code);
    this.name = 'GatewayError';
    this.code = code;
    if (details) Object.assign(this, details);
  }
}

export function asError(e, code) {
  return e instanceof Error ? Object.assign(e, { code: e.code || code }) : new GatewayError(code, String(e));
}

export function callSafely(fn, args) {
  try {
    fn(...args);
  } catch (e) {
    // A listener's bug must not break delivery to the others: report it like an uncaught error.
    setTimeout(() => {
      throw e;
    }, 0);
  }
}
