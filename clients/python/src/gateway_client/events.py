"""What the client reports besides messages and gaps (``on_event``), and its errors."""

from __future__ import annotations

import base64
import json
import random
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union


class GatewayError(Exception):
    """An error with a machine-readable ``code``: the gateway's error codes (``unavailable``,
    ``forbidden``, ...) or the client's own (``disconnected``, ``closed``, ``stopped``,
    ``timeout``)."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Connected:
    session: str
    pod: Optional[str]
    user: Optional[str]
    resumed: bool


@dataclass(frozen=True)
class Disconnected:
    """The connection ended; ``code`` is the close code (1006: no close frame)."""

    code: Optional[int]
    reason: str
    reconnect: Optional[bool]
    after_ms: Optional[int]
    error: Optional[str]


@dataclass(frozen=True)
class Reconnecting:
    attempt: int
    delay: float


@dataclass(frozen=True)
class Duplicate:
    topic: str
    seq: int


@dataclass(frozen=True)
class Refreshed:
    exp: Optional[int]


@dataclass(frozen=True)
class Unsubscribed:
    """The gateway removed a subscription (``reason``: e.g. ``forbidden`` after a refresh)."""

    topic: str
    reason: Optional[str]


@dataclass(frozen=True)
class ErrorEvent:
    error: GatewayError


@dataclass(frozen=True)
class Stopped:
    """The client stopped for good because the gateway said not to reconnect."""

    error: GatewayError


@dataclass(frozen=True)
class PresenceChange:
    """A join (``join`` True) or leave on a topic with join/leave events, once and in ``pseq``
    order; ``member`` is ``{"user"?, "session", "info"?}``, ``epoch`` the topic's presence epoch."""

    topic: str
    join: bool
    pseq: int
    epoch: str
    member: dict[str, Any]


@dataclass(frozen=True)
class PresenceList:
    """Members sent in place of join/leave events the gateway could not replay: it replaces
    what was known of the topic's members; the events after ``pseq`` follow."""

    topic: str
    members: list[dict[str, Any]]
    pseq: int
    epoch: str


Event = Union[Connected, Disconnected, Reconnecting, Duplicate, Refreshed, Unsubscribed,
              ErrorEvent, Stopped, PresenceChange, PresenceList]
EventHandler = Callable[[Event], Any]


@dataclass(frozen=True)
class Backoff:
    """Full-jitter exponential backoff: attempt ``n`` (from 0) waits a uniformly random time in
    ``[0, min(max, initial * 2**n)]`` seconds."""

    initial: float = 0.5
    max: float = 30.0

    def cap(self, attempt: int) -> float:
        return min(self.max, self.initial * 2 ** min(max(attempt, 0), 30))

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        return rand() * self.cap(attempt)


def parse_close_reason(reason: str) -> Optional[dict[str, Any]]:
    """The gateway's advice in a close reason (``{"reconnect":bool,"after_ms"?,"error"?}``)."""
    if not reason.startswith("{"):
        return None
    try:
        v = json.loads(reason)
    except ValueError:
        return None
    if not isinstance(v, dict) or not isinstance(v.get("reconnect"), bool):
        return None
    return v


def token_expiry(token: Optional[str]) -> Optional[int]:
    """The ``exp`` claim of a JWT (not verified), or None."""
    if not token or token.count(".") < 2:
        return None
    part = token.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except ValueError:
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return exp if isinstance(exp, int) else None
