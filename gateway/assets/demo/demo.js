// The demo page: a chat on one topic, built on the gateway's JS SDK.
//
// Query parameters: `urls` (comma-separated WebSocket URLs, tried in turn; default this page's
// own `/ws`), `topic` (default `demo.chat`), `name`. The session and positions are kept in
// sessionStorage, so a reload resumes too. On open the page shows the topic's last messages
// (`subscribe` with `last`) and, when the topic has join/leave events (`--presence
// --join-leave`), who is in the room: a `presence` list once, then kept current by the events.
import { GatewayClient } from './sdk/gateway-client.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const urls = (params.get('urls') || '/ws').split(',').map((s) => s.trim()).filter(Boolean);
const store = window.sessionStorage;
const MAX_ROWS = 300;
/** Messages shown from before the page opened. */
const LAST = 20;

let topic = params.get('topic') || store.getItem('demo.topic') || 'demo.chat';
let name = params.get('name') || store.getItem('demo.name') || `guest-${Math.floor(1000 + Math.random() * 9000)}`;
store.setItem('demo.name', name);

const client = new GatewayClient(urls.length === 1 ? urls[0] : urls, {
  storage: store,
  storageKey: 'gateway-demo',
  backoff: { initialMs: 300, maxMs: 5000 },
  pingIntervalMs: 5000,
  pongTimeoutMs: 5000,
});

// For people poking around in the console, and for the browser tests.
const demo = { client, messages: [], log: [], resumes: [], gaps: [], duplicates: 0, members: [], joins: 0, leaves: 0 };
window.demo = demo;

function now() {
  return new Date().toLocaleTimeString([], { hour12: false });
}

function log(text, kind = '') {
  demo.log.push({ at: Date.now(), text });
  const li = document.createElement('li');
  if (kind) li.className = kind;
  const t = document.createElement('span');
  t.className = 'time';
  t.textContent = now();
  li.append(t, text);
  $('log').prepend(li);
  while ($('log').children.length > 200) $('log').lastChild.remove();
}

function row(cells, className) {
  const li = document.createElement('li');
  if (className) li.className = className;
  for (const [cls, text] of cells) {
    const span = document.createElement('span');
    span.className = cls;
    span.textContent = text;
    li.append(span);
  }
  const list = $('messages');
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.append(li);
  while (list.children.length > MAX_ROWS) list.firstChild.remove();
  if (atBottom) list.scrollTop = list.scrollHeight;
  return li;
}

function onMessage(m) {
  demo.messages.push({ seq: m.seq, data: m.data, at: Date.now() });
  if (demo.messages.length > 20000) demo.messages.splice(0, demo.messages.length - 20000);
  const d = m.data && typeof m.data === 'object' ? m.data : { text: JSON.stringify(m.data) };
  const li = row([
    ['seq', `#${m.seq}`],
    ['time', now()],
    ['from', String(d.from ?? '?')],
    ['text', String(d.text ?? JSON.stringify(d))],
  ]);
  li.dataset.seq = String(m.seq);
  $('count').textContent = String(demo.messages.length);
}

function onGap(g) {
  demo.gaps.push(g);
  const lost = g.from && g.to.epoch === g.from.epoch ? `${g.to.seq - g.from.seq} message(s)` : 'messages';
  row([['text', `⚠ gap on ${g.topic}: ${lost} could not be recovered (${g.reason})`]], 'gap');
  log(`gap on ${g.topic}: ${g.reason} (from ${g.from ? g.from.seq : '–'} to ${g.to.seq})`, 'bad');
}

function renderMembers(members) {
  demo.members = members;
  const list = $('members');
  list.replaceChildren();
  const sorted = [...members].sort((a, b) => (a.user || a.session).localeCompare(b.user || b.session));
  for (const m of sorted) {
    const li = document.createElement('li');
    const you = m.session === client.session;
    if (you) li.className = 'you';
    li.textContent = `${m.user || m.session.slice(0, 8)}${you ? ' (you)' : ''}`;
    li.title = `session ${m.session}`;
    list.append(li);
  }
  $('member-count').textContent = String(members.length);
}

// Once subscribed: the member list, when the topic has join/leave events (`subscribed` then
// carries a presence position); the events keep it current from there.
async function loadMembers(forTopic) {
  if (forTopic !== topic) return;
  const off = client.presencePosition(forTopic) == null;
  $('presence-off').hidden = !off;
  if (off) {
    $('member-count').textContent = '–';
    return;
  }
  try {
    renderMembers(await client.presence(forTopic));
  } catch (e) {
    log(`member list not loaded: ${e.code}`, 'bad');
  }
}

client.on('members', (m) => {
  if (m.topic === topic) renderMembers(m.members);
});
client.on('presence', (p) => log(`member list refreshed (events missed on ${p.topic}, pseq ${p.pseq})`));

function subscribeTo(t) {
  const s = client.subscribe(t, onMessage, {
    onGap,
    last: LAST,
    onJoin: (e) => {
      demo.joins += 1;
      log(`${e.member.user || e.member.session.slice(0, 8)} joined ${e.topic} (pseq ${e.pseq})`);
    },
    onLeave: (e) => {
      demo.leaves += 1;
      log(`${e.member.user || e.member.session.slice(0, 8)} left ${e.topic} (pseq ${e.pseq})`);
    },
  });
  s.ready.then(() => loadMembers(t), () => {});
  return s;
}

let sub = subscribeTo(topic);

let lostAt = null;
let lostPod = null;
let afterMs = null;
client.on('state', (state) => {
  const badge = $('state');
  badge.textContent = state;
  badge.dataset.state = state;
  if (state === 'connecting' || state === 'closed') log(state);
});
client.on('reconnecting', (info) => log(`reconnecting in ${info.delayMs} ms (attempt ${info.attempt})`));
client.on('close', (info) => {
  if (lostAt == null) {
    lostAt = performance.now();
    lostPod = client.pod;
    afterMs = info.advice && info.advice.after_ms != null ? info.advice.after_ms : null;
  }
  const why = info.error ? ` ${info.error}` : '';
  const after = info.advice && info.advice.after_ms != null ? `, after_ms ${info.advice.after_ms}` : '';
  log(`connection closed: ${info.code}${why}${after}`, info.code === 1000 ? '' : 'bad');
});
client.on('welcome', (w) => {
  $('pod').textContent = w.pod;
  $('session').textContent = w.session.slice(0, 8);
  if (lostAt != null) {
    const ms = Math.round(performance.now() - lostAt);
    demo.resumes.push({ ms, afterMs, from: lostPod, to: w.pod, resumed: w.resumed });
    log(`${w.resumed ? 'resumed session' : 'new session'} on ${w.pod} after ${ms} ms (was on ${lostPod || '–'})`, 'good');
    lostAt = null;
  } else {
    log(`connected to ${w.pod}${w.resumed ? ' (session resumed)' : ''}`, 'good');
  }
});
client.on('duplicate', () => {
  demo.duplicates += 1;
});
client.on('error', (e) => log(`error: ${e.code}: ${e.message}`, 'bad'));

$('name').value = name;
$('name').addEventListener('change', () => {
  name = $('name').value.trim() || name;
  store.setItem('demo.name', name);
});
$('topic').value = topic;
$('topic').addEventListener('change', () => {
  const next = $('topic').value.trim();
  if (!$('topic').checkValidity() || !next || next === topic) return;
  sub.unsubscribe();
  topic = next;
  store.setItem('demo.topic', topic);
  $('messages').replaceChildren();
  demo.messages = [];
  $('count').textContent = '0';
  $('members').replaceChildren();
  sub = subscribeTo(topic);
  log(`switched to topic ${topic}`);
});

$('send').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const text = $('text').value.trim();
  if (!text) return;
  $('text').value = '';
  try {
    await client.publish(topic, { from: name, text });
  } catch (e) {
    log(`not sent (${e.code}): ${text}`, 'bad');
    $('text').value = text;
  }
});

let ticker = null;
let tick = 0;
$('ticker').addEventListener('change', () => {
  clearInterval(ticker);
  ticker = null;
  if (!$('ticker').checked) return;
  ticker = setInterval(() => {
    tick += 1;
    client.publish(topic, { from: name, text: `tick ${tick}`, tick }).catch((e) => log(`tick ${tick} not sent: ${e.code}`, 'bad'));
  }, 250);
});

setInterval(async () => {
  if (client.state !== 'connected') return;
  try {
    $('rtt').textContent = `${await client.ping()} ms`;
  } catch {
    $('rtt').textContent = '–';
  }
}, 3000);

$('urls').textContent = `Gateway URL${urls.length > 1 ? 's' : ''}: ${urls.join(', ')}`;
client.connect().catch((e) => log(`stopped: ${e.code}`, 'bad'));
