"""Real servers for the conformance suite: redis-server, nats-server, gateway pods, all on
loopback dynamic ports, tracked and killed by PID. Binaries come from environment variables
(REDIS_SERVER_BIN, NATS_SERVER_BIN, GATEWAY_BIN), the repository's .venv/bin, or PATH."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOGS = ROOT / "target" / "test-output" / "conformance"


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """n distinct free ports: all held open until all are chosen (ports picked one after the
    other can come back equal once the first socket is closed)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def find_binary(name: str, env: str) -> str:
    if os.environ.get(env):
        return os.environ[env]
    venv = ROOT / ".venv" / "bin" / name
    if venv.exists():
        return str(venv)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found (${env}, .venv/bin, PATH): scripts/test.sh installs it")
    return found


def gateway_binary() -> str:
    return os.environ.get("GATEWAY_BIN") or str(ROOT / "target" / "debug" / "gateway")


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}) before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not listen on {port} within {timeout} s") from None
            time.sleep(0.03)


class Process:
    """One child process, killed by PID on stop."""

    def __init__(self, args: list[str], log: str, env: dict[str, str] | None = None):
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log = open(LOGS / log, "ab")
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


class Redis(Process):
    def __init__(self) -> None:
        self.port = free_port()
        super().__init__(
            [find_binary("redis-server", "REDIS_SERVER_BIN"), "--port", str(self.port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            f"redis-{self.port}.log",
        )
        wait_port(self.port, self.proc, "redis-server")
        self.url = f"redis://127.0.0.1:{self.port}"

    def command(self, *args: str) -> bytes:
        """One command in RESP, e.g. FLUSHALL (no redis-cli needed)."""
        body = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(body.encode())
            return s.recv(1024)


class Nats(Process):
    def __init__(self) -> None:
        self.port = free_port()
        super().__init__(
            [find_binary("nats-server", "NATS_SERVER_BIN"), "-a", "127.0.0.1", "-p", str(self.port)],
            f"nats-{self.port}.log",
        )
        wait_port(self.port, self.proc, "nats-server")
        self.url = f"nats://127.0.0.1:{self.port}"


class Gateway(Process):
    def __init__(self, pod: str, args: list[str], redis: Redis | None, nats: Nats | None,
                 env: dict[str, str] | None = None):
        self.pod = pod
        self.port, self.admin_port, self.agent_port = free_ports(3)
        genv = {
            "GATEWAY_LISTEN": f"127.0.0.1:{self.port}",
            "GATEWAY_ADMIN_LISTEN": f"127.0.0.1:{self.admin_port}",
            "GATEWAY_AGENT_LISTEN": f"127.0.0.1:{self.agent_port}",
            "GATEWAY_POD_NAME": pod,
            "GATEWAY_MAX_FRAME_RATE": "0",
            "RUST_LOG": os.environ.get("RUST_LOG", "info"),
            **(env or {}),
        }
        if redis:
            genv["GATEWAY_REDIS_URL"] = redis.url
        if nats:
            genv["GATEWAY_NATS_URL"] = nats.url
        super().__init__([gateway_binary(), *args], f"gateway-{pod}-{self.port}.log", genv)
        wait_port(self.port, self.proc, f"gateway {pod}")
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        deadline = time.monotonic() + 15
        while not self._ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"gateway {pod} not ready within 15 s")
            time.sleep(0.05)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def post(self, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body or {}).encode()
        req = urllib.request.Request(f"{self.admin}{path}", data=data, method="POST",
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read() or b"{}")

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(f"{self.admin}{path}", timeout=10) as r:
            return json.loads(r.read())

    def publish(self, topic: str, data: object) -> int:
        return int(self.post("/api/publish", {"topic": topic, "data": data})["seq"])


class Haproxy(Process):
    """HAProxy in front of the pods as deploy/haproxy/haproxy-local.cfg sets it up: leastconn,
    health checks on /readyz, and the pods' agent-check (a draining pod gets no new upgrades)."""

    def __init__(self, gateways: list[Gateway], workdir: Path):
        self.port = free_port()
        servers = "\n".join(
            f"    server {g.pod} 127.0.0.1:{g.port} check agent-check agent-port {g.agent_port} agent-inter 200ms"
            for g in gateways)
        cfg = workdir / "haproxy.cfg"
        cfg.write_text(f"""global
    maxconn 1000
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout tunnel 1h
    timeout check 1s
    retries 2
    option redispatch 1
frontend ws
    bind 127.0.0.1:{self.port}
    default_backend gateway
backend gateway
    balance leastconn
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 200ms fall 1 rise 1 weight 100
{servers}
""")
        super().__init__([find_binary("haproxy", "HAPROXY_BIN"), "-db", "-f", str(cfg)],
                         f"haproxy-{self.port}.log")
        wait_port(self.port, self.proc, "haproxy")
        self.url = f"ws://127.0.0.1:{self.port}/ws"


def wait_fleet(gateways: list[Gateway], n: int, timeout: float = 15.0) -> None:
    """Until every pod sees `n` pods (heartbeats over NATS)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if all(len(g.get("/admin/cluster").get("pods", [])) == n for g in gateways):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the fleet view did not reach {n} pods")
        time.sleep(0.1)


def mint_token(secret: str, ttl: str, sub: str = "conformance") -> str:
    """An HS256 token from `gateway token` (the gateway's own minting command)."""
    out = subprocess.run(
        [gateway_binary(), "token", "--sub", sub, "--sub-topics", "conf.*",
         "--pub-topics", "conf.*", "--ttl", ttl],
        env={**os.environ, "GATEWAY_JWT_SECRET": secret}, check=True, capture_output=True, text=True,
    )
    return out.stdout.strip()
