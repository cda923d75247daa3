// A scripted gateway for unit tests: a real WebSocket server (the `ws` package) on a loopback
// port whose every connection is handed to the test, which reads client frames and answers them.
import { WebSocketServer } from 'ws';

/** Waits until `predicate()` is truthy (polling), or fails after `timeoutMs`. */
export async function until(predicate, timeoutMs = 5000, what = 'condition') {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await predicate();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** One client connection as the fake server sees it. */
export class FakeConn {
  constructor(socket, server) {
    this.socket = socket;
    this.server = server;
    this.frames = [];
    this.openedAt = Date.now();
    this.closed = false;
    this._waiters = [];
    socket.on('message', (data) => {
      const frame = JSON.parse(data.toString());
      this.frames.push(frame);
      if (frame.type === 'ping' && server.autoPong) this.send({ type: 'pong', ref: frame.ref });
      this._wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this._wake();
    });
  }

  _wake() {
    for (const w of this._waiters.splice(0)) w();
  }

  /** The next frame of `type` not yet taken by `next`. */
  async next(type, timeoutMs = 5000) {
    const deadline = Date.now() + timeoutMs;
    this._taken ??= new Set();
    for (;;) {
      const i = this.frames.findIndex((f, j) => !this._taken.has(j) && (!type || f.type === type));
      if (i >= 0) {
        this._taken.add(i);
        return this.frames[i];
      }
      if (Date.now() > deadline) throw new Error(`no ${type || 'frame'} frame from the client`);
      await new Promise((resolve) => {
        this._waiters.push(resolve);
        setTimeout(resolve, 20);
      });
    }
  }

  send(frame) {
    this.socket.send(typeof frame === 'string' ? frame : JSON.stringify(frame));
  }

  message(topic, seq, data, epoch) {
    const f = { type: 'message', topic, seq };
    if (epoch) f.epoch = epoch;
    f.data = data ?? { n: seq };
    this.send(f);
  }

  /** Answers `hello` with a welcome (resumed when the client presented a resume token). */
  async welcome(extra = {}) {
    const hello = await this.next('hello');
    this.hello = hello;
    // The topics `hello.subscribe` asked for, answered (in order) before any `subscribe` frame.
    this.helloTopics = [...(hello.subscribe || [])];
    const resumed = extra.resumed ?? !!hello.resume;
    const w = {
      type: 'welcome',
      session: extra.session || 'a'.repeat(32),
      resume: extra.resume || `${'a'.repeat(32)}.${'b'.repeat(64)}`,
      pod: extra.pod || this.server.pod,
      resumed,
    };
    if (extra.topics) w.topics = extra.topics;
    this.send(w);
    return hello;
  }

  /**
   * Answers the next subscription with `subscribed` at `seq` (and `recovered` when asked): the
   * next topic of `hello.subscribe` (no `ref`, as the gateway answers it), else the next
   * `subscribe` frame. Returns what was answered (`{type, topic, viaHello}` for a hello topic).
   */
  async subscribed(seq, epoch = 'e1', extra = {}) {
    const sub = this.nextSubscription() || (await this.next('subscribe'));
    const reply = { type: 'subscribed', topic: sub.topic, seq, epoch, ...extra };
    if (sub.ref != null) reply.ref = sub.ref;
    this.send(reply);
    return sub;
  }

  /** The next unanswered topic of `hello.subscribe`, or null (then read a `subscribe` frame). */
  nextSubscription() {
    const topic = this.helloTopics?.shift();
    return topic ? { type: 'subscribe', topic, viaHello: true } : null;
  }

  close(code, advice) {
    this.socket.close(code, advice === undefined ? undefined : typeof advice === 'string' ? advice : JSON.stringify(advice));
  }

  /** Drops the TCP connection without a close frame. */
  kill() {
    this.socket.terminate();
  }
}

export class FakeServer {
  static async start(options = {}) {
    const s = new FakeServer(options);
    await new Promise((resolve) => s.wss.on('listening', resolve));
    return s;
  }

  constructor({ pod = 'fake-1', autoPong = true } = {}) {
    this.pod = pod;
    this.autoPong = autoPong;
    this.conns = [];
    this._waiters = [];
    this.wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    this.wss.on('connection', (socket) => {
      const conn = new FakeConn(socket, this);
      this.conns.push(conn);
      for (const w of this._waiters.splice(0)) w();
    });
  }

  get url() {
    return `ws://127.0.0.1:${this.wss.address().port}/ws`;
  }

  /** The `n`th connection (0-based), waiting for it. */
  async conn(n, timeoutMs = 5000) {
    return until(() => this.conns[n], timeoutMs, `connection #${n}`);
  }

  async stop() {
    for (const c of this.conns) c.socket.terminate();
    await new Promise((resolve) => this.wss.close(resolve));
  }
}

/** A sessionStorage stand-in. */
export class MemoryStorage {
  constructor() {
    this.map = new Map();
  }
  getItem(k) {
    return this.map.has(k) ? this.map.get(k) : null;
  }
  setItem(k, v) {
    this.map.set(k, String(v));
  }
  removeItem(k) {
    this.map.delete(k);
  }
}

/** An unsigned JWT-shaped token with the given claims (the fake server does not verify it). */
export function fakeJwt(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${b64({ alg: 'none', typ: 'JWT' })}.${b64(claims)}.`;
}
