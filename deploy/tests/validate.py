"""Offline validation of deploy/: renders each kustomization with `kubectl kustomize`, then
checks every object against its schema (kubernetes-validate --strict for built-in kinds; the
cloudcoil models generated from the upstream KEDA and prometheus-operator CRDs for theirs,
unknown fields included; a vendored schema for Gateway API HTTPRoute), `haproxy -c` on every
HAProxy config, and this deployment's invariants (manifests.py).

    python deploy/tests/validate.py [--dev PATH]... [--deployable] PATH...

Exit 1 with every problem listed. --dev marks the overlays allowed an insecure admin port;
--deployable also fails on REPLACE_ME placeholders (an overlay you are about to apply).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import kubernetes_validate
from cloudcoil.models.keda import v1alpha1 as keda
from cloudcoil.models.prometheus_operator import v1 as promop
from pydantic import ValidationError

sys.path.insert(0, str(Path(__file__).parent))
import manifests  # noqa: E402

K8S_VERSION = os.environ.get("K8S_VERSION", "1.33.0")
CRD_MODELS = {
    ("keda.sh/v1alpha1", "ScaledObject"): keda.ScaledObject,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): keda.TriggerAuthentication,
    ("monitoring.coreos.com/v1", "PodMonitor"): promop.PodMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): promop.PrometheusRule,
}
SCHEMAS = {
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): Path(__file__).parent / "schemas" / "httproute-v1.json",
}


def _unknown_fields(given, dumped, path="") -> list[str]:
    """Fields of `given` the model dropped: pydantic ignores unknown keys, the API server with
    strict field validation does not."""
    if isinstance(given, dict) and isinstance(dumped, dict):
        out = []
        for k, v in given.items():
            if k not in dumped:
                out.append(f"{path}.{k}")
            else:
                out += _unknown_fields(v, dumped[k], f"{path}.{k}")
        return out
    if isinstance(given, list) and isinstance(dumped, list):
        return [p for i, (g, d) in enumerate(zip(given, dumped)) for p in _unknown_fields(g, d, f"{path}[{i}]")]
    return []


def check_schema(doc: dict) -> list[str]:
    key = (doc.get("apiVersion"), doc.get("kind"))
    name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    if key in CRD_MODELS:
        try:
            model = CRD_MODELS[key].model_validate(doc)
        except ValidationError as e:
            return [f"{name}: {err['loc']}: {err['msg']}" for err in e.errors()]
        dumped = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
        return [f"{name}: unknown field {p}" for p in _unknown_fields(doc, dumped)]
    if key in SCHEMAS:
        schema = json.loads(SCHEMAS[key].read_text())
        return [f"{name}: {e.json_path}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{name}: no schema for {key[0]} {key[1]}"]
    except kubernetes_validate.ValidationError as e:
        return [f"{name}: {'.'.join(str(p) for p in e.path)}: {e.message}"]
    return []


def check_haproxy(docs: list[dict]) -> list[str]:
    problems = []
    for name, cfg in manifests.haproxy_configs(docs).items():
        with tempfile.NamedTemporaryFile("w", suffix=".cfg") as f:
            f.write(cfg)
            f.flush()
            r = subprocess.run(["haproxy", "-c", "-f", f.name], capture_output=True, text=True)
        if r.returncode != 0:
            problems.append(f"ConfigMap {name}: haproxy -c: {(r.stdout + r.stderr).strip()}")
    return problems


def validate(path: Path, dev: bool, deployable: bool) -> list[str]:
    try:
        docs = manifests.render(path)
    except subprocess.CalledProcessError as e:
        return [f"kubectl kustomize: {e.stderr.strip().splitlines()[0][:2000]}"]
    problems = [p for d in docs for p in check_schema(d)]
    problems += check_haproxy(docs)
    problems += manifests.check_all(docs, dev=dev, deployable=deployable)
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", type=Path)
    parser.add_argument("--dev", action="append", type=Path, default=[], help="an overlay allowed an insecure admin port")
    parser.add_argument("--deployable", action="store_true", help="also fail on REPLACE_ME placeholders")
    args = parser.parse_args()
    failed = False
    dev = {p.resolve() for p in args.dev}
    for path in [*args.dev, *args.paths]:
        problems = validate(path, dev=path.resolve() in dev, deployable=args.deployable)
        print(f"{'FAIL' if problems else 'ok  '} {path}")
        for p in problems:
            print(f"     {p}")
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
