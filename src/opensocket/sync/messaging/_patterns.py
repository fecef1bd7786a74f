"""The blocking pattern sockets: request/reply, publish/subscribe, push/pull, pair."""

from __future__ import annotations

import functools
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
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
from ._socket import JOIN_TIMEOUT, Socket, _now
from ._workers import Workers

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
Handler = Callable[[Any], Any]


def _raw(topic: str | bytes) -> bytes:
    return topic.encode() if isinstance(topic, str) else topic


class _Inbox(Socket):
    """A socket whose core fair-queues received messages (``take``)."""

    def _take(self, timeout: float | None) -> tuple[int, Envelope]:
        core: Any = self.core
        deadline = None if timeout is None else _now() + timeout
        with self._lock:
            while True:
                got = core.take(1)
                if got:
                    self._pump()  # taking may owe credit, or resume a paused link
                    item: tuple[int, Envelope] = got[0]
                    return item
                if self._closed:
                    raise ConnectionClosed(CloseCode.NORMAL, f"the {self.pattern} socket is closed")
                if deadline is not None and _now() >= deadline:
                    raise ReadTimeout(f"no message within {timeout:g}s")
                self._wait(deadline, check=False)

    def _take_many(self, limit: int | None, timeout: float | None) -> list[tuple[int, Envelope]]:
        core: Any = self.core
        deadline = None if timeout is None else _now() + timeout
        with self._lock:
            while True:
                got: list[tuple[int, Envelope]] = core.take(limit)
                if got:
                    self._pump()
                    return got
                if self._closed:
                    raise ConnectionClosed(CloseCode.NORMAL, f"the {self.pattern} socket is closed")
                if deadline is not None and _now() >= deadline:
                    raise ReadTimeout(f"no message within {timeout:g}s")
                self._wait(deadline, check=False)

    def _room(self, attempts: Iterable[Callable[[float], Outcome]]) -> None:
        """Offer messages in order, under one lock; under BLOCK wait for room and offer the
        same message again."""
        with self._lock:
            self._check_open()
            try:
                for attempt in attempts:
                    while attempt(_now()) is Outcome.WOULD_BLOCK:
                        self._pump()
                        self._wait(None)
            finally:  # under RAISE, what was accepted before QueueFull is written too
                self._pump()


class _Pending:
    """One outstanding request: its reply or error, and a condition on the socket's lock."""

    __slots__ = ("done", "error", "reply", "wake")

    def __init__(self, wake: threading.Condition) -> None:
        self.wake = wake
        self.done = False
        self.reply: bytes = b""
        self.error: BaseException | None = None

    def settle(self, reply: bytes = b"", error: BaseException | None = None) -> None:
        if not self.done:
            self.done, self.reply, self.error = True, reply, error
            self.wake.notify()


class RequesterSocket(Socket):
    """Sends requests and waits for the matching replies; many threads may each have
    requests outstanding on one socket."""

    pattern = "request"
    core: Requester

    def __init__(self, options: RequesterOptions | None = None, **kwargs: Any) -> None:
        super().__init__(Requester(options), **kwargs)
        self._pending: dict[int, _Pending] = {}

    def request(
        self, message: Any, *, timeout: float | None = None, retryable: bool = False
    ) -> Any:
        """Send ``message`` and return the decoded reply.

        Raises RequestTimeout past ``timeout``, RequestAborted when the replier went away
        (unless ``retryable``: then it is sent again once a replier is connected), ReplyError
        when the replier's handler failed, QueueFull when dropped by the send policy.
        """
        payload = self.codec.dumps(message)
        core = self.core
        with self._lock:
            self._check_open()
            while core.peers and not core.ready and core.hwm.policy is Policy.BLOCK:
                self._wait(None)
            rid = core.request(payload, _now(), timeout=timeout, retryable=retryable)
            pending = self._pending[rid] = _Pending(threading.Condition(self._lock))
            try:
                self._pump()
                pending.wake.wait_for(lambda: pending.done)
            except BaseException:
                # The caller gives up (KeyboardInterrupt, ...): so does the core, and a reply
                # that still comes is dropped and counted, not left pending forever.
                if not pending.done:
                    core.cancel(rid)
                raise
            finally:
                self._pending.pop(rid, None)
        if pending.error is not None:
            raise pending.error
        return self.codec.loads(pending.reply)

    def _handle(self, peer: int | None, event: Event) -> None:
        if isinstance(event, ReplyReceived):
            pending = self._pending.get(event.id)
            if pending is None:
                return
            if event.error:
                text = bytes(event.payload).decode(errors="replace")
                pending.settle(error=ReplyError(text))
            else:
                pending.settle(bytes(event.payload))
        elif isinstance(event, RequestFailed):
            pending = self._pending.get(event.id)
            if pending is not None:
                pending.settle(error=event.error)
        else:
            super()._handle(peer, event)

    def _gave_up(self, url: str) -> None:
        if not any(e.link is not None for e in self._endpoints):
            self.core.abort(f"gave up reconnecting to {url}")
            self._pump()

    def _abort_pending(self) -> None:
        for pending in self._pending.values():
            pending.settle(error=RequestAborted("the request socket was closed"))
        self.core.abort("the request socket was closed")


class Request:
    """One received request: ``message`` (decoded) and ``reply()``."""

    __slots__ = ("_id", "_peer", "_socket", "message")

    def __init__(self, socket: ReplierSocket, peer: int, rid: int, message: Any) -> None:
        self._socket = socket
        self._peer = peer
        self._id = rid
        self.message = message

    def reply(self, message: Any, *, error: bool = False) -> None:
        """Send the reply (``error=True``: ``message`` is an error text for ReplyError)."""
        self._socket._reply(self._peer, self._id, message, error)


class ReplierSocket(Socket):
    """Answers requests: with ``handler`` each request runs on a thread pool (at most
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
        concurrency: int = 16,
        max_outstanding: int | None = None,
        **kwargs: Any,
    ) -> None:
        cap = 4 * concurrency if max_outstanding is None else max_outstanding
        super().__init__(Replier(hwm, max_outstanding=cap), **kwargs)
        self.handler = handler
        self._requests: deque[Request] = deque()
        self._pool: Workers | None = None
        if handler is not None:
            self._pool = Workers(concurrency, "opensocket-replier")

    def _handle(self, peer: int | None, event: Event) -> None:
        if not isinstance(event, RequestReceived):
            super()._handle(peer, event)
            return
        try:
            message = self.codec.loads(event.payload)
        except OpenSocketError as exc:
            self.core.reply(event.peer, event.id, str(exc).encode(), _now(), error=True)
            return
        request = Request(self, event.peer, event.id, message)
        if self._pool is None or self.handler is None:
            self._requests.append(request)
            return
        self._pool.submit(functools.partial(self._run, request, self.handler))

    def _run(self, request: Request, handler: Handler) -> None:
        # Encoding is inside the try: a result the codec refuses becomes an error reply, or
        # the requester would wait for its deadline. Nothing may escape: the pool's Future
        # would swallow it.
        try:
            try:
                payload, error = self.codec.dumps(handler(request.message)), False
            except Exception as exc:
                log.info("request handler raised %r; replying with an error", exc)
                payload, error = f"{type(exc).__name__}: {exc}".encode(), True
            self._send_reply(request._peer, request._id, payload, error)
        except Exception:
            log.exception("request %d of peer %d could not be answered", request._id, request._peer)

    def recv_request(self, timeout: float | None = None) -> Request:
        """The next request (without a handler)."""
        deadline = None if timeout is None else _now() + timeout
        with self._lock:
            while not self._requests:
                if self._closed:
                    raise ConnectionClosed(CloseCode.NORMAL, "the reply socket is closed")
                if deadline is not None and _now() >= deadline:
                    raise ReadTimeout(f"no request within {timeout:g}s")
                self._wait(deadline, check=False)
            return self._requests.popleft()

    def _reply(self, peer: int, rid: int, message: Any, error: bool) -> None:
        payload = str(message).encode() if error else self.codec.dumps(message)
        self._send_reply(peer, rid, payload, error)

    def _send_reply(self, peer: int, rid: int, payload: bytes, error: bool) -> None:
        with self._lock:
            while not self._closed:
                outcome = self.core.answer(peer, rid, payload, _now(), error=error)
                self._pump()
                if outcome is not Outcome.WOULD_BLOCK:
                    return
                self._wait(None, check=False)

    def _shutdown_workers(self) -> None:
        if self._pool is not None:
            # Bounded: a handler that never returns is logged and left running (daemon).
            self._pool.stop(JOIN_TIMEOUT)


class PublisherSocket(_Inbox):
    """Publishes ``(topic, message)``; filtering by prefix happens here, per subscriber."""

    pattern = "publish"
    core: Publisher

    def __init__(self, options: PublisherOptions | None = None, **kwargs: Any) -> None:
        super().__init__(Publisher(options), **kwargs)

    def publish(self, topic: str | bytes, message: Any) -> None:
        """Queue ``message`` for every subscriber of a prefix of ``topic``."""
        raw = _raw(topic)
        payload = self.codec.dumps(message)
        self._room((lambda now: self.core.publish(raw, payload, now),))

    def publish_many(self, topic: str | bytes, messages: Sequence[Any]) -> None:
        """Publish several messages on one topic, in order (waits for room under BLOCK)."""
        raw = _raw(topic)
        publish = self.core.publish
        payloads = [self.codec.dumps(message) for message in messages]
        self._room(functools.partial(publish, raw, payload) for payload in payloads)


class SubscriberSocket(_Inbox):
    """Subscribes to topic prefixes and receives ``(topic, message)``."""

    pattern = "subscribe"
    core: Subscriber

    def __init__(self, hwm: HighWaterMark | None = None, **kwargs: Any) -> None:
        super().__init__(Subscriber(hwm), **kwargs)

    def subscribe(self, prefix: str | bytes, timeout: float | None = None) -> None:
        """Subscribe; returns once every connected publisher confirmed (no slow joiner)."""
        raw = _raw(prefix)
        with self._lock:
            self._check_open()
            self.core.subscribe(raw, _now())
            self._pump()
        self.ready(raw, timeout)

    def ready(self, prefix: str | bytes, timeout: float | None = None) -> None:
        """Wait until every connected publisher (at least one) holds ``prefix``."""
        raw = _raw(prefix)
        deadline = None if timeout is None else _now() + timeout
        with self._lock:
            while not self.core.ready(raw):
                if deadline is not None and _now() >= deadline:
                    raise ReadTimeout(f"subscription {raw!r} not confirmed within {timeout:g}s")
                self._wait(deadline)

    def unsubscribe(self, prefix: str | bytes) -> None:
        """Drop a subscription everywhere."""
        with self._lock:
            self.core.unsubscribe(_raw(prefix), _now())
            self._pump()

    def recv(self, timeout: float | None = None) -> tuple[str, Any]:
        """The next ``(topic, message)``."""
        _, env = self._take(timeout)
        assert env.topic is not None
        return env.topic.decode(errors="replace"), self.codec.loads(env.payload)

    def recv_many(
        self, max_messages: int | None = None, timeout: float | None = None
    ) -> list[tuple[str, Any]]:
        """Every ``(topic, message)`` received so far (at most ``max_messages``), waiting
        for at least one."""
        got = self._take_many(max_messages, timeout)
        loads = self.codec.loads
        return [
            (bytes(env.topic or b"").decode(errors="replace"), loads(env.payload)) for _, env in got
        ]


class PusherSocket(_Inbox):
    """Spreads messages round-robin over the connected pullers (credit-based)."""

    pattern = "push"
    core: Pusher

    def __init__(self, options: PushOptions | None = None, **kwargs: Any) -> None:
        super().__init__(Pusher(options), **kwargs)

    def send(self, message: Any) -> None:
        """Queue ``message`` for the next puller with credit (QueueFull under RAISE)."""
        payload = self.codec.dumps(message)
        self._room((lambda now: self.core.send(payload, now),))

    def send_many(self, messages: Sequence[Any]) -> None:
        """Queue several messages, in order (waits for room under BLOCK)."""
        send = self.core.send
        payloads = [self.codec.dumps(message) for message in messages]
        self._room(functools.partial(send, payload) for payload in payloads)

    def unsettled(self) -> int:
        """Queued, not yet written, or (with acks) not yet acknowledged."""
        with self._lock:
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

    def recv(self, timeout: float | None = None) -> Any:
        """The next message (acknowledging the previous one when acks are on)."""
        self.done()
        peer, env = self._take(timeout)
        if self.core.options.acks and env.id is not None:
            self._current = (peer, env.id)
        return self.codec.loads(env.payload)

    def recv_many(self, max_messages: int | None = None, timeout: float | None = None) -> list[Any]:
        """Every message received so far (at most ``max_messages``), waiting for at least
        one; with acks on, the whole batch is acknowledged by the next call or ``done()``."""
        self.done()
        got = self._take_many(max_messages, timeout)
        if self.core.options.acks:
            self._batch = [(peer, env.id) for peer, env in got if env.id is not None]
        loads = self.codec.loads
        return [loads(env.payload) for _, env in got]

    def done(self) -> None:
        """Acknowledge what was last received (acks on; otherwise nothing to do)."""
        current, self._current = self._current, None
        batch, self._batch = self._batch, []
        if current is not None:
            batch.append(current)
        if batch:
            with self._lock:
                for peer, delivery in batch:
                    self.core.ack(peer, delivery)
                self._pump()


class PairSocket(_Inbox):
    """Both directions with any number of peers."""

    pattern = "pair"
    core: Pair

    def __init__(self, hwm: HighWaterMark | None = None, **kwargs: Any) -> None:
        super().__init__(Pair(hwm), **kwargs)

    def send(self, message: Any, *, peer: int | None = None) -> None:
        """Send to the only peer, or to ``peer`` (see ``peers``)."""
        if not self.core.peers:
            self._check_open()
            raise QueueFull("the pair socket has no peer connected yet")
        payload = self.codec.dumps(message)
        self._room((lambda now: self.core.send(payload, now, peer=peer),))

    def recv(self, timeout: float | None = None) -> Any:
        """The next message from any peer."""
        _, env = self._take(timeout)
        return self.codec.loads(env.payload)
