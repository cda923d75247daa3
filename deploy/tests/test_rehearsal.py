"""The rehearsal: each overlay, rendered, run as local processes (rehearsal.py says what is
mapped), put through what Kubernetes would do to it: kubelet's probes, traffic through HAProxy
with PROXY v2, a gateway pod's preStop under load, a rolling replacement of one pod, and an
HAProxy pod's preStop (drain-peer) under load. Subscribers count every message: none may be
lost, none may resume with recovered:false.

Needs the gateway binary (GATEWAY_BIN, default target/debug/gateway), redis-server, nats-server
(NATS_SERVER_BIN), haproxy, openssl.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import rendered
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

import manifests as m
from rehearsal import Cluster, wait_for

ROOT = m.ROOT
GATEWAY_BIN = os.environ.get("GATEWAY_BIN", str(ROOT / "target" / "debug" / "gateway"))
TOPIC = "rehearsal.ticks"
SUBSCRIBERS = 24
LB_PODS = 2


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Tokens:
    """An Ed25519 key pair (openssl), the public half for GATEWAY_JWT_PUBLIC_KEY; EdDSA JWTs."""

    def __init__(self, workdir: Path):
        self.key = workdir / "jwt.key"
        subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(self.key)], check=True)
        self.public_pem = subprocess.run(
            ["openssl", "pkey", "-in", str(self.key), "-pubout"], check=True, capture_output=True, text=True
        ).stdout

    def mint(self, sub: str) -> str:
        head = b64(json.dumps({"alg": "EdDSA", "typ": "JWT"}).encode())
        claims = {"sub": sub, "exp": int(time.time()) + 3600, "gw": {"sub": ["rehearsal.*"], "pub": []}}
        signing_input = f"{head}.{b64(json.dumps(claims).encode())}"
        # Ed25519 signs in one shot: openssl wants the input as a file.
        data = self.key.with_suffix(".in")
        data.write_text(signing_input)
        sig = subprocess.run(
            ["openssl", "pkeyutl", "-sign", "-inkey", str(self.key), "-rawin", "-in", str(data)],
            check=True, capture_output=True,
        ).stdout
        return f"{signing_input}.{b64(sig)}"


class Subscriber:
    """Subscribes through 'the cloud load balancer' (a list of HAProxy addresses: a stopping
    HAProxy pod is deregistered from it), resumes after every close, checks every seq."""

    def __init__(self, n: int, lb: list[str], token: str | None, origin: str | None):
        self.n, self.lb, self.token, self.origin = n, lb, token, origin
        self.seqs: list[int] = []
        self.epoch = None
        self.resume = None
        self.pods: list[str] = []
        self.problems: list[str] = []
        self.closes: list[int] = []
        self.refusals: list[int] = []
        self.lbs: list[str] = []
        self.subscribed = asyncio.Event()
        self.stopping = False

    async def run(self):
        attempt = 0
        while not self.stopping:
            target = self.lb[(self.n + attempt) % len(self.lb)] if self.lb else None
            attempt += 1
            try:
                code, reason = await self._session(target)
                self.closes.append(code)
                after = json.loads(reason or "{}").get("after_ms", 0) if code in (1001, 1012, 1013) else 0
                await asyncio.sleep(after / 1000)
            except ConnectionClosed as e:
                # No close frame received: the connection was cut (1006).
                self.closes.append(e.rcvd.code if e.rcvd else 1006)
                await asyncio.sleep(0.05)
            except InvalidStatus as e:
                # 503 draining/capacity before the upgrade: retry after Retry-After, like the SDK.
                self.refusals.append(e.response.status_code)
                await asyncio.sleep(min(float(e.response.headers.get("Retry-After", "1")), 1.0))
            except (OSError, asyncio.TimeoutError):
                await asyncio.sleep(0.05)
            except Exception as e:  # a broken frame is a test failure, not a retry
                self.problems.append(f"subscriber {self.n}: {e!r}")
                return

    async def _session(self, target: str):
        async with connect(f"ws://{target}/ws", origin=self.origin, open_timeout=5, close_timeout=2) as ws:
            hello = {"type": "hello"}
            if self.token:
                hello["token"] = self.token
            if self.resume:
                hello["resume"] = self.resume
                hello["positions"] = {TOPIC: {"seq": self.seqs[-1] if self.seqs else self.start, "epoch": self.epoch}}
            await ws.send(json.dumps(hello))
            welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
            if welcome.get("type") != "welcome":
                raise AssertionError(f"subscriber {self.n}: {welcome}")
            self.pods.append(welcome["pod"])
            self.lbs.append(target)
            if self.resume:
                topic = welcome.get("topics", {}).get(TOPIC)
                if not welcome["resumed"] or not topic or not topic.get("recovered"):
                    self.problems.append(f"subscriber {self.n}: resume not recovered: {welcome}")
            self.resume = welcome["resume"]
            if not self.subscribed.is_set():
                await ws.send(json.dumps({"type": "subscribe", "topic": TOPIC, "ref": 1}))
            async for raw in ws:
                frame = json.loads(raw)
                if frame["type"] == "subscribed":
                    self.start, self.epoch = frame["seq"], frame["epoch"]
                    self.subscribed.set()
                elif frame["type"] == "message" and frame["topic"] == TOPIC:
                    expected = (self.seqs[-1] if self.seqs else self.start) + 1
                    if frame["seq"] > expected:
                        self.problems.append(f"subscriber {self.n}: gap, got {frame['seq']} after {expected - 1}")
                    if frame["seq"] >= expected:
                        self.seqs.append(frame["seq"])
                    self.epoch = frame.get("epoch", self.epoch)
                elif frame["type"] == "error":
                    self.problems.append(f"subscriber {self.n}: {frame}")
            return ws.close_code, ws.close_reason


class Rehearsal:
    def __init__(self, overlay: str, workdir: Path):
        self.docs = rendered(overlay)
        self.workdir = workdir
        self.tokens = Tokens(workdir)
        self.admin_token = secrets.token_hex(16)
        self.metrics_token = secrets.token_hex(16)
        backends = {"redis-password": secrets.token_hex(8), "nats-user": "gateway", "nats-password": secrets.token_hex(8)}
        self.secrets = {
            "gateway-admin-token": {"token": self.admin_token + "\n"},
            "gateway-metrics-token": {"token": self.metrics_token + "\n"},
            "gateway-backends": backends,
            "gateway-jwt": {"public.pem": self.tokens.public_pem},
        }
        self.cluster = Cluster(self.docs, workdir, GATEWAY_BIN, self.secrets)
        env = m.container_env(self.docs, m.one(self.docs, "Deployment", "gateway")["spec"]["template"]["spec"]["containers"][0],
                              self.secrets, fields={"metadata.name": "x", "status.podIP": "127.0.0.1"})
        self.auth = env.get("GATEWAY_AUTH", "off") != "off"
        self.origin = env.get("GATEWAY_ALLOWED_ORIGINS", "").split(",")[0] or None
        self.insecure = env.get("GATEWAY_ADMIN_INSECURE") == "true"
        uses_creds = "GATEWAY_REDIS_PASSWORD_FILE" in env
        self.cluster.start_backends(
            backends["redis-password"] if uses_creds else None,
            backends["nats-user"] if uses_creds else None,
            backends["nats-password"] if uses_creds else None,
        )
        self.cluster.reserve_lb_ips(LB_PODS)
        self.publishes = 0

    def admin(self, pod, path: str, body: dict | None = None, token: str | None = None,
              accept: str | None = None) -> tuple[int, str]:
        req = urllib.request.Request(f"http://{pod.ip}:9090{path}", data=json.dumps(body).encode() if body else None)
        if accept:
            req.add_header("Accept", accept)
        if body:
            req.add_header("Content-Type", "application/json")
        token = token or self.admin_token
        if not self.insecure:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def publish_one(self):
        """POST /api/publish with an id, retried on another pod until stored (at-least-once +
        dedup = exactly once)."""
        self.publishes += 1
        body = {"topic": TOPIC, "data": {"n": self.publishes}, "id": f"tick-{self.publishes}"}

        def attempt():
            for pod in [p for p in self.cluster.pods if p.deployment["metadata"]["name"] == "gateway"
                        and p.proc.poll() is None and not p.terminating]:
                try:
                    if self.admin(pod, "/api/publish", body)[0] == 200:
                        return True
                except OSError:
                    continue
            return False

        wait_for(f"publish {self.publishes}", attempt, timeout=20)

    async def publisher(self, stop: asyncio.Event):
        while not stop.is_set():
            await asyncio.to_thread(self.publish_one)
            await asyncio.sleep(0.05)

    def lb_addrs(self, lbs) -> list[str]:
        return [f"{p.ip}:8080" for p in lbs]


def haproxy_servers_up(cluster: Cluster, lb) -> int:
    """Servers UP in lb's `gateway` backend, from its stats CSV (port 8404)."""
    try:
        with urllib.request.urlopen(f"http://{lb.ip}:8404/;csv", timeout=2) as r:
            rows = r.read().decode().splitlines()
    except OSError:
        return 0
    return sum(1 for row in rows if row.startswith("gateway,gw") and ",UP," in row)


async def under_load(reh: Rehearsal, subs: list[Subscriber], action):
    """Runs `action` (blocking) while the publisher ticks; then lets the last messages arrive."""
    stop = asyncio.Event()
    pub = asyncio.create_task(reh.publisher(stop))
    await asyncio.sleep(1)
    result = await asyncio.to_thread(action)
    await asyncio.sleep(1)
    stop.set()
    await pub
    try:
        await asyncio.to_thread(wait_for, "every subscriber caught up",
                                lambda: all(s.seqs and s.seqs[-1] >= s.start + reh.publishes for s in subs), 30)
    except TimeoutError:
        behind = [(s.n, s.pods, s.closes, s.seqs[-1:] , s.start, s.problems) for s in subs
                  if not s.seqs or s.seqs[-1] < s.start + reh.publishes]
        raise AssertionError(f"{reh.publishes} published; behind: {behind}") from None
    return result


def assert_nothing_lost(subs: list[Subscriber], reh: Rehearsal):
    for s in subs:
        assert not s.problems, s.problems
        assert s.seqs == list(range(s.start + 1, s.start + reh.publishes + 1)), f"subscriber {s.n} lost messages"


def drain_peer_argv(cluster: Cluster, lb, argv: list[str]) -> list[str]:
    """drain-peer's DNS-listed targets become the gateway pods' admin URLs; the binary is the
    one the init container copied."""
    script = argv[-1]
    urls = " ".join(f"--url http://{ip}:9090" for ip in cluster.ips("gateway"))
    script = re.sub(r"--targets-from-dns \S+", urls, script)
    script = script.replace("/opt/gateway-tools/gateway", str(lb.root / "volumes" / "gateway-tools" / "gateway"))
    return argv[:-1] + [script]


OVERLAYS = ["deploy/overlays/dev", "deploy/tests/overlays/production"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rehearsal(overlay, tmp_path):
    reh = Rehearsal(overlay, tmp_path)
    try:
        asyncio.run(rehearse(reh))
    finally:
        reh.cluster.shutdown()
        for log in sorted(tmp_path.glob("*.log")):
            tail = log.read_text(errors="replace")[-3000:]
            print(f"---- {log.name}\n{tail}")


async def rehearse(reh: Rehearsal):
    c = reh.cluster
    gw = [c.start_gateway(f"gateway-{i}") for i in range(2)]
    # 1. kubelet: both pods become Ready by their readiness probe (plain HTTP from 127.0.0.1)
    #    and are live by their liveness probe.
    for pod in gw:
        await asyncio.to_thread(wait_for, f"{pod.name} Ready", lambda p=pod: p.ready or p.proc.poll() is not None, 30)
        assert pod.proc.poll() is None, f"{pod.name} exited with {pod.proc.returncode}: it cannot run as rendered"
        assert c.probe(pod, pod.container["livenessProbe"])
    # The PROXY port closes a plain request from an address outside GATEWAY_TRUSTED_PROXIES
    # unanswered (so a probe there would fail, and no pod can forge client addresses).
    proxy_probe = {"httpGet": {"path": "/readyz", "port": "proxy"}, "timeoutSeconds": 2}
    assert not c.probe(gw[0], proxy_probe)
    # The admin port: nothing without a token (unless the overlay says insecure), the metrics
    # token reads but cannot drain.
    if not reh.insecure:
        assert reh.admin(gw[0], "/metrics", token="wrong")[0] == 401
        assert reh.admin(gw[0], "/metrics", token=reh.metrics_token)[0] == 200
        assert reh.admin(gw[0], "/admin/drain", {"x": 1}, token=reh.metrics_token)[0] == 403
    # promtool lints the Prometheus text format, which the gateway serves to scrapers asking for it.
    status, metrics = reh.admin(gw[0], "/metrics", token=reh.metrics_token, accept="text/plain;version=0.0.4")
    assert status == 200
    for family in ("gateway_build_info", "process_open_fds", "gateway_backend_up"):
        assert family in metrics, f"{family} missing from the live scrape"
    check = subprocess.run(["promtool", "check", "metrics"], input=metrics, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    # 2. HAProxy pods (init container, rendered config with only resolver/addresses rewritten):
    #    Ready, and both gateway servers UP through PROXY v2 health checks on 8081.
    lbs = [c.start_haproxy(f"gateway-lb-{i}", i) for i in range(LB_PODS)]
    for lb in lbs:
        await asyncio.to_thread(wait_for, f"{lb.name} Ready", lambda p=lb: p.ready or p.proc.poll() is not None, 30)
        assert lb.proc.poll() is None, f"{lb.name} exited: its rendered config cannot run"
        await asyncio.to_thread(wait_for, f"{lb.name} sees both gateways UP", lambda p=lb: haproxy_servers_up(c, p) == 2, 30)

    # Only /ws is public: readiness, health and metrics are not reachable through the LB.
    for path in ("/readyz", "/healthz", "/metrics"):
        try:
            urllib.request.urlopen(f"http://{lbs[0].ip}:8080{path}", timeout=2)
            raise AssertionError(f"{path} is reachable through HAProxy")
        except urllib.error.HTTPError as e:
            assert e.code == 404, (path, e.code)

    # 3. Traffic through HAProxy: subscribers spread over both HAProxy pods and both gateways.
    lb_list = reh.lb_addrs(lbs)
    subs = [Subscriber(i, lb_list, reh.tokens.mint(f"user-{i}") if reh.auth else None, reh.origin)
            for i in range(SUBSCRIBERS)]
    tasks = [asyncio.create_task(s.run()) for s in subs]
    try:
        await asyncio.wait_for(asyncio.gather(*(s.subscribed.wait() for s in subs)), 30)
        assert {p for s in subs for p in s.pods} == {"gateway-0", "gateway-1"}, "leastconn should use both pods"
        await under_load(reh, subs, lambda: None)
        assert_nothing_lost(subs, reh)

        # 4. A gateway pod removed (scale-down, node drain): its preStop under load, then SIGTERM.
        victim = gw[0]
        hook = await under_load(reh, subs, lambda: c.run_prestop(victim))
        assert hook.returncode == 0, hook.stdout + hook.stderr
        assert c.stop(victim) == 0
        assert_nothing_lost(subs, reh)
        moved = [s for s in subs if "gateway-0" in s.pods]
        assert moved and all(1001 in s.closes and s.pods[-1] != "gateway-0" for s in moved)

        # 5. Rolling replacement of gateway-1 (maxSurge 1, maxUnavailable 0): the new pod first,
        #    Ready for minReadySeconds, then the old one's preStop and SIGTERM, under load.
        new = c.start_gateway("gateway-2")
        await asyncio.to_thread(wait_for, "gateway-2 Ready", lambda: new.ready or new.proc.poll() is not None, 30)
        assert new.proc.poll() is None
        await asyncio.sleep(new.deployment["spec"].get("minReadySeconds", 0))
        assert new.ready, "the new pod must stay Ready through minReadySeconds"
        hook = await under_load(reh, subs, lambda: c.run_prestop(gw[1]))
        assert hook.returncode == 0, hook.stdout + hook.stderr
        assert c.stop(gw[1]) == 0
        assert_nothing_lost(subs, reh)
        assert all(s.pods[-1] == "gateway-2" for s in subs)

        # 6. An HAProxy pod removed: the cloud LB deregisters it (clients reconnect to the other),
        #    its preStop asks the gateways to 1001 its tunnels (drain-peer), then its STOPSIGNAL.
        lb0 = lbs[0]
        lb0_addr = f"{lb0.ip}:8080"
        via_lb0 = {s.n: s.closes.count(1001) for s in subs if s.lbs[-1] == lb0_addr}
        others = {s.n: s.closes.count(1001) for s in subs if s.n not in via_lb0}
        assert via_lb0, "some subscribers should be connected through gateway-lb-0"
        lb_list.remove(lb0_addr)

        def stop_lb():
            hook = c.run_prestop(lb0, rewrite=lambda argv: drain_peer_argv(c, lb0, argv))
            return hook, c.stop(lb0, sig=signal.SIGUSR1)

        (hook, code) = await under_load(reh, subs, stop_lb)
        assert hook.returncode == 0, hook.stdout + hook.stderr
        assert_nothing_lost(subs, reh)
        assert code == 0
        # drain-peer closed exactly the tunnels through gateway-lb-0, with 1001; they moved.
        for sub in subs:
            if sub.n in via_lb0:
                assert sub.closes.count(1001) > via_lb0[sub.n] and sub.lbs[-1] != lb0_addr
            else:
                assert sub.closes.count(1001) == others[sub.n], "drain-peer closed another peer's tunnel"
        assert all(1006 not in s.closes for s in subs), "tunnels were cut, not drained"
    finally:
        for s in subs:
            s.stopping = True
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
