"""The Python client against real gateways (the binary of `GATEWAY_BIN` or target/debug/gateway,
in-memory, on loopback ports): `history` pages and going live after one, `presence` and
`presence_stats` with `--presence`, `rpc` through the example chat backend as the hook.

    .venv/bin/python -m pytest clients/python/tests
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway_client import GatewayClient, GatewayError, Message, Position, PresenceStats

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "clients" / "conformance"))
import servers  # noqa: E402  (the conformance suite's process helpers: loopback ports, kill by PID)


def gateway_has(flag: str) -> bool:
    try:
        out = subprocess.run([servers.gateway_binary(), "--help"], capture_output=True, text=True,
                             timeout=30).stdout
    except OSError:
        return False
    return flag in out


@pytest.fixture(scope="module", autouse=True)
def gateway_binary_present() -> None:
    # A missing binary fails these tests, never skips them.
    assert gateway_has("--presence"), "no gateway binary with --presence: run cargo build -p gateway"


@pytest.fixture(scope="module")
def presence_gateway() -> Iterator[servers.Gateway]:
    gw = servers.Gateway("py-presence", ["--presence", "--presence-max-list", "2"], None, None)
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def hooked_gateway() -> Iterator[servers.Gateway]:
    with tempfile.TemporaryDirectory() as tmp:
        secret = Path(tmp) / "hook.secret"
        secret.write_text("py-hook-secret\n")
        port = servers.free_port()
        backend = servers.Process(
            [sys.executable, str(ROOT / "examples" / "chat-backend" / "backend.py"), "--port",
             str(port), "--secret-file", str(secret)], f"chat-backend-{port}.log")
        servers.wait_port(port, backend.proc, "chat backend")
        gw = servers.Gateway("py-hooks", [], None, None, env={
            "GATEWAY_HOOK_URL": f"http://127.0.0.1:{port}", "GATEWAY_HOOK_SECRET_FILE": str(secret)})
        yield gw
        gw.stop()
        backend.stop()


def test_history_pages_then_live_without_a_gap(presence_gateway: servers.Gateway) -> None:
    async def run() -> None:
        async with GatewayClient(presence_gateway.url) as a, GatewayClient(presence_gateway.url) as b:
            for i in range(1, 11):
                await a.publish("log", {"i": i})
            latest = await a.history("log", limit=3)
            assert (latest.seq, [m.seq for m in latest.messages], latest.recovered) == (10, [8, 9, 10], None)
            back = await a.history("log", since=Position(8, latest.epoch), limit=2, reverse=True)
            assert [(m.seq, m.data["i"]) for m in back.messages] == [(7, 7), (6, 6)]
            assert back.recovered is True
            stale = await a.history("log", since=Position(2, "0000000000000000"), limit=2)
            assert stale.recovered is False and [m.seq for m in stale.messages] == [9, 10]

            page = await b.history("log", limit=5)
            sub = await b.subscribe("log", since=page.last_position())
            for i in range(11, 16):
                await a.publish("log", {"i": i})
            got = [m.seq for m in page.messages]
            while len(got) < 10:
                item = await asyncio.wait_for(sub.__anext__(), 5)
                assert isinstance(item, Message)
                got.append(item.seq)
            assert got == list(range(6, 16))

    asyncio.run(run())


def test_presence_lists_members_stats_count_them_big_lists_refused(
        presence_gateway: servers.Gateway) -> None:
    async def run() -> None:
        url = presence_gateway.url
        async with GatewayClient(url) as a, GatewayClient(url) as b, GatewayClient(url) as c:
            await a.subscribe("room")
            await b.subscribe("room")
            members = await a.presence("room")
            assert len(members) == 2 and len({m.session for m in members}) == 2
            assert await b.presence_stats("room") == PresenceStats(2, 2)
            await c.subscribe("room")
            with pytest.raises(GatewayError) as big:
                await c.presence("room")
            assert big.value.code == "limit_reached"
            assert await c.presence_stats("room") == PresenceStats(3, 3)

    asyncio.run(run())


def test_presence_off_is_bad_request(hooked_gateway: servers.Gateway) -> None:
    async def run() -> None:
        async with GatewayClient(f"{hooked_gateway.url}?user=pia") as c:
            with pytest.raises(GatewayError) as off:
                await c.presence_stats("chat.lobby")
            assert off.value.code == "bad_request"

    asyncio.run(run())


def test_rpc_answers_and_error_codes(hooked_gateway: servers.Gateway) -> None:
    async def run() -> None:
        async with GatewayClient(f"{hooked_gateway.url}?user=rita") as c:
            assert await c.rpc("echo", {"n": [1, 2]}) == {"n": [1, 2]}
            assert (await c.rpc("whoami"))["user"] == "rita"
            with pytest.raises(GatewayError) as failed:
                await c.rpc("fail")
            assert failed.value.code == "bad_request"

    asyncio.run(run())
