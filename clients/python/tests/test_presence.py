"""Join/leave events in the Python client: pseq tracking, resume with the presence position,
and the fresh list, against a scripted fake gateway.

    .venv/bin/python -m pytest clients/python/tests
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.server import ServerConnection

from gateway_client import Backoff, GatewayClient, PresenceChange, PresenceList
from gateway_client.topics import Position, Topics
from test_unit import FakeGateway, welcome


def event(kind: str, pseq: int, session: str, epoch: str = "p1") -> str:
    return json.dumps({"type": kind, "topic": "room", "pseq": pseq, "epoch": epoch,
                       "member": {"session": session}})


def test_presence_positions_move_once_and_travel_with_positions() -> None:
    t = Topics()
    t.add("room", Position(0, "e"))
    assert t.sent_position("room") == {"seq": 0, "epoch": "e"}
    t.set_presence("room", 3, "p1")
    assert t.presence_event("room", 4, "p1")
    assert not t.presence_event("room", 4, "p1")
    assert not t.presence_event("room", 2, "p1")
    assert t.presence_event("room", 1, "p2"), "a new epoch starts over"
    assert t.sent_position("room") == {"seq": 0, "epoch": "e", "pseq": 1, "pepoch": "p2"}


def test_events_are_surfaced_in_order_and_a_resume_sends_pseq() -> None:
    async def script(ws: ServerConnection, n: int, hello: dict[str, Any]) -> None:
        if n == 1:
            await ws.send(welcome())
            sub = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "subscribed", "topic": "room", "seq": 0,
                                      "epoch": "e1", "pseq": 3, "pepoch": "p1",
                                      "ref": sub["ref"]}))
            for frame in (event("join", 4, "a"), event("join", 4, "a"), event("leave", 5, "b")):
                await ws.send(frame)
            await ws.close(1001, '{"reconnect":true,"after_ms":10}')
        else:
            await ws.send(welcome(True, {"room": {"seq": 0, "epoch": "e1", "recovered": True,
                                                  "pseq": 5, "pepoch": "p1"}}))
            await ws.send(json.dumps({"type": "presence", "topic": "room", "members": [
                {"session": "c"}], "pseq": 2, "epoch": "p2", "recovered": False}))
            await ws.send(event("join", 3, "d", "p2"))
            await ws.wait_closed()

    async def run() -> None:
        events: list[Any] = []
        gw = FakeGateway(script)
        async with gw as url:
            async with GatewayClient(url, on_event=events.append, backoff=Backoff(0.01, 0.02)) as c:
                await c.subscribe("room")
                for _ in range(200):
                    if c.presence_position("room") == (3, "p2"):
                        break
                    await asyncio.sleep(0.01)
                assert c.presence_position("room") == (3, "p2")
        changes = [(e.join, e.pseq, e.epoch) for e in events if isinstance(e, PresenceChange)]
        assert changes == [(True, 4, "p1"), (False, 5, "p1"), (True, 3, "p2")]
        lists = [e for e in events if isinstance(e, PresenceList)]
        assert [(e.pseq, e.epoch, e.members) for e in lists] == [(2, "p2", [{"session": "c"}])]
        assert gw.hellos[1]["positions"] == {"room": {"seq": 0, "epoch": "e1", "pseq": 5,
                                                      "pepoch": "p1"}}

    asyncio.run(run())
