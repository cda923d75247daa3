// The conformance driver of the JS SDK (see clients/conformance/README.md): reads commands as
// JSON lines on stdin, prints the client's events as JSON lines on stdout.
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import WebSocket from 'ws';

import { GatewayClient } from '../src/gateway-client.js';

// Each event carries the driver's monotonic clock (`at_ms`): the runner's checks on waits use it.
const emit = (event) => process.stdout.write(`${JSON.stringify({ ...event, at_ms: performance.now() })}\n`);
let client = null;

function connect(cmd) {
  const options = {
    WebSocket,
    backoff: { initialMs: cmd.backoff?.initial_ms ?? 500, maxMs: cmd.backoff?.max_ms ?? 30000 },
    pingIntervalMs: 0,
    autoRefresh: cmd.auto_refresh ?? false,
  };
  if (cmd.token) options.token = cmd.token;
  if (cmd.token_file) {
    options.getToken = () => {
      emit({ event: 'token_requested' });
      return readFileSync(cmd.token_file, 'utf8').trim();
    };
  }
  client = new GatewayClient(cmd.urls, options);
  client.on('welcome', (w) => emit({ event: 'connected', session: w.session, pod: w.pod, resumed: !!w.resumed }));
  client.on('message', (m) => emit({ event: 'message', topic: m.topic, seq: m.seq, epoch: m.epoch, data: m.data }));
  client.on('gap', (g) => emit({ event: 'gap', topic: g.topic, reason: g.reason, from: g.from ?? null, to: g.to }));
  client.on('duplicate', (d) => emit({ event: 'duplicate', topic: d.topic, seq: d.seq }));
  client.on('close', (c) => emit({ event: 'disconnected', code: c.code, error: c.advice?.error ?? null, after_ms: c.advice?.after_ms ?? null }));
  client.on('reconnecting', (r) => emit({ event: 'reconnecting', attempt: r.attempt, delay_ms: r.delayMs }));
  client.on('unsubscribed', (u) => emit({ event: 'unsubscribed', topic: u.topic, reason: u.reason }));
  client.on('refreshed', (r) => emit({ event: 'refreshed', exp: r.exp }));
  client.on('error', (e) => emit({ event: 'error', code: e.code ?? null, message: String(e.message) }));
  client.on('state', (state, info) => {
    if (state === 'closed' && info.advice) emit({ event: 'stopped', error: info.advice.error ?? null });
  });
  client.connect().catch(() => {});
}

function subscribe(cmd) {
  const sub = client.subscribe(cmd.topic, () => {}, cmd.since ? { since: cmd.since } : {});
  sub.ready.then(
    (position) => emit({ event: 'subscribed', topic: cmd.topic, position }),
    (e) => emit({ event: 'error', code: e.code ?? null, message: String(e.message), topic: cmd.topic }),
  );
}

function publish(cmd) {
  const options = { excludeSelf: !!cmd.exclude_self };
  if (cmd.id) options.id = cmd.id;
  client.publish(cmd.topic, cmd.data, options).then(
    (seq) => emit({ event: 'published', topic: cmd.topic, seq }),
    (e) => emit({ event: 'publish_error', topic: cmd.topic, code: e.code ?? null, message: String(e.message) }),
  );
}

const lines = createInterface({ input: process.stdin });
lines.on('line', (line) => {
  if (!line.trim()) return;
  const cmd = JSON.parse(line);
  switch (cmd.cmd) {
    case 'connect':
      return connect(cmd);
    case 'subscribe':
      return subscribe(cmd);
    case 'publish':
      return publish(cmd);
    case 'close':
      client?.close();
      client = null;
      return emit({ event: 'closed' });
    default:
      return emit({ event: 'error', code: 'unknown_command', message: String(cmd.cmd) });
  }
});
lines.on('close', () => {
  client?.close();
  process.exit(0);
});
