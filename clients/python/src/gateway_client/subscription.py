"""A subscription: an async iterator of the topic's messages and gaps, in order."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Optional, Union

from .topics import Gap, Message, Position

if TYPE_CHECKING:
    from .client import GatewayClient

_END = object()


class Subscription:
    """Iterate it (``async for item in sub``) for ``Message`` and ``Gap`` items; it ends when
    the subscription or the client is closed. Items wait in an unbounded queue: read them."""

    def __init__(self, client: GatewayClient, topic: str) -> None:
        self._client = client
        self.topic = topic
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self.closed = False

    @property
    def position(self) -> Optional[Position]:
        """The last position delivered on this topic."""
        return self._client._topics.position(self.topic)

    def _put(self, item: Union[Message, Gap]) -> None:
        if not self.closed:
            self._queue.put_nowait(item)

    def _end(self) -> None:
        if not self.closed:
            self.closed = True
            self._queue.put_nowait(_END)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Union[Message, Gap]:
        item = await self._queue.get()
        if item is _END:
            raise StopAsyncIteration
        assert isinstance(item, (Message, Gap))
        return item

    async def unsubscribe(self) -> None:
        """Stops this subscription; the topic is unsubscribed when its last one stops."""
        await self._client._unsubscribe(self)
