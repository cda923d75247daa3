// The demo page and the fleet page in headless Chromium (Debian's `chromium`, driven by
// playwright-core: no browser download), against a 3-pod local fleet started with
// scripts/fleet.sh (redis-server, nats-server, gw-1..gw-3).
//
// Screenshots go to target/test-output/; with UPDATE_SCREENSHOTS=1 they are also copied to
// docs/img/ (the ones the docs show).
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import WebSocket from 'ws';
import { chromium } from 'playwright-core';

import { GatewayClient } from '../src/gateway-client.js';
import { sleep, until } from './support/fake-server.js';
import { freePort, outputDir, repoRoot, startGateway } from './support/processes.js';

const shots = path.join(repoRoot, 'target/test-output');
const docsImg = path.join(repoRoot, 'docs/img');
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const PODS = 3;

function portFree(port) {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

/** A base such that base+1..base+PODS are free. */
async function freeBase(used) {
  for (;;) {
    const base = 20000 + 10 * Math.floor(Math.random() * 3000);
    if (used.has(base)) continue;
    const ports = Array.from({ length: PODS }, (_, i) => base + i + 1);
    if ((await Promise.all(ports.map(portFree))).every(Boolean)) {
      used.add(base);
      return base;
    }
  }
}

function fleet(cmd, env) {
  const r = spawnSync('bash', [path.join(repoRoot, 'scripts/fleet.sh'), ...cmd], { env, encoding: 'utf8', timeout: 120000 });
  if (r.status !== 0) throw new Error(`fleet.sh ${cmd.join(' ')} failed (${r.status}):\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

function saveShot(name) {
  const file = path.join(shots, name);
  if (process.env.UPDATE_SCREENSHOTS === '1') {
    mkdirSync(docsImg, { recursive: true });
    copyFileSync(file, path.join(docsImg, name));
  }
  return file;
}

const timings = {};

describe('browser: demo page and fleet page on a 3-pod local fleet', () => {
  let env;
  let ports;
  let browser;
  let context;
  const pageErrors = [];
  const nodeClients = [];
  let alice;
  let bob;

  const publicUrl = (n) => `http://127.0.0.1:${ports.public + n}`;
  const wsUrl = (n) => `ws://127.0.0.1:${ports.public + n}/ws`;
  const adminUrl = (n) => `http://127.0.0.1:${ports.admin + n}`;
  const demoUrl = (n, name) => {
    const order = Array.from({ length: PODS }, (_, i) => ((n - 1 + i) % PODS) + 1);
    return `${publicUrl(n)}/?name=${name}&topic=demo.chat&urls=${order.map(wsUrl).join(',')}`;
  };

  before(async () => {
    mkdirSync(shots, { recursive: true });
    assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install chromium (scripts/test-js.sh does)`);
    const used = new Set();
    ports = { public: await freeBase(used), admin: await freeBase(used), agent: await freeBase(used), redis: await freePort(), nats: await freePort() };
    env = {
      ...process.env,
      FLEET_DIR: path.join(outputDir, 'fleet'),
      FLEET_PODS: String(PODS),
      FLEET_PUBLIC_BASE: String(ports.public),
      FLEET_ADMIN_BASE: String(ports.admin),
      FLEET_AGENT_BASE: String(ports.agent),
      FLEET_REDIS_PORT: String(ports.redis),
      FLEET_NATS_PORT: String(ports.nats),
      GATEWAY_BIN: process.env.GATEWAY_BIN || path.join(repoRoot, 'target/debug/gateway'),
      // Steady numbers for the fleet page: no rebalancing while the test counts connections.
      GATEWAY_REBALANCE_RATE: '0',
      FLEET_HAPROXY: '0',
    };
    fleet(['start'], env);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
    });
    context = await browser.newContext({ viewport: { width: 1180, height: 720 }, deviceScaleFactor: 1 });
  });

  after(async () => {
    for (const c of nodeClients) c.close();
    await browser?.close();
    if (env) fleet(['stop'], env);
    writeFileSync(path.join(outputDir, 'browser-resume-times.json'), `${JSON.stringify(timings, null, 2)}\n`);
  });

  async function openDemo(n, name) {
    const page = await context.newPage();
    page.on('pageerror', (e) => pageErrors.push(`${name}: ${e.message}`));
    await page.goto(demoUrl(n, name));
    await page.waitForSelector('#state[data-state="connected"]', { timeout: 10000 });
    return page;
  }

  async function say(page, text) {
    await page.fill('#text', text);
    await page.click('#send-button');
  }

  const seqsOf = (page) => page.evaluate(() => window.demo.messages.map((m) => m.seq));
  const textsOf = (page) => page.$$eval('#messages li:not(.gap)', (lis) => lis.map((li) => `${li.dataset.seq} ${li.querySelector('.from').textContent}: ${li.querySelector('.text').textContent}`));

  test('the demo page in two pages (on two pods) exchanges messages, each with its seq', async () => {
    alice = await openDemo(1, 'alice');
    bob = await openDemo(2, 'bob');
    assert.equal(await alice.textContent('#pod'), 'gw-1');
    assert.equal(await bob.textContent('#pod'), 'gw-2');
    const lines = [
      [alice, 'Hi Bob, I am on gw-1.'],
      [bob, 'Hello Alice! gw-2 here.'],
      [alice, 'Every message shows its seq.'],
      [bob, 'Drain my pod and watch me resume.'],
    ];
    for (const [page, text] of lines) {
      await say(page, text);
      for (const p of [alice, bob]) await p.waitForSelector(`#messages li:has-text(${JSON.stringify(text)})`, { timeout: 5000 });
    }
    const a = await textsOf(alice);
    const b = await textsOf(bob);
    assert.deepEqual(a, b);
    assert.equal(a.length, 4);
    const seqs = await seqsOf(alice);
    assert.deepEqual(seqs, [seqs[0], seqs[0] + 1, seqs[0] + 2, seqs[0] + 3]);
    assert.match(a[0], /^\d+ alice: Hi Bob/);
    assert.equal(await alice.inputValue('#text'), '', 'the input is cleared after sending');
    // Who is in the room: both pages, from a list and the join/leave events.
    for (const p of [alice, bob]) await p.waitForFunction(() => window.demo.members.length === 2, null, { timeout: 5000 });
    assert.equal(await alice.textContent('#member-count'), '2');
  });

  test("a drained pod's page reconnects to another pod and resumes without loss", async (t) => {
    await bob.check('#ticker'); // bob publishes a tick every 250 ms
    await until(async () => (await seqsOf(alice)).length >= 10, 5000, 'ticks on alice');
    const drain = await fetch(`${adminUrl(1)}/admin/drain`, { method: 'POST' }).then((r) => r.json());
    assert.equal(drain.pod, 'gw-1');
    await alice.waitForFunction(() => window.demo.resumes.length === 1, null, { timeout: 10000 });
    await alice.waitForSelector('#state[data-state="connected"]');
    assert.equal(await alice.textContent('#pod'), 'gw-2');
    await sleep(1500);
    await bob.uncheck('#ticker');
    await sleep(400);
    const last = Math.max(...(await seqsOf(bob)));
    await until(async () => Math.max(...(await seqsOf(alice))) === last, 5000, "alice's last seq");
    const a = await seqsOf(alice);
    const b = await seqsOf(bob);
    const expected = Array.from({ length: a.at(-1) - a[0] + 1 }, (_, i) => a[0] + i);
    assert.deepEqual(a, expected, 'alice saw every message once, in order');
    assert.deepEqual(a, b.slice(b.indexOf(a[0])), 'alice and bob saw the same messages');
    const resume = await alice.evaluate(() => window.demo.resumes[0]);
    assert.deepEqual([resume.from, resume.to, resume.resumed], ['gw-1', 'gw-2', true]);
    assert.equal(await alice.evaluate(() => window.demo.gaps.length), 0);
    // The drain moved alice's socket without a leave or a join: the room is the same.
    assert.equal(await bob.evaluate(() => window.demo.leaves), 0);
    assert.equal(await alice.evaluate(() => window.demo.members.length), 2);
    timings.browser_drain_resume_ms = resume.ms;
    timings.browser_drain_after_ms = resume.afterMs;
    t.diagnostic(`the drained page resumed its session on ${resume.to} ${resume.ms} ms after the 1001 close (after_ms ${resume.afterMs})`);
    await alice.setViewportSize({ width: 1180, height: 900 });
    await alice.evaluate(() => {
      const list = document.getElementById('messages');
      list.scrollTop = list.scrollHeight;
    });
    const demoHeight = await alice.evaluate(() => Math.ceil(document.querySelector('main').getBoundingClientRect().bottom) + 8);
    await alice.screenshot({ path: path.join(shots, 'demo.png'), clip: { x: 0, y: 0, width: 1180, height: demoHeight } });
    saveShot('demo.png');
  });

  test('the fleet page shows every pod, shares summing to 100 %, and marks the draining pod', async () => {
    // Load besides the two pages (both on gw-2 now): five more clients on gw-3, one on gw-2.
    for (const [n, count] of [[3, 5], [2, 1]]) {
      for (let i = 0; i < count; i++) {
        const c = new GatewayClient(wsUrl(n), { WebSocket, pingIntervalMs: 0 });
        nodeClients.push(c);
        await c.connect();
      }
    }
    const page = await context.newPage();
    page.on('pageerror', (e) => pageErrors.push(`fleet: ${e.message}`));
    await page.goto(`${adminUrl(2)}/`);
    const rowsOf = () =>
      page.$$eval('#rows tr', (trs) => trs.map((tr) => ({ pod: tr.dataset.pod, share: Number(tr.dataset.share), connections: Number(tr.dataset.connections), draining: tr.dataset.draining === 'true' })));
    let rows;
    await until(async () => {
      rows = await rowsOf();
      const c = Object.fromEntries(rows.map((r) => [r.pod, r.connections]));
      return rows.length === PODS && c['gw-1'] === 0 && c['gw-2'] === 3 && c['gw-3'] === 5;
    }, 10000, 'the fleet page to show 3 pods with 0/3/5 connections').catch((e) => {
      throw new Error(`${e.message}: ${JSON.stringify(rows)}`);
    });
    assert.deepEqual(rows.map((r) => r.pod), ['gw-1', 'gw-2', 'gw-3']);
    const total = rows.reduce((s, r) => s + r.share, 0);
    assert.ok(Math.abs(total - 100) < 0.01, `shares sum to ${total}`);
    assert.deepEqual(rows.map((r) => r.draining), [true, false, false]);
    assert.equal(await page.textContent('#rows tr[data-pod="gw-1"] .badge'), 'draining');
    assert.equal(await page.textContent('#rows tr[data-pod="gw-3"] .pct'), '62.5 %');
    assert.equal(await page.textContent('#self'), 'gw-2');
    await sleep(600); // let the bars finish their transition
    const height = await page.evaluate(() => Math.ceil(document.querySelector('main').getBoundingClientRect().bottom) + 8);
    await page.screenshot({ path: path.join(shots, 'fleet.png'), clip: { x: 0, y: 0, width: 1180, height } });
    saveShot('fleet.png');

    // The drain button asks first: dismissing changes nothing.
    page.once('dialog', (d) => d.dismiss());
    await page.click('button[data-drain="gw-2"]');
    await sleep(300);
    assert.equal((await fetch(`${adminUrl(2)}/admin/drain`).then((r) => r.json())).draining, false);
    // Accepting drains gw-2: its clients (both demo pages among them) resume on gw-3.
    page.once('dialog', (d) => d.accept());
    await page.click('button[data-drain="gw-2"]');
    await page.waitForSelector('#rows tr[data-pod="gw-2"][data-draining="true"]', { timeout: 5000 });
    await page.waitForFunction(() => /is drained/.test(document.getElementById('drain-status').textContent), null, { timeout: 15000 });
    for (const p of [alice, bob]) {
      await p.waitForFunction(() => document.getElementById('pod').textContent === 'gw-3', null, { timeout: 10000 });
    }
    assert.deepEqual(pageErrors, []);
  });

  test('the fleet page asks for the admin token when the admin port has one', async () => {
    const gw = await startGateway({ pod: 'guarded', env: { GATEWAY_ADMIN_TOKEN: 'fleet-page-secret' } });
    try {
      const page = await context.newPage();
      page.on('pageerror', (e) => pageErrors.push(`guarded: ${e.message}`));
      await page.goto(`${gw.admin}/`);
      await page.waitForSelector('#token-form:not([hidden])', { timeout: 5000 });
      assert.equal(await page.getAttribute('#status', 'data-kind'), 'bad');
      assert.equal(await page.$$eval('#rows tr', (trs) => trs.length), 0);
      await page.fill('#token', 'fleet-page-secret');
      await page.click('#token-form button');
      await page.waitForSelector('#rows tr[data-pod="guarded"]', { timeout: 5000 });
      assert.equal(await page.isHidden('#token-form'), true);
      // The drain button sends the token too.
      page.once('dialog', (d) => d.accept());
      await page.click('button[data-drain="guarded"]');
      await page.waitForSelector('#rows tr[data-pod="guarded"][data-draining="true"]', { timeout: 5000 });
      assert.deepEqual(pageErrors, []);
    } finally {
      await gw.stop();
    }
  });
});

