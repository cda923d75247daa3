"""Runs one scenario of scenarios.json against one SDK's driver (see README.md)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from servers import (LOGS, ROOT, Gateway, Haproxy, Nats, Redis, free_port, mint_token,
                     wait_fleet)
from wsproxy import WsProxy

HERE = Path(__file__).resolve().parent
DEFAULT_BACKOFF = {"initial_ms": 50, "max_ms": 500}


def load_scenarios() -> list[dict]:
    return json.loads((HERE / "scenarios.json").read_text())["scenarios"]


def load_drivers() -> dict[str, dict]:
    """drivers.json, with `{cargo_target}` replaced by Cargo's target directory."""
    target = os.environ.get("CARGO_TARGET_DIR") or str(ROOT / "target")
    drivers = json.loads((HERE / "drivers.json").read_text())
    for d in drivers.values():
        d["command"] = [part.replace("{cargo_target}", target) for part in d["command"]]
    return drivers


class ScenarioFailed(AssertionError):
    pass


class Driver:
    """An SDK's driver process: commands as JSON lines in, events as JSON lines out, each event
    stamped `t` (seconds) with the driver's clock (`at_ms`), else when it arrived here."""

    def __init__(self, sdk: str, command: list[str], log_name: str):
        LOGS.mkdir(parents=True, exist_ok=True)
        self.stderr = open(LOGS / f"{log_name}.stderr.log", "wb")
        self.transcript = open(LOGS / f"{log_name}.events.jsonl", "w")
        self.proc = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True, bufsize=1)
        self.events: list[dict] = []
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = {"event": "unparsable", "line": line}
            # The driver's own clock when it gives one (`at_ms`): a busy runner reads late.
            at_ms = event.get("at_ms")
            event["t"] = at_ms / 1000 if isinstance(at_ms, (int, float)) else time.monotonic()
            self.transcript.write(json.dumps(event) + "\n")
            self.transcript.flush()
            with self.cond:
                self.events.append(event)
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def send(self, cmd: dict) -> None:
        assert self.proc.stdin is not None
        self.transcript.write(json.dumps({"sent": cmd}) + "\n")
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def matching(self, name: str, match: dict | None = None) -> list[dict]:
        with self.cond:
            return [e for e in self.events if e.get("event") == name
                    and all(e.get(k) == v for k, v in (match or {}).items())]

    def wait_for(self, what: str, predicate, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise ScenarioFailed(f"timed out after {timeout} s waiting for {what}; "
                                         f"last events: {self.events[-5:]}")
                self.cond.wait(min(left, 0.2))

    def messages(self, topic: str) -> list[dict]:
        return self.matching("message", {"topic": topic})

    def stop(self) -> None:
        try:
            self.send({"cmd": "close"})
            self.proc.stdin.close()
            self.proc.wait(5)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()
        self.transcript.close()


class Publisher:
    """Publishes through a pod's `POST /api/publish`, in the foreground or a thread."""

    def __init__(self, gateway: Gateway, topic: str, count: int, interval_ms: int):
        self.gateway, self.topic, self.count, self.interval = gateway, topic, count, interval_ms / 1000
        self.published = 0
        self.error: Exception | None = None
        self.thread: threading.Thread | None = None

    def run(self) -> None:
        try:
            for _ in range(self.count):
                self.gateway.publish(self.topic, {"n": self.published})
                self.published += 1
                if self.interval:
                    time.sleep(self.interval)
        except Exception as e:  # noqa: BLE001 - reported by wait_publisher
            self.error = e

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()


class Run:
    """The servers and the driver of one scenario run."""

    def __init__(self, scenario: dict, sdk: str, driver_command: list[str]):
        self.scenario = scenario
        self.setup = scenario.get("setup", {})
        self.redis = self.nats = self.proxy = self.haproxy = None
        self.gateways: list[Gateway] = []
        self.publisher: Publisher | None = None
        self.tmp = tempfile.TemporaryDirectory()
        self.secret = secrets.token_hex(32)
        self.driver_command = driver_command
        self.log_name = f"{sdk}-{scenario['id']}"
        self.driver: Driver | None = None

    def start(self) -> None:
        s = self.setup
        if s.get("redis"):
            self.redis = Redis()
        if s.get("nats"):
            self.nats = Nats()
        args = list(s.get("gateway_args", []))
        env = {}
        if s.get("auth"):
            args += ["--auth", "required", "--jwt-leeway", "0s"]
            env["GATEWAY_JWT_SECRET"] = self.secret
        for i in range(s.get("pods", 1)):
            self.gateways.append(Gateway(f"conf-{i}", args, self.redis, self.nats, env))
        if self.nats and len(self.gateways) > 1:
            wait_fleet(self.gateways, len(self.gateways))
        if s.get("proxy"):
            self.proxy = WsProxy(self.gateways[0].url)
        if s.get("haproxy"):
            self.haproxy = Haproxy(self.gateways, Path(self.tmp.name))
        self.driver = Driver(self.log_name, self.driver_command, self.log_name)

    def stop(self) -> None:
        if self.driver:
            self.driver.stop()
        if self.proxy:
            self.proxy.stop()
        if self.haproxy:
            self.haproxy.stop()
        for g in self.gateways:
            g.stop()
        for p in (self.nats, self.redis):
            if p:
                p.stop()
        self.tmp.cleanup()

    def token(self, kind: str | None) -> str | None:
        if kind is None:
            return None
        return mint_token(self.secret, "4s" if kind == "short" else "1h")

    def pod(self, which: int | str) -> Gateway:
        """A pod by index, or `"connected"`: the one the client's last `welcome` came from."""
        if which == "connected":
            pod = self.driver.matching("connected")[-1]["pod"]
            return next(g for g in self.gateways if g.pod == pod)
        return self.gateways[int(which)]

    def step(self, st: dict) -> None:
        d = self.driver
        assert d is not None
        do = st["do"]
        timeout = st.get("timeout_s", 10)
        if do == "connect":
            urls = {"pods": lambda: [g.url for g in self.gateways],
                    "proxy": lambda: [self.proxy.url],
                    "haproxy": lambda: [self.haproxy.url],
                    "closed_port": lambda: [f"ws://127.0.0.1:{free_port()}/ws"]}[st["urls"]]()
            cmd = {"cmd": "connect", "urls": urls, "backoff": st.get("backoff", DEFAULT_BACKOFF)}
            if st.get("token"):
                cmd["token"] = self.token(st["token"])
            if "auto_refresh" in st:
                cmd["auto_refresh"] = st["auto_refresh"]
            if st.get("token_file"):
                path = Path(self.tmp.name) / "token"
                path.write_text(self.token(st["token_file"]) + "\n")
                cmd["token_file"] = str(path)
            d.send(cmd)
        elif do == "subscribe":
            d.send({"cmd": "subscribe", "topic": st["topic"]})
            d.wait_for(f"subscribed {st['topic']}",
                       lambda: d.matching("subscribed", {"topic": st["topic"]}), timeout)
        elif do == "publish":
            pub = Publisher(self.pod(st.get("via", 0)), st["topic"], st["count"],
                            st.get("interval_ms", 0))
            if st.get("background"):
                self.publisher = pub
                pub.start()
            else:
                pub.run()
                if pub.error:
                    raise ScenarioFailed(f"publish failed: {pub.error}")
        elif do == "client_publish":
            # The SDK under test publishes (with its options) and gets its seq back.
            cmd = {"cmd": "publish", "topic": st["topic"], "data": st.get("data", "sdk")}
            if st.get("exclude_self"):
                cmd["exclude_self"] = True
            before = len(d.matching("published", {"topic": st["topic"]}))
            d.send(cmd)
            d.wait_for(f"published on {st['topic']}",
                       lambda: len(d.matching("published", {"topic": st["topic"]})) > before, timeout)
        elif do == "wait_published":
            deadline = time.monotonic() + timeout
            while self.publisher.published < st["count"]:
                if time.monotonic() > deadline or self.publisher.error:
                    raise ScenarioFailed(f"publisher stalled: {self.publisher.error}")
                time.sleep(0.01)
        elif do == "wait_publisher":
            self.publisher.thread.join(60)
            if self.publisher.error:
                raise ScenarioFailed(f"publisher failed: {self.publisher.error}")
        elif do == "wait_messages":
            n = st["count"]
            d.wait_for(f"{n} messages on {st['topic']}", lambda: len(d.messages(st["topic"])) >= n,
                       st.get("timeout_s", 20))
        elif do == "wait":
            n = st.get("count", 1)
            d.wait_for(f"{n} x {st['event']} {st.get('match', {})}",
                       lambda: len(d.matching(st["event"], st.get("match"))) >= n, timeout)
        elif do == "drain":
            self.pod(st["pod"]).post("/admin/drain")
        elif do == "kill":
            self.pod(st["pod"]).signal(signal.SIGKILL)
        elif do == "redis":
            action = st["action"]
            if action == "flushall":
                self.redis.command("FLUSHALL")
            else:
                self.redis.signal(signal.SIGSTOP if action == "stop" else signal.SIGCONT)
        elif do == "proxy":
            action = st["action"]
            if action == "drop":
                self.proxy.drop()
            elif action == "refuse":
                self.proxy.refusing = True
            elif action == "accept":
                self.proxy.refusing = False
            elif action == "rewind":
                self.proxy.rewind_by = st["by"]
        elif do == "sleep":
            time.sleep(st["ms"] / 1000)
        else:
            raise ValueError(f"unknown step {do!r}")

    def check(self, c: dict) -> None:
        from checks import CHECKS

        CHECKS[c["check"]](self.driver, c)

    def execute(self) -> dict:
        """Runs the scenario; returns what was measured (not asserted): per disconnection,
        the time to the next `welcome` and the wait the SDK chose."""
        self.start()
        try:
            for st in self.scenario["steps"]:
                self.step(st)
            time.sleep(float(os.environ.get("CONFORMANCE_SETTLE_S", "0.3")))
            for c in self.scenario["expect"]:
                self.check(c)
            return self.measured()
        finally:
            self.stop()

    def measured(self) -> dict:
        d = self.driver
        assert d is not None
        resumes = []
        for close in d.matching("disconnected"):
            later = [e for e in d.events if e["t"] > close["t"]]
            wait = next((e["delay_ms"] for e in later if e.get("event") == "reconnecting"), None)
            back = next((e for e in later if e.get("event") == "connected"), None)
            if back is not None:
                resumes.append({"code": close.get("code"), "waited_ms": wait,
                                "to_welcome_ms": round((back["t"] - close["t"]) * 1000, 1)})
        return {"resumes": resumes}
