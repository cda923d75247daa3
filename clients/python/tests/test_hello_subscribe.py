"""Subscriptions opened by ``hello`` itself (its ``subscribe`` array): which topics go there and
how the replies without ``ref`` are matched, against a scripted fake gateway and a real one
(which counts the frames it received: ``gateway_messages_received_total``).

    .venv/bin/python -m pytest clients/python/tests
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection

from gateway_client import ErrorEvent, GatewayClient, GatewayError, Message, Position
from gateway_client.hello import HelloSubscriptions
from test_unit import FakeGateway, welcome

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "clients" / "conformance"))
import servers  # noqa: E402  (the conformance suite's process helpers: loopback ports, kill by PID)

SECRET = "hello-subscribe-python-secret-0123456789"


def test_hello_subscriptions_take_topics_without_position_and_match_replies_in_order() -> None:
    h = HelloSubscriptions()
    assert h.start([("a", False), ("b", True), ("c", False)]) == ["a", "c"]
    assert "a" in h and "b" not in h
    assert h.reply("c") is None, "a subscribed for another topic answers none of them"
    assert h.reply(None) is None, "an error naming no topic is about something else"
    assert h.reply("a") == "a", "the oldest one waiting"
    assert h.reply("c") == "c"
    assert h.reply("c") is None
    h.start([("x", False)])
    h.clear()
    assert h.reply("x") is None


def test_fake_gateway_hello_subscribe_then_frames_for_since_and_an_error_in_its_place() -> None:
    async def script(ws: ServerConnection, n: int, hello: dict[str, Any]) -> None:
        if hello.get("subscribe") != ["a", "secret"]:
            # Not the hello this test expects: stop the client (it would reconnect forever).
            await ws.close(1008, '{"reconnect":false,"error":"unexpected_hello"}')
            return
        await ws.send(welcome())
        await ws.send(json.dumps({"type": "subscribed", "topic": "a", "seq": 4, "epoch": "e1"}))
        await ws.send(json.dumps({"type": "error", "code": "forbidden", "topic": "secret",
                                  "message": "may not subscribe to secret"}))
        frame = json.loads(await ws.recv())
        assert (frame["type"], frame["topic"], frame["since"]) == ("subscribe", "c", {"seq": 2, "epoch": "e1"})
        await ws.send(json.dumps({"type": "subscribed", "topic": "c", "seq": 2, "epoch": "e1",
                                  "recovered": True, "ref": frame["ref"]}))
        await ws.wait_closed()

    async def main() -> None:
        events: list[Any] = []
        async with FakeGateway(script) as url:
            c = GatewayClient(url, on_event=events.append)
            a, refused, since, _ = await asyncio.gather(
                c.subscribe("a"), c.subscribe("secret"), c.subscribe("c", since=Position(2, "e1")),
                c.connect(), return_exceptions=True)
            assert isinstance(refused, GatewayError) and refused.code == "forbidden"
            assert a.position == Position(4, "e1") and since.position == Position(2, "e1")
            assert c.positions() == {"a": Position(4, "e1"), "c": Position(2, "e1")}
            assert [e.error.code for e in events if isinstance(e, ErrorEvent)] == ["forbidden"]
            await c.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def hs256(claims: dict[str, Any]) -> str:
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")
    head = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{b64(json.dumps(claims).encode())}"
    sig = hmac.new(SECRET.encode(), head.encode(), hashlib.sha256).digest()
    return f"{head}.{b64(sig)}"


TOKEN = hs256({"sub": "u1", "exp": int(time.time()) + 3600, "gw": {"sub": ["open.*"], "pub": ["open.*"]}})


@pytest.fixture(scope="module")
def gateway() -> Iterator[servers.Gateway]:
    gw = servers.Gateway("py-hello-sub", ["--auth", "required"], None, None,
                         env={"GATEWAY_JWT_SECRET": SECRET})
    yield gw
    gw.stop()


def frames_received(gw: servers.Gateway) -> int:
    with urllib.request.urlopen(f"{gw.admin}/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(r"^gateway_messages_received_total(?:\{[^}]*\})? (\d+)", text, re.M)
    assert m, "gateway_messages_received_total is exported"
    return int(m.group(1))


def test_real_gateway_one_frame_hello_before_the_first_message(gateway: servers.Gateway) -> None:
    async def main() -> None:
        before = frames_received(gateway)
        c = GatewayClient(gateway.url, token=TOKEN, ping_interval=None)
        sub, _ = await asyncio.gather(c.subscribe("open.py"), c.connect())
        gateway.post("/api/publish", {"topic": "open.py", "data": {"n": 1}})
        item = await asyncio.wait_for(sub.__anext__(), 10)
        assert isinstance(item, Message) and item.seq == 1
        assert frames_received(gateway) - before == 1, "hello only: no subscribe frame"
        await c.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_real_gateway_refused_hello_topic_raises_as_a_subscribe_frame_would(gateway: servers.Gateway) -> None:
    async def main() -> None:
        events: list[Any] = []
        c = GatewayClient(gateway.url, token=TOKEN, ping_interval=None, on_event=events.append)
        before = frames_received(gateway)
        a, refused, z, _ = await asyncio.gather(
            c.subscribe("open.a"), c.subscribe("closed.b"), c.subscribe("open.z"), c.connect(),
            return_exceptions=True)
        assert isinstance(refused, GatewayError), refused
        assert refused.code == "forbidden" and "closed.b" in refused.message
        assert not isinstance(a, BaseException) and not isinstance(z, BaseException)
        assert sorted(c.positions()) == ["open.a", "open.z"]
        assert [e.error.code for e in events if isinstance(e, ErrorEvent)] == ["forbidden"]
        assert frames_received(gateway) - before == 1, "all three in hello"
        await c.close()

    asyncio.run(asyncio.wait_for(main(), 30))
