// Unit tests of the SDK against a scripted fake gateway (a real WebSocket server on loopback).
import { test, describe, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';

import { GatewayClient, backoffDelay, parseCloseReason, tokenExpiry } from '../src/gateway-client.js';
import { FakeServer, MemoryStorage, fakeJwt, sleep, until } from './support/fake-server.js';

const cleanups = [];
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

async function setup(options = {}, serverOptions = {}) {
  const server = await FakeServer.start(serverOptions);
  const client = new GatewayClient(options.url || server.url, {
    WebSocket,
    backoff: { initialMs: 20, maxMs: 200 },
    pingIntervalMs: 0,
    ...options,
  });
  cleanups.push(() => server.stop());
  cleanups.push(() => client.close());
  const events = [];
  for (const name of ['state', 'gap', 'duplicate', 'close', 'reconnecting', 'error', 'welcome', 'refreshed', 'unsubscribed']) {
    client.on(name, (...args) => events.push({ name, args, at: Date.now() }));
  }
  const seen = (name) => events.filter((e) => e.name === name).map((e) => e.args[0]);
  return { server, client, events, seen };
}

/** A connected client subscribed to `topic` at `seq`, collecting what it delivers. */
async function subscribedClient(topic = 't', seq = 0, options = {}, serverOptions = {}) {
  const ctx = await setup(options, serverOptions);
  const got = [];
  ctx.sub = ctx.client.subscribe(topic, (m) => got.push(m));
  const connecting = ctx.client.connect();
  ctx.conn = await ctx.server.conn(0);
  await ctx.conn.welcome();
  await connecting;
  await ctx.conn.subscribed(seq);
  await ctx.sub.ready;
  ctx.got = got;
  return ctx;
}

describe('backoff', () => {
  test('full jitter: uniform in [0, min(max, initial * 2^attempt)]', () => {
    const b = { initialMs: 100, maxMs: 5000 };
    const caps = [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000];
    caps.forEach((cap, attempt) => {
      assert.equal(backoffDelay(attempt, b, () => 0), 0);
      assert.equal(backoffDelay(attempt, b, () => 0.999999), cap - 1);
      for (let i = 0; i < 200; i++) {
        const d = backoffDelay(attempt, b);
        assert.ok(d >= 0 && d <= cap, `attempt ${attempt}: ${d} outside [0, ${cap}]`);
      }
    });
    // Never above the maximum, however many attempts.
    assert.ok(backoffDelay(1000, b, () => 0.999999) < 5000);
  });

  test('jitter spreads clients: delays are not clustered', () => {
    const samples = Array.from({ length: 2000 }, () => backoffDelay(4, { initialMs: 100, maxMs: 10000 }));
    const mean = samples.reduce((a, b) => a + b, 0) / samples.length;
    assert.ok(mean > 700 && mean < 900, `mean ${mean} should be about 800`);
    assert.ok(new Set(samples).size > 1000, 'delays should be spread, not identical');
    const quarter = samples.filter((d) => d < 400).length / samples.length;
    assert.ok(quarter > 0.2 && quarter < 0.3, `a quarter of the delays below a quarter of the cap, got ${quarter}`);
  });

  test('reconnect delays follow the backoff and grow per failed attempt', async () => {
    const { server, client, seen } = await setup({ backoff: { initialMs: 20, maxMs: 80 }, random: () => 0.999999 });
    // Every connection is closed before its welcome: each one is a failed attempt.
    server.wss.on('connection', (socket) => socket.close(1011));
    client.connect();
    await until(() => seen('reconnecting').length >= 5, 5000, '5 reconnects');
    const delays = seen('reconnecting').slice(0, 5).map((r) => r.delayMs);
    assert.deepEqual(delays, [19, 39, 79, 79, 79]);
    const attempts = seen('reconnecting').slice(0, 5).map((r) => r.attempt);
    assert.deepEqual(attempts, [1, 2, 3, 4, 5]);
    // The connections really were that far apart.
    for (let i = 1; i < 5; i++) {
      const gap = server.conns[i].openedAt - server.conns[i - 1].openedAt;
      assert.ok(gap >= delays[i - 1] - 2, `connection ${i} came ${gap} ms after the previous, delay ${delays[i - 1]}`);
    }
  });
});

describe('close advice', () => {
  test('parseCloseReason', () => {
    assert.deepEqual(parseCloseReason('{"reconnect":true,"after_ms":850}'), { reconnect: true, after_ms: 850 });
    assert.deepEqual(parseCloseReason('{"reconnect":false,"error":"unauthorized"}'), { reconnect: false, error: 'unauthorized' });
    assert.equal(parseCloseReason(''), null);
    assert.equal(parseCloseReason('bye'), null);
    assert.equal(parseCloseReason('{"after_ms":1}'), null);
    assert.deepEqual(parseCloseReason('{"reconnect":true,"after_ms":-5}'), { reconnect: true });
  });

  test('after_ms is honoured instead of the backoff', async () => {
    const { server, client, seen } = await subscribedClient('t', 0, { backoff: { initialMs: 5, maxMs: 5 } });
    const conn = server.conns[0];
    const closedAt = Date.now();
    conn.close(1001, { reconnect: true, after_ms: 400 });
    const next = await server.conn(1, 3000);
    const waited = next.openedAt - closedAt;
    assert.ok(waited >= 390, `reconnected after ${waited} ms, before after_ms`);
    assert.ok(waited < 1000, `reconnected after ${waited} ms, far later than after_ms`);
    assert.equal(seen('reconnecting')[0].delayMs, 400);
    assert.equal(seen('close')[0].code, 1001);
    assert.equal(client.state, 'reconnecting');
  });

  test('1012 and 1013 reconnect with their after_ms', async () => {
    const { server, seen } = await subscribedClient();
    server.conns[0].close(1012, { reconnect: true, after_ms: 50 });
    const c1 = await server.conn(1);
    await c1.welcome();
    c1.close(1013, { reconnect: true, after_ms: 120, error: 'slow_consumer' });
    await server.conn(2);
    assert.deepEqual(seen('reconnecting').map((r) => [r.code, r.delayMs]), [[1012, 50], [1013, 120]]);
    assert.equal(seen('reconnecting')[1].error, 'slow_consumer');
  });

  test('reconnect:false stops for good', async () => {
    const { server, client, seen } = await setup();
    const connecting = client.connect();
    const conn = await server.conn(0);
    await conn.next('hello');
    conn.close(1008, { reconnect: false, error: 'unauthorized' });
    await assert.rejects(connecting, (e) => e.code === 'unauthorized');
    await until(() => client.state === 'closed', 2000, 'closed');
    await sleep(300);
    assert.equal(server.conns.length, 1, 'no reconnect after reconnect:false');
    assert.equal(seen('reconnecting').length, 0);
    assert.equal(seen('error')[0].code, 'unauthorized');
    await assert.rejects(client.publish('t', 1), (e) => e.code === 'closed');
  });

  test('a server that keeps failing does not reset the backoff on each welcome', async () => {
    const { server, client, seen } = await setup({ backoff: { initialMs: 20, maxMs: 1000 }, random: () => 0.999999 });
    server.wss.on('connection', async () => {
      const conn = server.conns[server.conns.length - 1];
      await conn.welcome();
      conn.close(1011);
    });
    client.connect();
    await until(() => seen('reconnecting').length >= 3, 5000, '3 reconnects');
    assert.deepEqual(seen('reconnecting').slice(0, 3).map((r) => r.delayMs), [19, 39, 79]);
  });
});

describe('resume', () => {
  test('hello carries the resume token and positions; overlapping replays are dropped by seq', async () => {
    const { server, client, got, seen } = await subscribedClient('t', 4);
    const conn = server.conns[0];
    for (let seq = 5; seq <= 7; seq++) conn.message('t', seq);
    await until(() => got.length === 3);
    conn.kill();
    const c1 = await server.conn(1);
    const hello = await c1.welcome({ topics: { t: { seq: 9, epoch: 'e1', recovered: true } } });
    assert.equal(hello.resume, `${'a'.repeat(32)}.${'b'.repeat(64)}`);
    assert.deepEqual(hello.positions, { t: { seq: 7, epoch: 'e1' } });
    // An overlapping replay (as from an older position): 5..7 again, then 8, 9, then live 10.
    for (let seq = 5; seq <= 10; seq++) c1.message('t', seq);
    await until(() => got.length === 6);
    assert.deepEqual(got.map((m) => m.seq), [5, 6, 7, 8, 9, 10]);
    assert.deepEqual(seen('duplicate').map((d) => d.seq), [5, 6, 7]);
    assert.equal(seen('gap').length, 0);
    assert.deepEqual(client.positions(), { t: { seq: 10, epoch: 'e1' } });
    // The restored topic is not subscribed again.
    await sleep(50);
    assert.equal(c1.frames.filter((f) => f.type === 'subscribe').length, 0);
  });

  test('a session that could not be resumed is re-subscribed with since', async () => {
    const { server, got } = await subscribedClient('t', 3);
    server.conns[0].message('t', 4);
    await until(() => got.length === 1);
    server.conns[0].kill();
    const c1 = await server.conn(1);
    await c1.welcome({ resumed: false });
    const sub = await c1.subscribed(6, 'e1', { recovered: true });
    assert.deepEqual(sub.since, { seq: 4, epoch: 'e1' });
    c1.message('t', 5);
    c1.message('t', 6);
    await until(() => got.length === 3);
    assert.deepEqual(got.map((m) => m.seq), [4, 5, 6]);
  });

  test('recovered:false in welcome is a gap event, never silent', async () => {
    const { server, got, seen, sub } = await subscribedClient('t', 10);
    server.conns[0].kill();
    const c1 = await server.conn(1);
    await c1.welcome({ topics: { t: { seq: 2000, epoch: 'e1', recovered: false } } });
    await until(() => seen('gap').length === 1);
    assert.deepEqual(seen('gap')[0], { topic: 't', reason: 'not_recovered', from: { seq: 10, epoch: 'e1' }, to: { seq: 2000, epoch: 'e1' } });
    c1.message('t', 2001);
    await until(() => got.length === 1);
    assert.equal(got[0].seq, 2001);
    assert.deepEqual(sub.position, { seq: 2001, epoch: 'e1' });
  });

  test('recovered:false on subscribe with since is a gap event (onGap too)', async () => {
    const { server, client, seen } = await setup();
    const gaps = [];
    const sub = client.subscribe('t', () => {}, { since: { seq: 3, epoch: 'old' }, onGap: (g) => gaps.push(g) });
    client.connect();
    const conn = await server.conn(0);
    await conn.welcome();
    const frame = await conn.subscribed(50, 'new', { recovered: false });
    assert.deepEqual(frame.since, { seq: 3, epoch: 'old' });
    await sub.ready;
    assert.equal(seen('gap')[0].reason, 'epoch_changed');
    assert.deepEqual(gaps[0].to, { seq: 50, epoch: 'new' });
  });

  test('an epoch change in a message frame is a gap, and seq restarts are not taken as duplicates', async () => {
    const { server, got, seen } = await subscribedClient('t', 40);
    const conn = server.conns[0];
    conn.message('t', 41);
    conn.message('t', 1, null, 'e2');
    conn.message('t', 2);
    await until(() => got.length === 3);
    assert.deepEqual(got.map((m) => [m.seq, m.epoch]), [[41, 'e1'], [1, 'e2'], [2, 'e2']]);
    assert.equal(seen('gap')[0].reason, 'epoch_changed');
  });

  test('a skipped seq is reported as a gap', async () => {
    const { server, got, seen } = await subscribedClient('t', 0);
    server.conns[0].message('t', 1);
    server.conns[0].message('t', 4);
    await until(() => got.length === 2);
    assert.deepEqual(seen('gap')[0], { topic: 't', reason: 'skipped', from: { seq: 1, epoch: 'e1' }, to: { seq: 3, epoch: 'e1' } });
  });

  test('a skipped frame (own message excluded) moves the position: no message, no gap', async () => {
    const { server, client, got, seen, sub } = await subscribedClient('t', 2);
    const conn = server.conns[0];
    conn.send({ type: 'skipped', topic: 't', seq: 3 });
    conn.message('t', 4);
    await until(() => got.length === 1);
    assert.deepEqual(got.map((m) => m.seq), [4]);
    assert.equal(seen('gap').length, 0);
    assert.deepEqual(sub.position, { seq: 4, epoch: 'e1' });
    // A repeat is a duplicate like a message's; a hole before a skipped frame is still a gap,
    // and a skipped frame of a new epoch is an epoch change.
    conn.send({ type: 'skipped', topic: 't', seq: 3 });
    conn.send({ type: 'skipped', topic: 't', seq: 6 });
    conn.send({ type: 'skipped', topic: 't', seq: 1, epoch: 'e2' });
    await until(() => seen('gap').length === 2);
    assert.deepEqual(seen('duplicate').map((d) => d.seq), [3]);
    assert.deepEqual(seen('gap')[0], { topic: 't', reason: 'skipped', from: { seq: 4, epoch: 'e1' }, to: { seq: 5, epoch: 'e1' } });
    assert.equal(seen('gap')[1].reason, 'epoch_changed');
    assert.deepEqual(client.positions(), { t: { seq: 1, epoch: 'e2' } });
    assert.equal(got.length, 1, 'nothing delivered for skipped frames');
  });

  test('a replay on resume with a skipped frame in it continues without a gap', async () => {
    const { server, client, got, seen } = await subscribedClient('t', 4);
    server.conns[0].kill();
    const c1 = await server.conn(1);
    const hello = await c1.welcome({ topics: { t: { seq: 7, epoch: 'e1', recovered: true } } });
    assert.deepEqual(hello.positions, { t: { seq: 4, epoch: 'e1' } });
    c1.message('t', 5);
    c1.send({ type: 'skipped', topic: 't', seq: 6 });
    c1.message('t', 7);
    await until(() => got.length === 2);
    assert.deepEqual(got.map((m) => m.seq), [5, 7]);
    assert.equal(seen('gap').length, 0);
    assert.deepEqual(client.positions(), { t: { seq: 7, epoch: 'e1' } });
  });

  test('a topic restored from the session but unsubscribed here is unsubscribed', async () => {
    const { server } = await subscribedClient('t', 0);
    server.conns[0].kill();
    const c1 = await server.conn(1);
    await c1.welcome({ topics: { t: { seq: 0, epoch: 'e1', recovered: true }, other: { seq: 5, epoch: 'e1', recovered: true } } });
    const unsub = await c1.next('unsubscribe');
    assert.equal(unsub.topic, 'other');
  });

  test('storage keeps the session and positions across instances (page reloads)', async () => {
    const storage = new MemoryStorage();
    const { server, client, got } = await subscribedClient('t', 0, { storage });
    server.conns[0].message('t', 1);
    server.conns[0].message('t', 2);
    await until(() => got.length === 2);
    client.close();
    const saved = JSON.parse(storage.getItem('gateway-client'));
    assert.deepEqual(saved.positions, { t: { seq: 2, epoch: 'e1' } });

    const again = new GatewayClient(server.url, { WebSocket, storage, pingIntervalMs: 0 });
    cleanups.push(() => again.close());
    const got2 = [];
    again.subscribe('t', (m) => got2.push(m.seq));
    again.connect();
    const c1 = await server.conn(1);
    const hello = await c1.welcome({ topics: { t: { seq: 3, epoch: 'e1', recovered: true } } });
    assert.equal(hello.resume, saved.resume);
    assert.deepEqual(hello.positions, { t: { seq: 2, epoch: 'e1' } });
    c1.message('t', 3);
    await until(() => got2.length === 1);
    assert.deepEqual(got2, [3]);
  });

  test('subscribe before connect: the saved position is the since of a new subscription', async () => {
    const storage = new MemoryStorage();
    storage.setItem('k', JSON.stringify({ v: 1, resume: null, positions: { t: { seq: 9, epoch: 'e1' } } }));
    const { server, client } = await setup({ storage, storageKey: 'k' });
    client.connect();
    const conn = await server.conn(0);
    await conn.welcome({ resumed: false });
    client.subscribe('t', () => {});
    const sub = await conn.subscribed(9, 'e1', { recovered: true });
    assert.deepEqual(sub.since, { seq: 9, epoch: 'e1' });
  });
});

describe('requests', () => {
  test('publish resolves with the seq and carries a publish id; errors reject with the gateway code', async () => {
    const { server, client } = await subscribedClient();
    const conn = server.conns[0];
    const p = client.publish('t', { hi: 1 });
    const frame = await conn.next('publish');
    assert.deepEqual(frame.data, { hi: 1 });
    assert.equal(frame.id, undefined);
    conn.send({ type: 'published', topic: 't', seq: 42, ref: frame.ref });
    assert.equal(await p, 42);
    const retry = client.publish('t', { hi: 1 }, { id: 'order-17' });
    const withId = await conn.next('publish');
    assert.equal(withId.id, 'order-17');
    conn.send({ type: 'published', topic: 't', seq: 42, ref: withId.ref });
    assert.equal(await retry, 42);
    assert.equal(withId.exclude_self, undefined, 'not excluding is the default');
    const quiet = client.publish('t', 3, { excludeSelf: true });
    const excluding = await conn.next('publish');
    assert.equal(excluding.exclude_self, true);
    conn.send({ type: 'published', topic: 't', seq: 43, ref: excluding.ref });
    assert.equal(await quiet, 43);
    const q = client.publish('t', 2);
    const f2 = await conn.next('publish');
    conn.send({ type: 'error', code: 'forbidden', message: 'no', ref: f2.ref });
    await assert.rejects(q, (e) => e.code === 'forbidden');
    assert.throws(() => client.subscribe('bad topic', () => {}), TypeError);
  });

  test('a publish in flight at a disconnect rejects; one made while reconnecting is sent after welcome', async () => {
    const { server, client } = await subscribedClient('t', 0, { backoff: { initialMs: 100, maxMs: 100 } });
    const inFlight = client.publish('t', 1);
    await server.conns[0].next('publish');
    server.conns[0].kill();
    await assert.rejects(inFlight, (e) => e.code === 'disconnected');
    await until(() => client.state === 'reconnecting');
    const queued = client.publish('t', 2);
    const c1 = await server.conn(1);
    await c1.welcome({ topics: { t: { seq: 0, epoch: 'e1', recovered: true } } });
    const f = await c1.next('publish');
    assert.equal(f.data, 2);
    c1.send({ type: 'published', topic: 't', seq: 1, ref: f.ref });
    assert.equal(await queued, 1);
  });

  test('subscription refused: ready rejects and the topic is dropped', async () => {
    const { server, client } = await setup();
    client.connect();
    const conn = await server.conn(0);
    await conn.welcome();
    const sub = client.subscribe('secret', () => {});
    const frame = await conn.next('subscribe');
    conn.send({ type: 'error', code: 'forbidden', message: 'not allowed', ref: frame.ref });
    await assert.rejects(sub.ready, (e) => e.code === 'forbidden');
    assert.deepEqual(client.positions(), {});
  });

  test('unsubscribe removes the topic; the server may remove one too', async () => {
    const { server, client, seen } = await subscribedClient('t', 0);
    const conn = server.conns[0];
    const other = client.subscribe('u', () => {});
    await conn.subscribed(0);
    await other.ready;
    const done = other.unsubscribe();
    const f = await conn.next('unsubscribe');
    conn.send({ type: 'unsubscribed', topic: 'u', ref: f.ref });
    await done;
    conn.send({ type: 'unsubscribed', topic: 't', reason: 'forbidden' });
    await until(() => seen('unsubscribed').length === 1);
    assert.deepEqual(seen('unsubscribed')[0], { topic: 't', reason: 'forbidden' });
    assert.deepEqual(client.positions(), {});
  });
});

describe('liveness', () => {
  test('a silent connection (no close frame) is detected by the pong timeout and resumed', async () => {
    const { server, client, seen } = await subscribedClient('t', 0, { pingIntervalMs: 50, pongTimeoutMs: 100 }, { autoPong: false });
    const started = Date.now();
    // The server says nothing: no pong, no close.
    const c1 = await server.conn(1, 3000);
    const took = Date.now() - started;
    assert.ok(took >= 140 && took < 1500, `detected after ${took} ms`);
    assert.equal(seen('close')[0].error, 'pong_timeout');
    const hello = await c1.welcome({ topics: { t: { seq: 0, epoch: 'e1', recovered: true } } });
    assert.ok(hello.resume, 'resumes the session');
    await until(() => client.state === 'connected');
  });

  test('pongs and other traffic keep the connection', async () => {
    const { server, client } = await subscribedClient('t', 0, { pingIntervalMs: 30, pongTimeoutMs: 60 });
    await sleep(400);
    assert.equal(server.conns.length, 1);
    assert.ok(server.conns[0].frames.filter((f) => f.type === 'ping').length >= 5);
    assert.ok((await client.ping()) >= 0);
  });
});

describe('tokens', () => {
  test('tokenExpiry reads exp', () => {
    assert.equal(tokenExpiry(fakeJwt({ sub: 'u', exp: 1234 })), 1234);
    assert.equal(tokenExpiry('nope'), null);
    assert.equal(tokenExpiry(null), null);
  });

  test('token_expired: a new token from getToken, then resume', async () => {
    let n = 0;
    const getToken = async () => fakeJwt({ sub: 'u', n: ++n, exp: Math.floor(Date.now() / 1000) + 3600 });
    const { server, client, got } = await subscribedClient('t', 0, { getToken });
    assert.equal(tokenExpiry(server.conns[0].hello.token) > 0, true);
    server.conns[0].message('t', 1);
    await until(() => got.length === 1);
    server.conns[0].close(1008, { reconnect: true, error: 'token_expired' });
    const c1 = await server.conn(1);
    const hello = await c1.welcome({ topics: { t: { seq: 2, epoch: 'e1', recovered: true } } });
    assert.equal(n, 2, 'getToken called again');
    assert.equal(JSON.parse(Buffer.from(hello.token.split('.')[1], 'base64url')).n, 2);
    assert.ok(hello.resume);
    assert.deepEqual(hello.positions, { t: { seq: 1, epoch: 'e1' } });
    c1.message('t', 2);
    await until(() => got.length === 2);
    assert.equal(client.state, 'connected');
  });

  test('token_expired without getToken stops with an error', async () => {
    const { server, client, seen } = await subscribedClient('t', 0, { token: 'static' });
    server.conns[0].close(1008, { reconnect: true, error: 'token_expired' });
    await until(() => client.state === 'closed');
    assert.equal(seen('error')[0].code, 'token_expired');
    await sleep(100);
    assert.equal(server.conns.length, 1);
  });

  test('refresh is sent before exp with a token from getToken', async () => {
    let n = 0;
    const getToken = () => fakeJwt({ sub: 'u', n: ++n, exp: Math.floor(Date.now() / 1000) + 2 });
    const { server, seen } = await subscribedClient('t', 0, { getToken, refreshBeforeMs: 60000 });
    const conn = server.conns[0];
    const refresh = await conn.next('refresh', 3000);
    assert.equal(JSON.parse(Buffer.from(refresh.token.split('.')[1], 'base64url')).n, 2);
    const exp = Math.floor(Date.now() / 1000) + 3600;
    conn.send({ type: 'refreshed', exp, ref: refresh.ref });
    await until(() => seen('refreshed').length === 1);
    assert.equal(seen('refreshed')[0].exp, exp);
  });
});

describe('urls', () => {
  test('a URL list: the next URL after a disconnect (drain moves to another pod)', async () => {
    const a = await FakeServer.start({ pod: 'a' });
    const b = await FakeServer.start({ pod: 'b' });
    cleanups.push(() => a.stop(), () => b.stop());
    const client = new GatewayClient([a.url, b.url], { WebSocket, pingIntervalMs: 0 });
    cleanups.push(() => client.close());
    const got = [];
    client.subscribe('t', (m) => got.push(m.seq));
    client.connect();
    const ca = await a.conn(0);
    await ca.welcome();
    await ca.subscribed(0);
    ca.message('t', 1);
    await until(() => got.length === 1);
    ca.close(1001, { reconnect: true, after_ms: 10 });
    const cb = await b.conn(0);
    const hello = await cb.welcome({ pod: 'b', topics: { t: { seq: 1, epoch: 'e1', recovered: true } } });
    assert.deepEqual(hello.positions, { t: { seq: 1, epoch: 'e1' } });
    await until(() => client.pod === 'b');
    assert.equal(client.url, b.url);
  });
});
