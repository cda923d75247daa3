// Client SDK of the WebSocket gateway (wire protocol v1).
//
// Dependency-free ES modules for browsers (`<script type="module">`) and Node (pass a
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
//
// This file is the SDK's entry point: the implementation is split by concern into the modules it
// imports (client.js holds the class and lists the others), all in this directory, with relative
// imports only, so a page can load them as they are from wherever it loads this one.

export { PROTOCOL_VERSION } from './protocol.js';
export { GatewayError } from './errors.js';
export { backoffDelay, parseCloseReason } from './reconnect.js';
export { tokenExpiry } from './token.js';
export { Subscription } from './subscription.js';
export { GatewayClient } from './client.js';
export { GatewayClient as default } from './client.js';
