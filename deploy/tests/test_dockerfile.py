"""The Dockerfile's documented runs work: the binary started with the image's ENV, USER and
ENTRYPOINT and each `docker run` of the file's header (its -e and -v), then probed. There is
no container engine in CI: the container's network is a loopback address of its own (0.0.0.0
and the container's 127.0.0.1 both map to it), `-v` a file of the test's directory."""

import os
import re
import secrets
import shlex
import subprocess
import urllib.error
import urllib.request

import pytest

from manifests import ROOT
from rehearsal import wait_for

DOCKERFILE = (ROOT / "Dockerfile").read_text()
GATEWAY_BIN = os.environ.get("GATEWAY_BIN", str(ROOT / "target" / "debug" / "gateway"))


def image_env() -> dict[str, str]:
    runtime = DOCKERFILE.split("AS runtime", 1)[1]
    env = {}
    for block in re.findall(r"^ENV ((?:.*\\\n)*.*)$", runtime, re.M):
        for k, v in re.findall(r"(\w+)=(\S+)", block.replace("\\\n", " ")):
            env[k] = v
    return env


def documented_runs() -> list[list[str]]:
    header = "\n".join(ln[1:].strip() for ln in DOCKERFILE.splitlines() if ln.startswith("#"))
    runs = re.findall(r"(docker run (?:.*\\\n)*.*)", header)
    return [shlex.split(r.replace("\\\n", " ").replace('"$PWD', '"PWD')) for r in runs]


def test_base_images_pinned_and_user_numeric():
    for arg in re.findall(r"^ARG \w+_IMAGE=(\S+)", DOCKERFILE, re.M):
        assert re.search(r"@sha256:[0-9a-f]{64}$", arg), f"{arg} is not pinned by digest"
    user = re.findall(r"^USER (\S+)", DOCKERFILE, re.M)[-1]
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), "USER must be numeric and not root"
    assert "CARGO_PROFILE_RELEASE_STRIP=symbols" in DOCKERFILE
    assert re.search(r'^ENTRYPOINT \["gateway"\]', DOCKERFILE, re.M)


@pytest.mark.parametrize("run", documented_runs(), ids=lambda r: f"{len(r)}-args")
def test_documented_docker_run(run, tmp_path):
    ip = f"127.{200 + os.getpid() % 50}.{len(run) % 250}.1"
    env = image_env()
    files = {}
    i = 2
    while i < len(run):
        if run[i] == "-e":
            k, v = run[i + 1].split("=", 1)
            env[k] = v
            i += 2
        elif run[i] == "-v":
            src, dst = run[i + 1].split(":")[:2]
            local = tmp_path / os.path.basename(src)
            local.write_text(secrets.token_hex(16) + "\n")
            files[dst] = local
            i += 2
        elif run[i] == "-p":
            i += 2
        elif run[i].startswith("-"):
            i += 1
        else:
            break
    token = None
    for k, v in list(env.items()):
        v = re.sub(r"^(0\.0\.0\.0|127\.0\.0\.1):", ip + ":", v)
        if v in files:
            token = files[v].read_text().strip()
            v = str(files[v])
        env[k] = v
    log = open(tmp_path / "gateway.log", "wb")
    proc = subprocess.Popen([GATEWAY_BIN], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        def get(port, path, auth=None):
            req = urllib.request.Request(f"http://{ip}:{port}{path}")
            if auth:
                req.add_header("Authorization", f"Bearer {auth}")
            try:
                with urllib.request.urlopen(req, timeout=2) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code
            except OSError:
                return None

        wait_for("the container's /readyz", lambda: get(8080, "/readyz") == 200 or proc.poll() is not None, 30)
        assert proc.poll() is None, (tmp_path / "gateway.log").read_text()
        assert get(8080, "/healthz") == 200
        if token:
            assert get(9090, "/metrics") == 401
            assert get(9090, "/metrics", auth=token) == 200
        else:
            assert get(9090, "/metrics") == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_old_documented_run_fails_fast(tmp_path):
    """Why the admin port moved to loopback: published without a token, the gateway refuses."""
    env = image_env() | {"GATEWAY_ADMIN_LISTEN": "0.0.0.0:0", "GATEWAY_LISTEN": "127.0.0.1:0"}
    r = subprocess.run([GATEWAY_BIN], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "--admin-token-file" in r.stderr
