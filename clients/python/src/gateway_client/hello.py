"""The subscriptions a ``hello`` opens itself (its ``subscribe`` array), and the matching of the
gateway's answers to them.

A topic goes in ``hello.subscribe`` when it needs nothing but its name: one with a position goes
in ``hello.positions`` instead (a resume restores it; a new session needs a ``subscribe`` frame
with ``since``). The gateway answers the array after ``welcome`` (and a resume's replay) with one
``subscribed`` or ``error`` per topic, in array order and without ``ref``, each naming its topic:
a reply without ``ref`` answers the oldest topic not answered yet when it names that topic (an
``error`` naming none is about something else: a resume's notice, a server-side subscription).
Pure: no I/O."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Optional


class HelloSubscriptions:
    def __init__(self) -> None:
        self._waiting: list[str] = []

    def start(self, topics: Iterable[tuple[str, bool]]) -> list[str]:
        """The topics of a new ``hello``'s ``subscribe`` from ``(topic, has a position)`` pairs,
        in order; they wait for their replies from now on."""
        self._waiting = [topic for topic, positioned in topics if not positioned]
        return list(self._waiting)

    def __contains__(self, topic: object) -> bool:
        return topic in self._waiting

    def reply(self, topic: Optional[str]) -> Optional[str]:
        """The topic a reply without ``ref`` answers (``topic``: the one it names, None when it
        names none), or None when it answers none of them."""
        if not self._waiting or topic is None or self._waiting[0] != topic:
            return None
        return self._waiting.pop(0)

    def clear(self) -> None:
        """The connection is gone: whatever was not answered is asked for again by the next one."""
        self._waiting = []
