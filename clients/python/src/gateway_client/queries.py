"""Requests answered by one frame: ``rpc``, ``history``, ``presence``, ``presence_stats``.

Unlike subscriptions they are not kept across reconnects: one made while offline waits for the
connection (up to ``request_timeout``), one in flight when it drops fails with
``GatewayError("disconnected")``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

from .topics import Position

METHOD_RE = re.compile(r"^[A-Za-z0-9_./:-]{1,100}$")


@dataclass(frozen=True)
class HistoryMessage:
    """One message of a history page."""

    seq: int
    data: Any


@dataclass(frozen=True)
class HistoryPage:
    """A page of a topic's history. ``seq``/``epoch``: the topic's latest, read with the
    messages; ``recovered`` only when ``since`` was given (``False``: the latest page instead);
    ``messages`` in the order asked for. A page may stop early (size limits): continue from its
    last ``seq``; a forward page is complete when its last ``seq`` is the topic's ``seq``."""

    seq: int
    epoch: str
    messages: list[HistoryMessage]
    recovered: Optional[bool] = None

    def last_position(self) -> Optional[Position]:
        """The position of the last message: subscribe with it as ``since`` to go live after a
        forward page without a gap."""
        return Position(self.messages[-1].seq, self.epoch) if self.messages else None

    @classmethod
    def from_frame(cls, frame: dict[str, Any]) -> HistoryPage:
        messages = [HistoryMessage(int(m["seq"]), m.get("data")) for m in frame["messages"]]
        recovered = frame.get("recovered")
        return cls(int(frame["seq"]), str(frame["epoch"]), messages,
                   None if recovered is None else bool(recovered))


@dataclass(frozen=True)
class PresenceMember:
    """A member of a topic's presence: one per subscribed session (``user``: the token's
    ``sub``, ``None`` for anonymous sessions; ``info``: the JSON the application attached to the
    session, from the token's ``info`` claim or the connect hook, ``None`` when it has none)."""

    session: str
    user: Optional[str] = None
    info: Any = field(default=None, hash=False)


@dataclass(frozen=True)
class PresenceStats:
    """The size of a topic's presence: subscribed sessions, and distinct users among them."""

    members: int
    users: int


def rpc_frame(method: str, data: Any) -> dict[str, Any]:
    if not isinstance(method, str) or not METHOD_RE.match(method):
        raise ValueError(f"invalid rpc method {method!r}: 1-100 characters of A-Z a-z 0-9 _ . : / -")
    frame: dict[str, Any] = {"type": "rpc", "method": method}
    if data is not None:
        frame["data"] = data
    return frame


def history_frame(topic: str, since: Optional[Position], limit: Optional[int],
                  reverse: bool) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "history", "topic": topic}
    if since is not None:
        frame["since"] = since.to_json()
    if limit is not None:
        frame["limit"] = int(limit)
    if reverse:
        frame["reverse"] = True
    return frame


def presence_members(frame: dict[str, Any]) -> list[PresenceMember]:
    return [PresenceMember(str(m["session"]), m.get("user"), m.get("info")) for m in frame["members"]]
