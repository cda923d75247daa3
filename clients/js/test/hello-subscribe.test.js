// Subscriptions opened by `hello` itself (its `subscribe` array): which ones go there, how the
// replies without `ref` are matched, against the scripted fake gateway and real gateways
// (the gateway counts the frames it received: `gateway_messages_received_total`).
import { test, describe, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import WebSocket from 'ws';

import { GatewayClient } from '../src/gateway-client.js';
import { FakeServer, until } from './support/fake-server.js';
import { startGateway } from './support/processes.js';

const cleanups = [];
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

function client(url, options = {}) {
  const c = new GatewayClient(url, { WebSocket, backoff: { initialMs: 20, maxMs: 200 }, pingIntervalMs: 0, ...options });
  c.errors = [];
  c.on('error', (e) => c.errors.push(e));
  cleanups.push(() => c.close());
  return c;
}

async function fakeServer() {
  const server = await FakeServer.start();
  cleanups.push(() => server.stop());
  return server;
}

describe('hello.subscribe (fake gateway)', () => {
  test('plain subscriptions ride in hello; since and last still go as subscribe frames', async () => {
    const server = await fakeServer();
    const c = client(server.url);
    const plain = c.subscribe('a', () => {});
    const other = c.subscribe('b', () => {});
    const since = c.subscribe('c', () => {}, { since: { seq: 3, epoch: 'e1' } });
    const last = c.subscribe('d', () => {}, { last: 5 });
    c.connect();
    const conn = await server.conn(0);
    const hello = await conn.welcome();
    assert.deepEqual(hello.subscribe, ['a', 'b']);
    conn.send({ type: 'subscribed', topic: 'a', seq: 4, epoch: 'e1' });
    conn.send({ type: 'subscribed', topic: 'b', seq: 0, epoch: 'e1' });
    assert.deepEqual(await plain.ready, { seq: 4, epoch: 'e1' });
    assert.deepEqual(await other.ready, { seq: 0, epoch: 'e1' });
    const frames = [await conn.next('subscribe'), await conn.next('subscribe')];
    assert.deepEqual(frames.map((f) => [f.topic, f.since ?? null, f.last ?? null]), [
      ['c', { seq: 3, epoch: 'e1' }, null],
      ['d', null, 5],
    ]);
    for (const f of frames) conn.send({ type: 'subscribed', topic: f.topic, seq: 9, epoch: 'e1', recovered: true, ref: f.ref });
    await since.ready;
    await last.ready;
  });

  test('an error without ref naming a hello topic answers it: ready rejects, the topic is dropped; one naming none is a plain error', async () => {
    const server = await fakeServer();
    const c = client(server.url);
    const first = c.subscribe('a', () => {});
    const refused = c.subscribe('secret', () => {});
    const third = c.subscribe('c', () => {});
    c.connect();
    const conn = await server.conn(0);
    assert.deepEqual((await conn.welcome()).subscribe, ['a', 'secret', 'c']);
    conn.send({ type: 'subscribed', topic: 'a', seq: 1, epoch: 'e1' });
    // Another ref-less error first (a resume's notice): it answers no topic.
    conn.send({ type: 'error', code: 'limit_reached', message: '1 subscription was not restored' });
    conn.send({ type: 'error', code: 'forbidden', topic: 'secret', message: 'may not subscribe to secret' });
    conn.send({ type: 'subscribed', topic: 'c', seq: 2, epoch: 'e1' });
    await assert.rejects(refused.ready, (e) => e.code === 'forbidden' && e.topic === 'secret');
    await first.ready;
    await third.ready;
    assert.equal(refused.closed, true);
    assert.deepEqual(c.positions(), { a: { seq: 1, epoch: 'e1' }, c: { seq: 2, epoch: 'e1' } });
    assert.deepEqual(c.errors.map((e) => [e.code, e.topic]), [['limit_reached', undefined], ['forbidden', 'secret']]);
  });

  test('on a resume the positions restore what they hold; hello.subscribe has only the rest', async () => {
    const server = await fakeServer();
    const c = client(server.url);
    c.subscribe('t', () => {});
    c.connect();
    const c0 = await server.conn(0);
    await c0.welcome();
    await c0.subscribed(7);
    await until(() => c.positions().t);
    // Subscribed while disconnected (from the close event, so before the next hello).
    let added;
    c.on('close', () => (added ??= c.subscribe('u', () => {})));
    c0.kill();
    const c1 = await server.conn(1);
    const hello = await c1.welcome({ topics: { t: { seq: 7, epoch: 'e1', recovered: true } } });
    assert.deepEqual(hello.positions, { t: { seq: 7, epoch: 'e1' } });
    assert.deepEqual(hello.subscribe, ['u']);
    await c1.subscribed(0);
    assert.deepEqual(await added.ready, { seq: 0, epoch: 'e1' });
    assert.equal(c1.frames.filter((f) => f.type === 'subscribe').length, 0);
  });

  test('a hello topic unsubscribed before its reply is unsubscribed once the gateway opened it', async () => {
    const server = await fakeServer();
    const c = client(server.url);
    const sub = c.subscribe('a', () => {});
    c.connect();
    const conn = await server.conn(0);
    const hello = await conn.next('hello');
    assert.deepEqual(hello.subscribe, ['a']);
    await sub.unsubscribe();
    conn.send({ type: 'welcome', session: 's'.repeat(32), resume: `${'s'.repeat(32)}.${'r'.repeat(64)}`, pod: 'p', resumed: false });
    conn.send({ type: 'subscribed', topic: 'a', seq: 0, epoch: 'e1' });
    const unsub = await conn.next('unsubscribe');
    assert.equal(unsub.topic, 'a');
    assert.deepEqual(c.positions(), {});
  });
});

/** The frames a gateway received from all its clients, from its admin `/metrics`. */
async function framesReceived(gw) {
  const text = await fetch(`${gw.admin}/metrics`).then((r) => r.text());
  const m = /^gateway_messages_received_total(?:\{[^}]*\})? (\d+)/m.exec(text);
  assert.ok(m, 'gateway_messages_received_total is exported');
  return Number(m[1]);
}

function hs256(claims, secret) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${head}.${createHmac('sha256', secret).update(head).digest('base64url')}`;
}

describe('hello.subscribe (real gateway)', () => {
  const secret = 'hello-subscribe-test-secret-0123456789abcdef';
  const token = hs256({ sub: 'u1', exp: Math.floor(Date.now() / 1000) + 3600, gw: { sub: ['open.*'], pub: ['open.*'] } }, secret);
  let gw;
  before(async () => {
    gw = await startGateway({ pod: 'hello-sub', args: ['--auth', 'required'], env: { GATEWAY_JWT_SECRET: secret } });
  });
  after(() => gw?.stop());

  test('a fresh connect with one subscription sends one frame (hello) before its first message', async () => {
    const before = await framesReceived(gw);
    const c = client(gw.url, { token });
    const got = [];
    const sub = c.subscribe('open.one', (m) => got.push(m));
    await c.connect();
    await sub.ready;
    const res = await fetch(`${gw.admin}/api/publish`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ topic: 'open.one', data: { n: 1 } }),
    });
    assert.equal(res.status, 200);
    await until(() => got.length === 1, 5000, 'the message');
    assert.equal(got[0].seq, 1);
    assert.equal((await framesReceived(gw)) - before, 1, 'hello only: no subscribe frame');
    c.close();
  });

  test('a topic with last still takes its own subscribe frame, and gets its messages', async () => {
    const pub = client(gw.url, { token });
    await pub.connect();
    for (let i = 1; i <= 3; i++) await pub.publish('open.last', { i });
    pub.close();
    const before = await framesReceived(gw);
    const c = client(gw.url, { token });
    const got = [];
    const plain = c.subscribe('open.plain', () => {});
    const rewound = c.subscribe('open.last', (m) => got.push(m.seq), { last: 2 });
    await c.connect();
    await plain.ready;
    await rewound.ready;
    await until(() => got.length === 2, 5000, 'the last 2 messages');
    assert.deepEqual(got, [2, 3]);
    assert.equal((await framesReceived(gw)) - before, 2, 'hello, then one subscribe (last)');
    c.close();
  });

  test('a topic the token may not subscribe to is refused as a subscribe frame would be', async () => {
    const c = client(gw.url, { token });
    const a = c.subscribe('open.a', () => {});
    const refused = c.subscribe('closed.b', () => {});
    const z = c.subscribe('open.z', () => {});
    const before = await framesReceived(gw);
    await c.connect();
    await assert.rejects(refused.ready, (e) => e.code === 'forbidden' && e.topic === 'closed.b' && /closed\.b/.test(e.message));
    await a.ready;
    await z.ready;
    assert.equal(refused.closed, true);
    assert.deepEqual(Object.keys(c.positions()).sort(), ['open.a', 'open.z']);
    assert.deepEqual(c.errors.map((e) => [e.code, e.topic]), [['forbidden', 'closed.b']]);
    assert.equal((await framesReceived(gw)) - before, 1, 'all three in hello');
    c.close();
  });
});
