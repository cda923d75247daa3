"""The conformance driver of the Python client (see clients/conformance/README.md): reads commands
as JSON lines on stdin, prints the client's events as JSON lines on stdout.

    python -m gateway_client.conformance_driver
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

from . import (Backoff, Connected, Disconnected, Duplicate, ErrorEvent, Event, Gap,
               GatewayClient, GatewayError, Message, Position, Reconnecting, Refreshed, Stopped,
               Subscription, Unsubscribed)


def emit(event: dict[str, Any]) -> None:
    # Each event carries the driver's monotonic clock (`at_ms`): the runner's checks on waits use it.
    event["at_ms"] = time.monotonic() * 1000
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def position(p: Optional[Position]) -> Optional[dict[str, Any]]:
    return p.to_json() if p else None


def on_event(e: Event) -> None:
    if isinstance(e, Connected):
        emit({"event": "connected", "session": e.session, "pod": e.pod, "resumed": e.resumed})
    elif isinstance(e, Disconnected):
        emit({"event": "disconnected", "code": e.code, "error": e.error, "after_ms": e.after_ms})
    elif isinstance(e, Reconnecting):
        emit({"event": "reconnecting", "attempt": e.attempt, "delay_ms": round(e.delay * 1000)})
    elif isinstance(e, Duplicate):
        emit({"event": "duplicate", "topic": e.topic, "seq": e.seq})
    elif isinstance(e, Refreshed):
        emit({"event": "refreshed", "exp": e.exp})
    elif isinstance(e, Unsubscribed):
        emit({"event": "unsubscribed", "topic": e.topic, "reason": e.reason})
    elif isinstance(e, ErrorEvent):
        emit({"event": "error", "code": e.error.code, "message": e.error.message})
    elif isinstance(e, Stopped):
        emit({"event": "stopped", "error": e.error.code})


async def consume(sub: Subscription) -> None:
    emit({"event": "subscribed", "topic": sub.topic, "position": position(sub.position)})
    async for item in sub:
        if isinstance(item, Message):
            emit({"event": "message", "topic": item.topic, "seq": item.seq, "epoch": item.epoch,
                  "data": item.data})
        elif isinstance(item, Gap):
            emit({"event": "gap", "topic": item.topic, "reason": item.reason,
                  "from": position(item.from_), "to": position(item.to)})


async def main() -> None:
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[Optional[str]] = asyncio.Queue()

    def read() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read, daemon=True).start()
    client: Optional[GatewayClient] = None
    tasks: set[asyncio.Task[None]] = set()

    def spawn(coro: Any) -> None:
        task = asyncio.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def subscribe(c: GatewayClient, cmd: dict[str, Any]) -> None:
        since = Position(**cmd["since"]) if cmd.get("since") else None
        try:
            await consume(await c.subscribe(cmd["topic"], since=since))
        except GatewayError as e:
            emit({"event": "error", "code": e.code, "message": e.message, "topic": cmd["topic"]})

    async def publish(c: GatewayClient, cmd: dict[str, Any]) -> None:
        try:
            seq = await c.publish(cmd["topic"], cmd["data"], id=cmd.get("id"),
                                  exclude_self=bool(cmd.get("exclude_self")))
            emit({"event": "published", "topic": cmd["topic"], "seq": seq})
        except GatewayError as e:
            emit({"event": "publish_error", "topic": cmd["topic"], "code": e.code, "message": e.message})

    async def connect(c: GatewayClient) -> None:
        try:
            await c.connect()
        except GatewayError:
            pass  # reported as `stopped`

    while (line := await lines.get()) is not None:
        if not line.strip():
            continue
        cmd = json.loads(line)
        name = cmd.get("cmd")
        if name == "connect":
            backoff = cmd.get("backoff") or {}
            get_token = None
            if cmd.get("token_file"):
                path = Path(cmd["token_file"])

                def get_token(path: Path = path) -> str:
                    emit({"event": "token_requested"})
                    return path.read_text().strip()

            client = GatewayClient(
                cmd["urls"], token=cmd.get("token"), get_token=get_token,
                backoff=Backoff(backoff.get("initial_ms", 500) / 1000, backoff.get("max_ms", 30000) / 1000),
                auto_refresh=bool(cmd.get("auto_refresh", False)), on_event=on_event,
            )
            spawn(connect(client))
        elif name == "subscribe" and client is not None:
            spawn(subscribe(client, cmd))
        elif name == "publish" and client is not None:
            spawn(publish(client, cmd))
        elif name == "close":
            if client is not None:
                await client.close()
                client = None
            emit({"event": "closed"})
        else:
            emit({"event": "error", "code": "unknown_command", "message": str(name)})
    if client is not None:
        await client.close()


if __name__ == "__main__":
    asyncio.run(main())
