// The SDK against real gateway processes: the embedded single node, and a cluster of gateways on
// real redis-server and nats-server. Build first: `cargo build -p gateway` (scripts/test-js.sh).
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { createHmac } from 'node:crypto';
import path from 'node:path';
import WebSocket from 'ws';

import { GatewayClient } from '../src/gateway-client.js';
import { MemoryStorage, fakeJwt, sleep, until } from './support/fake-server.js';
import {
  freePort,
  gatewayHasFlag,
  outputDir,
  startChatBackend,
  startGateway,
  startNats,
  startRedis,
  waitFleet,
} from './support/processes.js';

const clients = [];
function client(url, options = {}) {
  const c = new GatewayClient(url, {
    WebSocket,
    backoff: { initialMs: 20, maxMs: 200 },
    pingIntervalMs: 0,
    ...options,
  });
  c.events = [];
  for (const name of ['state', 'gap', 'duplicate', 'close', 'reconnecting', 'error', 'welcome', 'refreshed']) {
    c.on(name, (...args) => c.events.push({ name, arg: args[0], at: Date.now() }));
  }
  c.seen = (name) => c.events.filter((e) => e.name === name);
  clients.push(c);
  return c;
}

/** Subscribes `c` to `topic` collecting seqs, connects, and waits for the subscription. */
async function subscribed(c, topic) {
  const got = [];
  const sub = c.subscribe(topic, (m) => got.push(m));
  await c.connect();
  await sub.ready;
  return { got, sub };
}

function assertOnceInOrder(seqs, first, last) {
  const expected = Array.from({ length: last - first + 1 }, (_, i) => first + i);
  if (seqs.length !== expected.length || seqs.some((s, i) => s !== expected[i])) {
    const dups = seqs.filter((s, i) => seqs.indexOf(s) !== i);
    const missing = expected.filter((s) => !seqs.includes(s));
    assert.fail(`expected seqs ${first}..${last} once, in order; duplicates ${JSON.stringify(dups)}, missing ${JSON.stringify(missing)}`);
  }
}

const timings = {};
after(() => {
  for (const c of clients) c.close();
  writeFileSync(path.join(outputDir, 'resume-times.json'), `${JSON.stringify(timings, null, 2)}\n`);
});

describe('history and presence', () => {
  let gw;
  before(async () => {
    gw = await startGateway({ pod: 'presence', args: ['--presence', '--presence-max-list', '2'] });
  });
  after(() => gw?.stop());

  test('history pages, then a subscription from the last one continues without a gap', async () => {
    const a = client(gw.url);
    await a.connect();
    for (let i = 1; i <= 10; i++) await a.publish('log', { i });
    const latest = await a.history('log', { limit: 3 });
    assert.equal(latest.seq, 10);
    assert.deepEqual(latest.messages.map((m) => m.seq), [8, 9, 10]);
    assert.equal(latest.recovered, undefined);
    const back = await a.history('log', { since: { seq: 8, epoch: latest.epoch }, limit: 2, reverse: true });
    assert.deepEqual(back.messages.map((m) => [m.seq, m.data.i]), [[7, 7], [6, 6]]);
    assert.equal(back.recovered, true);
    const stale = await a.history('log', { since: { seq: 2, epoch: '0000000000000000' }, limit: 2 });
    assert.equal(stale.recovered, false);
    assert.deepEqual(stale.messages.map((m) => m.seq), [9, 10]);

    // Render the page, then go live from its last message.
    const b = client(gw.url);
    await b.connect();
    const page = await b.history('log', { limit: 5 });
    const got = page.messages.map((m) => m.seq);
    const last = page.messages.at(-1);
    const sub = b.subscribe('log', (m) => got.push(m.seq), { since: { seq: last.seq, epoch: page.epoch } });
    await sub.ready;
    for (let i = 11; i <= 15; i++) await a.publish('log', { i });
    await until(() => got.length === 10, 5000, 'ten messages');
    assertOnceInOrder(got, 6, 15);
    a.close();
    b.close();
  });

  test('presence lists members by session, stats count them, big lists are refused', async () => {
    const a = client(gw.url);
    const b = client(gw.url);
    await subscribed(a, 'room');
    await subscribed(b, 'room');
    const members = await a.presence('room');
    assert.deepEqual(members.map((m) => m.session).sort(), [a.session, b.session].sort());
    assert.deepEqual(await b.presenceStats('room'), { members: 2, users: 2 });
    const c = client(gw.url);
    await subscribed(c, 'room');
    await assert.rejects(c.presence('room'), (e) => e.code === 'limit_reached');
    assert.deepEqual(await c.presenceStats('room'), { members: 3, users: 3 });
    for (const x of [a, b, c]) x.close();
  });
});

describe('embedded gateway', () => {
  let gw;
  before(async () => {
    gw = await startGateway({ pod: 'embedded', args: ['--history-size', '5', '--max-message-size', '1024'] });
  });
  after(() => gw?.stop());

  test('two clients exchange messages: publish resolves with the seq, each message once, in order', async () => {
    const a = client(gw.url);
    const b = client(gw.url);
    const ra = await subscribed(a, 'chat');
    const rb = await subscribed(b, 'chat');
    assert.equal(a.state, 'connected');
    assert.equal(a.pod, 'embedded');
    const seqs = await Promise.all(Array.from({ length: 20 }, (_, i) => a.publish('chat', { n: i })));
    assert.deepEqual(seqs, Array.from({ length: 20 }, (_, i) => i + 1));
    await until(() => ra.got.length === 20 && rb.got.length === 20, 5000, '20 messages each');
    assertOnceInOrder(rb.got.map((m) => m.seq), 1, 20);
    assert.deepEqual(rb.got.map((m) => m.data.n), Array.from({ length: 20 }, (_, i) => i));
    assert.ok((await b.ping()) >= 0);
    a.close();
    b.close();
  });

  test('backoff against a port with no gateway: bounded, jittered, growing', async () => {
    const port = await freePort();
    const c = client(`ws://127.0.0.1:${port}/ws`, { backoff: { initialMs: 40, maxMs: 200 } });
    c.connect();
    await until(() => c.seen('reconnecting').length >= 8, 10000, '8 reconnects');
    c.close();
    const events = c.seen('reconnecting').slice(0, 8);
    events.forEach((e, i) => {
      const cap = Math.min(200, 40 * 2 ** i);
      assert.equal(e.arg.attempt, i + 1);
      assert.ok(e.arg.delayMs >= 0 && e.arg.delayMs <= cap, `attempt ${i + 1}: ${e.arg.delayMs} outside [0, ${cap}]`);
      if (i > 0) {
        const waited = e.at - events[i - 1].at;
        assert.ok(waited >= events[i - 1].arg.delayMs - 2, `attempt ${i + 1} came ${waited} ms after the previous failure, delay ${events[i - 1].arg.delayMs}`);
      }
    });
    const capped = events.slice(3).map((e) => e.arg.delayMs);
    assert.ok(new Set(capped).size > 1, `delays at the cap should be jittered, got ${capped}`);
  });

  test('reconnect:false stops: a message above --max-message-size closes with 1009 too_large', async () => {
    const c = client(gw.url);
    await subscribed(c, 'big');
    await assert.rejects(c.publish('big', 'x'.repeat(4096)), (e) => ['disconnected', 'too_large'].includes(e.code));
    await until(() => c.state === 'closed', 3000, 'closed');
    const close = c.seen('close')[0].arg;
    assert.equal(close.code, 1009);
    assert.deepEqual(close.advice, { reconnect: false, error: 'too_large' });
    assert.equal(c.seen('error')[0].arg.code, 'too_large');
    await sleep(500);
    assert.equal(c.seen('reconnecting').length, 0, 'no reconnect after reconnect:false');
  });

  test('gap on recovered:false after a reload whose position fell out of history (storage)', async () => {
    const storage = new MemoryStorage();
    const pub = client(gw.url);
    await pub.connect();
    const first = client(gw.url, { storage });
    const r1 = await subscribed(first, 'hist');
    for (let i = 0; i < 3; i++) await pub.publish('hist', i);
    await until(() => r1.got.length === 3);
    first.close(); // the page goes away
    for (let i = 3; i < 13; i++) await pub.publish('hist', i); // history keeps 5
    const reloaded = client(gw.url, { storage });
    const r2 = { got: [] };
    reloaded.subscribe('hist', (m) => r2.got.push(m));
    const welcome = await reloaded.connect();
    assert.equal(welcome.resumed, true);
    assert.equal(welcome.session, first.session);
    await until(() => reloaded.seen('gap').length === 1, 3000, 'gap event');
    assert.deepEqual(reloaded.seen('gap')[0].arg, {
      topic: 'hist',
      reason: 'not_recovered',
      from: { seq: 3, epoch: r1.sub.position.epoch },
      to: { seq: 13, epoch: r1.sub.position.epoch },
    });
    await pub.publish('hist', 13);
    await until(() => r2.got.length === 1);
    assert.equal(r2.got[0].seq, 14);
    pub.close();
    reloaded.close();
  });

  test('duplicates from an overlapping resume are dropped by seq', async () => {
    // A WebSocket that, once armed, presents positions 3 behind in hello (as a stale copy of
    // the positions would): the gateway then replays messages the client already has.
    const sockets = [];
    let rewind = false;
    class RewindingWebSocket extends WebSocket {
      constructor(url) {
        super(url);
        sockets.push(this);
      }
      send(text) {
        const f = JSON.parse(text);
        if (rewind && f.type === 'hello' && f.positions) {
          for (const p of Object.values(f.positions)) p.seq -= 3;
          text = JSON.stringify(f);
        }
        super.send(text);
      }
    }
    const pub = client(gw.url);
    await pub.connect();
    const c = client(gw.url, { WebSocket: RewindingWebSocket });
    const r = await subscribed(c, 'dup');
    for (let i = 0; i < 4; i++) await pub.publish('dup', i);
    await until(() => r.got.length === 4);
    rewind = true;
    sockets.at(-1).terminate(); // the connection drops without a close frame
    await until(() => c.seen('welcome').length === 2, 5000, 'resume');
    assert.equal(c.seen('welcome')[1].arg.resumed, true);
    await until(() => c.seen('duplicate').length === 3, 3000, '3 duplicates');
    assert.deepEqual(c.seen('duplicate').map((e) => e.arg.seq), [2, 3, 4]);
    await pub.publish('dup', 4);
    await until(() => r.got.length === 5);
    assertOnceInOrder(r.got.map((m) => m.seq), 1, 5);
    pub.close();
    c.close();
  });

  test('token refresh before exp: refresh is sent and answered with refreshed', async () => {
    let n = 0;
    const getToken = () => fakeJwt({ sub: 'u', n: ++n, exp: Math.floor(Date.now() / 1000) + 2 });
    const c = client(gw.url, { getToken });
    await c.connect();
    await until(() => c.seen('refreshed').length >= 1, 4000, 'refreshed');
    assert.ok(n >= 2, 'getToken gave the refresh token');
    assert.equal(c.state, 'connected');
    c.close();
  });

  test('after_ms from a drain (1001) is honoured', async () => {
    const drained = await startGateway({ pod: 'drained' });
    try {
      const c = client(drained.url, { backoff: { initialMs: 5, maxMs: 5 } });
      await subscribed(c, 'x');
      await drained.drain();
      await until(() => c.seen('reconnecting').length >= 2, 5000, 'a reconnect attempt after the drain');
      const close = c.seen('close')[0];
      assert.equal(close.arg.code, 1001);
      const afterMs = close.arg.advice.after_ms;
      assert.ok(Number.isInteger(afterMs) && afterMs >= 0 && afterMs < 1000, `after_ms ${afterMs}`);
      const [first, second] = c.seen('reconnecting');
      assert.equal(first.arg.delayMs, afterMs, 'the first reconnect waits after_ms, not the 5 ms backoff');
      // The draining pod refuses the upgrade (503): that failure comes after the wait.
      assert.ok(second.at - close.at >= afterMs - 2, `attempt after ${second.at - close.at} ms, after_ms ${afterMs}`);
      c.close();
    } finally {
      await drained.stop();
    }
  });
});

describe('gateway with JWT auth (--auth required)', () => {
  const secret = 'test-secret-for-the-js-sdk-tests-0123456789';
  const mint = (ttlS) => hs256({ sub: 'u1', exp: Math.floor(Date.now() / 1000) + ttlS, gw: { sub: ['auth.*'], pub: ['auth.*'] } }, secret);
  let gw;
  let supported;
  before(async () => {
    supported = await gatewayHasFlag('--auth ');
    if (!supported) return;
    const args = ['--auth', 'required'];
    if (await gatewayHasFlag('--jwt-leeway')) args.push('--jwt-leeway', '1s');
    gw = await startGateway({ pod: 'auth', args, env: { GATEWAY_JWT_SECRET: secret } });
  });
  after(() => gw?.stop());

  test('token_expired: a new token from getToken, then a lossless resume', async (t) => {
    if (!supported) return t.skip('this gateway build has no --auth flag');
    let minted = 0;
    const c = client(gw.url, { getToken: () => (++minted, mint(2)), autoRefresh: false });
    const pub = client(gw.url, { token: mint(3600) });
    const r = await subscribed(c, 'auth.t');
    await pub.connect();
    let n = 0;
    const publishing = (async () => {
      while (n < 120) {
        await pub.publish('auth.t', n++);
        await sleep(100);
      }
    })();
    await until(() => c.seen('close').some((e) => e.arg.error === 'token_expired'), 20000, 'token_expired');
    await publishing;
    await until(() => r.got.length === 120, 10000, 'all 120 messages');
    assertOnceInOrder(r.got.map((m) => m.seq), 1, 120);
    const expired = c.seen('close').find((e) => e.arg.error === 'token_expired');
    assert.equal(expired.arg.code, 1008);
    assert.ok(minted >= 2, 'getToken was called for the reconnect');
    assert.equal(c.seen('welcome').at(-1).arg.resumed, true);
    assert.equal(c.seen('gap').length, 0);
    c.close();
    pub.close();
    return undefined;
  });

  test('refresh before exp keeps the connection past several token lifetimes', async (t) => {
    if (!supported) return t.skip('this gateway build has no --auth flag');
    const c = client(gw.url, { getToken: () => mint(3) });
    await subscribed(c, 'auth.r');
    await sleep(7000);
    assert.equal(c.seen('close').length, 0, `no close: ${JSON.stringify(c.seen('close').map((e) => e.arg))}`);
    assert.ok(c.seen('refreshed').length >= 3, `refreshed ${c.seen('refreshed').length} times`);
    assert.ok(c.seen('refreshed').every((e) => Number.isInteger(e.arg.exp)), 'refreshed carries exp');
    c.close();
    return undefined;
  });

  test('no token: 1008 unauthorized with reconnect:false stops the client', async (t) => {
    if (!supported) return t.skip('this gateway build has no --auth flag');
    const c = client(gw.url);
    await assert.rejects(c.connect(), (e) => e.code === 'unauthorized');
    assert.equal(c.state, 'closed');
    assert.equal(c.seen('close')[0].arg.code, 1008);
    await sleep(300);
    assert.equal(c.seen('reconnecting').length, 0);
    return undefined;
  });
});

function hs256(claims, secret) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${head}.${createHmac('sha256', secret).update(head).digest('base64url')}`;
}

describe('cluster: two gateways on redis-server and nats-server', () => {
  let redis;
  let nats;
  let a;
  let b;
  before(async () => {
    [redis, nats] = await Promise.all([startRedis(), startNats()]);
    [a, b] = await Promise.all([
      startGateway({ pod: 'js-a', redis, nats }),
      startGateway({ pod: 'js-b', redis, nats }),
    ]);
    await waitFleet([a, b], 2);
  });
  after(async () => {
    for (const c of clients) c.close();
    await Promise.all([a?.stop(), b?.stop()]);
    await Promise.all([redis?.stop(), nats?.stop()]);
  });

  /** Publishes `count` messages on `topic` from `pub`, one every `everyMs`; calls `at(i)` before each. */
  async function publishMany(pub, topic, count, everyMs, at) {
    const seqs = [];
    for (let i = 0; i < count; i++) {
      await at?.(i);
      seqs.push(await pub.publish(topic, { i }));
      await sleep(everyMs);
    }
    return seqs;
  }

  test('drain of the first pod: the client resumes on the second, every message once, in order', async (t) => {
    const sub = client([a.url, b.url]);
    const r = await subscribed(sub, 'ticker');
    assert.equal(sub.pod, 'js-a');
    const pub = client(b.url);
    await pub.connect();
    assert.equal(pub.pod, 'js-b');
    const seqs = await publishMany(pub, 'ticker', 300, 5, async (i) => {
      if (i === 100) assert.equal((await a.drain()).draining, true);
    });
    await until(() => r.got.length >= 300, 15000, 'all 300 messages');
    await sleep(200);
    assertOnceInOrder(r.got.map((m) => m.seq), seqs[0], seqs.at(-1));
    assert.equal(sub.pod, 'js-b');
    const close = sub.seen('close')[0];
    assert.equal(close.arg.code, 1001);
    const welcome = sub.seen('welcome')[1];
    assert.equal(welcome.arg.resumed, true);
    assert.equal(sub.seen('gap').length, 0);
    timings.node_drain_resume_ms = welcome.at - close.at;
    timings.node_drain_after_ms = close.arg.advice.after_ms;
    t.diagnostic(`resumed on js-b ${welcome.at - close.at} ms after the 1001 (after_ms ${close.arg.advice.after_ms})`);
    sub.close();
    pub.close();
  });

  test('a frozen pod (no close frame) is detected by the pong timeout; the client resumes on another pod without loss', async (t) => {
    const c = await startGateway({ pod: 'js-c', redis, nats });
    try {
      const sub = client([c.url, b.url], { pingIntervalMs: 200, pongTimeoutMs: 400 });
      const r = await subscribed(sub, 'frozen');
      assert.equal(sub.pod, 'js-c');
      const pub = client(b.url);
      await pub.connect();
      let stoppedAt = 0;
      const seqs = await publishMany(pub, 'frozen', 150, 10, (i) => {
        if (i === 40) {
          c.signal('SIGSTOP');
          stoppedAt = Date.now();
        }
      });
      await until(() => r.got.length >= 150, 15000, 'all 150 messages');
      await sleep(200);
      assertOnceInOrder(r.got.map((m) => m.seq), seqs[0], seqs.at(-1));
      const close = sub.seen('close')[0];
      assert.equal(close.arg.error, 'pong_timeout');
      const welcome = sub.seen('welcome')[1];
      assert.equal(welcome.arg.pod, 'js-b');
      assert.equal(welcome.arg.resumed, true);
      timings.node_frozen_detect_ms = close.at - stoppedAt;
      t.diagnostic(`frozen pod detected after ${close.at - stoppedAt} ms, resumed on js-b ${welcome.at - close.at} ms later`);
      sub.close();
      pub.close();
    } finally {
      await c.stop();
    }
  });
});

describe('the application in the loop: hooks, server API, ephemeral topics', () => {
  let gw;
  let backend;
  let supported;
  before(async () => {
    supported = await gatewayHasFlag('--hook-url');
    if (!supported) return;
    const secretFile = path.join(outputDir, 'hook.secret');
    writeFileSync(secretFile, 'js-hook-secret\n');
    const config = path.join(outputDir, 'namespaces.toml');
    writeFileSync(config, '[[namespaces]]\nprefix = "chat."\nhooks = ["publish"]\n\n[[namespaces]]\nprefix = "cursor."\nhistory = false\n');
    backend = await startChatBackend({ secretFile });
    gw = await startGateway({
      pod: 'hooks',
      env: { GATEWAY_HOOK_URL: backend.url, GATEWAY_HOOK_SECRET_FILE: secretFile, GATEWAY_CONFIG: config },
    });
  });
  after(async () => {
    await gw?.stop();
    await backend?.stop();
  });

  const api = (pathname, body) =>
    fetch(`${gw.admin}${pathname}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }).then((r) => r.json());

  test('rpc() resolves with the application answer and rejects with its code', async (t) => {
    if (!supported) return t.skip('this gateway build has no hooks');
    const c = client(`${gw.url}?user=rita`);
    await c.connect();
    assert.deepEqual(await c.rpc('echo', { n: [1, 2] }), { n: [1, 2] });
    assert.equal((await c.rpc('whoami')).user, 'rita');
    await assert.rejects(c.rpc('fail'), (e) => e.code === 'bad_request');
    await assert.rejects(c.rpc('no spaces'), TypeError);
  });

  test('server-side subscriptions arrive as subscribed events and their messages as message events', async (t) => {
    if (!supported) return t.skip('this gateway build has no hooks');
    const c = client(`${gw.url}?user=sam`);
    const subscribedTopics = [];
    const messages = [];
    c.on('subscribed', (e) => subscribedTopics.push(e));
    c.on('message', (m) => messages.push(m));
    await c.connect();
    await until(() => subscribedTopics.length === 1);
    assert.deepEqual(subscribedTopics[0], { topic: 'user.sam', reason: 'server' });
    await api('/api/subscribe', { user: 'sam', topic: 'alerts.sam' });
    await until(() => subscribedTopics.length === 2);
    await api('/api/publish', { topic: 'alerts.sam', data: 'wake up' });
    await until(() => messages.length === 1);
    assert.equal(messages[0].data, 'wake up');
    assert.equal(messages[0].seq, 1);
    assert.ok(c.positions()['alerts.sam'], 'kept for a resume');
    const removed = [];
    c.on('unsubscribed', (e) => removed.push(e));
    await api('/api/unsubscribe', { user: 'sam', topic: 'alerts.sam' });
    await until(() => removed.length === 1);
    assert.deepEqual(removed[0], { topic: 'alerts.sam', reason: 'server' });
  });

  test('a published message is what the publish hook approved', async (t) => {
    if (!supported) return t.skip('this gateway build has no hooks');
    const c = client(`${gw.url}?user=tess`);
    const { got } = await subscribed(c, 'chat.room');
    await c.publish('chat.room', { text: 'hi' });
    await assert.rejects(c.publish('chat.room', { text: 'spam offer' }), (e) => e.code === 'forbidden');
    await until(() => got.length === 1);
    assert.deepEqual(got[0].data, { text: 'hi', by: 'tess' });
  });

  test('ephemeral topics: publish resolves null and messages carry no seq', async (t) => {
    if (!supported) return t.skip('this gateway build has no hooks');
    const a = client(`${gw.url}?user=uma`);
    const b = client(`${gw.url}?user=vic`);
    const { got } = await subscribed(a, 'cursor.board');
    await b.connect();
    for (let i = 0; i < 5; i++) assert.equal(await b.publish('cursor.board', { x: i }), null);
    await until(() => got.length === 5);
    assert.deepEqual(got.map((m) => [m.seq, m.data.x]), [0, 1, 2, 3, 4].map((i) => [null, i]));
    assert.equal(a.seen('gap').length, 0);
  });

  test('disconnected: the user is closed for good and told so', async (t) => {
    if (!supported) return t.skip('this gateway build has no hooks');
    const c = client(`${gw.url}?user=walt`);
    const told = [];
    c.on('disconnected', (info) => told.push(info));
    await c.connect();
    await api('/api/disconnect', { user: 'walt' });
    await until(() => c.state === 'closed');
    assert.equal(told.length, 1);
    assert.equal(told[0].code, 1008);
    assert.equal(told[0].advice.error, 'disconnected');
    await sleep(300);
    assert.equal(c.seen('reconnecting').length, 0);
  });
});
