"""What must be seen at the end of a scenario: each check reads the driver's events."""

from __future__ import annotations

from runner import Driver, ScenarioFailed


def once_in_order(d: Driver, c: dict) -> None:
    seqs = [m["seq"] for m in d.messages(c["topic"])]
    expected = list(range(c["first"], c["last"] + 1))
    if seqs != expected:
        dups = sorted({s for s in seqs if seqs.count(s) > 1})
        missing = [s for s in expected if s not in seqs]
        raise ScenarioFailed(f"expected seqs {c['first']}..{c['last']} once, in order; got {seqs} "
                             f"(duplicates {dups}, missing {missing})")


def seqs(d: Driver, c: dict) -> None:
    got = [m["seq"] for m in d.messages(c["topic"])]
    if got != c["seqs"]:
        raise ScenarioFailed(f"expected seqs {c['seqs']}, got {got}")


def epochs_changed(d: Driver, c: dict) -> None:
    epochs = [m["epoch"] for m in d.messages(c["topic"])]
    i = c["at_index"]
    if len(set(epochs[:i])) != 1 or len(set(epochs[i:])) != 1 or epochs[0] == epochs[i]:
        raise ScenarioFailed(f"expected one epoch before message {i} and another from it: {epochs}")


def some(d: Driver, c: dict) -> None:
    if not d.matching(c["event"], c.get("match")):
        raise ScenarioFailed(f"no {c['event']} event matching {c.get('match', {})}")


def none(d: Driver, c: dict) -> None:
    found = d.matching(c["event"], c.get("match"))
    if found:
        raise ScenarioFailed(f"unexpected {c['event']} events: {found[:3]}")


def last(d: Driver, c: dict) -> None:
    found = d.matching(c["event"])
    if not found or any(found[-1].get(k) != v for k, v in c["match"].items()):
        raise ScenarioFailed(f"the last {c['event']} should match {c['match']}: {found[-1:]}")


def pod_changed(d: Driver, c: dict) -> None:
    pods = [e["pod"] for e in d.matching("connected")]
    if len(pods) < 2 or pods[-1] == pods[0]:
        raise ScenarioFailed(f"expected to end on another pod than the first: {pods}")


def waited_after_ms(d: Driver, c: dict) -> None:
    """The reconnect after a close with `after_ms` waited at least that long."""
    closes = d.matching("disconnected", {"code": c["code"]})
    if not closes or closes[0].get("after_ms") is None:
        raise ScenarioFailed(f"no close {c['code']} with after_ms: {closes}")
    close = closes[0]
    after = close["after_ms"]
    later = [e for e in d.events if e["t"] > close["t"]]
    reconnecting = [e for e in later if e.get("event") == "reconnecting"]
    if not reconnecting or reconnecting[0]["delay_ms"] < after:
        raise ScenarioFailed(f"after a close with after_ms {after} the next delay was {reconnecting[:1]}")
    connected = [e for e in later if e.get("event") == "connected"]
    if not connected:
        raise ScenarioFailed("no reconnect after the close")
    waited_ms = (connected[0]["t"] - close["t"]) * 1000
    if waited_ms < after - 5:
        raise ScenarioFailed(f"reconnected {waited_ms:.0f} ms after the close, before after_ms {after}")


def backoff(d: Driver, c: dict) -> None:
    """Each attempt's delay is within [0, min(max, initial * 2^(attempt-1))], the next attempt
    came no earlier than that delay, and delays at the cap are jittered."""
    events = d.matching("reconnecting")[: c["attempts"]]
    if len(events) < c["attempts"]:
        raise ScenarioFailed(f"only {len(events)} reconnect attempts")
    for i, e in enumerate(events):
        cap = min(c["max_ms"], c["initial_ms"] * 2**i)
        if e["attempt"] != i + 1 or not 0 <= e["delay_ms"] <= cap:
            raise ScenarioFailed(f"attempt {i + 1}: {e} outside [0, {cap}]")
        if i > 0:
            waited = (e["t"] - events[i - 1]["t"]) * 1000
            if waited < events[i - 1]["delay_ms"] - 5:
                raise ScenarioFailed(f"attempt {i + 1} came {waited:.0f} ms after the previous, "
                                     f"its delay was {events[i - 1]['delay_ms']} ms")
    capped = {e["delay_ms"] for e in events[3:]}
    if len(capped) < 2:
        raise ScenarioFailed(f"delays at the cap are not jittered: {capped}")


CHECKS = {f.__name__: f for f in (once_in_order, seqs, epochs_changed, some, none, last,
                                  pod_changed, waited_after_ms, backoff)}
