"""What join/leave events cost Redis: N sessions on one gateway (Redis + NATS on loopback)
subscribe to one presence topic, stay for IDLE seconds, and unsubscribe; Redis' INFO
commandstats deltas of each phase are printed as one JSON line.

    .venv/bin/python scripts/bench-presence.py . on 200 60    # --presence --join-leave
    .venv/bin/python scripts/bench-presence.py . off 200 60   # --presence only

Needs redis-server and redis-cli on PATH, .venv/bin/nats-server and target/debug/gateway
(or the binary in $GATEWAY_BIN, e.g. target/release/gateway). The idle phase also reports the
gateway's and Redis's CPU per connected member per minute. Each subscribe waits for its `subscribed`, so the join
phase also measures the fan-out of every join to the sessions already in the room. For the
event rate under sustained churn and the gateway CPU per event, see scripts/bench-joinleave.py.
"""
import asyncio, json, os, subprocess, sys, time, socket
import websockets

ROOT = sys.argv[1]
JOIN_LEAVE = sys.argv[2] == "on"
N = int(sys.argv[3])
IDLE = float(sys.argv[4])

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def stats(port):
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", "commandstats"], capture_output=True, text=True).stdout
    d = {}
    for line in out.splitlines():
        if line.startswith("cmdstat_"):
            name, rest = line[8:].split(":", 1)
            f = dict(kv.split("=") for kv in rest.split(","))
            d[name] = (int(f["calls"]), float(f["usec"]))
    return d

def cpu_seconds(pid):
    """User + system CPU seconds of a process so far."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

def redis_cpu(port):
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", "cpu"], capture_output=True, text=True).stdout
    f = dict(l.split(":", 1) for l in out.splitlines() if ":" in l)
    return float(f["used_cpu_sys"]) + float(f["used_cpu_user"])

def diff(a, b):
    out = {}
    for k, (c, u) in b.items():
        c0, u0 = a.get(k, (0, 0.0))
        if c - c0 and k not in ("commandstats",):
            out[k] = (c - c0, u - u0)
    return out

async def main():
    rp, np, pp, ap = free_port(), free_port(), free_port(), free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(rp), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    nats = subprocess.Popen([f"{ROOT}/.venv/bin/nats-server", "-a", "127.0.0.1", "-p", str(np)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    args = [os.environ.get("GATEWAY_BIN", f"{ROOT}/target/debug/gateway"), "--listen", f"127.0.0.1:{pp}", "--admin-listen", f"127.0.0.1:{ap}",
            "--redis-url", f"redis://127.0.0.1:{rp}", "--nats-url", f"nats://127.0.0.1:{np}", "--pod-name", "bench-1",
            "--presence", "--max-connections", "10000", "--max-new-conns-per-ip", "0",
            "--max-conns-per-ip", "0"]
    if JOIN_LEAVE:
        args.append("--join-leave")
    gw = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", pp), 0.2).close(); break
            except OSError:
                time.sleep(0.1)
        time.sleep(1)
        conns = []
        for _ in range(N):
            ws = await websockets.connect(f"ws://127.0.0.1:{pp}/ws", max_queue=None)
            await ws.send(json.dumps({"type": "hello"}))
            while json.loads(await ws.recv())["type"] != "welcome":
                pass
            conns.append(ws)
        async def drain(ws):
            try:
                async for _ in ws:
                    pass
            except Exception:
                pass
        before = stats(rp)
        t0 = time.monotonic()
        for i, ws in enumerate(conns):
            await ws.send(json.dumps({"type": "subscribe", "topic": "room.bench", "ref": 1}))
            while json.loads(await ws.recv())["type"] != "subscribed":
                pass
        join_s = time.monotonic() - t0
        readers = [asyncio.create_task(drain(ws)) for ws in conns]
        joined = stats(rp)
        cpu0, rcpu0 = cpu_seconds(gw.pid), redis_cpu(rp)
        await asyncio.sleep(IDLE)
        cpu1, rcpu1 = cpu_seconds(gw.pid), redis_cpu(rp)
        idle = stats(rp)
        t0 = time.monotonic()
        for ws in conns:
            await ws.send(json.dumps({"type": "unsubscribe", "topic": "room.bench", "ref": 2}))
        await asyncio.sleep(3)
        left = stats(rp)
        print(json.dumps({"join_leave": JOIN_LEAVE, "members": N, "join_seconds": round(join_s, 2),
                          "joins": diff(before, joined), "idle": diff(joined, idle), "idle_s": IDLE,
                          # CPU per connected member per minute while idle (refreshes, sweeps).
                          "idle_gateway_cpu_us_per_member_minute": round((cpu1 - cpu0) * 1e6 / N / (IDLE / 60), 1),
                          "idle_redis_cpu_us_per_member_minute": round((rcpu1 - rcpu0) * 1e6 / N / (IDLE / 60), 1),
                          "leaves": diff(idle, left)}))
        for r in readers: r.cancel()
        for ws in conns: await ws.close()
    finally:
        gw.terminate(); gw.wait(10); nats.terminate(); redis.terminate()

asyncio.run(main())
