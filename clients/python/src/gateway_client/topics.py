"""Per-topic bookkeeping: positions, de-duplication by ``seq`` and gap detection, following the
client rules of the protocol ("Ordering and de-duplication"), and on topics with join/leave
events the presence position (``pseq`` in a presence epoch). Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

GapReason = Literal["not_recovered", "epoch_changed", "skipped"]


@dataclass(frozen=True)
class Position:
    """The last ``seq`` processed on a topic, in its ``epoch``."""

    seq: int
    epoch: str

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "epoch": self.epoch}


@dataclass(frozen=True)
class Message:
    """One message of a topic: delivered once, in ``seq`` order."""

    topic: str
    seq: int
    epoch: str
    data: Any


@dataclass(frozen=True)
class Gap:
    """Messages on ``topic`` after ``from_`` up to ``to`` may be lost: reload the topic's state."""

    topic: str
    reason: GapReason
    from_: Optional[Position]
    to: Position


Item = Union[Message, Gap]


@dataclass
class _State:
    seq: Optional[int] = None
    epoch: Optional[str] = None
    pseq: Optional[int] = None
    pepoch: Optional[str] = None

    def position(self) -> Optional[Position]:
        if self.seq is None or self.epoch is None:
            return None
        return Position(self.seq, self.epoch)


def _reason(sent: Position, epoch: str) -> GapReason:
    return "epoch_changed" if sent.epoch != epoch else "not_recovered"


class Topics:
    def __init__(self) -> None:
        self._topics: dict[str, _State] = {}

    def add(self, topic: str, since: Optional[Position]) -> None:
        if topic not in self._topics:
            self._topics[topic] = _State(since.seq, since.epoch) if since else _State()

    def remove(self, topic: str) -> bool:
        return self._topics.pop(topic, None) is not None

    def __contains__(self, topic: object) -> bool:
        return topic in self._topics

    def names(self) -> list[str]:
        return list(self._topics)

    def position(self, topic: str) -> Optional[Position]:
        state = self._topics.get(topic)
        return state.position() if state else None

    def presence_position(self, topic: str) -> Optional[tuple[int, str]]:
        """``(pseq, presence epoch)`` of a topic with join/leave events, else None."""
        state = self._topics.get(topic)
        if state is None or state.pseq is None or state.pepoch is None:
            return None
        return state.pseq, state.pepoch

    def set_presence(self, topic: str, pseq: Optional[int], epoch: Optional[str]) -> None:
        """The presence position the gateway follows from (``subscribed``, ``welcome``, a
        fresh list)."""
        state = self._topics.get(topic)
        if state is not None and pseq is not None and epoch is not None:
            state.pseq, state.pepoch = pseq, epoch

    def presence_event(self, topic: str, pseq: int, epoch: str) -> bool:
        """A join or leave: True when it is new (the position moves to it)."""
        state = self._topics.get(topic)
        if state is None:
            return False
        if state.pepoch == epoch and state.pseq is not None and pseq <= state.pseq:
            return False
        state.pseq, state.pepoch = pseq, epoch
        return True

    def sent_position(self, topic: str) -> Optional[dict[str, Any]]:
        """The position as ``hello`` and ``subscribe`` send it, presence position included."""
        state = self._topics.get(topic)
        p = state.position() if state else None
        if state is None or p is None:
            return None
        out = p.to_json()
        if state.pseq is not None and state.pepoch is not None:
            out["pseq"], out["pepoch"] = state.pseq, state.pepoch
        return out

    def positions(self) -> dict[str, Position]:
        out = {}
        for topic, state in self._topics.items():
            p = state.position()
            if p is not None:
                out[topic] = p
        return out

    def restored(self, topic: str, seq: int, epoch: str, recovered: bool,
                 sent: Optional[Position]) -> Optional[Gap]:
        """A topic restored by a resumed ``welcome``; ``sent`` is what ``hello`` carried."""
        state = self._topics.get(topic)
        if state is None:
            return None
        top = Position(seq, epoch)
        gap = None
        if recovered:
            if sent is None:
                state.seq = None
        else:
            if sent is not None and sent != top:
                gap = Gap(topic, _reason(sent, epoch), sent, top)
            state.seq = seq
        state.epoch = epoch
        return gap

    def subscribed(self, topic: str, top: Position, recovered: Optional[bool],
                   since: Optional[Position]) -> Optional[Gap]:
        state = self._topics.get(topic)
        if state is None:
            return None
        gap = None
        if since is not None and recovered is False:
            if since != top:
                gap = Gap(topic, _reason(since, top.epoch), since, top)
            state.seq = top.seq
        elif since is None:
            state.seq = top.seq
        state.epoch = top.epoch
        return gap

    def message(self, topic: str, seq: int, epoch: Optional[str],
                data: Any) -> tuple[Optional[Gap], Optional[Message], bool]:
        """Returns (gap before it, the message to deliver, whether it was a duplicate)."""
        state = self._topics.get(topic)
        if state is None:
            return None, None, False
        gap = None
        if epoch is not None and state.epoch is not None and epoch != state.epoch:
            gap = Gap(topic, "epoch_changed", state.position(), Position(seq - 1, epoch))
            state.seq = seq - 1
            state.epoch = epoch
        elif epoch is not None:
            state.epoch = epoch
        if state.seq is not None:
            if seq <= state.seq:
                return gap, None, True
            if seq > state.seq + 1 and gap is None:
                gap = Gap(topic, "skipped", state.position(), Position(seq - 1, state.epoch or ""))
        state.seq = seq
        return gap, Message(topic, seq, state.epoch or "", data), False
