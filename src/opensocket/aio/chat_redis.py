"""The asyncio runtime of the Redis chat backplane: writes, the cluster channel, outages.

``RedisLink`` drives one hub's ``RedisBackplane`` (``opensocket.chat.redis_backplane``, sans
I/O): a writer task drains the queued operations in pipelines (Lua where a write must be
atomic), a reader task applies the channel's state messages to the mirror and hands
envelopes to ``Hub.deliver``, and a heartbeat renews this node's nicks. Whatever the hub
returns goes to ``on_output`` (the runtime's router of ``Deliver``/``Close``). When Redis
goes away the hub keeps serving local users from the mirror, ``backplane_up`` drops to 0 and
one warning is logged; when it returns the link re-subscribes, reloads the mirror, re-creates
the rooms Redis lost and calls ``Hub.resync``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError

from ..chat.backplane import RoomMeta
from ..chat.hub import Hub
from ..chat.outgoing import Outgoing
from ..chat.redis_backplane import (
    CHANNEL,
    IDLE_HISTORY_S,
    NICK_TTL_MS,
    PREFIX,
    ROOMS_KEY,
    Op,
    RedisBackplane,
    RedisTarget,
    ban_key_name,
    decode_envelope,
    meta_from_hash,
    meta_to_hash,
    nick_key_name,
    room_key_name,
)
from ..errors import ConfigError
from ..options import TLSOptions

__all__ = ["RedisLink"]

log = logging.getLogger("opensocket.chat.redis")

# Claim a nick and, only if won, announce it (so no mirror ever records a lost claim).
_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('PUBLISH', ARGV[3], ARGV[4])
end
return redis.call('GET', KEYS[1])
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
"""
# Renew our nicks; one that expired or vanished (a Redis restart) is claimed again if free.
_RENEW = """
for _, key in ipairs(KEYS) do
  local owner = redis.call('GET', key)
  if owner == ARGV[1] then redis.call('PEXPIRE', key, ARGV[2])
  elseif not owner then redis.call('SET', key, ARGV[1], 'NX', 'PX', ARGV[2]) end
end
"""
# Put back a history line Redis lost, unless a node that showed it too already did (a loop,
# not LPOS: Redis before 6.0.6 has none; the list holds at most the history limit).
_RESTORE = """
for _, line in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if line == ARGV[1] then return 0 end
end
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local meta = cjson.decode(ARGV[2])
for field, value in pairs(meta) do redis.call('HSET', KEYS[1], field, value) end
redis.call('ZADD', KEYS[2], 0, ARGV[1])
redis.call('PERSIST', KEYS[3])
return 1
"""
_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local meta = cjson.decode(ARGV[1])
for _, field in ipairs({'name', 'owner', 'password', 'topic', 'topic_by', 'topic_ts'}) do
  if meta[field] then redis.call('HSET', KEYS[1], field, meta[field])
  else redis.call('HDEL', KEYS[1], field) end
end
return 1
"""
_JOIN = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], redis.call('HLEN', KEYS[2]), ARGV[3])
return 1
"""
# The last member out deletes the room; a locked room's history goes too, an open one's idles.
_PART = """
redis.call('HDEL', KEYS[2], ARGV[1])
local left = redis.call('HLEN', KEYS[2])
if left > 0 then redis.call('ZADD', KEYS[3], left, ARGV[2]) return left end
if redis.call('HEXISTS', KEYS[1], 'password') == 1 then redis.call('DEL', KEYS[4])
else redis.call('EXPIRE', KEYS[4], ARGV[3]) end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[2])
return 0
"""

Emit = Callable[[list[Outgoing]], None]


def _room_keys(key: str) -> tuple[str, str, str]:
    base = room_key_name(key)
    return base, f"{base}:members", f"{base}:history"


class RedisLink:
    """Connects a hub's ``RedisBackplane`` to a Redis server and keeps it connected.

    Build it inside the running event loop, then ``start()``; ``aclose()`` when done.
    A silent network loss is noticed by the heartbeat (its command times out), a closed
    connection at once (the subscriber's read fails).
    """

    def __init__(
        self,
        hub: Hub,
        on_output: Emit,
        host: str = "127.0.0.1",
        port: int = 6379,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        tls: TLSOptions | None = None,
        clock: Callable[[], float] = time.time,
        heartbeat: float = 20.0,
        nick_ttl: float = NICK_TTL_MS / 1000,
        retry_min: float = 0.05,
        retry_max: float = 2.0,
        connect_timeout: float = 2.0,
    ) -> None:
        if not isinstance(hub.backplane, RedisBackplane):
            raise TypeError("RedisLink needs a Hub built with a RedisBackplane")
        self.hub = hub
        self.backplane: RedisBackplane = hub.backplane
        self.on_output = on_output
        self.host, self.port = host, port
        self.db, self.username, self.password = db, username, password
        self.tls = tls
        target = RedisTarget(host, port, db, username, password, tls is not None)
        self.where = str(target)  # for logs: the password hidden
        self.last_error = ""  # why the last attempt failed (for logs and tests)
        self.clock = clock
        self.heartbeat = heartbeat
        if heartbeat * 2 >= nick_ttl:
            raise ConfigError(
                f"the nick TTL ({nick_ttl:g} s) must exceed two heartbeats ({heartbeat:g} s): "
                "or live users' nicks expire between renewals"
            )
        self.nick_ttl_ms = max(1, round(nick_ttl * 1000))
        self._suspects: set[str] = set()  # others' nick keys Redis lacked at the last sweep
        self.retry_min, self.retry_max = retry_min, retry_max
        self.connect_timeout = connect_timeout
        self.outages = 0  # how many times Redis went away (for logs and tests)
        self.resyncs = 0  # how many times the mirror was reloaded and the hub re-synced
        self.heartbeats = 0  # nick renewals done
        self._wake = asyncio.Event()
        self._tick: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inflight = False
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._delay = retry_min
        self._set_up(False)
        self.backplane.wakeup = self._wake.set

    @property
    def up(self) -> bool:
        """True while Redis answers."""
        return self.backplane.up

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start connecting (and reconnecting) in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"redis-link-{self.hub.node}")

    async def aclose(self, timeout: float = 2.0) -> None:
        """Release this node's nicks (if Redis is up), then disconnect."""
        if self.up:
            self.backplane.detach(self.hub.node)
            with contextlib.suppress(TimeoutError):
                await self.flush(timeout)
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._set_up(False)

    # --- waiting (for runtimes and tests: bounded, event driven) ----------------------------

    def changed(self) -> asyncio.Future[None]:
        """A future resolved at the next change: a message applied, a batch written, up/down."""
        return self._tick

    def _notify(self) -> None:
        if not self._tick.done():
            self._tick.set_result(None)
        self._tick = asyncio.get_running_loop().create_future()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` holds (TimeoutError after ``timeout`` seconds)."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.shield(self._tick)

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait until every queued write has reached Redis (or Redis is down)."""
        await self.wait_until(
            lambda: not self.up or (not self.backplane.ops and not self._inflight), timeout
        )

    # --- the connection's life --------------------------------------------------------------

    def _set_up(self, up: bool) -> None:
        self.backplane.up = up
        self.hub.counters.backplane_up = int(up)
        if not up:
            self.backplane.ops.clear()

    async def _run(self) -> None:
        while not self._closing:
            client = Redis(
                host=self.host,
                port=self.port,
                db=self.db,
                username=self.username,
                password=self.password,
                decode_responses=True,
                socket_connect_timeout=self.connect_timeout,
                retry=Retry(NoBackoff(), 0),
                **_ssl_arguments(self.tls),
            )
            try:
                await self._session(client)
            except (RedisError, OSError) as exc:
                if self.up:
                    self._went_down(exc)
                else:
                    self._not_yet(exc)
            except Exception:  # a bug, not an outage: say so loudly, the hub stays local
                log.exception("redis backplane link to %s failed", self.where)
                self._set_up(False)
                raise
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await client.aclose()
            await asyncio.sleep(self._delay)  # pacing of reconnect attempts, not an event wait
            self._delay = min(self._delay * 2, self.retry_max)

    def _not_yet(self, exc: BaseException) -> None:
        """A failed attempt while down: each new reason is logged once as a warning (the hub
        serves its local users meanwhile), repeats only at debug level."""
        error = _describe(exc)
        if error != self.last_error:
            log.warning(
                "redis backplane at %s: %s; serving local users only, retrying",
                self.where,
                error,
            )
        else:
            log.debug("redis backplane at %s still not reachable: %s", self.where, error)
        self.last_error = error
        self._notify()

    def _went_down(self, exc: BaseException) -> None:
        self.outages += 1
        self.last_error = _describe(exc)
        self._set_up(False)
        log.warning(
            "redis backplane at %s is unreachable (%s): serving local users only; until it"
            " returns, messages reach this node's users only",
            self.where,
            exc,
        )
        self._notify()

    async def _session(self, client: Redis) -> None:
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(CHANNEL)  # before loading: no change can fall in between
            await self._load(client)
            self._resync()
            self._delay = self.retry_min
            tasks = [
                asyncio.create_task(self._reader(pubsub)),
                asyncio.create_task(self._writer(client)),
                asyncio.create_task(self._heartbeat(client)),
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            for task in done:
                task.result()  # re-raise the failure that ended the session
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _load(self, client: Redis) -> None:
        nicks: dict[str, str] = {}
        rooms: dict[str, tuple[RoomMeta, dict[str, str]]] = {}
        history: dict[str, list[dict[str, Any]]] = {}
        async for name in client.scan_iter(match=f"{PREFIX}nick:*", count=1000):
            owner = await client.get(name)
            if owner is not None:
                nicks[_text(name)[len(f"{PREFIX}nick:") :]] = _text(owner)
        async for name in client.scan_iter(match=f"{PREFIX}room:*", count=1000):
            parts = _text(name)[len(f"{PREFIX}room:") :].split(":")
            key = parts[0]
            if len(parts) == 1:
                meta = meta_from_hash(_texts(await client.hgetall(name)))
                if meta is not None:
                    rooms[key] = (meta, _texts(await client.hgetall(f"{_text(name)}:members")))
            elif parts[1:] == ["history"]:
                history[key] = _entries(await client.lrange(name, 0, -1))
        bans = {
            (k, _text(v)) for k in ("nick", "ip") for v in await client.smembers(ban_key_name(k))
        }
        lost = self.backplane.load(nicks, rooms, history, bans)
        self._suspects = set()  # "missing at two sweeps in a row" never spans an outage
        self._set_up(True)
        for key, meta in lost.items():
            if key in self.hub.rooms:  # our users are still in it: bring it back as it was
                self.backplane.create_room(key, meta)
        self.backplane.restore_history()

    def _resync(self) -> None:
        self.resyncs += 1
        if self.resyncs > 1:
            log.warning("redis backplane at %s is back: re-synced", self.where)
        self._emit(self.hub.resync(self.clock()))
        self._notify()

    def _emit(self, out: list[Outgoing]) -> None:
        if out:
            self.on_output(out)

    async def _reader(self, pubsub: PubSub) -> None:
        async for message in pubsub.listen():
            if message.get("type") != "message":
                continue
            self._receive(message["data"])
            self._notify()

    def _receive(self, raw: str) -> None:
        try:
            message = json.loads(raw)
            if message["origin"] == self.hub.node:
                return
            if message["kind"] == "state":
                self.backplane.apply_state(message)
                return
            envelope = decode_envelope(message)
        except (ValueError, KeyError, TypeError):
            self.hub.counters.remote_bad += 1  # a broken peer: never our clients' problem
            return
        self._emit(self.hub.deliver(envelope, self.clock()))

    async def _writer(self, client: Redis) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            ops = self.backplane.take_ops()
            if not ops:
                continue
            self._inflight = True
            try:
                await self._write(client, ops)
            finally:
                self._inflight = False
            self._notify()

    async def _write(self, client: Redis, ops: list[Op]) -> None:
        node = self.hub.node
        pipe = client.pipeline(transaction=False)
        claims: list[tuple[int, str]] = []
        for op in ops:
            if op.name == "claim":
                claims.append((len(pipe), op.key))
                pipe.eval(
                    _CLAIM,
                    1,
                    nick_key_name(op.key),
                    node,
                    self.nick_ttl_ms,
                    CHANNEL,
                    op.state or "",
                )
                continue  # the script announces a won claim itself
            _queue_write(pipe, op, node)
            if op.state is not None:
                pipe.publish(CHANNEL, op.state)
        results = await pipe.execute()
        now = self.clock()
        for index, key in claims:
            if self.backplane.claim_result(key, results[index]):
                self._emit(self.hub.nick_lost(key, now))

    async def _heartbeat(self, client: Redis) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)  # a period, not a wait for an event
            keys = [nick_key_name(key) for key in self.backplane.own_nicks()]
            await client.eval(_RENEW, len(keys), *keys, self.hub.node, self.nick_ttl_ms)
            await self._sweep(client)
            self.heartbeats += 1
            self._notify()

    async def _sweep(self, client: Redis) -> None:
        """Clear what a node that stopped without a goodbye (killed, crashed, cut off for
        longer than the nick TTL) left behind: its nicks, expired in Redis but still in our
        mirror (nobody could take them), and its users' room memberships (ghosts in every
        member list), with a quit notice. A key counts as gone when it is missing at two
        sweeps in a row, so a Redis restart that its owner repairs at once does not; one
        node (the first to set ``chat:reap:<nick>``) announces each ghost."""
        others = self.backplane.others_nicks()
        keys = list(others)
        before = {key: self.backplane.nick_owner(key) for key in keys}
        owners = await client.mget([nick_key_name(key) for key in keys]) if keys else []
        missing = {key for key, owner in zip(keys, owners, strict=True) if owner is None}
        gone, self._suspects = missing & self._suspects, missing - self._suspects
        if not gone:
            return
        now, ghosts = self.clock(), 0
        for key in sorted(gone):
            if self.backplane.nick_owner(key) != before[key]:
                continue  # claimed (or released) while we asked: not a ghost
            rooms = self.backplane.rooms_with(key)
            lock = f"{PREFIX}reap:{key}"
            won = bool(rooms) and await client.set(
                lock, self.hub.node, nx=True, px=self.nick_ttl_ms
            )
            if self.backplane.nick_owner(key) != before[key]:
                continue  # claimed while we took the lock
            rooms = self.backplane.rooms_with(key)
            self.backplane.forget_nick(key)
            if won and rooms:
                self._emit(self.hub.reap(others[key], rooms, now))
                ghosts += 1
        if ghosts:
            log.warning(
                "removed %d user(s) left in rooms by a hub that stopped without a goodbye", ghosts
            )


def _ssl_arguments(tls: TLSOptions | None) -> dict[str, Any]:
    """redis-py's TLS keywords for ``rediss://`` from our TLSOptions (client side)."""
    if tls is None:
        return {}
    return {
        "ssl": True,
        "ssl_ca_certs": tls.ca_file,
        "ssl_certfile": tls.cert_file,
        "ssl_keyfile": tls.key_file,
        "ssl_cert_reqs": "required" if tls.verify else "none",
        "ssl_check_hostname": tls.verify,
        "ssl_min_version": ssl.TLSVersion.TLSv1_3
        if tls.minimum_version == "1.3"
        else ssl.TLSVersion.TLSv1_2,
    }


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, AuthenticationError) or "WRONGPASS" in text or "NOAUTH" in text:
        return f"{text}: check the password in --backplane"
    if "DB index is out of range" in text:
        return f"{text}: choose a database number the server has (redis.conf 'databases')"
    return text


def _queue_write(pipe: Any, op: Op, node: str) -> None:
    """Add the Redis commands of one write (not a claim) to a pipeline."""
    hash_key, members, history = _room_keys(op.key)
    if op.name == "release":
        pipe.eval(_RELEASE, 1, nick_key_name(op.key), node)
    elif op.name == "create":
        meta = json.dumps(meta_to_hash(op.args[0]))
        pipe.eval(_CREATE, 3, hash_key, ROOMS_KEY, history, op.key, meta)
    elif op.name == "update":
        pipe.eval(_UPDATE, 1, hash_key, json.dumps(meta_to_hash(op.args[0])))
    elif op.name == "join":
        nick = op.args[0]
        pipe.eval(_JOIN, 3, hash_key, members, ROOMS_KEY, nick.lower(), nick, op.key)
    elif op.name == "part":
        keys = (hash_key, members, ROOMS_KEY, history)
        pipe.eval(_PART, 4, *keys, op.args[0].lower(), op.key, IDLE_HISTORY_S)
    elif op.name == "history":
        entry, limit = op.args
        pipe.rpush(history, entry)
        pipe.ltrim(history, -limit, -1)
    elif op.name == "restore":
        entry, limit, state = op.args
        pipe.eval(_RESTORE, 1, history, entry, limit, CHANNEL, state)
    elif op.name == "ban":
        pipe.sadd(ban_key_name(op.args[0]), op.key)
    elif op.name == "unban":
        pipe.srem(ban_key_name(op.args[0]), op.key)
    # "publish": the envelope is the op's state message, published by the caller


def _text(value: bytes | str) -> str:
    """A reply as text (the client decodes replies; this keeps the types honest)."""
    return value if isinstance(value, str) else value.decode()


def _texts(fields: dict[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in fields.items()}


def _entries(raw: list[Any]) -> list[dict[str, Any]]:
    out = []
    for item in raw:
        with contextlib.suppress(ValueError):
            entry = json.loads(item)
            if isinstance(entry, dict):
                out.append(entry)
    return out
