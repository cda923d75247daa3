"""Rendered manifests: kustomize rendering, Kubernetes' env resolution, and the invariants of
this deployment that no schema can express. Used by the validator (validate.py), the invariant
tests and the rehearsal.

Every check returns a list of problems (empty = fine), each naming the object and the fix.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PLACEHOLDER = "REPLACE_ME"
# What the drain needs beyond its window and close grace before kubelet's SIGKILL: the hook's
# own start, the last handshakes, the exit.
GRACE_MARGIN_S = 10.0
GATEWAY_DEFAULTS = {
    "GATEWAY_DRAIN_WINDOW": "30s",
    "GATEWAY_CLOSE_GRACE": "5s",
    "GATEWAY_DRAIN_TIMEOUT": "110s",
    "GATEWAY_PING_INTERVAL": "25s",
}


def render(path: Path | str) -> list[dict]:
    """`kubectl kustomize PATH`, parsed: the objects exactly as `kubectl apply -k` would send them."""
    out = subprocess.run(
        ["kubectl", "kustomize", str(path)], check=True, capture_output=True, text=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [
        d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = find(docs, kind, name)
    if len(found) != 1:
        raise LookupError(f"expected one {kind}/{name}, found {len(found)}")
    return found[0]


def duration_s(text: str) -> float:
    """'30s', '1h', '100ms', '2m', '1m30s' (humantime and HAProxy spellings) in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "": 1}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|)", text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip().replace(" ", ""):
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


class EnvError(Exception):
    """A container could not start with this env (what kubelet reports as CreateContainerConfigError)."""


def container_env(
    docs: list[dict],
    container: dict,
    secrets: dict[str, dict[str, str]] | None = None,
    fields: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment kubelet gives `container`: envFrom, then env (later wins), ConfigMap
    references resolved from the rendered ConfigMaps, Secret references from `secrets` (name ->
    key -> value; absent Secrets are absent: optional references drop out, others fail), and
    downward-API fields from `fields` (fieldPath -> value)."""
    secrets = secrets or {}
    fields = fields or {}
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in find(docs, "ConfigMap")}
    env: dict[str, str] = {}

    def source(kind: str, name: str) -> dict | None:
        return configmaps.get(name) if kind == "configmap" else secrets.get(name)

    for item in container.get("envFrom", []):
        kind, ref = ("configmap", item["configMapRef"]) if "configMapRef" in item else ("secret", item["secretRef"])
        data = source(kind, ref["name"])
        if data is None:
            if ref.get("optional"):
                continue
            raise EnvError(f"envFrom {kind} {ref['name']} not found")
        env.update({(item.get("prefix", "") + k): str(v) for k, v in data.items()})
    for item in container.get("env", []):
        name = item["name"]
        if "value" in item:
            env[name] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), str(item["value"]))
            continue
        value_from = item.get("valueFrom", {})
        for key, kind in (("configMapKeyRef", "configmap"), ("secretKeyRef", "secret")):
            if key in value_from:
                ref = value_from[key]
                data = source(kind, ref["name"])
                if data is None or ref["key"] not in data:
                    if ref.get("optional"):
                        break
                    raise EnvError(f"env {name}: key {ref['key']} of {kind} {ref['name']} not found")
                env[name] = str(data[ref["key"]])
                break
        else:
            if "fieldRef" in value_from:
                path = value_from["fieldRef"]["fieldPath"]
                if path not in fields:
                    raise EnvError(f"env {name}: no value for field {path}")
                env[name] = fields[path]
            elif "resourceFieldRef" not in value_from:
                raise EnvError(f"env {name}: unsupported source {value_from}")
    return env


def gateway_deployments(docs: list[dict]) -> list[dict]:
    """Deployments whose containers run the gateway server (image `gateway`, any registry)."""
    return [d for d in find(docs, "Deployment") if any(_is_gateway(c) for c in _containers(d))]


def _containers(deploy: dict) -> list[dict]:
    return deploy["spec"]["template"]["spec"]["containers"]


def _is_gateway(container: dict) -> bool:
    return container["image"].split("/")[-1].split(":")[0].split("@")[0] == "gateway"


def _configured_env(docs: list[dict], container: dict) -> dict[str, str]:
    """Env for the checks: Secrets unknown (their references are skipped), fields made up."""
    return container_env(
        docs,
        _strip_secret_refs(container),
        fields={"metadata.name": "pod", "status.podIP": "10.0.0.1"},
    )


def _strip_secret_refs(container: dict) -> dict:
    c = dict(container)
    c["env"] = [e for e in container.get("env", []) if "secretKeyRef" not in e.get("valueFrom", {})]
    c["envFrom"] = [e for e in container.get("envFrom", []) if "secretRef" not in e]
    return c


def _env_of(docs: list[dict], container: dict, key: str) -> str:
    return _configured_env(docs, container).get(key, GATEWAY_DEFAULTS.get(key, ""))


def _port_number(container: dict, port) -> int | None:
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    return None


def _listen_port(addr: str) -> int | None:
    return int(addr.rsplit(":", 1)[1]) if addr and ":" in addr else None


def haproxy_configs(docs: list[dict]) -> dict[str, str]:
    """HAProxy configs from the rendered ConfigMaps, by ConfigMap name."""
    return {
        d["metadata"]["name"]: d["data"]["haproxy.cfg"]
        for d in find(docs, "ConfigMap")
        if "haproxy.cfg" in d.get("data", {})
    }


def haproxy_lines(cfg: str) -> list[str]:
    return [ln.split("#", 1)[0].strip() for ln in cfg.splitlines() if ln.split("#", 1)[0].strip()]


# ---- invariants ----------------------------------------------------------------------------


def check_grace_covers_drain(docs: list[dict]) -> list[str]:
    """Gateway pods: grace > drain window + close grace + margin, and > the preStop's own bound."""
    problems = []
    for d in gateway_deployments(docs):
        grace = d["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        c = next(c for c in _containers(d) if _is_gateway(c))
        window = duration_s(_env_of(docs, c, "GATEWAY_DRAIN_WINDOW"))
        close = duration_s(_env_of(docs, c, "GATEWAY_CLOSE_GRACE"))
        hook = duration_s(_env_of(docs, c, "GATEWAY_DRAIN_TIMEOUT"))
        name = d["metadata"]["name"]
        if grace <= window + close + GRACE_MARGIN_S:
            problems.append(
                f"Deployment {name}: terminationGracePeriodSeconds {grace} <= drain window {window:g}s"
                f" + close grace {close:g}s + margin {GRACE_MARGIN_S:g}s: kubelet would SIGKILL mid-drain"
            )
        if grace < hook:
            problems.append(
                f"Deployment {name}: terminationGracePeriodSeconds {grace} < the preStop's bound"
                f" GATEWAY_DRAIN_TIMEOUT {hook:g}s"
            )
        prestop = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        if prestop[:3] != ["gateway", "drain", "--local"]:
            problems.append(f"Deployment {name}: preStop must be `gateway drain --local`, is {prestop}")
    return problems


def check_no_probe_on_proxy_port(docs: list[dict]) -> list[str]:
    """kubelet speaks plain HTTP: a probe on the PROXY listener would be closed unanswered."""
    problems = []
    for d in gateway_deployments(docs):
        for c in _containers(d):
            if not _is_gateway(c):
                continue
            proxy_port = _listen_port(_env_of(docs, c, "GATEWAY_PROXY_LISTEN"))
            for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
                probe = c.get(kind)
                if not probe:
                    continue
                action = probe.get("httpGet") or probe.get("tcpSocket") or {}
                port = _port_number(c, action.get("port"))
                if port is not None and port == proxy_port:
                    problems.append(
                        f"Deployment {d['metadata']['name']}: {kind} on port {action.get('port')}"
                        f" ({port}), the PROXY v2 listener (GATEWAY_PROXY_LISTEN): use the plain port"
                    )
    return problems


def check_admin_secure(docs: list[dict], dev: bool = False) -> list[str]:
    """Outside the dev overlay: no GATEWAY_ADMIN_INSECURE, both token files from required Secrets."""
    if dev:
        return []
    problems = []
    for d in gateway_deployments(docs):
        spec = d["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in _containers(d):
            if not _is_gateway(c):
                continue
            env = _configured_env(docs, c)
            name = d["metadata"]["name"]
            if env.get("GATEWAY_ADMIN_INSECURE", "false").lower() not in ("", "false", "0"):
                problems.append(f"Deployment {name}: GATEWAY_ADMIN_INSECURE outside the dev overlay")
            if "GATEWAY_ADMIN_TOKEN" in env:
                problems.append(f"Deployment {name}: GATEWAY_ADMIN_TOKEN as a value: use GATEWAY_ADMIN_TOKEN_FILE")
            for key in ("GATEWAY_ADMIN_TOKEN_FILE", "GATEWAY_METRICS_TOKEN_FILE"):
                path = env.get(key)
                if not path:
                    problems.append(f"Deployment {name}: {key} not set")
                    continue
                mount = next(
                    (m for m in c.get("volumeMounts", []) if path.startswith(m["mountPath"].rstrip("/") + "/")),
                    None,
                )
                volume = volumes.get(mount["name"]) if mount else None
                secret = (volume or {}).get("secret")
                if not secret or secret.get("optional"):
                    problems.append(f"Deployment {name}: {key} {path} is not on a required Secret volume")
            if env.get("GATEWAY_ADMIN_TOKEN_FILE") and env.get("GATEWAY_ADMIN_TOKEN_FILE") == env.get(
                "GATEWAY_METRICS_TOKEN_FILE"
            ):
                problems.append(f"Deployment {name}: the metrics token must not be the operator token")
    return problems


def check_tunnel_timeout(docs: list[dict]) -> list[str]:
    """HAProxy's `timeout tunnel` must outlive two of the gateway's ping intervals."""
    problems = []
    pings = [
        duration_s(_env_of(docs, c, "GATEWAY_PING_INTERVAL"))
        for d in gateway_deployments(docs)
        for c in _containers(d)
        if _is_gateway(c)
    ] or [duration_s(GATEWAY_DEFAULTS["GATEWAY_PING_INTERVAL"])]
    for name, cfg in haproxy_configs(docs).items():
        tunnels = [ln.split()[2] for ln in haproxy_lines(cfg) if ln.startswith("timeout tunnel")]
        if not tunnels:
            problems.append(f"ConfigMap {name}: no `timeout tunnel` (WebSockets would get `timeout server`)")
        for t in tunnels:
            if duration_s(t) <= 2 * max(pings):
                problems.append(
                    f"ConfigMap {name}: timeout tunnel {t} <= 2 x ping interval {max(pings):g}s:"
                    " idle WebSockets would be cut between pings"
                )
    return problems


def check_trusted_proxies(docs: list[dict], deployable: bool = False) -> list[str]:
    """Set wherever a PROXY listener is, never everything (0.0.0.0/0, ::/0)."""
    problems = []
    for d in gateway_deployments(docs):
        for c in _containers(d):
            if not _is_gateway(c):
                continue
            name = d["metadata"]["name"]
            try:
                env = _configured_env(docs, c)
            except EnvError as e:
                problems.append(f"Deployment {name}: {e}")
                continue
            trusted = [t.strip() for t in env.get("GATEWAY_TRUSTED_PROXIES", "").split(",") if t.strip()]
            if env.get("GATEWAY_PROXY_LISTEN") and not trusted:
                problems.append(f"Deployment {name}: GATEWAY_PROXY_LISTEN without GATEWAY_TRUSTED_PROXIES")
            for t in trusted:
                if PLACEHOLDER in t and not deployable:
                    continue
                try:
                    net = ipaddress.ip_network(t, strict=False)
                except ValueError:
                    problems.append(f"Deployment {name}: GATEWAY_TRUSTED_PROXIES {t!r} is not a CIDR")
                    continue
                if net.prefixlen == 0:
                    problems.append(f"Deployment {name}: GATEWAY_TRUSTED_PROXIES {t} trusts every address")
    return problems


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def check_pdbs(docs: list[dict]) -> list[str]:
    """Every Deployment (gateways and HAProxy) has a PDB that lets at most one pod go."""
    problems = []
    pdbs = find(docs, "PodDisruptionBudget")
    for d in find(docs, "Deployment"):
        name = d["metadata"]["name"]
        labels = d["spec"]["template"]["metadata"].get("labels", {})
        mine = [p for p in pdbs if _selects(p["spec"]["selector"], labels)]
        if not mine:
            problems.append(f"Deployment {name}: no PodDisruptionBudget selects its pods")
        for p in mine:
            spec = p["spec"]
            pname = p["metadata"]["name"]
            if "minAvailable" in spec:
                problems.append(f"PodDisruptionBudget {pname}: use maxUnavailable: 1 (minAvailable blocks or races scaling)")
            if str(spec.get("maxUnavailable")) not in ("1",):
                problems.append(f"PodDisruptionBudget {pname}: maxUnavailable must be 1, is {spec.get('maxUnavailable')}")
            if spec.get("unhealthyPodEvictionPolicy") != "IfHealthyBudget":
                problems.append(f"PodDisruptionBudget {pname}: unhealthyPodEvictionPolicy must be IfHealthyBudget")
    return problems


def check_rollout(docs: list[dict]) -> list[str]:
    """maxSurge <= 1, maxUnavailable 0, minReadySeconds > 0: one pod drains at a time."""
    problems = []
    for d in find(docs, "Deployment"):
        name = d["metadata"]["name"]
        ru = d["spec"].get("strategy", {}).get("rollingUpdate", {})
        if str(ru.get("maxSurge", "25%")) not in ("0", "1"):
            problems.append(f"Deployment {name}: maxSurge {ru.get('maxSurge', '25%')} > 1")
        if str(ru.get("maxUnavailable", "25%")) != "0":
            problems.append(f"Deployment {name}: maxUnavailable must be 0")
        if not d["spec"].get("minReadySeconds"):
            problems.append(f"Deployment {name}: minReadySeconds not set")
    return problems


def check_readiness(docs: list[dict]) -> list[str]:
    """Readiness survives a blip: >= 2 failures, timeout >= 2 s; HAProxy fall >= 2."""
    problems = []
    for d in find(docs, "Deployment"):
        for c in _containers(d):
            probe = c.get("readinessProbe")
            name = f"Deployment {d['metadata']['name']} container {c['name']}"
            if not probe:
                problems.append(f"{name}: no readinessProbe")
                continue
            if probe.get("failureThreshold", 3) < 2:
                problems.append(f"{name}: readiness failureThreshold < 2")
            if probe.get("timeoutSeconds", 1) < 2:
                problems.append(f"{name}: readiness timeoutSeconds < 2")
    for cm, cfg in haproxy_configs(docs).items():
        for ln in haproxy_lines(cfg):
            m = re.search(r"\bfall (\d+)", ln)
            if ln.startswith(("default-server", "server")) and m and int(m.group(1)) < 2:
                problems.append(f"ConfigMap {cm}: `fall {m.group(1)}` < 2: one slow check takes a pod out")
    return problems


def check_resources(docs: list[dict]) -> list[str]:
    """Memory request = limit for every container (node-pressure eviction skips the drain)."""
    problems = []
    for d in find(docs, "Deployment"):
        for c in _containers(d):
            r = c.get("resources", {})
            req, lim = r.get("requests", {}).get("memory"), r.get("limits", {}).get("memory")
            if not req or req != lim:
                problems.append(
                    f"Deployment {d['metadata']['name']} container {c['name']}: memory request {req} != limit {lim}"
                )
    return problems


def check_haproxy_tier(docs: list[dict]) -> list[str]:
    """Slots >= max pods + surge, target port = the PROXY listener, capacity covers the fleet's
    target load, grace >= preStop + hard-stop-after."""
    problems = []
    scaled = find(docs, "ScaledObject", "gateway")
    gws = gateway_deployments(docs)
    lbs = [d for d in find(docs, "Deployment") if any(c["name"] == "haproxy" for c in _containers(d))]
    for cm, cfg in haproxy_configs(docs).items():
        lines = haproxy_lines(cfg)
        templates = [ln.split() for ln in lines if ln.startswith("server-template")]
        for t in templates:
            slots, addr = int(t[2]), t[3]
            if scaled:
                max_pods = scaled[0]["spec"].get("maxReplicaCount", 100)
                surge = int(str(gws[0]["spec"]["strategy"]["rollingUpdate"].get("maxSurge", 1))) if gws else 1
                if slots < max_pods + surge:
                    problems.append(
                        f"ConfigMap {cm}: {slots} server slots < maxReplicaCount {max_pods} + maxSurge {surge}"
                    )
            for g in gws:
                c = next(c for c in _containers(g) if _is_gateway(c))
                proxy = _listen_port(_env_of(docs, c, "GATEWAY_PROXY_LISTEN"))
                if int(addr.rsplit(":", 1)[1]) != proxy:
                    problems.append(f"ConfigMap {cm}: servers on {addr}, the gateways' PROXY listener is :{proxy}")
            if "send-proxy-v2" not in t or "check-send-proxy" not in t:
                problems.append(f"ConfigMap {cm}: server-template needs send-proxy-v2 and check-send-proxy")
        maxconn = next((int(ln.split()[1]) for ln in lines if ln.startswith("maxconn")), None)
        hard_stop = next((duration_s(ln.split()[1]) for ln in lines if ln.startswith("hard-stop-after")), None)
        for lb in lbs:
            name = lb["metadata"]["name"]
            if scaled and maxconn:
                threshold = _per_pod_target(scaled[0])
                need = scaled[0]["spec"].get("maxReplicaCount", 100) * threshold
                have = lb["spec"].get("replicas", 1) * maxconn
                if threshold and have < need:
                    problems.append(
                        f"Deployment {name}: {lb['spec'].get('replicas', 1)} x maxconn {maxconn} = {have} tunnels"
                        f" < maxReplicaCount x per-pod target = {need}"
                    )
            c = next(c for c in _containers(lb) if c["name"] == "haproxy")
            grace = lb["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
            hook = " ".join(c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", []))
            sleep = sum(float(s) for s in re.findall(r"sleep (\d+)", hook))
            timeout = re.search(r"drain-peer .*--timeout[ =](\S+)", hook)
            bound = duration_s(timeout.group(1) if timeout else "60s") if "drain-peer" in hook else 0
            if "drain-peer" not in hook:
                problems.append(f"Deployment {name}: preStop does not run `gateway drain-peer`")
            if hard_stop is None:
                problems.append(f"ConfigMap {cm}: no hard-stop-after")
            elif grace < sleep + bound + hard_stop:
                problems.append(
                    f"Deployment {name}: grace {grace}s < preStop (sleep {sleep:g}s + drain-peer {bound:g}s)"
                    f" + hard-stop-after {hard_stop:g}s"
                )
    return problems


def _per_pod_target(scaled: dict) -> int:
    for t in scaled["spec"]["triggers"]:
        meta = t.get("metadata", {})
        for key in ("threshold", "targetValue"):
            if key in meta:
                return int(float(meta[key]))
    return 0


def check_namespace_agrees(docs: list[dict]) -> list[str]:
    """Names that embed the namespace (HAProxy's DNS, drain-peer's DNS, KEDA) match it."""
    problems = []
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} - {None}
    if len(namespaces) != 1:
        return [f"objects in several namespaces: {sorted(namespaces)}"]
    ns = namespaces.pop()
    text = yaml.safe_dump_all(docs)
    for host in re.findall(r"\b([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local", text):
        if host[1] != ns and host[0] != "prometheus-operated":
            problems.append(f"{host[0]}.{host[1]}.svc.cluster.local: namespace {host[1]}, objects are in {ns}")
    for q in re.findall(r'namespace="([^"$]+)"', " ".join(t.get("metadata", {}).get("query", "")
                                                        for s in find(docs, "ScaledObject") for t in s["spec"]["triggers"])):
        if q != ns:
            problems.append(f"ScaledObject query selects namespace {q}, objects are in {ns}")
    return problems


def check_no_placeholders(docs: list[dict]) -> list[str]:
    """A deployable overlay has every REPLACE_ME filled."""
    text = yaml.safe_dump_all(docs)
    return [
        f"placeholder {m} still in the rendered manifests: fill it in your overlay"
        for m in sorted(set(re.findall(PLACEHOLDER + r"[A-Za-z0-9_.-]*", text)))
    ]


CHECKS = [
    check_grace_covers_drain,
    check_no_probe_on_proxy_port,
    check_tunnel_timeout,
    check_pdbs,
    check_rollout,
    check_readiness,
    check_resources,
    check_haproxy_tier,
    check_namespace_agrees,
]


def check_all(docs: list[dict], dev: bool = False, deployable: bool = False) -> list[str]:
    problems = [p for check in CHECKS for p in check(docs)]
    problems += check_admin_secure(docs, dev=dev)
    problems += check_trusted_proxies(docs, deployable=deployable)
    if deployable:
        problems += check_no_placeholders(docs)
    return problems
