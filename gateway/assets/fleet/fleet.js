// The fleet page: one row per pod from `/admin/cluster`, refreshed every second, and a drain
// button for the pod serving the page. URLs are relative, so the page also works behind a
// path-prefixing proxy (e.g. the Kubernetes API server's pod proxy).
const $ = (id) => document.getElementById(id);
const TOKEN_KEY = 'gateway-fleet.admin-token';
const POLL_MS = 1000;
let token = sessionStorage.getItem(TOKEN_KEY) || '';
let view = null;

function authHeaders() {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function setStatus(text, kind) {
  const s = $('status');
  s.textContent = text;
  s.dataset.kind = kind;
}

function needToken() {
  $('token-form').hidden = false;
  $('token').focus();
  setStatus(token ? 'admin token refused' : 'admin token required', 'bad');
}

$('token-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  token = $('token').value.trim();
  sessionStorage.setItem(TOKEN_KEY, token);
  $('token').value = '';
  $('token-form').hidden = true;
  poll();
});

function pct(x) {
  return `${x.toFixed(1)} %`;
}

function cell(tr, className, content) {
  const td = document.createElement('td');
  if (className) td.className = className;
  if (content instanceof Node) td.append(content);
  else td.textContent = content;
  tr.append(td);
  return td;
}

function render(v) {
  view = v;
  const pods = v.pods || [];
  const live = pods.filter((p) => !p.draining);
  const connections = pods.reduce((n, p) => n + p.connections, 0);
  const capacity = live.reduce((n, p) => n + p.capacity, 0);
  const even = live.length ? 100 / live.length : 0;
  $('self').textContent = v.pod;
  $('pods').textContent = live.length === pods.length ? String(pods.length) : `${pods.length} (${pods.length - live.length} draining)`;
  $('connections').textContent = String(connections);
  $('capacity').textContent = String(capacity);
  $('even').textContent = pct(even);
  $('largest').textContent = pods.length ? pct(Math.max(...pods.map((p) => p.share))) : '–';

  const rows = pods.map((p) => {
    const tr = document.createElement('tr');
    tr.dataset.pod = p.pod;
    tr.dataset.share = String(p.share);
    tr.dataset.connections = String(p.connections);
    tr.dataset.draining = String(p.draining);
    const name = document.createElement('b');
    name.textContent = p.pod;
    const podCell = cell(tr, 'pod', name);
    if (p.pod === v.pod) {
      const self = document.createElement('span');
      self.className = 'self';
      self.textContent = 'this page';
      podCell.append(self);
    }
    cell(tr, 'addr', p.addr);
    cell(tr, 'num', String(p.connections));

    const share = document.createElement('div');
    share.className = 'share';
    const bar = document.createElement('div');
    bar.className = 'bar';
    const fill = document.createElement('div');
    fill.className = 'fill';
    fill.style.width = `${Math.min(100, Math.max(0, p.share))}%`;
    bar.append(fill);
    if (!p.draining && even > 0) {
      const tick = document.createElement('div');
      tick.className = 'tick';
      tick.style.left = `calc(${even}% - 1px)`;
      bar.append(tick);
    }
    const label = document.createElement('span');
    label.className = 'pct';
    label.textContent = pct(p.share);
    share.append(bar, label);
    cell(tr, '', share);

    const used = p.capacity ? (100 * p.connections) / p.capacity : 0;
    cell(tr, 'num', `${p.capacity} (${used < 10 ? used.toFixed(1) : Math.round(used)} % used)`);
    const badge = document.createElement('span');
    badge.className = p.draining ? 'badge draining' : 'badge';
    badge.textContent = p.draining ? 'draining' : 'live';
    cell(tr, 'state', badge);
    const age = cell(tr, 'num', `${(p.heartbeat_age_ms / 1000).toFixed(1)} s ago`);
    if (p.heartbeat_age_ms > 2500) age.classList.add('stale');

    const action = cell(tr, '', '');
    if (p.pod === v.pod && !p.draining) {
      const b = document.createElement('button');
      b.type = 'button';
      b.className = 'drain';
      b.dataset.drain = p.pod;
      b.textContent = 'Drain…';
      action.append(b);
    }
    return tr;
  });
  $('rows').replaceChildren(...rows);
}

async function poll() {
  try {
    const r = await fetch('admin/cluster', { headers: authHeaders(), cache: 'no-store' });
    if (r.status === 401) return needToken();
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    render(await r.json());
    setStatus(`live · ${new Date().toLocaleTimeString([], { hour12: false })}`, 'ok');
  } catch (e) {
    setStatus(`cannot read admin/cluster: ${e.message}`, 'bad');
  }
  return undefined;
}

async function drain(pod) {
  const ok = window.confirm(
    `Drain pod ${pod}?\n\nIt stops taking connections and closes its clients with 1001, paced; ` +
      'they resume on the other pods without losing messages. The pod stays drained until it restarts.',
  );
  if (!ok) return;
  const r = await fetch('admin/drain', { method: 'POST', headers: authHeaders() });
  if (r.status === 401) return needToken();
  if (!r.ok) {
    $('drain-status').textContent = `drain refused: HTTP ${r.status}`;
    return;
  }
  const started = await r.json();
  $('drain-status').textContent = `Draining ${pod}: ${started.connections} connection(s) to close…`;
  for (let i = 0; i < 600; i++) {
    await new Promise((res) => setTimeout(res, 500));
    const s = await fetch('admin/drain', { headers: authHeaders(), cache: 'no-store' }).then((x) => x.json()).catch(() => null);
    if (!s) continue;
    $('drain-status').textContent = `Draining ${pod}: ${s.closed} closed, ${s.connections} still open.`;
    if (s.connections === 0) {
      $('drain-status').textContent = `${pod} is drained: ${s.closed} client(s) closed with 1001.`;
      break;
    }
  }
  poll();
}

$('rows').addEventListener('click', (ev) => {
  const b = ev.target.closest('button[data-drain]');
  if (b) drain(b.dataset.drain);
});

poll();
setInterval(poll, POLL_MS);
