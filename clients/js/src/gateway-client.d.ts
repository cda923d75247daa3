// Types of the gateway client SDK (gateway-client.js).

/** Wire protocol version this SDK speaks. */
export declare const PROTOCOL_VERSION: 1;

/** Any JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** A client's place in a topic: the last `seq` it received, in which `epoch` of the topic's history. */
export interface Position {
  seq: number;
  epoch: string;
  /** On a topic with join/leave events: the last presence event's `pseq`, in presence epoch `pepoch`. */
  pseq?: number;
  pepoch?: string;
}

/** A join or leave (namespaces with `join_leave`), in `pseq` order per topic. */
export interface PresenceEvent {
  topic: string;
  pseq: number;
  /** The topic's presence epoch (its own, not the messages'). */
  epoch: string;
  member: PresenceMember;
}

/** A member list the gateway sent in place of join/leave events it could not replay. */
export interface FreshPresence {
  topic: string;
  members: PresenceMember[];
  pseq: number;
  epoch: string;
  recovered: false;
}

/** Reconnect advice carried in a close reason: `{"reconnect":bool,"after_ms"?:n,"error"?:s}`. */
export interface CloseAdvice {
  reconnect: boolean;
  after_ms?: number;
  error?: string;
}

export type ConnectionState = 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'closed';

/** Where to connect: one URL, a list tried in turn (next one after each disconnect), or a function. */
export type GatewayUrl =
  | string
  | string[]
  | ((info: { attempt: number; previous: string | null; pod: string | null }) => string | Promise<string>);

/** The part of `Storage` (e.g. `sessionStorage`) the client uses. */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

export interface BackoffOptions {
  /** Upper bound of the first reconnect delay (default 500 ms); doubles per failed attempt. */
  initialMs?: number;
  /** Upper bound of any reconnect delay (default 30000 ms). */
  maxMs?: number;
}

export interface GatewayClientOptions {
  /** A JWT presented in `hello`. */
  token?: string;
  /** Returns a (new) JWT: called before connecting without a token, after `token_expired`, and before `exp` to refresh. */
  getToken?: () => string | Promise<string>;
  /** WebSocket constructor; default `globalThis.WebSocket` (pass the `ws` package in Node < 22). */
  WebSocket?: new (url: string) => any;
  backoff?: BackoffOptions;
  /** Upper bound applied to a server's `after_ms` (default 300000). */
  maxAfterMs?: number;
  /** Keeps the resume token and positions across page reloads (e.g. `sessionStorage`). */
  storage?: StorageLike;
  /** Key in `storage` (default `gateway-client`). */
  storageKey?: string;
  /** Interval of app-level pings while connected (default 20000; 0 disables). */
  pingIntervalMs?: number;
  /** A connection silent this long after a ping is dropped and resumed (default 10000). */
  pongTimeoutMs?: number;
  /** Time allowed from opening a socket to `welcome` (default 10000). */
  connectTimeoutMs?: number;
  /** Time allowed for a reply to `publish`, `ping`, `refresh` (default 10000). */
  requestTimeoutMs?: number;
  /** Refresh the token this long before its `exp` (default 60000; half its lifetime when shorter). */
  refreshBeforeMs?: number;
  /** Send `refresh` with a token from `getToken` before `exp` (default true). */
  autoRefresh?: boolean;
  /** Source of randomness for the backoff jitter (default `Math.random`). */
  random?: () => number;
}

/** A message delivered on a topic. */
export interface Message<T = Json> {
  topic: string;
  /** `null` on an ephemeral topic (a namespace without history: at-most-once, no order checks). */
  seq: number | null;
  epoch: string | null;
  data: T;
}

/**
 * Messages that could not be delivered: never silent.
 * - `not_recovered`: the resume position is older than the topic's history (`recovered:false`).
 * - `epoch_changed`: the topic's history was lost on the server; sequence numbers start over.
 * - `skipped`: a message arrived ahead of the next expected `seq`.
 * Delivery continues after `to`.
 */
export interface GapEvent {
  topic: string;
  reason: 'not_recovered' | 'epoch_changed' | 'skipped';
  from: Position | null;
  to: Position;
}

export interface Welcome {
  type: 'welcome';
  session: string;
  resume: string;
  pod: string;
  user?: string;
  resumed: boolean;
  /** `seq`/`epoch` are absent for ephemeral topics. */
  topics?: Record<string, { seq?: number; epoch?: string; recovered: boolean; pseq?: number; pepoch?: string }>;
}

export interface CloseInfo {
  code: number;
  reason: string;
  advice: CloseAdvice | null;
  /** The advice's error, or `pong_timeout` / `connect_timeout` when the client dropped the socket. */
  error?: string;
}

export interface ReconnectInfo extends CloseInfo {
  attempt: number;
  delayMs: number;
}

export interface StateInfo extends Partial<ReconnectInfo> {
  previous: ConnectionState;
  pod?: string;
  resumed?: boolean;
}

export interface ClientEvents {
  state: (state: ConnectionState, info: StateInfo) => void;
  welcome: (welcome: Welcome) => void;
  message: (message: Message) => void;
  gap: (gap: GapEvent) => void;
  /** `seq` for a message, `pseq` for a join/leave already reflected. */
  duplicate: (info: { topic: string; seq?: number; pseq?: number }) => void;
  join: (event: PresenceEvent) => void;
  leave: (event: PresenceEvent) => void;
  /** A fresh list replaced missed join/leave events (`recovered: false`). */
  presence: (list: FreshPresence) => void;
  /** The tracked members of a topic changed (see `members(topic)`). */
  members: (info: { topic: string; members: PresenceMember[] }) => void;
  close: (info: CloseInfo) => void;
  reconnecting: (info: ReconnectInfo) => void;
  refreshed: (info: { exp: number | null }) => void;
  /** `reason` is `"server"` when the application removed it (server API), `"forbidden"` after a refresh. */
  unsubscribed: (info: { topic: string; reason: string | null }) => void;
  /** The application subscribed this client (connect hook or server API); messages come as `message` events. */
  subscribed: (info: { topic: string; reason: 'server' }) => void;
  /** The application disconnected this user (`/api/disconnect`): closed for good, no reconnect. */
  disconnected: (info: CloseInfo) => void;
  error: (error: GatewayError) => void;
}

export interface SubscribeOptions {
  /** Deliver the messages after this position (recovered from the topic's history). */
  since?: Position;
  /** Without `since` (or a saved position): start this many messages before the latest, the first time. */
  last?: number;
  /** Called like the `gap` event, for this topic only. */
  onGap?: (gap: GapEvent) => void;
  /** Called like the `join` / `leave` events, for this topic only. */
  onJoin?: (event: PresenceEvent) => void;
  onLeave?: (event: PresenceEvent) => void;
}

export declare class GatewayError extends Error {
  constructor(code: string, message?: string, details?: object);
  /** A gateway error code (`forbidden`, `rate_limited`, …) or the SDK's (`timeout`, `disconnected`, `closed`, `token_expired`, …). */
  code: string;
  topic?: string;
  closeCode?: number;
}

export declare class Subscription<T = Json> {
  readonly topic: string;
  /** True once unsubscribed (by the app, or by the server). */
  readonly closed: boolean;
  /** The last position delivered on this topic. */
  readonly position: Position | null;
  /** Resolves once the gateway confirmed the subscription; rejects if it refused it. */
  readonly ready: Promise<Position | null>;
  unsubscribe(): Promise<void>;
}

export declare class GatewayClient {
  constructor(url: GatewayUrl, options?: GatewayClientOptions);
  readonly state: ConnectionState;
  /** Session id (from the last `welcome`). */
  readonly session: string | null;
  /** Pod currently connected to. */
  readonly pod: string | null;
  readonly user: string | null;
  /** URL of the current (or last) connection. */
  readonly url: string | null;

  /** Opens the connection and keeps it open; resolves with the first `welcome`. */
  connect(): Promise<Welcome>;
  /** Closes for good (1000). `connect()` again resumes the session while the server keeps it. */
  close(): void;
  subscribe<T = Json>(topic: string, onMessage: (message: Message<T>) => void, options?: SubscribeOptions): Subscription<T>;
  /**
   * Resolves with the message's `seq` once it is in the topic's history (`null` on an
   * ephemeral topic). With `options.id` (a
   * publish id), a retry gets the first attempt's `seq` instead of storing the message twice.
   */
  /**
   * `excludeSelf`: this client gets a `skipped` frame in the message's place (its position
   * moves past it; no `message` event, no gap).
   */
  publish(topic: string, data: Json, options?: { id?: string; excludeSelf?: boolean }): Promise<number | null>;
  /** Calls the application's rpc hook; resolves with its `data`, rejects with its error code. */
  rpc<T = Json>(method: string, data?: Json): Promise<T>;
  /** App-level round trip, in milliseconds. */
  ping(): Promise<number>;
  /** A page of the topic's history, without subscribing (see docs/protocol.md, `history`). */
  history<T = Json>(topic: string, options?: HistoryOptions): Promise<HistoryPage<T>>;
  /** The members present in the topic; rejects with `limit_reached` above the server's list size. */
  presence(topic: string): Promise<PresenceMember[]>;
  /** Member and distinct-user counts of the topic's presence. */
  presenceStats(topic: string): Promise<PresenceStats>;
  /** The members as the join/leave events keep them; null until `presence(topic)` (or a fresh list) gave a list. */
  members(topic: string): PresenceMember[] | null;
  /** The presence position of a topic with join/leave events, or null. */
  presencePosition(topic: string): { pseq: number; epoch: string } | null;
  /** Sends `refresh` with `token`, or with a token from `getToken`; resolves with the new `exp`. */
  refresh(token?: string): Promise<number | null>;
  positions(): Record<string, Position>;
  on<E extends keyof ClientEvents>(event: E, listener: ClientEvents[E]): () => void;
  off<E extends keyof ClientEvents>(event: E, listener: ClientEvents[E]): void;
}

export interface HistoryOptions {
  /** Read after this position (before it with `reverse`); another epoch gives `recovered: false` and the latest page. */
  since?: Position;
  /** Messages wanted (server default 100, at most 1000). */
  limit?: number;
  /** Newest first. */
  reverse?: boolean;
}

export interface HistoryPage<T = Json> {
  /** The topic's latest `seq` and epoch, read with the page. */
  seq: number;
  epoch: string;
  /** Set when `since` was given. */
  recovered?: boolean;
  messages: { seq: number; data: T }[];
}

export interface PresenceMember {
  /** The token's `sub`, for an authenticated session. */
  user?: string;
  session: string;
  /** What the application attached to the session (the token's `info` claim or the connect hook's `info`), when it has one. */
  info?: unknown;
}

export interface PresenceStats {
  members: number;
  users: number;
}

/** Full-jitter backoff: uniform in `[0, min(maxMs, initialMs * 2^attempt)]`. */
export declare function backoffDelay(attempt: number, backoff?: BackoffOptions, random?: () => number): number;
/** Parses a close reason's reconnect advice, or null. */
export declare function parseCloseReason(reason: string): CloseAdvice | null;
/** The `exp` claim of a JWT (seconds), or null; the signature is not checked. */
export declare function tokenExpiry(token: string | null | undefined): number | null;

export default GatewayClient;
