"""The asyncio pattern sockets: request/reply, publish/subscribe, push/pull, pair."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ...errors import (
    CloseCode,
    ConnectionClosed,
    OpenSocketError,
    QueueFull,
    ReadTimeout,
    ReplyError,
)
from ...messaging import (
    Envelope,
    Event,
    HighWaterMark,
    Outcome,
    Pair,
    Policy,
    Publisher,
    PublisherOptions,
    Puller,
    PullOptions,
    Pusher,
    PushOptions,
    Replier,
    ReplyReceived,
    RequestAborted,
    Requester,
    RequesterOptions,
    RequestFailed,
    RequestReceived,
    Subscriber,
)
from ._socket import Socket

__all__ = [
    "PairSocket",
    "PublisherSocket",
    "PullerSocket",
    "PusherSocket",
    "ReplierSocket",
    "ReplyError",
    "Request",
    "RequesterSocket",
    "SubscriberSocket",
]

log = logging.getLogger("opensocket.messaging")
Handler = Callable[[Any], Awaitable[Any]]


def _closed(pattern: str) -> ConnectionClosed:
    return ConnectionClosed(CloseCode.NORMAL, f"the {pattern} socket is closed")


def _topic(env: Envelope) -> str:
    topic = env.topic
    assert topic is not None
    return topic.decode(errors="replace")


class _Inbox(Socket):
    """A socket whose core fair-queues received messages (``take``)."""

    def _take_now(self) -> tuple[int, Envelope] | None:
        """The next message if one is queued (no coroutine needed: the common case)."""
        core: Any = self.core
        got = core.take(1)
        if not got:
            return None
        self.kick()  # taking may owe credit
        item: tuple[int, Envelope] = got[0]
        return item

    async def _take(self, timeout: float | None) -> tuple[int, Envelope]:
        core: Any = self.core
        deadline = None if timeout is None else self.loop.time() + timeout
        while True:
            got = core.take(1)
            if got:
                self.kick()  # taking may owe credit
                item: tuple[int, Envelope] = got[0]
                return item
            if deadline is not None and self.loop.time() >= deadline:
                raise ReadTimeout(f"no message within {timeout:g}s")
            await self._wait_progress(deadline)

    async def _take_many(
        self, limit: int | None, timeout: float | None
    ) -> list[tuple[int, Envelope]]:
        core: Any = self.core
        deadline = None if timeout is None else self.loop.time() + timeout
        while True:
            got: list[tuple[int, Envelope]] = core.take(limit)
            if got:
                self.kick()  # taking may owe credit
                return got
            if deadline is not None and self.loop.time() >= deadline:
                raise ReadTimeout(f"no message within {timeout:g}s")
            await self._wait_progress(deadline)

    async def _offer_many(self, offer: Callable[[list[bytes]], int], payloads: list[bytes]) -> None:
        """Offer a batch; under BLOCK wait for room for the rest and offer it again."""
        while True:
            try:
                taken = offer(payloads)
            finally:
                self.kick()
            if taken >= len(payloads):
                return
            payloads = payloads[taken:]
            self.pump()
            await self._wait_progress()

    async def _room(self, attempt: Callable[[], Outcome]) -> None:
        """Offer a message; under BLOCK wait for room and offer again."""
        while True:
            if attempt() is not Outcome.WOULD_BLOCK:
                self.kick()
                return
            self.pump()
            await self._wait_progress()


class RequesterSocket(Socket):
    """Sends requests and awaits the matching replies; many may be outstanding."""

    pattern = "request"
    core: Requester

    def __init__(self, options: RequesterOptions | None = None, **kwargs: Any) -> None:
        super().__init__(Requester(options), **kwargs)
        self._futures: dict[int, asyncio.Future[bytes]] = {}

    async def request(
        self, message: Any, *, timeout: float | None = None, retryable: bool = False
    ) -> Any:
        """Send ``message`` and return the decoded reply.

        Raises RequestTimeout past ``timeout``, RequestAborted when the replier went away
        (unless ``retryable``: then it is sent again once a replier is connected), ReplyError
        when the replier's handler failed, QueueFull when dropped by the send policy.
        """
        self._check_open()
        payload = self.codec.dumps(message)
        core = self.core
        while core.hwm.policy is Policy.BLOCK and core.peers and not core.ready:
            await self._wait_progress()
        rid = core.request(payload, self.loop.time(), timeout=timeout, retryable=retryable)
        future: asyncio.Future[bytes] = self.loop.create_future()
        self._futures[rid] = future
        self.kick()
        try:
            reply = await future
        except asyncio.CancelledError:
            # The caller gave up (task cancelled, an outer timeout): so does the core, and a
            # reply that still comes is dropped and counted, not left pending forever.
            self.core.cancel(rid)
            raise
        finally:
            self._futures.pop(rid, None)
        return self.codec.loads(reply)

    def _handle(self, peer: int | None, event: Event) -> None:
        if isinstance(event, ReplyReceived):
            future = self._futures.get(event.id)
            if future is not None and not future.done():
                if event.error:
                    future.set_exception(ReplyError(bytes(event.payload).decode(errors="replace")))
                else:
                    future.set_result(event.payload)
        elif isinstance(event, RequestFailed):
            future = self._futures.get(event.id)
            if future is not None and not future.done():
                future.set_exception(event.error)
        else:
            super()._handle(peer, event)

    def _gave_up(self, url: str) -> None:
        if not any(e.conn is not None for e in self._endpoints):
            self.core.abort(f"gave up reconnecting to {url}")
            self.pump()

    def _abort_pending(self) -> None:
        for future in self._futures.values():
            if not future.done():
                future.set_exception(RequestAborted("the request socket was closed"))
        self.core.abort("the request socket was closed")


class Request:
    """One received request: ``message`` (decoded) and ``reply()``."""

    __slots__ = ("_id", "_peer", "_socket", "message")

    def __init__(self, socket: ReplierSocket, peer: int, rid: int, message: Any) -> None:
        self._socket = socket
        self._peer = peer
        self._id = rid
        self.message = message

    async def reply(self, message: Any, *, error: bool = False) -> None:
        """Send the reply (``error=True``: ``message`` is an error text for ReplyError)."""
        await self._socket._reply(self._peer, self._id, message, error)


class ReplierSocket(Socket):
    """Answers requests: with ``handler`` each request runs as its own task (at most
    ``concurrency`` at once); without one, ``recv_request()`` hands them out.

    A peer with ``max_outstanding`` requests unanswered (4 x ``concurrency`` unless given)
    is not read until replies bring it below: a flooding requester costs bounded work.
    A result the codec refuses, or one too large for a frame, is answered with an error
    (ReplyError at the requester), never left to the requester's deadline.
    """

    pattern = "reply"
    core: Replier

    def __init__(
        self,
        handler: Handler | None = None,
        *,
        hwm: HighWaterMark | None = None,
        concurrency: int = 1000,
        max_outstanding: int | None = None,
        **kwargs: Any,
    ) -> None:
        cap = 4 * concurrency if max_outstanding is None else max_outstanding
        super().__init__(Replier(hwm, max_outstanding=cap), **kwargs)
        self.handler = handler
        self._slots = asyncio.Semaphore(concurrency)  # handlers running at once
        self._requests: deque[Request] = deque()
        self._tasks: set[asyncio.Task[None]] = set()

    def _handle(self, peer: int | None, event: Event) -> None:
        if not isinstance(event, RequestReceived):
            super()._handle(peer, event)
            return
        try:
            message = self.codec.loads(event.payload)
        except OpenSocketError as exc:
            self.core.reply(event.peer, event.id, str(exc).encode(), self.loop.time(), error=True)
            return
        request = Request(self, event.peer, event.id, message)
        if self.handler is None:
            self._requests.append(request)
            return
        # A real task from the first step on: asyncio.timeout(), TaskGroup, cancellation and
        # contextvars in the handler behave as in any task.
        task = self.loop.create_task(self._run(request, self.handler))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, request: Request, handler: Handler) -> None:
        # Encoding is inside the try: a result the codec refuses becomes an error reply, or
        # the requester would wait for its deadline.
        try:
            async with self._slots:
                result = await handler(request.message)
            payload, error = self.codec.dumps(result), False
        except Exception as exc:
            log.info("request handler raised %r; replying with an error", exc)
            payload, error = f"{type(exc).__name__}: {exc}".encode(), True
        try:
            await self._send_reply(request._peer, request._id, payload, error)
        except Exception:  # nothing can reach the requester now: say so, at least
            log.exception("request %d of peer %d could not be answered", request._id, request._peer)

    async def recv_request(self, timeout: float | None = None) -> Request:
        """The next request (without a handler)."""
        deadline = None if timeout is None else self.loop.time() + timeout
        while not self._requests:
            if deadline is not None and self.loop.time() >= deadline:
                raise ReadTimeout(f"no request within {timeout:g}s")
            await self._wait_progress(deadline)
        return self._requests.popleft()

    async def _reply(self, peer: int, rid: int, message: Any, error: bool) -> None:
        payload = str(message).encode() if error else self.codec.dumps(message)
        await self._send_reply(peer, rid, payload, error)

    async def _send_reply(self, peer: int, rid: int, payload: bytes, error: bool) -> None:
        while not self._closed:
            outcome = self.core.answer(peer, rid, payload, self.loop.time(), error=error)
            if outcome is not Outcome.WOULD_BLOCK:
                self.kick()
                return
            self.pump()
            await self._wait_progress()

    def _abort_pending(self) -> None:
        for task in self._tasks:
            task.cancel()


class PublisherSocket(_Inbox):
    """Publishes ``(topic, message)``; filtering by prefix happens here, per subscriber."""

    pattern = "publish"
    core: Publisher

    def __init__(self, options: PublisherOptions | None = None, **kwargs: Any) -> None:
        super().__init__(Publisher(options), **kwargs)

    async def publish(self, topic: str | bytes, message: Any) -> None:
        """Queue ``message`` for every subscriber of a prefix of ``topic``."""
        self._check_open()
        raw = topic.encode() if isinstance(topic, str) else topic
        payload = self.codec.dumps(message)
        if self.core.publish(raw, payload, self.loop.time()) is not Outcome.WOULD_BLOCK:
            self.kick()  # the common case: no second coroutine, no closure
            return
        self.pump()  # full: write what is queued, then wait for room and offer again
        await self._wait_progress()
        await self._room(lambda: self.core.publish(raw, payload, self.loop.time()))

    async def publish_many(self, topic: str | bytes, messages: Sequence[Any]) -> None:
        """Publish several messages on one topic, in order: each is framed once for all its
        subscribers and written in one batch (waits for room under BLOCK)."""
        self._check_open()
        raw = topic.encode() if isinstance(topic, str) else topic
        dumps = self.codec.dumps
        payloads = [dumps(message) for message in messages]
        core, loop = self.core, self.loop
        await self._offer_many(lambda p: core.publish_many(raw, p, loop.time()), payloads)


class SubscriberSocket(_Inbox):
    """Subscribes to topic prefixes and receives ``(topic, message)``."""

    pattern = "subscribe"
    core: Subscriber

    def __init__(self, hwm: HighWaterMark | None = None, **kwargs: Any) -> None:
        super().__init__(Subscriber(hwm), **kwargs)

    async def subscribe(self, prefix: str | bytes, timeout: float | None = None) -> None:
        """Subscribe; returns once every connected publisher confirmed (no slow joiner)."""
        self._check_open()
        raw = prefix.encode() if isinstance(prefix, str) else prefix
        self.core.subscribe(raw, self.loop.time())
        self.pump()
        await self.ready(raw, timeout)

    async def ready(self, prefix: str | bytes, timeout: float | None = None) -> None:
        """Wait until every connected publisher (at least one) holds ``prefix``."""
        raw = prefix.encode() if isinstance(prefix, str) else prefix
        deadline = None if timeout is None else self.loop.time() + timeout
        while not self.core.ready(raw):
            if deadline is not None and self.loop.time() >= deadline:
                raise ReadTimeout(f"subscription {raw!r} not confirmed within {timeout:g}s")
            await self._wait_progress(deadline)

    async def unsubscribe(self, prefix: str | bytes) -> None:
        """Drop a subscription everywhere."""
        raw = prefix.encode() if isinstance(prefix, str) else prefix
        self.core.unsubscribe(raw, self.loop.time())
        self.pump()

    async def recv(self, timeout: float | None = None) -> tuple[str, Any]:
        """The next ``(topic, message)``."""
        _, env = self._take_now() or await self._take(timeout)
        assert env.topic is not None
        return env.topic.decode(errors="replace"), self.codec.loads(env.payload)

    async def recv_many(
        self, max_messages: int | None = None, timeout: float | None = None
    ) -> list[tuple[str, Any]]:
        """Every ``(topic, message)`` received so far (at most ``max_messages``), waiting
        for at least one."""
        got = await self._take_many(max_messages, timeout)
        loads = self.codec.loads
        return [(_topic(env), loads(env.payload)) for _, env in got]


class PusherSocket(_Inbox):
    """Spreads messages round-robin over the connected pullers (credit-based)."""

    pattern = "push"
    core: Pusher

    def __init__(self, options: PushOptions | None = None, **kwargs: Any) -> None:
        super().__init__(Pusher(options), **kwargs)

    async def send(self, message: Any) -> None:
        """Queue ``message`` for the next puller with credit (QueueFull under RAISE)."""
        self._check_open()
        payload = self.codec.dumps(message)
        if self.core.send(payload, self.loop.time()) is not Outcome.WOULD_BLOCK:
            self.kick()  # the common case: no second coroutine, no closure
            return
        self.pump()  # full: write what is queued, then wait for room and offer again
        await self._wait_progress()
        await self._room(lambda: self.core.send(payload, self.loop.time()))

    async def send_many(self, messages: Sequence[Any]) -> None:
        """Queue several messages, in order, written in one batch (waits for room under
        BLOCK; under RAISE, QueueFull comes after queueing those that fit)."""
        self._check_open()
        dumps = self.codec.dumps
        payloads = [dumps(message) for message in messages]
        core, loop = self.core, self.loop
        await self._offer_many(lambda p: core.send_many(p, loop.time()), payloads)

    def unsettled(self) -> int:
        """Queued, not yet written, or (with acks) not yet acknowledged."""
        return super().unsettled() + len(self.core.queue) + len(self.core.inflight)


class PullerSocket(_Inbox):
    """Receives what pushers send, fair-queued. With acks a message counts as done when the
    next ``recv()`` is called or ``done()`` is: a worker that dies before that loses nothing
    (the pusher hands the message to another puller)."""

    pattern = "pull"
    core: Puller

    def __init__(self, options: PullOptions | None = None, **kwargs: Any) -> None:
        super().__init__(Puller(options), **kwargs)
        self._current: tuple[int, int] | None = None
        self._batch: list[tuple[int, int]] = []  # recv_many's deliveries awaiting their ack

    async def recv(self, timeout: float | None = None) -> Any:
        """The next message (acknowledging the previous one when acks are on)."""
        self.done()
        peer, env = self._take_now() or await self._take(timeout)
        if self.core.options.acks and env.id is not None:
            self._current = (peer, env.id)
        return self.codec.loads(env.payload)

    async def recv_many(
        self, max_messages: int | None = None, timeout: float | None = None
    ) -> list[Any]:
        """Every message received so far (at most ``max_messages``), waiting for at least
        one; with acks on, the whole batch is acknowledged by the next call or ``done()``."""
        self.done()
        got = await self._take_many(max_messages, timeout)
        if self.core.options.acks:
            self._batch = [(peer, env.id) for peer, env in got if env.id is not None]
        loads = self.codec.loads
        return [loads(env.payload) for _, env in got]

    def done(self) -> None:
        """Acknowledge the message last received (acks on; otherwise nothing to do)."""
        current, self._current = self._current, None
        batch, self._batch = self._batch, []
        if current is not None:
            batch.append(current)
        for peer, delivery in batch:
            self.core.ack(peer, delivery)
        if batch:
            self.pump()


class PairSocket(_Inbox):
    """Both directions with any number of peers."""

    pattern = "pair"
    core: Pair

    def __init__(self, hwm: HighWaterMark | None = None, **kwargs: Any) -> None:
        super().__init__(Pair(hwm), **kwargs)

    async def send(self, message: Any, *, peer: int | None = None) -> None:
        """Send to the only peer, or to ``peer`` (see ``peers``)."""
        self._check_open()
        if not self.core.peers:
            raise QueueFull("the pair socket has no peer connected yet")
        payload = self.codec.dumps(message)
        await self._room(lambda: self.core.send(payload, self.loop.time(), peer=peer))

    async def recv(self, timeout: float | None = None) -> Any:
        """The next message from any peer."""
        _, env = self._take_now() or await self._take(timeout)
        return self.codec.loads(env.payload)
