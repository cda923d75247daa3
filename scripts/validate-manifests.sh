#!/usr/bin/env bash
# Offline validation of deploy/ with the ecosystem's tools, then our own invariants:
#   - yamllint on every YAML file (.yamllint);
#   - `kubectl kustomize` renders every overlay, and every component through the test overlays
#     of deploy/tests/overlays; each rendered object is checked by kubernetes-validate --strict
#     (built-in kinds), the cloudcoil models of the KEDA and prometheus-operator CRDs (unknown
#     fields rejected) or a vendored HTTPRoute schema; `haproxy -c` on every HAProxy config;
#   - deploy/tests/manifests.py's invariants (grace vs drain, no probe on the PROXY port, admin
#     secure outside dev, tunnel timeout vs ping, trusted proxies, PDBs, surge, ...);
#   - promtool check/test rules on deploy/monitoring, and the pytest files of deploy/tests
#     except the rehearsal and the Dockerfile's runs (they need the gateway binary:
#     scripts/test.sh runs them).
#
#   scripts/validate-manifests.sh                      everything above
#   scripts/validate-manifests.sh --deployable DIR...  also fail on REPLACE_ME placeholders:
#                                                      run it on the overlay you are about to apply
# Needs kubectl (Debian package kubectl), haproxy, promtool (Debian package prometheus) and the
# Python packages of deploy/tests/requirements.txt in .venv (scripts/test.sh installs them all).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

ensure_deploy_tools

if [ "${1:-}" = "--deployable" ]; then
  shift
  exec .venv/bin/python deploy/tests/validate.py --deployable "$@"
fi

say "yamllint"
.venv/bin/yamllint --strict -c .yamllint deploy .yamllint

say "render + schemas + haproxy -c + invariants"
.venv/bin/python deploy/tests/validate.py --dev deploy/overlays/dev deploy/overlays/production
# The filled production overlay and one overlay per ingress component, as deployable.
.venv/bin/python deploy/tests/validate.py --deployable deploy/tests/overlays/*/

say "promtool"
promtool check rules deploy/monitoring/gateway-rules.yaml
promtool test rules deploy/monitoring/gateway-rules.test.yaml

say "pytest deploy/tests (invariants, monitoring)"
.venv/bin/python -m pytest -q -p no:cacheprovider -p no:cloudcoil deploy/tests \
  --ignore=deploy/tests/test_rehearsal.py --ignore=deploy/tests/test_dockerfile.py
