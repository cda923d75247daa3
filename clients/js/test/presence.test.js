// Unit tests of the SDK's join/leave handling against the scripted fake gateway: pseq tracking,
// resume with the presence position, the tracked member list, and the fresh list.
import { test, describe, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';

import { GatewayClient } from '../src/gateway-client.js';
import { FakeServer, MemoryStorage, until } from './support/fake-server.js';

const cleanups = [];
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

const ann = { user: 'ann', session: 's-ann' };
const bob = { session: 's-bob' };
const cy = { user: 'cy', session: 's-cy', info: { name: 'Cy', tags: ['a'] } };

/** A client subscribed to `room` at message seq 0 and presence position `pseq` of `pepoch`. */
async function inRoom(pseq = 3, pepoch = 'p1', options = {}) {
  const server = await FakeServer.start();
  const client = new GatewayClient(server.url, {
    WebSocket,
    backoff: { initialMs: 20, maxMs: 200 },
    pingIntervalMs: 0,
    ...options,
  });
  cleanups.push(() => server.stop());
  cleanups.push(() => client.close());
  const events = [];
  for (const name of ['join', 'leave', 'presence', 'members', 'duplicate']) {
    client.on(name, (e) => events.push({ name, ...e }));
  }
  const joins = [];
  const sub = client.subscribe('room', () => {}, { onJoin: (e) => joins.push(e) });
  const connecting = client.connect();
  const conn = await server.conn(0);
  await conn.welcome();
  await connecting;
  await conn.subscribed(0, 'e1', { pseq, pepoch });
  await sub.ready;
  return { server, client, conn, events, joins, sub };
}

const event = (type, pseq, member, epoch = 'p1') => ({ type, topic: 'room', pseq, epoch, member });

describe('join/leave events', () => {
  test('events advance pseq; ones already seen are dropped; the position resumes', async () => {
    const { server, client, conn, events, joins } = await inRoom(3);
    assert.deepEqual(client.presencePosition('room'), { pseq: 3, epoch: 'p1' });
    conn.send(event('join', 4, ann));
    conn.send(event('join', 5, bob));
    conn.send(event('join', 5, bob)); // a replay overlapping what was delivered
    conn.send(event('leave', 6, ann));
    await until(() => events.filter((e) => e.name === 'leave').length === 1);
    assert.deepEqual(
      events.filter((e) => e.name !== 'duplicate').map((e) => [e.name, e.pseq, e.member.session]),
      [['join', 4, 's-ann'], ['join', 5, 's-bob'], ['leave', 6, 's-ann']],
    );
    assert.deepEqual(events.filter((e) => e.name === 'duplicate').map((e) => e.pseq), [5]);
    assert.deepEqual(joins.map((e) => e.pseq), [4, 5], 'the subscription hears its topic');
    assert.deepEqual(client.positions(), { room: { seq: 0, epoch: 'e1', pseq: 6, pepoch: 'p1' } });
    // Reconnect: hello carries the presence position with the message one.
    conn.kill();
    const c1 = await server.conn(1);
    const hello = await c1.welcome({ topics: { room: { seq: 0, epoch: 'e1', recovered: true, pseq: 6, pepoch: 'p1' } } });
    assert.deepEqual(hello.positions, { room: { seq: 0, epoch: 'e1', pseq: 6, pepoch: 'p1' } });
    c1.send(event('join', 7, cy));
    await until(() => client.presencePosition('room')?.pseq === 7);
  });

  test('a session that could not be resumed subscribes again with its presence position', async () => {
    const { server, conn } = await inRoom(8);
    conn.send(event('join', 9, ann));
    await new Promise((r) => setTimeout(r, 30));
    conn.kill();
    const c1 = await server.conn(1);
    await c1.welcome({ resumed: false });
    const sub = await c1.subscribed(0, 'e1', { pseq: 9, pepoch: 'p1' });
    assert.deepEqual(sub.since, { seq: 0, epoch: 'e1', pseq: 9, pepoch: 'p1' });
  });

  test('the tracked members follow a list and the events after it, not the ones before', async () => {
    const { client, conn, events } = await inRoom(3);
    assert.equal(client.members('room'), null, 'unknown until a list');
    const listing = client.presence('room');
    const req = await conn.next('presence');
    // An event already in the list arrives after it: the list is not changed twice.
    conn.send({ type: 'presence', topic: 'room', ref: req.ref, members: [ann, bob], pseq: 5, epoch: 'p1' });
    conn.send(event('join', 4, ann));
    conn.send(event('join', 5, bob));
    conn.send(event('leave', 6, ann));
    conn.send(event('join', 7, cy));
    assert.deepEqual(await listing, [ann, bob]);
    await until(() => client.presencePosition('room')?.pseq === 7);
    assert.deepEqual(client.members('room').map((m) => m.session).sort(), ['s-bob', 's-cy']);
    // A member's info is kept as the gateway sent it.
    assert.deepEqual(client.members('room').find((m) => m.session === 's-cy'), cy);
    assert.equal(events.filter((e) => e.name === 'members').length, 3);
  });

  test('a fresh list (recovered:false) replaces the members and the position, new epoch too', async () => {
    const storage = new MemoryStorage();
    const { client, conn, events } = await inRoom(3, 'p1', { storage, storageKey: 'k' });
    conn.send({ type: 'presence', topic: 'room', members: [cy], pseq: 2, epoch: 'p2', recovered: false });
    conn.send(event('join', 3, ann, 'p2'));
    await until(() => client.presencePosition('room')?.epoch === 'p2' && client.presencePosition('room').pseq === 3);
    assert.deepEqual(client.presencePosition('room'), { pseq: 3, epoch: 'p2' });
    assert.deepEqual(events.find((e) => e.name === 'presence'), {
      name: 'presence', topic: 'room', members: [cy], pseq: 2, epoch: 'p2', recovered: false,
    });
    assert.deepEqual(client.members('room').map((m) => m.session).sort(), ['s-ann', 's-cy']);
    client.close();
    const saved = JSON.parse(storage.getItem('k'));
    assert.deepEqual(saved.positions.room, { seq: 0, epoch: 'e1', pseq: 3, pepoch: 'p2' });
  });
});

describe('subscribe with last', () => {
  test('the first subscribe rewinds by count and takes the older messages; a resubscribe uses since', async () => {
    const server = await FakeServer.start();
    const client = new GatewayClient(server.url, { WebSocket, backoff: { initialMs: 20, maxMs: 200 }, pingIntervalMs: 0 });
    cleanups.push(() => server.stop());
    cleanups.push(() => client.close());
    const got = [];
    client.subscribe('room', (m) => got.push(m.seq), { last: 2 });
    const connecting = client.connect();
    const conn = await server.conn(0);
    await conn.welcome();
    await connecting;
    const sub = await conn.subscribed(9, 'e1', { recovered: true });
    assert.equal(sub.last, 2);
    conn.message('room', 8);
    conn.message('room', 9);
    conn.message('room', 10);
    await until(() => got.length === 3);
    assert.deepEqual(got, [8, 9, 10]);
    conn.kill();
    const c1 = await server.conn(1);
    await c1.welcome({ resumed: false });
    const again = await c1.subscribed(10, 'e1', { recovered: true });
    assert.deepEqual([again.since, again.last], [{ seq: 10, epoch: 'e1' }, undefined]);
  });
});
