"""Unit tests of the Python client: its rules, and the client against a scripted fake gateway.

    .venv/bin/python -m pytest clients/python/tests
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from gateway_client import (Backoff, Connected, Disconnected, Duplicate, Gap, GatewayClient,
                            GatewayError, Message, Position, PresenceMember, PresenceStats,
                            Reconnecting, Stopped,
                            parse_close_reason, token_expiry)
from gateway_client.topics import Topics


def test_backoff_is_full_jitter_bounded_and_growing() -> None:
    b = Backoff(initial=0.04, max=0.2)
    assert [round(b.cap(n), 3) for n in range(6)] == [0.04, 0.08, 0.16, 0.2, 0.2, 0.2]
    assert b.delay(2, rand=lambda: 0.0) == 0.0
    assert b.delay(2, rand=lambda: 0.999) <= 0.16
    assert b.cap(10_000) == 0.2


def test_close_reasons_and_token_expiry() -> None:
    assert parse_close_reason('{"reconnect":true,"after_ms":500,"error":"lagged"}') == {
        "reconnect": True, "after_ms": 500, "error": "lagged"}
    assert parse_close_reason("bye") is None
    assert parse_close_reason('{"after_ms":1}') is None
    claims = base64.urlsafe_b64encode(json.dumps({"exp": 1700000000}).encode()).decode().rstrip("=")
    assert token_expiry(f"h.{claims}.s") == 1700000000
    assert token_expiry("nope") is None


def test_topic_rules_duplicates_epochs_and_gaps() -> None:
    t = Topics()
    t.add("a", None)
    assert t.subscribed("a", Position(2, "e"), None, None) is None
    gap, msg, dup = t.message("a", 3, None, 1)
    assert msg is not None and msg.seq == 3 and gap is None and not dup
    assert t.message("a", 3, None, 1)[2] is True
    gap, msg, _ = t.message("a", 1, "e2", 1)
    assert gap is not None and gap.reason == "epoch_changed" and msg is not None and msg.seq == 1
    gap, _, _ = t.message("a", 5, None, 1)
    assert gap is not None and gap.reason == "skipped"
    t.add("b", Position(3, "e"))
    gap = t.subscribed("b", Position(13, "e"), False, Position(3, "e"))
    assert gap is not None and gap.reason == "not_recovered" and t.position("b") == Position(13, "e")


class FakeGateway:
    """A scripted gateway: `script(ws, hellos)` runs for each connection."""

    def __init__(self, script: Any) -> None:
        self.script = script
        self.hellos: list[dict[str, Any]] = []

    async def handler(self, ws: ServerConnection) -> None:
        hello = json.loads(await ws.recv())
        self.hellos.append(hello)
        await self.script(ws, len(self.hellos), hello)

    async def __aenter__(self) -> str:
        self.server = await serve(self.handler, "127.0.0.1", 0, ping_interval=None).__aenter__()
        port = self.server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/ws"

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()


def welcome(resumed: bool = False, topics: dict[str, Any] | None = None) -> str:
    frame: dict[str, Any] = {"type": "welcome", "session": "s1", "resume": "s1.secret",
                             "pod": "fake", "resumed": resumed}
    if topics:
        frame["topics"] = topics
    return json.dumps(frame)


def msg(seq: int, epoch: str | None = None) -> str:
    frame: dict[str, Any] = {"type": "message", "topic": "t", "seq": seq, "data": {"n": seq}}
    if epoch:
        frame["epoch"] = epoch
    return json.dumps(frame)


async def answer_subscribe(ws: ServerConnection, seq: int) -> None:
    sub = json.loads(await ws.recv())
    assert sub["type"] == "subscribe"
    await ws.send(json.dumps({"type": "subscribed", "topic": sub["topic"], "seq": seq,
                              "epoch": "e1", "ref": sub["ref"]}))


def test_drain_resume_with_positions_drops_duplicates_and_honours_after_ms() -> None:
    async def script(ws: ServerConnection, n: int, hello: dict[str, Any]) -> None:
        if n == 1:
            await ws.send(welcome())
            await answer_subscribe(ws, 0)
            for seq in (1, 2, 3):
                await ws.send(msg(seq))
            await ws.close(1001, '{"reconnect":true,"after_ms":120}')
        else:
            await ws.send(welcome(True, {"t": {"seq": 4, "epoch": "e1", "recovered": True}}))
            for seq in (2, 3, 4):  # an overlapping replay
                await ws.send(msg(seq))
            await ws.wait_closed()

    async def run() -> None:
        events: list[Any] = []
        async with FakeGateway(script) as url:
            async with GatewayClient(url, on_event=events.append, backoff=Backoff(0.01, 0.02)) as c:
                sub = await c.subscribe("t")
                got = [await asyncio.wait_for(sub.__anext__(), 5) for _ in range(4)]
                assert [m.seq for m in got if isinstance(m, Message)] == [1, 2, 3, 4]
                assert c.positions() == {"t": Position(4, "e1")}
        reconnecting = [e for e in events if isinstance(e, Reconnecting)]
        assert reconnecting[0].delay == pytest.approx(0.12)
        assert [e.seq for e in events if isinstance(e, Duplicate)] == [2, 3]
        assert any(isinstance(e, Disconnected) and e.code == 1001 for e in events)
        assert [e.resumed for e in events if isinstance(e, Connected)] == [False, True]

    asyncio.run(run())


def test_exclude_self_and_skipped_frames_move_the_position_without_a_message_or_gap() -> None:
    def skipped(seq: int, epoch: str | None = None) -> str:
        frame: dict[str, Any] = {"type": "skipped", "topic": "t", "seq": seq}
        if epoch:
            frame["epoch"] = epoch
        return json.dumps(frame)

    async def script(ws: ServerConnection, n: int, hello: dict[str, Any]) -> None:
        await ws.send(welcome())
        await answer_subscribe(ws, 0)
        frame = json.loads(await ws.recv())
        assert frame["type"] == "publish" and frame["exclude_self"] is True
        await ws.send(json.dumps({"type": "published", "topic": "t", "seq": 1, "ref": frame["ref"]}))
        plain = json.loads(await ws.recv())
        assert "exclude_self" not in plain, "not excluding is the default"
        await ws.send(json.dumps({"type": "published", "topic": "t", "seq": 2, "ref": plain["ref"]}))
        # 1 excluded this session, 2 did not; a repeat of 1 is a duplicate, a hole before 5 a gap.
        for frame_text in (skipped(1), msg(2), skipped(1), skipped(5), msg(6)):
            await ws.send(frame_text)
        await ws.wait_closed()

    async def run() -> None:
        events: list[Any] = []
        async with FakeGateway(script) as url:
            async with GatewayClient(url, on_event=events.append, backoff=Backoff(0.01, 0.02)) as c:
                sub = await c.subscribe("t")
                assert await c.publish("t", "mine", exclude_self=True) == 1
                assert await c.publish("t", "plain") == 2
                got = [await asyncio.wait_for(sub.__anext__(), 5) for _ in range(3)]
                assert [type(m) for m in got] == [Message, Gap, Message]
                assert [m.seq for m in got if isinstance(m, Message)] == [2, 6]
                gap = got[1]
                assert isinstance(gap, Gap) and gap.reason == "skipped"
                assert (gap.from_, gap.to) == (Position(2, "e1"), Position(4, "e1"))
                assert c.positions() == {"t": Position(6, "e1")}
        assert [e.seq for e in events if isinstance(e, Duplicate)] == [1]

    asyncio.run(run())


def test_second_hello_carries_resume_and_positions() -> None:
    gw = None

    async def script(ws: ServerConnection, n: int, hello: dict[str, Any]) -> None:
        await ws.send(welcome(n > 1, {"t": {"seq": 2, "epoch": "e1", "recovered": True}} if n > 1 else None))
        if n == 1:
            await answer_subscribe(ws, 0)
            await ws.send(msg(1))
            await ws.send(msg(2))
            await asyncio.sleep(0.05)
            ws.transport.abort()  # no close frame
        else:
            await ws.wait_closed()

    async def main() -> None:
        nonlocal gw
        gw = FakeGateway(script)
        async with gw as url:
            async with GatewayClient(url, backoff=Backoff(0.01, 0.02)) as c:
                sub = await c.subscribe("t")
                for _ in range(2):
                    await asyncio.wait_for(sub.__anext__(), 5)
                while len(gw.hellos) < 2:
                    await asyncio.sleep(0.01)
            saved = c.resume_token
        assert "resume" not in gw.hellos[0]
        assert gw.hellos[1]["resume"] == "s1.secret"
        assert gw.hellos[1]["positions"] == {"t": {"seq": 2, "epoch": "e1"}}
        assert saved == "s1.secret"
        # A restarted process resumes its session with the saved token.
        async with gw as url:
            async with GatewayClient(url, resume=saved):
                pass
        assert gw.hellos[2]["resume"] == "s1.secret"

    asyncio.run(main())


def test_not_recovered_and_epoch_change_are_gaps() -> None:
    async def script(ws: ServerConnection, n: int, hello: dict[str, Any]) -> None:
        await ws.send(welcome())
        sub = json.loads(await ws.recv())
        assert sub["since"] == {"seq": 3, "epoch": "e0"}
        await ws.send(json.dumps({"type": "subscribed", "topic": "t", "seq": 9, "epoch": "e1",
                                  "recovered": False, "ref": sub["ref"]}))
        await ws.send(msg(1, epoch="e2"))
        await ws.wait_closed()

    async def main() -> None:
        async with FakeGateway(script) as url:
            async with GatewayClient(url) as c:
                sub = await c.subscribe("t", since=Position(3, "e0"))
                items = [await asyncio.wait_for(sub.__anext__(), 5) for _ in range(3)]
        assert isinstance(items[0], Gap) and items[0].reason == "epoch_changed"
        assert items[0].from_ == Position(3, "e0") and items[0].to == Position(9, "e1")
        assert isinstance(items[1], Gap) and items[1].reason == "epoch_changed"
        assert isinstance(items[2], Message) and (items[2].seq, items[2].epoch) == (1, "e2")

    asyncio.run(main())


def test_reconnect_false_stops_and_publish_returns_seq_or_error() -> None:
    async def script(ws: ServerConnection, n: int, hello: dict[str, Any]) -> None:
        await ws.send(welcome())
        for expected in ("ok", "refused"):
            frame = json.loads(await ws.recv())
            assert frame["type"] == "publish" and frame["id"] == expected
            if expected == "ok":
                await ws.send(json.dumps({"type": "published", "topic": "t", "seq": 7, "ref": frame["ref"]}))
            else:
                await ws.send(json.dumps({"type": "error", "code": "forbidden",
                                          "message": "may not publish to t", "ref": frame["ref"]}))
        await ws.close(1008, '{"reconnect":false,"error":"unauthorized"}')

    async def main() -> None:
        events: list[Any] = []
        async with FakeGateway(script) as url:
            c = GatewayClient(url, on_event=events.append, backoff=Backoff(0.01, 0.02))
            await c.connect()
            assert await c.publish("t", {"a": 1}, id="ok") == 7
            with pytest.raises(GatewayError) as refused:
                await c.publish("t", {"a": 2}, id="refused")
            assert refused.value.code == "forbidden"
            while not any(isinstance(e, Stopped) for e in events):
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
            assert not any(isinstance(e, Reconnecting) for e in events)
            with pytest.raises(GatewayError):
                await c.publish("t", 1)
            await c.close()

    asyncio.run(main())


def test_rpc_history_presence_get_typed_answers_and_errors_by_ref() -> None:
    requests: list[dict[str, Any]] = []

    async def script(ws: ServerConnection, n: int, hello: dict[str, Any]) -> None:
        await ws.send(welcome())
        async for text in ws:
            req = json.loads(text)
            requests.append(req)
            ref, topic = req["ref"], req.get("topic")
            if req["type"] == "rpc" and req["method"] == "echo":
                reply = {"type": "rpc_result", "ref": ref, "data": req.get("data")}
            elif req["type"] == "rpc":
                reply = {"type": "error", "code": "bad_request", "message": "always fails", "ref": ref}
            elif req["type"] == "history":
                reply = {"type": "history", "topic": topic, "ref": ref, "seq": 5, "epoch": "e1",
                         "recovered": False,
                         "messages": [{"seq": 5, "data": {"t": "m5"}}, {"seq": 4, "data": "m4"}]}
            elif req["type"] == "presence" and topic == "big":
                reply = {"type": "error", "code": "limit_reached", "message": "use stats", "ref": ref}
            elif req["type"] == "presence":
                reply = {"type": "presence", "topic": topic, "ref": ref,
                         "members": [{"session": "a1"}, {"user": "ann", "session": "b2", "info": {"name": "Ann"}}]}
            else:
                reply = {"type": "presence_stats", "topic": topic, "ref": ref, "members": 2, "users": 1}
            await ws.send(json.dumps(reply))

    async def run() -> None:
        async with FakeGateway(script) as url:
            async with GatewayClient(url) as c:
                assert await c.rpc("echo", {"n": [1, 2]}) == {"n": [1, 2]}
                assert await c.rpc("echo") is None
                with pytest.raises(GatewayError) as failed:
                    await c.rpc("fail", 1)
                assert failed.value.code == "bad_request"
                with pytest.raises(ValueError):
                    await c.rpc("no spaces")
                page = await c.history("chat", since=Position(3, "e0"), limit=2, reverse=True)
                assert (page.seq, page.epoch, page.recovered) == (5, "e1", False)
                assert [(m.seq, m.data) for m in page.messages] == [(5, {"t": "m5"}), (4, "m4")]
                assert page.last_position() == Position(4, "e1")
                assert await c.presence("room") == [PresenceMember("a1"), PresenceMember("b2", "ann", {"name": "Ann"})]
                with pytest.raises(GatewayError) as big:
                    await c.presence("big")
                assert big.value.code == "limit_reached"
                assert await c.presence_stats("room") == PresenceStats(2, 1)
        assert requests[1] == {"type": "rpc", "method": "echo", "ref": requests[1]["ref"]}
        assert requests[3] == {"type": "history", "topic": "chat", "since": {"seq": 3, "epoch": "e0"},
                               "limit": 2, "reverse": True, "ref": requests[3]["ref"]}
        assert len({r["ref"] for r in requests}) == len(requests)

    asyncio.run(run())
