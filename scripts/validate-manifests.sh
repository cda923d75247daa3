#!/usr/bin/env bash
# Validate the Kubernetes manifests under deploy/ offline.
#
#   scripts/validate-manifests.sh              validate deploy/
#   scripts/validate-manifests.sh --self-test  prove that broken manifests fail
#
# Options:
#   --deploy-dir DIR  validate DIR instead of deploy/ (the self-test uses this)
#   --no-render       skip kustomize rendering even when kustomize/kubectl exists
#
# Checks, in order (every check runs; the script fails if any failed):
#   1. yamllint (config: .yamllint at the repository root) over the deploy dir.
#   2. kustomization.yaml files: known keys only, every referenced resource,
#      component, patch and generator file exists and stays inside its
#      kustomization root (kustomize's load restrictor), patch and `replicas`
#      targets exist; then cross-object checks on each kustomization's resources:
#      selectors, named ports, ConfigMap/Role references, KEDA target, the drain
#      contract of the gateway Deployment, and HAProxy config vs. manifests
#      (server-template host = headless Service + namespace, ports, slots >=
#      maxReplicaCount).
#   3. kubernetes-validate --strict (bundled schemas, offline) over every
#      built-in kind, file by file. An unknown kind/apiVersion fails too.
#   4. check-jsonschema with deploy/keda/scaledobject.schema.json over every
#      KEDA ScaledObject (any other custom resource without a schema fails).
#   5. When `kustomize` or `kubectl` is installed: render every kustomization
#      and run 2 (cross-object part), 3 and 4 on the rendered output, so
#      overlays and patches are validated as applied.
#   6. When `haproxy` is installed: `haproxy -c` on deploy/haproxy/*.cfg.
#
# Needs python3 and PyPI (first run only): the tools are installed into the
# repository's .venv. Environment: K8S_VERSION (default 1.30.0) selects the
# Kubernetes schema version.
set -euo pipefail

ORIG_PWD="$PWD"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SCRIPT="$ROOT/scripts/validate-manifests.sh"

K8S_VERSION="${K8S_VERSION:-1.30.0}"
VENV="$ROOT/.venv"
PY_PACKAGES=("yamllint==1.38.0" "kubernetes-validate==1.37.0" "check-jsonschema==0.39.0")

DEPLOY_DIR="$ROOT/deploy"
NO_RENDER=0
SELF_TEST=0
while (($#)); do
  case "$1" in
    --self-test) SELF_TEST=1 ;;
    --no-render) NO_RENDER=1 ;;
    --deploy-dir)
      [[ $# -ge 2 ]] || { echo "--deploy-dir needs a directory" >&2; exit 2; }
      DEPLOY_DIR="$(cd "$ORIG_PWD" && cd "$2" && pwd)"
      shift
      ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$SCRIPT" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/validate-manifests.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

ensure_venv() {
  if [[ ! -x "$VENV/bin/python" ]]; then
    echo "==> creating .venv"
    python3 -m venv "$VENV"
  fi
  local missing
  missing="$("$VENV/bin/python" - "${PY_PACKAGES[@]}" <<'PY'
import sys
from importlib import metadata
for spec in sys.argv[1:]:
    name, want = spec.split("==")
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        have = None
    if have != want:
        print(spec)
PY
)"
  if [[ -n "$missing" ]]; then
    echo "==> installing into .venv: ${missing//$'\n'/ }"
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check $missing
  fi
}

# ---------------------------------------------------------------------------
# The structural checks, in Python (PyYAML comes with yamllint).
write_checker() {
  cat >"$WORK/check.py" <<'PY'
"""Kustomization reference checks, manifest classification, cross-object checks.

  check.py tree DEPLOY_DIR OUT      checks on the source tree (no rendering)
  check.py rendered FILE OUT LABEL  checks on one rendered kustomization

Writes OUT/builtin.list (files for kubernetes-validate) and OUT/jsonschema.list
(lines: schema<TAB>instance...), and exits 1 after printing every error found.
"""
import json
import os
import re
import sys

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
KUSTOMIZATION_KEYS = {
    "apiVersion", "kind", "metadata", "resources", "components", "bases", "crds",
    "patches", "patchesStrategicMerge", "patchesJson6902", "configMapGenerator",
    "secretGenerator", "generatorOptions", "namespace", "namePrefix", "nameSuffix",
    "labels", "commonLabels", "commonAnnotations", "images", "replicas",
    "replacements", "vars", "transformers", "generators", "validators", "helmCharts",
    "helmGlobals", "openapi", "sortOptions", "buildMetadata",
}
PATCH_TARGET_KEYS = {"group", "version", "kind", "name", "namespace",
                     "labelSelector", "annotationSelector"}
JSON6902_OPS = {"add", "remove", "replace", "move", "copy", "test"}
# Custom resources and the JSON schema (relative to the deploy dir) for each.
CRD_SCHEMAS = {("keda.sh/v1alpha1", "ScaledObject"): "keda/scaledobject.schema.json"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"}

errors = []


def err(where, msg):
    errors.append(f"{where}: {msg}")


def rel(path, base):
    return os.path.relpath(path, base)


def load_docs(path, where=None):
    where = where or path
    try:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
    except (OSError, yaml.YAMLError) as e:
        err(where, f"cannot parse: {e}")
        return []
    out = []
    for i, d in enumerate(docs):
        if not isinstance(d, dict):
            err(where, f"document {i} is not a mapping")
            continue
        out.append(d)
    return out


def kfile(d):
    for name in KUSTOMIZATION_FILES:
        p = os.path.join(d, name)
        if os.path.isfile(p):
            return p
    return None


def inside(path, root):
    path, root = os.path.realpath(path), os.path.realpath(root)
    return path == root or path.startswith(root + os.sep)


def is_builtin(api_version):
    group = api_version.split("/")[0] if "/" in api_version else ""
    return group == "" or "." not in group or group.endswith(".k8s.io")


def name_of(doc):
    return ((doc.get("metadata") or {}).get("name")) or ""


def kind_name(doc):
    return f"{doc.get('kind')}/{name_of(doc)}"


def api_group(api_version):
    return api_version.split("/")[0] if "/" in api_version else ""


# --------------------------------------------------------------------------
# Kustomizations

class Kustomization:
    def __init__(self, directory, deploy_dir):
        self.dir = directory
        self.deploy_dir = deploy_dir
        self.path = kfile(directory)
        self.where = rel(self.path, deploy_dir)
        docs = load_docs(self.path, self.where)
        self.data = docs[0] if docs else {}
        self.resource_files = []   # plain manifest files
        self.resource_dirs = []    # nested kustomizations / components
        self.patch_files = []
        self.generated = []        # synthetic ConfigMap/Secret docs
        self.inline_patches = []   # (where, target, ops)
        self.smp_patches = []      # (where, doc)

    def check(self):
        k, where = self.data, self.where
        if not isinstance(k, dict):
            err(where, "not a mapping")
            return
        if k.get("apiVersion") not in (None, "kustomize.config.k8s.io/v1beta1",
                                       "kustomize.config.k8s.io/v1alpha1"):
            err(where, f"unexpected apiVersion {k.get('apiVersion')!r}")
        if k.get("kind") not in (None, "Kustomization", "Component"):
            err(where, f"unexpected kind {k.get('kind')!r}")
        for key in k:
            if key not in KUSTOMIZATION_KEYS:
                err(where, f"unknown key {key!r}")
        for key in ("bases", "patchesStrategicMerge", "patchesJson6902", "commonLabels", "vars"):
            if key in k:
                err(where, f"deprecated key {key!r}; use its current replacement")

        for entry in self.listof("resources") + self.listof("components"):
            if not isinstance(entry, str):
                err(where, f"resource entry {entry!r} is not a string")
                continue
            if "://" in entry or entry.startswith(("github.com/", "git@")):
                err(where, f"remote resource {entry!r}: not allowed (validation and builds are offline)")
                continue
            p = os.path.normpath(os.path.join(self.dir, entry))
            if not os.path.exists(p):
                err(where, f"resource {entry!r} does not exist")
            elif os.path.isdir(p):
                if not kfile(p):
                    err(where, f"resource directory {entry!r} has no kustomization.yaml")
                else:
                    self.resource_dirs.append(p)
            elif not inside(p, self.dir):
                err(where, f"resource file {entry!r} is outside the kustomization root "
                           "(kustomize refuses it; move it or give it its own kustomization)")
            else:
                self.resource_files.append(p)

        for i, patch in enumerate(self.listof("patches")):
            pw = f"{where}: patches[{i}]"
            if not isinstance(patch, dict):
                err(pw, "must be a mapping with path or patch")
                continue
            for key in patch:
                if key not in ("path", "patch", "target", "options"):
                    err(pw, f"unknown key {key!r}")
            target = patch.get("target")
            if target is not None:
                if not isinstance(target, dict):
                    err(pw, "target must be a mapping")
                    target = None
                else:
                    for key in target:
                        if key not in PATCH_TARGET_KEYS:
                            err(pw, f"unknown target key {key!r}")
            if ("path" in patch) == ("patch" in patch):
                err(pw, "needs exactly one of path or patch")
                continue
            if "path" in patch:
                p = os.path.normpath(os.path.join(self.dir, patch["path"]))
                if not os.path.isfile(p):
                    err(pw, f"patch file {patch['path']!r} does not exist")
                    continue
                if not inside(p, self.dir):
                    err(pw, f"patch file {patch['path']!r} is outside the kustomization root")
                self.patch_files.append(p)
                body = load_docs(p, rel(p, self.deploy_dir))
            else:
                try:
                    body = [d for d in yaml.safe_load_all(patch["patch"]) if d is not None]
                except yaml.YAMLError as e:
                    err(pw, f"inline patch does not parse: {e}")
                    continue
            if len(body) == 1 and isinstance(body[0], list):
                ops = body[0]
                for op in ops:
                    if not isinstance(op, dict) or op.get("op") not in JSON6902_OPS or "path" not in op:
                        err(pw, f"bad JSON6902 operation {op!r}")
                if target is None:
                    err(pw, "a JSON6902 patch needs a target")
                else:
                    self.inline_patches.append((pw, target, ops))
            else:
                for doc in body:
                    if not isinstance(doc, dict) or not doc.get("kind") or not name_of(doc):
                        err(pw, "a strategic-merge patch needs kind and metadata.name")
                    else:
                        self.smp_patches.append((pw, doc))

        for gen_key, gen_kind in (("configMapGenerator", "ConfigMap"), ("secretGenerator", "Secret")):
            for i, gen in enumerate(self.listof(gen_key)):
                gw = f"{where}: {gen_key}[{i}]"
                if not isinstance(gen, dict) or not gen.get("name"):
                    err(gw, "needs a name")
                    continue
                data = {}
                for entry in gen.get("files") or []:
                    key, _, path = entry.rpartition("=") if "=" in entry else (None, None, entry)
                    p = os.path.normpath(os.path.join(self.dir, path))
                    if not os.path.isfile(p):
                        err(gw, f"file {path!r} does not exist")
                        continue
                    if not inside(p, self.dir):
                        err(gw, f"file {path!r} is outside the kustomization root "
                                "(kustomize refuses it)")
                    with open(p) as f:
                        data[key or os.path.basename(path)] = f.read()
                for entry in gen.get("envs") or []:
                    p = os.path.normpath(os.path.join(self.dir, entry))
                    if not os.path.isfile(p) or not inside(p, self.dir):
                        err(gw, f"env file {entry!r} is missing or outside the root")
                for lit in gen.get("literals") or []:
                    if "=" not in str(lit):
                        err(gw, f"literal {lit!r} is not KEY=VALUE")
                    else:
                        key, _, value = str(lit).partition("=")
                        data[key] = value
                self.generated.append({"apiVersion": "v1", "kind": gen_kind,
                                       "metadata": {"name": gen["name"]}, "data": data})

    def listof(self, key):
        value = self.data.get(key) if isinstance(self.data, dict) else None
        if value is None:
            return []
        if not isinstance(value, list):
            err(self.where, f"{key} must be a list")
            return []
        return value


def collect(kdir, ks, seen=None):
    """Resources of a kustomization (recursively), without applying patches."""
    seen = seen or set()
    if kdir in seen:
        err(ks[kdir].where, "kustomization cycle")
        return [], None
    seen = seen | {kdir}
    k = ks[kdir]
    docs, namespace = [], None
    for d in k.resource_dirs:
        if d in ks:
            sub, sub_ns = collect(d, ks, seen)
            docs += sub
            namespace = sub_ns or namespace
    for f in k.resource_files:
        docs += load_docs(f, rel(f, k.deploy_dir))
    docs += k.generated
    if isinstance(k.data, dict) and k.data.get("namespace"):
        namespace = k.data["namespace"]
    return docs, namespace


def check_patch_targets(k, docs):
    index = {(d.get("kind"), name_of(d)) for d in docs}
    for pw, doc in k.smp_patches:
        if (doc.get("kind"), name_of(doc)) not in index:
            err(pw, f"patch target {kind_name(doc)} is not among the resources")
    for pw, target, _ops in k.inline_patches:
        if target.get("kind") and target.get("name") and (target["kind"], target["name"]) not in index:
            err(pw, f"patch target {target['kind']}/{target['name']} is not among the resources")
    for r in k.listof("replicas"):
        if not isinstance(r, dict) or not isinstance(r.get("count"), int):
            err(k.where, f"replicas entry {r!r} needs name and an integer count")
        elif not any(d.get("kind") in WORKLOAD_KINDS and name_of(d) == r.get("name") for d in docs):
            err(k.where, f"replicas: no workload named {r.get('name')!r}")


# --------------------------------------------------------------------------
# Classification: which validator sees which document

class Sink:
    def __init__(self, out):
        self.out = out
        self.builtin = []
        self.schema_instances = {}
        os.makedirs(os.path.join(out, "split"), exist_ok=True)
        self.n = 0

    def add_file(self, path, docs, where, deploy_dir):
        builtin, custom = [], []
        for i, d in enumerate(docs):
            dw = f"{where} (document {i}, {kind_name(d)})"
            api, kind = d.get("apiVersion"), d.get("kind")
            if not isinstance(api, str) or not isinstance(kind, str) or not name_of(d):
                err(dw, "needs apiVersion, kind and metadata.name")
                continue
            if api.startswith("kustomize.config.k8s.io/"):
                err(dw, "a Kustomization outside a kustomization.yaml file")
            elif is_builtin(api):
                builtin.append(d)
            elif (api, kind) in CRD_SCHEMAS:
                custom.append((d, os.path.join(deploy_dir, CRD_SCHEMAS[(api, kind)])))
            else:
                err(dw, f"custom resource {api} {kind} has no schema: add one to CRD_SCHEMAS "
                        "in scripts/validate-manifests.sh")
        if builtin:
            if len(builtin) == len(docs) and path:
                self.builtin.append(path)
            else:
                self.n += 1
                p = os.path.join(self.out, "split", f"{self.n:03d}-{safe(where)}.yaml")
                with open(p, "w") as f:
                    yaml.safe_dump_all(builtin, f, sort_keys=False)
                self.builtin.append(p)
        if path and len(docs) == 1 and len(custom) == 1:
            # One custom resource in its own file: validate the file itself,
            # so messages name it.
            self.schema_instances.setdefault(custom[0][1], []).append(path)
            return
        for d, schema in custom:
            self.n += 1
            p = os.path.join(self.out, "split", f"{self.n:03d}-{safe(where)}-{safe(name_of(d))}.json")
            with open(p, "w") as f:
                json.dump(d, f, indent=1)
            self.schema_instances.setdefault(schema, []).append(p)

    def write(self):
        with open(os.path.join(self.out, "builtin.list"), "w") as f:
            f.write("".join(p + "\n" for p in self.builtin))
        with open(os.path.join(self.out, "jsonschema.list"), "w") as f:
            for schema, instances in sorted(self.schema_instances.items()):
                f.write("\t".join([schema] + instances) + "\n")


def safe(s):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)


# --------------------------------------------------------------------------
# Cross-object checks

def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_spec(d):
    return (((d.get("spec") or {}).get("template") or {}).get("spec")) or {}


def pod_labels(d):
    return ((((d.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels")) or {}


def port_of(addr):
    m = re.search(r":(\d+)$", str(addr))
    return int(m.group(1)) if m else None


def env_value(container, name):
    for e in container.get("env") or []:
        if e.get("name") == name:
            return e.get("value")
    return None


def cross_check(docs, label, namespace):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d.get("kind"), {})[name_of(d)] = d
    workloads = [d for d in docs if d.get("kind") in WORKLOAD_KINDS]
    configmaps = by_kind.get("ConfigMap", {})
    secrets = by_kind.get("Secret", {})

    def where(d):
        return f"[{label}] {kind_name(d)}"

    # Workloads: selectors, probes, references.
    for d in workloads:
        w = where(d)
        sel = (((d.get("spec") or {}).get("selector")) or {}).get("matchLabels") or {}
        if not matches(sel, pod_labels(d)):
            err(w, "spec.selector.matchLabels does not match the pod template labels")
        ps = pod_spec(d)
        sa = ps.get("serviceAccountName")
        if sa and sa != "default" and sa not in by_kind.get("ServiceAccount", {}):
            err(w, f"serviceAccountName {sa!r} is not among the resources")
        for v in ps.get("volumes") or []:
            cm = (v.get("configMap") or {})
            if cm and not cm.get("optional") and cm.get("name") not in configmaps:
                err(w, f"volume {v.get('name')!r} mounts missing ConfigMap {cm.get('name')!r}")
        for c in (ps.get("containers") or []) + (ps.get("initContainers") or []):
            names = {p.get("name") for p in c.get("ports") or []}
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                pr = c.get(probe) or {}
                for kind in ("httpGet", "tcpSocket", "grpc"):
                    port = (pr.get(kind) or {}).get("port")
                    if isinstance(port, str) and port not in names:
                        err(w, f"{c.get('name')}.{probe} uses port {port!r}, not a named container port")
            for e in c.get("env") or []:
                vf = e.get("valueFrom") or {}
                ref = vf.get("configMapKeyRef")
                if ref and not ref.get("optional"):
                    cmd = configmaps.get(ref.get("name"))
                    if cmd is None:
                        err(w, f"env {e.get('name')}: ConfigMap {ref.get('name')!r} is not among the resources")
                    elif ref.get("key") not in (cmd.get("data") or {}):
                        err(w, f"env {e.get('name')}: ConfigMap {ref.get('name')!r} has no key {ref.get('key')!r}")
                ref = vf.get("secretKeyRef")
                if ref and not ref.get("optional") and ref.get("name") not in secrets:
                    err(w, f"env {e.get('name')}: Secret {ref.get('name')!r} is neither present nor optional")

    def selected(selector):
        return [d for d in workloads if matches(selector, pod_labels(d))]

    def container_ports(ws):
        named, numbers = {}, set()
        for d in ws:
            for c in pod_spec(d).get("containers") or []:
                for p in c.get("ports") or []:
                    named[p.get("name")] = p.get("containerPort")
                    numbers.add(p.get("containerPort"))
        return named, numbers

    for d in by_kind.get("Service", {}).values():
        w = where(d)
        spec = d.get("spec") or {}
        ws = selected(spec.get("selector") or {})
        if not ws:
            err(w, "selector selects no pods of any workload here")
            continue
        named, numbers = container_ports(ws)
        for p in spec.get("ports") or []:
            tp = p.get("targetPort", p.get("port"))
            if isinstance(tp, str) and tp not in named:
                err(w, f"port {p.get('name')!r}: targetPort {tp!r} is not a named container port")
            elif isinstance(tp, int) and tp not in numbers:
                err(w, f"port {p.get('name')!r}: targetPort {tp} is not a container port")

    for d in by_kind.get("PodDisruptionBudget", {}).values():
        sel = (((d.get("spec") or {}).get("selector")) or {}).get("matchLabels") or {}
        if not selected(sel):
            err(where(d), "selector selects no pods of any workload here")

    for d in by_kind.get("RoleBinding", {}).values():
        ref = d.get("roleRef") or {}
        if ref.get("kind") == "Role" and ref.get("name") not in by_kind.get("Role", {}):
            err(where(d), f"roleRef Role {ref.get('name')!r} is not among the resources")
        for s in d.get("subjects") or []:
            if s.get("kind") == "ServiceAccount":
                if s.get("name") not in by_kind.get("ServiceAccount", {}):
                    err(where(d), f"subject ServiceAccount {s.get('name')!r} is not among the resources")
                if namespace and s.get("namespace") != namespace:
                    err(where(d), f"subject ServiceAccount namespace {s.get('namespace')!r} != {namespace!r}")

    for d in by_kind.get("ScaledObject", {}).values():
        check_scaledobject(d, by_kind, namespace, where(d))

    gw = by_kind.get("Deployment", {}).get("gateway")
    if gw is not None:
        check_gateway(gw, by_kind, where(gw))
    lb = by_kind.get("Deployment", {}).get("gateway-lb")
    if lb is not None:
        check_haproxy(lb, by_kind, namespace, where(lb))


def gateway_container(gw):
    for c in pod_spec(gw).get("containers") or []:
        if c.get("name") == "gateway":
            return c
    return None


def max_connections(gw):
    c = gateway_container(gw) if gw else None
    v = env_value(c, "GATEWAY_MAX_CONNECTIONS") if c else None
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def check_scaledobject(so, by_kind, namespace, w):
    spec = so.get("spec") or {}
    ref = spec.get("scaleTargetRef") or {}
    kind = ref.get("kind", "Deployment")
    target = by_kind.get(kind, {}).get(ref.get("name"))
    if target is None:
        err(w, f"scaleTargetRef {kind}/{ref.get('name')} is not among the resources")
    lo, hi = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
    if isinstance(lo, int) and isinstance(hi, int) and lo > hi:
        err(w, f"minReplicaCount {lo} > maxReplicaCount {hi}")
    if target is not None and "replicas" in (target.get("spec") or {}):
        err(w, f"{kind}/{ref.get('name')} sets spec.replicas although KEDA owns it "
               "(re-applying would reset a scaled fleet)")
    cap = max_connections(target) if target is not None else None
    for t in spec.get("triggers") or []:
        md = t.get("metadata") or {}
        per_pod = md.get("threshold") if t.get("type") == "prometheus" else md.get("targetValue")
        try:
            per_pod = float(per_pod) if per_pod is not None else None
        except ValueError:
            per_pod = None
        if cap and per_pod and per_pod > cap:
            err(w, f"{t.get('type')} target {per_pod:g} connections per pod exceeds "
                   f"GATEWAY_MAX_CONNECTIONS {cap}")
        if t.get("type") == "metrics-api" and md.get("url"):
            m = re.match(r"^https?://([^/:]+)(?::(\d+))?(/.*)?$", md["url"])
            if not m:
                err(w, f"metrics-api url {md['url']!r} does not parse")
                continue
            host = m.group(1).split(".")
            svc = by_kind.get("Service", {}).get(host[0])
            if svc is None:
                err(w, f"metrics-api url host {host[0]!r} is not a Service here")
                continue
            if len(host) > 1 and namespace and host[1] != namespace:
                err(w, f"metrics-api url namespace {host[1]!r} != {namespace!r}")
            port = int(m.group(2) or 80)
            if port not in [p.get("port") for p in (svc.get("spec") or {}).get("ports") or []]:
                err(w, f"metrics-api url port {port} is not a port of Service {host[0]}")


def check_gateway(gw, by_kind, w):
    ps = pod_spec(gw)
    c = gateway_container(gw)
    if c is None:
        err(w, "no container named gateway")
        return
    hook = (((c.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command")
    if hook != ["gateway", "drain", "--local"]:
        err(w, f"preStop must exec [gateway, drain, --local] (drain before SIGTERM), got {hook!r}")
    grace = ps.get("terminationGracePeriodSeconds", 30)
    if not isinstance(grace, int) or grace < 30:
        err(w, f"terminationGracePeriodSeconds {grace!r} leaves no drain window (want >= 30)")
    if ps.get("enableServiceLinks", True):
        err(w, "enableServiceLinks must be false (service links inject GATEWAY_* variables)")
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
    for env, pname in (("GATEWAY_LISTEN", "http"), ("GATEWAY_ADMIN_LISTEN", "admin"),
                       ("GATEWAY_AGENT_LISTEN", "agent")):
        v = env_value(c, env)
        if v is None:
            err(w, f"env {env} is not set")
        elif not str(v).startswith("0.0.0.0:") and not str(v).startswith("[::]:"):
            err(w, f"env {env}={v} does not listen on all interfaces")
        elif port_of(v) != ports.get(pname):
            err(w, f"env {env}={v} does not match container port {pname!r} ({ports.get(pname)})")
    if max_connections(gw) is None:
        err(w, "env GATEWAY_MAX_CONNECTIONS must be set to an integer")
    rp = ((c.get("readinessProbe") or {}).get("httpGet") or {}).get("path")
    lp = ((c.get("livenessProbe") or {}).get("httpGet") or {}).get("path")
    if rp != "/readyz" or lp != "/healthz":
        err(w, f"probes must be /readyz (readiness) and /healthz (liveness), got {rp!r}, {lp!r}")


def check_haproxy(lb, by_kind, namespace, w):
    ps = pod_spec(lb)
    cfg, cm_name = None, None
    for v in ps.get("volumes") or []:
        cm = (v.get("configMap") or {}).get("name")
        if cm and "haproxy.cfg" in ((by_kind.get("ConfigMap", {}).get(cm) or {}).get("data") or {}):
            cfg, cm_name = by_kind["ConfigMap"][cm]["data"]["haproxy.cfg"], cm
    if cfg is None:
        err(w, "mounts no ConfigMap with a haproxy.cfg key")
        return
    cw = f"{w} haproxy.cfg (ConfigMap {cm_name})"
    lines = [ln.split("#", 1)[0].strip() for ln in cfg.splitlines()]
    lines = [ln for ln in lines if ln]
    if "balance leastconn" not in lines:
        err(cw, "the gateway backend must use `balance leastconn`")
    if not any(ln.startswith("timeout tunnel") for ln in lines):
        err(cw, "`timeout tunnel` is missing (WebSockets would hit the client/server timeout)")
    tmpl = [ln.split() for ln in lines if ln.startswith("server-template ")]
    if len(tmpl) != 1:
        err(cw, "expected exactly one server-template line")
        return
    t = tmpl[0]
    slots, addr = int(t[2]) if t[2].isdigit() else 0, t[3]
    host, _, port = addr.rpartition(":")
    gw = by_kind.get("Deployment", {}).get("gateway")
    headless = [s for s in by_kind.get("Service", {}).values()
                if (s.get("spec") or {}).get("clusterIP") == "None"
                and gw is not None and matches((s.get("spec") or {}).get("selector") or {}, pod_labels(gw))]
    if not headless:
        err(cw, "no headless Service selects the gateway pods")
        return
    svc = headless[0]
    want = f"{name_of(svc)}.{namespace}.svc.cluster.local"
    if host != want:
        err(cw, f"server-template host {host!r} != {want!r} (headless Service + namespace)")
    if (svc.get("spec") or {}).get("publishNotReadyAddresses"):
        err(cw, f"Service {name_of(svc)} publishes not-ready (draining) pods to HAProxy")
    svc_ports = {p.get("name"): p.get("port") for p in (svc.get("spec") or {}).get("ports") or []}
    if not port.isdigit() or int(port) != svc_ports.get("http"):
        err(cw, f"server-template port {port} != Service {name_of(svc)} port http ({svc_ports.get('http')})")
    opts = t[4:]
    for word in ("check", "agent-check", "resolvers", "init-addr"):
        if word not in opts:
            err(cw, f"server-template lacks `{word}`")
    if "agent-port" in opts:
        ap = opts[opts.index("agent-port") + 1]
        if not ap.isdigit() or int(ap) != svc_ports.get("agent"):
            err(cw, f"agent-port {ap} != Service {name_of(svc)} port agent ({svc_ports.get('agent')})")
    else:
        err(cw, "server-template lacks `agent-port`")
    if "resolvers" in opts:
        rname = opts[opts.index("resolvers") + 1]
        if f"resolvers {rname}" not in lines:
            err(cw, f"resolvers section {rname!r} is missing")
    so = by_kind.get("ScaledObject", {}).get("gateway")
    hi = ((so or {}).get("spec") or {}).get("maxReplicaCount")
    if isinstance(hi, int) and slots < hi:
        err(cw, f"server-template has {slots} slots < ScaledObject maxReplicaCount {hi}")
    cap = max_connections(gw)
    for ln in lines:
        words = ln.split()
        if words and words[0] in ("server", "server-template", "default-server") and "maxconn" in words:
            mc = words[words.index("maxconn") + 1]
            if cap and mc.isdigit() and int(mc) < cap:
                err(cw, f"per-server maxconn {mc} < GATEWAY_MAX_CONNECTIONS {cap}")
    # The frontend's bind port is the lb container's http port.
    lb_ports = {}
    for c in ps.get("containers") or []:
        lb_ports.update({p.get("name"): p.get("containerPort") for p in c.get("ports") or []})
    binds = [port_of(ln.split()[1]) for ln in lines if ln.startswith("bind ")]
    if lb_ports.get("http") not in binds:
        err(cw, f"no `bind` on the lb container's http port ({lb_ports.get('http')})")


# --------------------------------------------------------------------------

def main_tree(deploy_dir, out):
    deploy_dir = os.path.abspath(deploy_dir)
    sink = Sink(out)
    ks = {}
    for d, _dirs, _files in os.walk(deploy_dir):
        if kfile(d):
            ks[d] = Kustomization(d, deploy_dir)
    for k in ks.values():
        k.check()
    patch_files = {p for k in ks.values() for p in k.patch_files}
    referenced = {p for k in ks.values() for p in k.resource_files}
    kfiles = {k.path for k in ks.values()}

    for d, _dirs, files in os.walk(deploy_dir):
        for fn in sorted(files):
            p = os.path.join(d, fn)
            if not fn.endswith((".yaml", ".yml")) or p in kfiles or p in patch_files:
                continue
            where = rel(p, deploy_dir)
            docs = load_docs(p, where)
            if p not in referenced:
                print(f"    note: {where} is in no kustomization (validated on its own)")
            sink.add_file(p, docs, where, deploy_dir)
    sink.write()

    # Cross-object checks, once per distinct resource set.
    done = set()
    for kdir in sorted(ks):
        docs, namespace = collect(kdir, ks)
        check_patch_targets(ks[kdir], docs)
        key = tuple(sorted(json.dumps(d, sort_keys=True) for d in docs))
        if not docs or key in done:
            continue
        done.add(key)
        cross_check(docs, rel(kdir, deploy_dir), namespace)
        # Stand-alone ScaledObjects (alternatives kept outside kustomizations)
        # must fit the resources they would scale.
        deployments = {name_of(d) for d in docs if d.get("kind") == "Deployment"}
        for d, _dirs, files in os.walk(deploy_dir):
            for fn in sorted(files):
                p = os.path.join(d, fn)
                if p in referenced or p in kfiles or p in patch_files or not fn.endswith((".yaml", ".yml")):
                    continue
                for so in load_docs(p):
                    if so.get("kind") == "ScaledObject" and \
                            ((so.get("spec") or {}).get("scaleTargetRef") or {}).get("name") in deployments:
                        ns = (so.get("metadata") or {}).get("namespace")
                        if namespace and ns and ns != namespace:
                            err(rel(p, deploy_dir), f"namespace {ns!r} != {namespace!r}")
                        by_kind = {}
                        for x in docs:
                            by_kind.setdefault(x.get("kind"), {})[name_of(x)] = x
                        check_scaledobject(so, by_kind, namespace,
                                           f"{rel(p, deploy_dir)} (against {rel(kdir, deploy_dir)})")


def main_rendered(path, out, label):
    sink = Sink(out)
    docs = load_docs(path, f"[{label}] rendered")
    sink.add_file(None, docs, f"rendered-{label}", os.environ["DEPLOY_DIR"])
    sink.write()
    namespaces = {(d.get("metadata") or {}).get("namespace") for d in docs} - {None}
    namespace = namespaces.pop() if len(namespaces) == 1 else None
    if len(namespaces) > 0:
        err(f"[{label}]", "resources span several namespaces")
    cross_check(docs, label, namespace)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "tree":
        main_tree(sys.argv[2], sys.argv[3])
    elif mode == "rendered":
        main_rendered(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(f"unknown mode {mode}")
    for e in errors:
        print(f"    ERROR {e}")
    sys.exit(1 if errors else 0)
PY
}

# ---------------------------------------------------------------------------
FAILED=()
LAST_OK=1

# Run one check; record (not propagate) its failure so that every check runs.
step() {
  local name="$1"
  shift
  echo "==> $name"
  if "$@"; then
    echo "    ok"
    LAST_OK=1
  else
    echo "    FAILED: $name"
    FAILED+=("$name")
    LAST_OK=0
  fi
}

indent() { sed 's/^/    /'; }

# kubernetes-validate exits 0 on "WARN ... Couldn't find schema" (an unknown
# kind or a typo in apiVersion/kind): treat every WARN as a failure.
kube_validate() {
  local list="$1" out rc=0
  local files=()
  mapfile -t files <"$list"
  if ((${#files[@]} == 0)); then
    echo "    (no built-in manifests)"
    return 0
  fi
  out="$("$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "${files[@]}" 2>&1)" || rc=$?
  if [[ -n "$out" ]]; then printf '%s\n' "$out" | indent; fi
  echo "    ${#files[@]} file(s) checked against Kubernetes $K8S_VERSION (strict)"
  if ((rc != 0)) || grep -qE '^(WARN|ERROR|FATAL)' <<<"$out"; then
    return 1
  fi
}

json_schemas() {
  local list="$1" rc=0 line
  local fields=()
  if [[ ! -s "$list" ]]; then
    echo "    (no custom resources)"
    return 0
  fi
  while IFS= read -r line; do
    IFS=$'\t' read -r -a fields <<<"$line"
    "$VENV/bin/check-jsonschema" --schemafile "${fields[0]}" "${fields[@]:1}" 2>&1 | indent || rc=1
  done <"$list"
  return "$rc"
}

python_check() {
  DEPLOY_DIR="$DEPLOY_DIR" "$VENV/bin/python" "$WORK/check.py" "$@"
}

RENDER=()
find_renderer() {
  ((NO_RENDER)) && return 0
  if command -v kustomize >/dev/null 2>&1; then
    RENDER=(kustomize build)
  elif command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
    RENDER=(kubectl kustomize)
  fi
}

haproxy_check() {
  local out rc=0
  out="$(haproxy -c -f "$1" 2>&1)" || rc=$?
  # Show warnings and errors, not the version notices.
  if ((rc != 0)) || grep -qE '^\[(WARNING|ALERT)\]' <<<"$out"; then
    printf '%s\n' "$out" | grep -vE '^\[NOTICE\]' | indent
  fi
  return "$rc"
}

render() {
  local kdir="$1" out="$2"
  "${RENDER[@]}" "$kdir" >"$out" 2>"$out.err" || {
    indent <"$out.err"
    return 1
  }
}

validate() {
  echo "Validating ${DEPLOY_DIR#"$ROOT"/} (Kubernetes $K8S_VERSION)"
  step "yamllint" "$VENV/bin/yamllint" -c "$ROOT/.yamllint" --strict "$DEPLOY_DIR"

  mkdir -p "$WORK/tree"
  step "kustomizations and cross-object checks (source tree)" python_check tree "$DEPLOY_DIR" "$WORK/tree"
  step "kubernetes-validate --strict (each manifest file)" kube_validate "$WORK/tree/builtin.list"
  step "JSON schema: custom resources (each file)" json_schemas "$WORK/tree/jsonschema.list"

  find_renderer
  if ((${#RENDER[@]})); then
    local kdirs=() kdir label out
    mapfile -t kdirs < <(find "$DEPLOY_DIR" \( -name kustomization.yaml -o -name kustomization.yml -o -name Kustomization \) -printf '%h\n' | sort)
    for kdir in "${kdirs[@]}"; do
      label="$(realpath --relative-to="$DEPLOY_DIR" "$kdir")"
      out="$WORK/render/$(tr '/' '_' <<<"$label")"
      mkdir -p "$out"
      step "render $label (${RENDER[*]})" render "$kdir" "$out/rendered.yaml"
      if ((LAST_OK)); then
        step "  cross-object checks ($label, rendered)" python_check rendered "$out/rendered.yaml" "$out" "$label"
        step "  kubernetes-validate --strict ($label, rendered)" kube_validate "$out/builtin.list"
        step "  JSON schema: custom resources ($label, rendered)" json_schemas "$out/jsonschema.list"
      fi
    done
  elif ((NO_RENDER)); then
    echo "==> rendering skipped (--no-render)"
  else
    echo "==> rendering skipped: neither kustomize nor kubectl is installed"
    echo "    (kustomizations were still checked file by file above)"
  fi

  if command -v haproxy >/dev/null 2>&1; then
    local cfg
    for cfg in "$DEPLOY_DIR"/haproxy/*.cfg; do
      [[ -e "$cfg" ]] || continue
      step "haproxy -c $(basename "$cfg")" haproxy_check "$cfg"
    done
  else
    echo "==> haproxy -c skipped: haproxy is not installed"
  fi

  echo
  if ((${#FAILED[@]})); then
    echo "manifest validation FAILED (${#FAILED[@]} check(s)):"
    printf '  - %s\n' "${FAILED[@]}"
    return 1
  fi
  echo "manifest validation passed"
}

# ---------------------------------------------------------------------------
# Self-test: break a copy of deploy/ in known ways; each must fail.

mutate() { # FILE OLD NEW: replace the first OLD with NEW; OLD must occur
  "$VENV/bin/python" - "$@" <<'PY'
import sys
path, old, new = sys.argv[1:4]
s = open(path).read()
if old not in s:
    sys.exit(f"self-test bug: {old!r} not found in {path}")
open(path, "w").write(s.replace(old, new, 1))
PY
}

self_test() {
  local passed=0 failed=0 modes=("")
  local mode_args=()
  find_renderer
  if ((${#RENDER[@]})); then
    modes=("" "--no-render")
  fi

  # name | file (relative to deploy/) | old | new | expected output (ERE)
  local cases=(
    "pristine copy passes|||| "
    "Deployment field typo|base/gateway-deployment.yaml|terminationGracePeriodSeconds:|terminationGracePeriodSecond:|'terminationGracePeriodSecond' was unexpected"
    "Deployment nested typo|base/gateway-deployment.yaml|readOnlyRootFilesystem:|readOnlyRootFileSystem:|'readOnlyRootFileSystem' was unexpected"
    "unknown kind|base/gateway-pdb.yaml|kind: PodDisruptionBudget|kind: PodDisruptionBudgit|PodDisruptionBudgit"
    "ScaledObject field typo|base/gateway-scaledobject.yaml|minReplicaCount:|minReplicaCont:|'minReplicaCont' was unexpected"
    "ScaledObject trigger metadata typo|base/gateway-scaledobject.yaml|threshold:|treshold:|'treshold' is not one of"
    "ScaledObject non-string metadata|base/gateway-scaledobject.yaml|threshold: \"5000\"|threshold: 5000|5000 is not of type 'string'"
    "metrics-api alternative typo|keda/scaledobject-metrics-api.yaml|valueLocation:|valueLocaton:|'valueLocaton' is not one of"
    "kustomization references a missing file|base/kustomization.yaml|- gateway-pdb.yaml|- gateway-pdp.yaml|gateway-pdp.yaml' does not exist"
    "duplicate YAML key|base/gateway-config.yaml|  GATEWAY_NATS_URL: nats://nats:4222|  GATEWAY_NATS_URL: nats://nats:4222\n  GATEWAY_NATS_URL: nats://other:4222|duplication of key"
    "Service selects no pods|base/gateway-headless-service.yaml|  selector:\n    app.kubernetes.io/name: gateway|  selector:\n    app.kubernetes.io/name: gatway|selects no pods"
    "HAProxy agent-port disagrees with the Service|haproxy/haproxy.cfg|agent-port 9091|agent-port 9092|agent-port 9092 != Service"
    "preStop hook removed|base/gateway-deployment.yaml|command: [\"gateway\", \"drain\", \"--local\"]|command: [\"gateway\", \"status\"]|preStop must exec"
  )

  if command -v haproxy >/dev/null 2>&1; then
    cases+=("HAProxy config syntax error|haproxy/haproxy-local.cfg|timeout tunnel 1h|timeout tunel 1h|got 'tunel'")
  fi

  local entry name file old new expect mode dir log rc desc
  for entry in "${cases[@]}"; do
    IFS='|' read -r name file old new expect <<<"$entry"
    old="${old//\\n/$'\n'}"
    new="${new//\\n/$'\n'}"
    for mode in "${modes[@]}"; do
      dir="$(mktemp -d "$WORK/case.XXXXXX")"
      cp -R "$DEPLOY_DIR" "$dir/deploy"
      if [[ -n "$file" ]]; then
        mutate "$dir/deploy/$file" "$old" "$new"
      fi
      log="$dir/log"
      rc=0
      # A separate process, so the case cannot disturb this one's state.
      mode_args=()
      if [[ -n "$mode" ]]; then mode_args=("$mode"); fi
      bash "$SCRIPT" --deploy-dir "$dir/deploy" "${mode_args[@]}" >"$log" 2>&1 || rc=$?
      desc="$name${mode:+ ($mode)}"
      if [[ -z "$file" ]]; then
        if ((rc == 0)); then
          echo "PASS  $desc: exit 0"
          passed=$((passed + 1))
        else
          echo "FAIL  $desc: exit $rc"
          indent <"$log"
          failed=$((failed + 1))
        fi
      elif ((rc != 0)) && grep -qE -- "$expect" "$log"; then
        echo "PASS  $desc: exit $rc, reported: $(grep -m1 -E -- "$expect" "$log" | sed 's/^ *//' | cut -c1-150)"
        passed=$((passed + 1))
      else
        echo "FAIL  $desc: exit $rc, expected a failure mentioning /$expect/"
        indent <"$log"
        failed=$((failed + 1))
      fi
    done
  done
  echo
  echo "self-test: $passed passed, $failed failed"
  ((failed == 0))
}

# ---------------------------------------------------------------------------
ensure_venv
write_checker
echo "tools: $("$VENV/bin/yamllint" --version), kubernetes-validate $("$VENV/bin/kubernetes-validate" --version 2>&1 | awk '{print $NF}'), check-jsonschema $("$VENV/bin/check-jsonschema" --version 2>&1 | awk '{print $NF}')"
if ((SELF_TEST)); then
  self_test
else
  validate
fi
