"""A broker joining a front end and a back end: request/reply or publish/subscribe.

Request/reply: requesters connect to the front (a replier side); workers (repliers) connect
to the back (a requester side), which gives each request to the worker with the fewest
outstanding requests (ties in turn; ``balance="round-robin"``: strictly in turn) and routes
each reply back to its requester by correlation id. A worker that dies holding requests: the
retryable ones go to another worker, the others fail with an error reply.

Publish/subscribe: publishers connect to the front (a subscriber side); subscribers connect to
the back (a publisher side). The back's subscriptions (the union over its subscribers) are
forwarded upstream, so publishers still filter: only wanted topics cross the broker.

Payloads pass through untouched (bytes), so endpoints may use any codec.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

from ...errors import ConfigError, OpenSocketError, ReadTimeout, ReplyError
from ...messaging import (
    Balance,
    Envelope,
    Event,
    HighWaterMark,
    Kind,
    MetaFlags,
    Publisher,
    PublisherOptions,
    Replier,
    RequesterOptions,
    RequestReceived,
)
from ...options import TLSOptions
from ._patterns import PublisherSocket, ReplierSocket, Request, RequesterSocket, SubscriberSocket
from ._socket import Socket

__all__ = ["Broker", "BrokerMode"]

log = logging.getLogger("opensocket.messaging")
BrokerMode = Literal["reqrep", "pubsub"]
TLSArg = TLSOptions | ssl.SSLContext | None
_RETRYABLE = int(MetaFlags.RETRYABLE)
RESEND_ATTEMPTS = 20  # SUBSCRIBE resends to an unconfirming publisher (backoff to 1 s)


class _FrontReplier(Replier):
    """A replier core that remembers whether each request was sent retryable."""

    def __init__(self, hwm: HighWaterMark | None = None) -> None:
        super().__init__(hwm)
        self.retryable: dict[tuple[int, int], bool] = {}

    def _on_request(self, peer: int, env: Envelope, now: float) -> None:
        assert env.id is not None
        self.retryable[(peer, env.id)] = bool(env.flags & _RETRYABLE)
        super()._on_request(peer, env, now)

    def peer_down(self, peer: int, now: float) -> list[Envelope]:
        """A requester is gone: forget its flags too."""
        for key in [k for k in self.retryable if k[0] == peer]:
            del self.retryable[key]
        return super().peer_down(peer, now)


class _FrontSocket(ReplierSocket):
    """The request side's front: every request is forwarded, with its retryable flag."""

    core: _FrontReplier

    def __init__(
        self,
        forward: Callable[[Request, bool], Any],
        *,
        hwm: HighWaterMark | None,
        concurrency: int,
        **kwargs: Any,
    ) -> None:
        Socket.__init__(self, _FrontReplier(hwm), **kwargs)
        self.handler = None
        self._slots = asyncio.Semaphore(concurrency)
        self._requests: deque[Request] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._forward = forward

    def _handle(self, peer: int | None, event: Event) -> None:
        if not isinstance(event, RequestReceived):
            super()._handle(peer, event)
            return
        retryable = self.core.retryable.pop((event.peer, event.id), False)
        request = Request(self, event.peer, event.id, event.payload)
        task = self.loop.create_task(self._run_forward(request, retryable))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_forward(self, request: Request, retryable: bool) -> None:
        async with self._slots:
            await self._forward(request, retryable)


class _BackPublisher(Publisher):
    """A publisher core that reports when the union of its subscriptions changes."""

    def __init__(self, options: PublisherOptions | None, changed: Callable[[], None]) -> None:
        super().__init__(options)
        self._changed = changed
        self.by_peer: dict[int, set[bytes]] = {}

    def wanted(self) -> set[bytes]:
        """Every prefix some connected subscriber holds."""
        return set().union(*self.by_peer.values())

    def _on_subscribe(self, peer: int, env: Envelope, now: float) -> None:
        super()._on_subscribe(peer, env, now)
        assert env.topic is not None
        self.by_peer.setdefault(peer, set()).add(env.topic)
        self._changed()

    def _on_unsubscribe(self, peer: int, env: Envelope, now: float) -> None:
        super()._on_unsubscribe(peer, env, now)
        assert env.topic is not None
        self.by_peer.get(peer, set()).discard(env.topic)
        self._changed()

    def peer_down(self, peer: int, now: float) -> list[Envelope]:
        """A subscriber is gone: its prefixes may no longer be wanted upstream."""
        queued = super().peer_down(peer, now)
        if self.by_peer.pop(peer, None):
            self._changed()
        return queued


class _BackSocket(PublisherSocket):
    """The publish side's back: subscribers connect here."""

    core: _BackPublisher

    def __init__(
        self, options: PublisherOptions | None, changed: Callable[[], None], **kwargs: Any
    ) -> None:
        Socket.__init__(self, _BackPublisher(options, changed), **kwargs)


class _FrontSubscriber(SubscriberSocket):
    """The publish side's front: resends a subscription until each publisher confirms it.

    A publisher that connects here may not yet listen for frames when our SUBSCRIBE arrives
    (the connecting socket attaches its receiver after the handshake; frames in between are
    parked in the connection's inbox), so the first one can be lost. SUBSCRIBE is idempotent.
    """

    def __init__(self, hwm: HighWaterMark | None, resend: float, **kwargs: Any) -> None:
        super().__init__(hwm, **kwargs)
        self._resend = resend
        self._resender: asyncio.Task[None] | None = None

    def pump(self) -> None:
        """Pump, and keep a resender running while some publisher has not confirmed."""
        super().pump()
        if self._resender is None and not self._closed and any(self.core._waiting.values()):
            self._resender = self.loop.create_task(self._resend_unconfirmed())

    async def _resend_unconfirmed(self) -> None:
        delay = self._resend
        try:
            for _ in range(RESEND_ATTEMPTS):
                await asyncio.sleep(delay)
                if self._closed:
                    return
                waiting = [(p, t) for t, peers in self.core._waiting.items() for p in peers]
                if not waiting:
                    return
                for peer, topic in waiting:
                    if peer in self.core.peers:
                        self.core._control.append((peer, Envelope(Kind.SUBSCRIBE, topic=topic)))
                super().pump()
                delay = min(delay * 2, 1.0)
            log.warning("broker: subscriptions still unconfirmed after %d resends", RESEND_ATTEMPTS)
        finally:
            self._resender = None

    def _abort_pending(self) -> None:
        if self._resender is not None:
            self._resender.cancel()
        super()._abort_pending()


class Broker:
    """Joins a front end and a back end (``mode`` "reqrep" or "pubsub"); see the module doc.

    ``balance`` chooses the worker of each request ("least-loaded", the default, or
    "round-robin"; it overrides ``requester.balance``). ``tls`` serves both ends over TLS;
    ``front_tls``/``back_tls`` set one end each instead (an end without TLS: None). Keyword
    arguments other than the ones named go to both sockets (``sessions=``, ``backoff=``,
    ``options=``, ``protocol=``, ``limits=``, ``secret=``, ``on_event=``).
    """

    def __init__(
        self,
        mode: BrokerMode,
        *,
        request_timeout: float | None = None,
        concurrency: int = 10_000,
        resend: float = 0.05,
        hwm: HighWaterMark | None = None,
        balance: Balance = "least-loaded",
        requester: RequesterOptions | None = None,
        publisher: PublisherOptions | None = None,
        tls: TLSArg = None,
        front_tls: TLSArg | Literal["same"] = "same",
        back_tls: TLSArg | Literal["same"] = "same",
        **kwargs: Any,
    ) -> None:
        if mode not in ("reqrep", "pubsub"):
            raise ConfigError(f"unknown broker mode {mode!r}: use 'reqrep' or 'pubsub'")
        if "codec" in kwargs:
            raise ConfigError("a broker forwards payloads as they are: it takes no codec")
        self.mode = mode
        self.request_timeout = request_timeout
        self.forwarded = 0  # requests answered or publications passed on
        self.failed = 0  # requests answered with an error by the broker itself
        self.front: Socket
        self.back: Socket
        self._task: asyncio.Task[None] | None = None
        self._sync_pending = False
        front_kw = {**kwargs, "tls": tls if front_tls == "same" else front_tls}
        back_kw = {**kwargs, "tls": tls if back_tls == "same" else back_tls}
        if mode == "reqrep":
            self.front = _FrontSocket(self._forward, hwm=hwm, concurrency=concurrency, **front_kw)
            requester = dataclasses.replace(requester or RequesterOptions(), balance=balance)
            self.back = RequesterSocket(requester, **back_kw)
        else:
            self.front = _FrontSubscriber(hwm, resend, **front_kw)
            self.back = _BackSocket(publisher, self._subscriptions_changed, **back_kw)

    async def bind(self, front: str, back: str) -> tuple[str, str]:
        """Listen on both ends; returns the bound addresses (real ports for port 0)."""
        front_url = await self.front.bind(front)
        back_url = await self.back.bind(back)
        if self.mode == "pubsub" and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._relay())
        return front_url, back_url

    # ---- request/reply ---------------------------------------------------------------------

    async def _forward(self, request: Request, retryable: bool) -> None:
        back = self.back
        assert isinstance(back, RequesterSocket)
        try:
            reply = await back.request(
                request.message, timeout=self.request_timeout, retryable=retryable
            )
        except ReplyError as exc:  # the worker's handler failed: pass its text on
            self.forwarded += 1
            await request.reply(str(exc), error=True)
            return
        except OpenSocketError as exc:
            self.failed += 1
            await request.reply(f"{type(exc).__name__}: {exc}", error=True)
            return
        self.forwarded += 1
        await request.reply(reply)

    # ---- publish/subscribe -----------------------------------------------------------------

    def _subscriptions_changed(self) -> None:
        # Called from inside the back socket's input processing: sync on the next turn.
        if not self._sync_pending:
            self._sync_pending = True
            asyncio.get_running_loop().call_soon(self._sync_subscriptions)

    def _sync_subscriptions(self) -> None:
        self._sync_pending = False
        front, back = self.front, self.back
        assert isinstance(front, SubscriberSocket)
        assert isinstance(back, _BackSocket)
        if front._closed:
            return
        wanted = back.core.wanted()
        now = front.loop.time()
        for prefix in wanted - front.core.topics:
            front.core.subscribe(prefix, now)
        for prefix in front.core.topics - wanted:
            front.core.unsubscribe(prefix, now)
        front.pump()

    async def _relay(self) -> None:
        front, back = self.front, self.back
        assert isinstance(front, SubscriberSocket)
        assert isinstance(back, _BackSocket)
        while True:
            _, env = await front._take(None)
            assert env.topic is not None
            try:
                await back.publish(env.topic, env.payload)
            except OpenSocketError as exc:  # the back end is closing
                log.info("broker: publication not forwarded: %s", exc)
                return
            self.forwarded += 1

    async def ready(self, prefix: str | bytes, timeout: float | None = None) -> None:
        """Pub/sub: wait until ``prefix`` is wanted downstream and every connected
        publisher (at least one) confirmed it upstream."""
        front = self.front
        if not isinstance(front, SubscriberSocket):
            raise ConfigError("ready() is for a pubsub broker")
        raw = prefix.encode() if isinstance(prefix, str) else prefix
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not (raw in front.core.topics and front.core.ready(raw)):
            if deadline is not None and loop.time() >= deadline:
                raise ReadTimeout(f"subscription {raw!r} not confirmed within {timeout:g}s")
            await front._wait_progress(deadline)

    # ---- life ------------------------------------------------------------------------------

    @property
    def stats(self) -> dict[str, Any]:
        """Counts of both ends and of the broker itself."""
        return {
            "mode": self.mode,
            "forwarded": self.forwarded,
            "failed": self.failed,
            "front_peers": self.front.peers,
            "back_peers": self.back.peers,
            "front": self.front.stats,
            "back": self.back.stats,
        }

    async def close(self, linger: float = 1.0) -> int:
        """Close both ends (front first, so nothing new comes in); returns what was left."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        left = await self.front.close(linger)
        return left + await self.back.close(linger)

    async def __aenter__(self) -> Broker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
