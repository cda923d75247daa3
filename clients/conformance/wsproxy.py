"""A WebSocket proxy between an SDK and a gateway, for faults the gateway is not asked to make
on purpose: drop every connection without a close frame (a network loss), refuse upgrades with
503 for a while (an unreachable fleet), and present positions behind the real ones in the next
`hello` (a stale copy of the positions, so the gateway replays messages the client already has).
Frames and close codes pass through unchanged otherwise. Runs its own event loop in a thread."""

from __future__ import annotations

import asyncio
import json
import threading
from http import HTTPStatus

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed


class WsProxy:
    def __init__(self, upstream: str):
        self.upstream = upstream
        self.refusing = False
        self.rewind_by = 0
        self._pairs: set[tuple] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Future | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("proxy did not start")
        self.url = f"ws://127.0.0.1:{self.port}/ws"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = self._loop.create_future()
        async with serve(self._handle, "127.0.0.1", 0, process_request=self._admit,
                         ping_interval=None, max_size=None, compression=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop

    def _admit(self, connection, request):
        if self.refusing:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "proxy refusing\n")
        return None

    async def _handle(self, client) -> None:
        try:
            upstream = await connect(self.upstream, ping_interval=None, max_size=None,
                                     compression=None, open_timeout=5)
        except (OSError, asyncio.TimeoutError):
            client.transport.abort()
            return
        pair = (client, upstream)
        self._pairs.add(pair)
        try:
            await asyncio.gather(self._pump(client, upstream, True), self._pump(upstream, client, False))
        finally:
            self._pairs.discard(pair)

    async def _pump(self, src, dst, from_client: bool) -> None:
        try:
            async for frame in src:
                if from_client and self.rewind_by and isinstance(frame, str):
                    frame = self._rewind(frame)
                await dst.send(frame)
        except ConnectionClosed:
            pass
        code = src.close_code
        if code is None or code in (1005, 1006):
            dst.transport.abort()
        else:
            await dst.close(code, src.close_reason or "")

    def _rewind(self, text: str) -> str:
        frame = json.loads(text)
        if frame.get("type") != "hello" or not frame.get("positions"):
            return text
        for p in frame["positions"].values():
            p["seq"] = max(0, p["seq"] - self.rewind_by)
        self.rewind_by = 0
        return json.dumps(frame)

    def _call(self, fn) -> None:
        done = threading.Event()

        def run() -> None:
            fn()
            done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(5)

    def drop(self) -> None:
        """Ends every connection without a close frame, on both sides."""
        def abort() -> None:
            for client, upstream in list(self._pairs):
                client.transport.abort()
                upstream.transport.abort()
        self._call(abort)

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(5)
