"""The client: one WebSocket at a time, reconnected and resumed until closed."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import time
from collections.abc import Awaitable, Sequence
from typing import Any, Callable, Optional, Union

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from .events import (Backoff, Connected, Disconnected, Duplicate, ErrorEvent, Event,
                     EventHandler, GatewayError, PresenceChange, PresenceList, Reconnecting,
                     Refreshed, Stopped, Unsubscribed, parse_close_reason, token_expiry)
from .hello import HelloSubscriptions
from .queries import (HistoryPage, PresenceMember, PresenceStats, history_frame, presence_members,
                      rpc_frame)
from .subscription import Subscription
from .topics import Gap, Position, Topics

TOPIC_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
TokenGetter = Callable[[], Union[str, Awaitable[str]]]


def _check_topic(topic: str) -> None:
    if not isinstance(topic, str) or not TOPIC_RE.match(topic):
        raise ValueError(f"invalid topic {topic!r}: 1-200 characters of A-Z a-z 0-9 _ . : -")


class GatewayClient:
    """A connection to the gateway that survives reconnects. Use it as ``async with``::

        async with GatewayClient(["ws://127.0.0.1:8080/ws"]) as client:
            sub = await client.subscribe("chat")
            seq = await client.publish("chat", {"text": "hi"}, id="msg-1")
            async for item in sub:      # Message or Gap, in order
                ...
    """

    def __init__(self, urls: Union[str, Sequence[str]], *, token: Optional[str] = None,
                 get_token: Optional[TokenGetter] = None, resume: Optional[str] = None,
                 backoff: Backoff = Backoff(),
                 max_after: float = 300.0, connect_timeout: float = 10.0,
                 request_timeout: float = 10.0, ping_interval: Optional[float] = 20.0,
                 ping_timeout: Optional[float] = 10.0, auto_refresh: bool = True,
                 refresh_before: float = 60.0, stable_after: float = 5.0,
                 on_event: Optional[EventHandler] = None) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("GatewayClient: at least one URL is required")
        self._token, self._get_token = token, get_token
        self.backoff, self.max_after = backoff, max_after
        self.connect_timeout, self.request_timeout = connect_timeout, request_timeout
        self.ping_interval, self.ping_timeout = ping_interval, ping_timeout
        self.auto_refresh, self.refresh_before = auto_refresh, refresh_before
        self.stable_after = stable_after
        self._on_event = on_event
        self.session: Optional[str] = None
        self.pod: Optional[str] = None
        self.user: Optional[str] = None
        self._resume: Optional[str] = resume
        self._topics = Topics()
        self._subs: dict[str, set[Subscription]] = {}
        self._confirmed: dict[str, asyncio.Future[Position]] = {}
        self._pending: dict[int, Any] = {}
        self._next_ref = 1
        self._ws: Optional[ClientConnection] = None
        self._connected = asyncio.Event()
        self._first: Optional[asyncio.Future[Connected]] = None
        self._task: Optional[asyncio.Task[None]] = None
        self._closing = False
        self._wake = asyncio.Event()
        self._token_stale = False
        self._attempt = 0
        self._url_index = 0
        self._hello_positions: dict[str, Position] = {}
        self._hello_subscribed = HelloSubscriptions()
        self._refresh_task: Optional[asyncio.Task[None]] = None
        self.stopped: Optional[GatewayError] = None

    # ---- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> GatewayClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> Connected:
        """Starts the connection (kept open from then on); returns the first ``welcome``."""
        if self._first is None:
            self._first = asyncio.get_running_loop().create_future()
            self._task = asyncio.create_task(self._run())
        return await asyncio.shield(self._first)

    async def close(self) -> None:
        """Closes for good (code 1000); the session stays resumable on the gateway a while."""
        self._closing = True
        self._wake.set()
        if self._ws is not None:
            await self._ws.close(1000)
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        self._finish(GatewayError("closed", "the client was closed"))

    @property
    def resume_token(self) -> Optional[str]:
        """The session's resume token (keep it secret). A process that restarts resumes its
        session with ``GatewayClient(..., resume=token)`` and ``subscribe(topic, since=...)``."""
        return self._resume

    def presence_position(self, topic: str) -> Optional[tuple[int, str]]:
        """``(pseq, presence epoch)`` of a subscribed topic with join/leave events: resumes and
        re-subscribes send it, so the gateway replays the joins and leaves missed meanwhile."""
        return self._topics.presence_position(topic)

    def positions(self) -> dict[str, Position]:
        """Every subscribed topic's position, as the next ``hello`` presents it."""
        return self._topics.positions()

    def _emit(self, event: Event) -> None:
        if self._on_event is not None:
            self._on_event(event)

    def _finish(self, error: GatewayError) -> None:
        for fut in list(self._pending.values()):
            if isinstance(fut, asyncio.Future) and not fut.done():
                fut.set_exception(error)
        self._pending.clear()
        for fut in self._confirmed.values():
            if not fut.done():
                fut.set_exception(error)
        for subs in self._subs.values():
            for sub in subs:
                sub._end()
        if self._first is not None and not self._first.done():
            self._first.set_exception(error)

    async def _run(self) -> None:
        delay = 0.0
        while not self._closing:
            if delay > 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                except asyncio.TimeoutError:
                    pass
                if self._closing:
                    break
            code, reason, up_since = await self._session()
            if self._closing:
                break
            advice = parse_close_reason(reason) or {}
            self._lost_connection()
            self._emit(Disconnected(code, reason, advice.get("reconnect"), advice.get("after_ms"),
                                    advice.get("error")))
            error = advice.get("error")
            if advice.get("reconnect") is False or (error == "token_expired" and not self._get_token):
                self.stopped = GatewayError(error or "stopped", f"closed by the gateway ({code}), not reconnecting")
                self._emit(Stopped(self.stopped))
                self._finish(self.stopped)
                return
            if error == "token_expired":
                self._token_stale = True
            if up_since is not None and time.monotonic() - up_since >= self.stable_after:
                self._attempt = 0
            after_ms = advice.get("after_ms")
            if isinstance(after_ms, int) and after_ms >= 0:
                delay = min(after_ms / 1000, self.max_after)
            else:
                delay = self.backoff.delay(self._attempt)
            self._attempt += 1
            self._url_index += 1
            self._emit(Reconnecting(self._attempt, delay))

    def _lost_connection(self) -> None:
        self._connected.clear()
        self._hello_subscribed.clear()
        if self._refresh_task is not None:
            self._refresh_task.cancel()
        for ref, req in list(self._pending.items()):
            if isinstance(req, asyncio.Future):
                if not req.done():
                    req.set_exception(GatewayError("disconnected", "the connection closed before the reply"))
            del self._pending[ref]
        for topic, fut in list(self._confirmed.items()):
            if fut.done():
                del self._confirmed[topic]

    async def _current_token(self) -> Optional[str]:
        if self._get_token is None:
            return self._token
        exp = token_expiry(self._token)
        if self._token is None or self._token_stale or (exp is not None and exp <= time.time() + 1):
            self._token = await self._fetch_token()
            self._token_stale = False
        return self._token

    async def _fetch_token(self) -> str:
        assert self._get_token is not None
        token = self._get_token()
        return await token if inspect.isawaitable(token) else token

    async def _session(self) -> tuple[Optional[int], str, Optional[float]]:
        try:
            token = await self._current_token()
        except Exception as e:  # noqa: BLE001 - a failing token source is reported, then retried
            self._emit(ErrorEvent(GatewayError("token", str(e))))
            return None, "", None
        url = self.urls[self._url_index % len(self.urls)]
        try:
            ws = await connect(url, open_timeout=self.connect_timeout, max_size=None,
                               ping_interval=self.ping_interval, ping_timeout=self.ping_timeout)
        except (OSError, InvalidHandshake, InvalidURI, asyncio.TimeoutError):
            return None, "", None
        if self._closing:
            await ws.close(1000)
            return ws.close_code, ws.close_reason or "", None
        self._ws = ws
        up_since: Optional[float] = None
        try:
            hello: dict[str, Any] = {"type": "hello"}
            if token:
                hello["token"] = token
            if self._resume:
                hello["resume"] = self._resume
            self._hello_positions = self._topics.positions()
            if self._hello_positions:
                hello["positions"] = {t: self._topics.sent_position(t) for t in self._hello_positions}
            subscribe = self._hello_subscribed.start((t, t in self._hello_positions) for t in self._topics.names())
            if subscribe:
                hello["subscribe"] = subscribe
            await ws.send(json.dumps(hello))
            first = await asyncio.wait_for(ws.recv(), self.connect_timeout)
            up_since = await self._on_frame_safely(first)
            async for text in ws:
                await self._on_frame_safely(text)
        except (ConnectionClosed, asyncio.TimeoutError, OSError):
            pass
        finally:
            self._ws = None
            if ws.close_code is None:
                ws.transport.abort()
        return ws.close_code, ws.close_reason or "", up_since

    # ---- requests -------------------------------------------------------------------------

    def _take_ref(self) -> int:
        ref = self._next_ref
        self._next_ref += 1
        return ref

    async def _send(self, frame: dict[str, Any]) -> None:
        ws = self._ws
        if ws is not None:
            try:
                await ws.send(json.dumps(frame))
            except ConnectionClosed:
                pass  # the reader sees the close and reconnects

    async def _request(self, frame: dict[str, Any]) -> dict[str, Any]:
        if self.stopped is not None or self._closing:
            raise GatewayError("closed", "the client is closed")
        deadline = time.monotonic() + self.request_timeout
        try:
            await asyncio.wait_for(self._connected.wait(), self.request_timeout)
        except asyncio.TimeoutError:
            raise GatewayError("timeout", f"not connected within {self.request_timeout} s") from None
        ref = self._take_ref()
        frame["ref"] = ref
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ref] = fut
        await self._send(frame)
        try:
            return await asyncio.wait_for(fut, max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise GatewayError("timeout", f"no reply to {frame['type']} in time") from None
        finally:
            self._pending.pop(ref, None)

    async def publish(self, topic: str, data: Any, *, id: Optional[str] = None,
                      exclude_self: bool = False) -> int:
        """Publishes ``data`` (any JSON value but None) on ``topic``; returns its ``seq`` once it
        is in the topic's history. With ``id`` a retry after ``disconnected`` or ``unavailable``
        gets the first attempt's ``seq`` instead of storing the message twice. With
        ``exclude_self`` this client is not sent its own message: the gateway sends a
        ``skipped`` frame in its place, which moves the topic's position without a message or a
        gap (on resumes too)."""
        _check_topic(topic)
        if data is None:
            raise ValueError("publish: data must be a JSON value other than null")
        frame: dict[str, Any] = {"type": "publish", "topic": topic, "data": data}
        if id is not None:
            frame["id"] = id
        if exclude_self:
            frame["exclude_self"] = True
        return int((await self._request(frame))["seq"])

    async def rpc(self, method: str, data: Any = None) -> Any:
        """Calls ``method`` of the application's rpc hook; returns the answer's ``data`` (None
        when it gave none). Raises ``GatewayError`` with the application's code, ``unavailable``
        when it did not answer (nothing was done), ``bad_request`` without a hook."""
        return (await self._request(rpc_frame(method, data))).get("data")

    async def history(self, topic: str, since: Optional[Position] = None, limit: Optional[int] = None,
                      reverse: bool = False) -> HistoryPage:
        """A page of ``topic``'s history, without subscribing: the latest ``limit`` messages
        (oldest first, newest first with ``reverse``), or with ``since`` the ones after it
        (before it with ``reverse``). See ``HistoryPage.last_position`` to go live after it."""
        _check_topic(topic)
        return HistoryPage.from_frame(await self._request(history_frame(topic, since, limit, reverse)))

    async def presence(self, topic: str) -> list[PresenceMember]:
        """The members present in ``topic``; ``limit_reached`` on big topics (use
        ``presence_stats``), ``bad_request`` when the topic has no presence."""
        _check_topic(topic)
        return presence_members(await self._request({"type": "presence", "topic": topic}))

    async def presence_stats(self, topic: str) -> PresenceStats:
        """How many sessions and distinct users are present in ``topic``: cheap at any size."""
        _check_topic(topic)
        reply = await self._request({"type": "presence_stats", "topic": topic})
        return PresenceStats(int(reply["members"]), int(reply["users"]))

    async def subscribe(self, topic: str, *, since: Optional[Position] = None) -> Subscription:
        """Subscribes to ``topic`` and returns once the gateway confirmed it. The subscription is
        an async iterator of ``Message`` and ``Gap``, kept across reconnects. ``since`` asks for
        every message after that position."""
        _check_topic(topic)
        if self.stopped is not None or self._closing:
            raise GatewayError("closed", "the client is closed")
        sub = Subscription(self, topic)
        self._subs.setdefault(topic, set()).add(sub)
        if topic not in self._topics:
            self._topics.add(topic, since)
            self._confirmed[topic] = asyncio.get_running_loop().create_future()
            if self._connected.is_set():
                await self._send_subscribe(topic)
        fut = self._confirmed.get(topic)
        if fut is not None:
            try:
                await asyncio.wait_for(asyncio.shield(fut), self.request_timeout)
            except asyncio.TimeoutError:
                await self._unsubscribe(sub)
                raise GatewayError("timeout", f"{topic} not confirmed within {self.request_timeout} s") from None
            except BaseException:
                self._subs.get(topic, set()).discard(sub)
                raise
        return sub

    async def _send_subscribe(self, topic: str) -> None:
        ref = self._take_ref()
        since = self._topics.position(topic)
        frame: dict[str, Any] = {"type": "subscribe", "topic": topic, "ref": ref}
        if since is not None:
            frame["since"] = self._topics.sent_position(topic)
        self._pending[ref] = ("subscribe", topic, since)
        await self._send(frame)

    async def _unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.topic, set())
        subs.discard(sub)
        sub._end()
        if subs or not self._topics.remove(sub.topic):
            return
        self._subs.pop(sub.topic, None)
        self._confirmed.pop(sub.topic, None)
        if self._connected.is_set():
            ref = self._take_ref()
            self._pending[ref] = ("unsubscribe", sub.topic)
            await self._send({"type": "unsubscribe", "topic": sub.topic, "ref": ref})

    # ---- frames from the gateway ----------------------------------------------------------

    def _deliver(self, topic: str, item: Any) -> None:
        for sub in self._subs.get(topic, ()):
            sub._put(item)

    def _gap(self, gap: Optional[Gap]) -> None:
        if gap is not None:
            self._deliver(gap.topic, gap)

    def _confirm(self, topic: str) -> None:
        fut = self._confirmed.get(topic)
        position = self._topics.position(topic)
        if fut is not None and not fut.done() and position is not None:
            fut.set_result(position)

    async def _on_frame_safely(self, text: Union[str, bytes]) -> Optional[float]:
        try:
            return await self._on_frame(text)
        except (KeyError, TypeError, AttributeError) as e:
            # A frame missing a field this client needs: reported, the connection goes on.
            self._emit(ErrorEvent(GatewayError("bad_frame", f"unexpected frame from the gateway: {e!r}")))
            return None

    async def _on_frame(self, text: Union[str, bytes]) -> Optional[float]:
        try:
            frame = json.loads(text)
        except ValueError:
            self._emit(ErrorEvent(GatewayError("bad_frame", "the gateway sent a frame that is not JSON")))
            return None
        kind = frame.get("type")
        if kind == "message":
            gap, message, dup = self._topics.message(frame["topic"], frame["seq"], frame.get("epoch"),
                                                     frame.get("data"))
            self._gap(gap)
            if dup:
                self._emit(Duplicate(frame["topic"], frame["seq"]))
            elif message is not None:
                self._deliver(message.topic, message)
        elif kind == "skipped":
            # A message that excluded this session: its place in the order, without data. The
            # position moves past it like a message's (a hole before it is still a gap); the
            # application gets nothing.
            gap, _, dup = self._topics.message(frame["topic"], frame["seq"], frame.get("epoch"), None)
            self._gap(gap)
            if dup:
                self._emit(Duplicate(frame["topic"], frame["seq"]))
        elif kind == "welcome":
            return await self._on_welcome(frame)
        elif kind == "subscribed":
            req = self._pending.pop(frame.get("ref"), None)
            if frame.get("ref") is None and frame.get("reason") is None \
                    and self._hello_subscribed.reply(frame["topic"]) and frame["topic"] not in self._topics:
                # Unsubscribed while the hello was on its way: the gateway opened it anyway.
                await self._unsubscribe_orphan(frame["topic"])
                return None
            since = req[2] if isinstance(req, tuple) and req[0] == "subscribe" else None
            top = Position(frame["seq"], frame["epoch"])
            self._topics.set_presence(frame["topic"], frame.get("pseq"), frame.get("pepoch"))
            self._gap(self._topics.subscribed(frame["topic"], top, frame.get("recovered"), since))
            self._confirm(frame["topic"])
        elif kind == "unsubscribed":
            req = self._pending.pop(frame.get("ref"), None)
            if req is None and self._topics.remove(frame["topic"]):
                for sub in self._subs.pop(frame["topic"], set()):
                    sub._end()
                self._emit(Unsubscribed(frame["topic"], frame.get("reason")))
        elif kind in ("join", "leave"):
            if self._topics.presence_event(frame["topic"], frame["pseq"], frame["epoch"]):
                self._emit(PresenceChange(frame["topic"], kind == "join", frame["pseq"],
                                          frame["epoch"], frame["member"]))
        elif kind == "presence" and frame.get("ref") is None:
            # A fresh list in place of events that could not be replayed.
            if frame["topic"] in self._topics:
                self._topics.set_presence(frame["topic"], frame["pseq"], frame["epoch"])
                self._emit(PresenceList(frame["topic"], frame["members"], frame["pseq"], frame["epoch"]))
        elif kind == "error":
            self._on_error(frame)
        elif kind in ("published", "pong", "refreshed", "rpc_result", "history", "presence",
                      "presence_stats"):
            req = self._pending.get(frame.get("ref"))
            if isinstance(req, asyncio.Future) and not req.done():
                req.set_result(frame)
        return None

    def _on_error(self, frame: dict[str, Any]) -> None:
        err = GatewayError(frame.get("code", "internal"), frame.get("message", ""))
        req = self._pending.pop(frame.get("ref"), None)
        if frame.get("ref") is None:
            topic = self._hello_subscribed.reply(frame.get("topic"))
            req = ("subscribe", topic, None) if topic is not None else None
        if isinstance(req, asyncio.Future):
            if not req.done():
                req.set_exception(err)
        elif isinstance(req, tuple) and req[0] == "subscribe":
            topic = req[1]
            self._topics.remove(topic)
            fut = self._confirmed.pop(topic, None)
            if fut is not None and not fut.done():
                fut.set_exception(err)
            for sub in self._subs.pop(topic, set()):
                sub._end()
            self._emit(ErrorEvent(err))
        elif not (isinstance(req, tuple) and err.code == "not_subscribed"):
            self._emit(ErrorEvent(err))

    async def _unsubscribe_orphan(self, topic: str) -> None:
        """Unsubscribes a topic the gateway holds for this session that nothing here wants."""
        ref = self._take_ref()
        self._pending[ref] = ("unsubscribe", topic)
        await self._send({"type": "unsubscribe", "topic": topic, "ref": ref})

    async def _on_welcome(self, frame: dict[str, Any]) -> float:
        self.session, self.pod, self.user = frame["session"], frame.get("pod"), frame.get("user")
        self._resume = frame["resume"]
        restored = (frame.get("topics") or {}) if frame.get("resumed") else {}
        for topic, t in restored.items():
            if topic not in self._topics:
                await self._unsubscribe_orphan(topic)
                continue
            self._topics.set_presence(topic, t.get("pseq"), t.get("pepoch"))
            self._gap(self._topics.restored(topic, t["seq"], t["epoch"], bool(t.get("recovered")),
                                            self._hello_positions.get(topic)))
            self._confirm(topic)
        for topic in self._topics.names():
            if topic not in restored:
                if topic not in self._confirmed or self._confirmed[topic].done():
                    self._confirmed[topic] = asyncio.get_running_loop().create_future()
                if topic not in self._hello_subscribed:
                    await self._send_subscribe(topic)
        connected = Connected(frame["session"], self.pod, self.user, bool(frame.get("resumed")))
        self._connected.set()
        self._emit(connected)
        if self._first is not None and not self._first.done():
            self._first.set_result(connected)
        self._schedule_refresh(None)
        return time.monotonic()

    # ---- token refresh --------------------------------------------------------------------

    def _schedule_refresh(self, exp: Optional[int]) -> None:
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            self._refresh_task = None
        exp = exp if exp is not None else token_expiry(self._token)
        if not self.auto_refresh or self._get_token is None or exp is None:
            return
        remaining = exp - time.time()
        wait = remaining - self.refresh_before if remaining > 2 * self.refresh_before else max(0.0, remaining / 2)
        self._refresh_task = asyncio.create_task(self._refresh_after(wait))

    async def _refresh_after(self, wait: float) -> None:
        await asyncio.sleep(wait)
        try:
            await self.refresh()
        except GatewayError as e:
            self._emit(ErrorEvent(e))

    async def refresh(self, token: Optional[str] = None) -> Optional[int]:
        """Sends ``refresh`` with ``token`` (or one from ``get_token``); returns the new ``exp``."""
        if token is None:
            if self._get_token is None:
                raise GatewayError("no_token", "refresh needs get_token or a token")
            token = await self._fetch_token()
        self._token = token
        reply = await self._request({"type": "refresh", "token": token})
        exp = reply.get("exp") or token_expiry(token)
        self._emit(Refreshed(exp))
        self._schedule_refresh(exp)
        return exp
