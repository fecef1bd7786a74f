"""The Redis backplane, sans I/O: a local mirror the hub reads, and a queue of Redis writes.

The hub calls the ``Backplane`` methods synchronously, so this class never waits for Redis:
reads come from a mirror of the shared state (rooms, members, topics, history, bans, nick
owners) that every node keeps current from the cluster channel; writes update the mirror at
once and queue an ``Op`` (Redis commands plus a state message for the other nodes' mirrors).
The asyncio runtime (``opensocket.aio.chat_redis.RedisLink``) drains ``ops`` in pipelines,
feeds the channel's messages to ``apply_state``/``Hub.deliver``, and reports the results of
nick claims (``claim_result``), which are optimistic: a lost ``SET NX`` race becomes
``Hub.nick_lost``. While Redis is down (``up`` False) nothing is queued: the mirror keeps
serving local users and the runtime re-derives the writes with ``Hub.resync`` when it is back.
"""

from __future__ import annotations

import bisect
import json
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Final, Literal
from urllib.parse import unquote, urlsplit

from ..errors import ConfigError
from .backplane import Backplane, BanKind, Envelope, RoomMeta

__all__ = [
    "CHANNEL",
    "NICK_TTL_MS",
    "Op",
    "RedisBackplane",
    "RedisTarget",
    "decode_envelope",
    "encode_envelope",
    "meta_from_hash",
    "meta_to_hash",
    "parse_redis_url",
    "redact_url",
]

PREFIX: Final = "chat:"
CHANNEL: Final = "chat:events"  # envelopes and state messages, in publish order per node
NICK_TTL_MS: Final = 60_000  # a crashed node's nicks expire within a minute
IDLE_HISTORY_S: Final = 7 * 24 * 3600  # history of an empty unlocked room, instead of an LRU

OpName = Literal["claim", "release", "create", "update", "join", "part", "history", "restore",
                 "ban", "unban", "publish"]  # fmt: skip


def nick_key_name(key: str) -> str:
    """The Redis key holding a nick's owner node."""
    return f"{PREFIX}nick:{key}"


def room_key_name(key: str) -> str:
    """The Redis hash holding a room's settings."""
    return f"{PREFIX}room:{key}"


def ban_key_name(kind: str) -> str:
    """The Redis set holding banned nick keys or IPs."""
    return f"{PREFIX}bans:{kind}"


ROOMS_KEY: Final = f"{PREFIX}rooms"  # sorted set: room key -> member count


def meta_to_hash(meta: RoomMeta) -> dict[str, str]:
    """A room's settings as Redis hash fields (None fields are left out)."""
    return {k: str(v) for k, v in asdict(meta).items() if v is not None}


def meta_from_hash(fields: dict[str, str]) -> RoomMeta | None:
    """The settings stored by ``meta_to_hash``; None if the hash is empty or damaged."""
    if "name" not in fields:
        return None
    ts = fields.get("topic_ts")
    try:
        topic_ts = None if ts is None else float(ts)
    except ValueError:
        topic_ts = None
    return RoomMeta(
        name=fields["name"],
        owner=fields.get("owner"),
        password=fields.get("password"),
        topic=fields.get("topic", ""),
        topic_by=fields.get("topic_by"),
        topic_ts=topic_ts,
    )


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where the backplane's Redis is: ``redis://[[user]:password@]host[:port][/db]``, or
    ``rediss://`` for TLS. ``str()`` hides the password (it goes to logs and banners)."""

    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False

    def __str__(self) -> str:
        auth = ""
        if self.username or self.password:
            auth = f"{self.username or ''}{':***' if self.password else ''}@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'rediss' if self.tls else 'redis'}://{auth}{host}:{self.port}/{self.db}"


_REDIS_HELP: Final = (
    "give redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] or rediss://... for TLS "
    "(e.g. redis://127.0.0.1:6379/0)"
)


def redact_url(url: str) -> str:
    """``url`` with the password in its user info shown as ``***`` (for errors and logs)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    # The last "@" ends the user info, even when a careless password holds "/" or "@":
    # hiding too much is better than showing a password.
    userinfo, at, host_and_path = rest.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}{sep}{user}{':***' if colon else ''}@{host_and_path}"


def parse_redis_url(url: str) -> RedisTarget:
    """A ``redis://`` or ``rediss://`` URL as a RedisTarget (ConfigError if unusable)."""
    shown = redact_url(url)  # errors go to terminals and logs: never the password
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed [ of an IPv6 address
        raise ConfigError(f"{shown!r}: {exc}: {_REDIS_HELP}") from None
    try:
        port = parts.port or 6379
    except ValueError:
        raise ConfigError(f"{shown!r}: the port must be a number from 1 to 65535") from None
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigError(f"{shown!r} is not a Redis address: {_REDIS_HELP}")
    if not parts.hostname:
        raise ConfigError(f"{shown!r} has no host: {_REDIS_HELP}")
    path = parts.path.strip("/")
    if not path:
        db = 0
    elif path.isdigit() and len(path) < 6:
        db = int(path)
    else:
        raise ConfigError(f"{shown!r}: the database must be a number like /0 or /3, not {path!r}")
    if parts.query or parts.fragment:
        raise ConfigError(f"{shown!r}: options after ? or # are not supported: {_REDIS_HELP}")
    return RedisTarget(
        host=parts.hostname,
        port=port,
        db=db,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=parts.scheme == "rediss",
    )


def encode_envelope(envelope: Envelope) -> str:
    """The channel form of an envelope: JSON, ``data`` (event JSON) kept as a string."""
    fields = {
        "origin": envelope.origin,
        "kind": envelope.kind,
        "rooms": list(envelope.rooms),
        "target": envelope.target,
        "room": envelope.room,
        "ip": envelope.ip,
        "by": envelope.by,
        "reason": envelope.reason,
        "by_ip": envelope.by_ip,
        "data": envelope.data.decode("utf-8", "replace"),
    }
    return json.dumps({k: v for k, v in fields.items() if v is not None}, separators=(",", ":"))


def decode_envelope(message: dict[str, Any]) -> Envelope:
    """An envelope from its decoded channel form (KeyError/TypeError/ValueError if broken)."""
    if message["kind"] not in ("rooms", "nick", "kick", "ban"):
        raise ValueError(f"unknown envelope kind {message['kind']!r}")
    return Envelope(
        origin=str(message["origin"]),
        kind=message["kind"],
        data=str(message.get("data", "")).encode(),
        rooms=tuple(str(r) for r in message.get("rooms", ())),
        target=message.get("target"),
        room=message.get("room"),
        ip=message.get("ip"),
        by=str(message.get("by", "")),
        reason=message.get("reason"),
        by_ip=bool(message.get("by_ip", False)),
    )


@dataclass(frozen=True, slots=True)
class Op:
    """One queued write: ``name`` and ``args`` say what to do in Redis, ``state`` (if any) is
    the message published on the channel so that other mirrors apply the same change."""

    name: OpName
    key: str = ""
    args: tuple[Any, ...] = ()
    state: str | None = None


@dataclass(slots=True)
class _Room:
    meta: RoomMeta
    members: dict[str, str] = field(default_factory=dict)  # nick key -> nick


class RedisBackplane(Backplane):
    """The hub's view of a Redis-backed cluster (see the module docstring)."""

    def __init__(self, node: str = "") -> None:
        self.node = node
        self.up = False  # the runtime sets it once Redis answers
        self.ops: deque[Op] = deque()
        self.nicks: dict[str, str] = {}  # nick key -> owner node, as far as we know
        self.rooms_: dict[str, _Room] = {}
        self.history_: dict[str, deque[dict[str, Any]]] = {}
        self.bans: set[tuple[str, str]] = set()
        # history lines Redis lacked at the last load, per room, with the room's limit
        self._lacking: dict[str, tuple[list[dict[str, Any]], int]] = {}
        self.wakeup: Callable[[], None] | None = None  # the runtime's writer, told of new ops

    # --- the queue --------------------------------------------------------------------------

    def _queue(self, op: Op) -> None:
        if not self.up:  # while down, writes are re-derived by Hub.resync instead
            return
        self.ops.append(op)
        if len(self.ops) == 1 and self.wakeup is not None:
            self.wakeup()

    def _state(self, op: str, key: str, **fields: Any) -> str:
        message = {**fields, "origin": self.node, "kind": "state", "op": op, "key": key}
        return json.dumps(message, separators=(",", ":"))

    def take_ops(self) -> list[Op]:
        """Drain the queued writes, oldest first."""
        ops = list(self.ops)
        self.ops.clear()
        return ops

    def own_nicks(self) -> list[str]:
        """The nick keys this node holds (for the heartbeat that renews them)."""
        return [key for key, owner in self.nicks.items() if owner == self.node]

    def others_nicks(self) -> dict[str, str]:
        """Nick key -> nick of every nick the mirror credits to another node or lists as a
        room member without our holding it: what the heartbeat checks against Redis."""
        found = {key: key for key, owner in self.nicks.items() if owner != self.node}
        for room in self.rooms_.values():
            for key, nick in room.members.items():
                if self.nicks.get(key) != self.node:
                    found[key] = nick
        return found

    def rooms_with(self, key: str) -> list[str]:
        """The keys of the rooms nick ``key`` is a member of."""
        return [name for name, room in self.rooms_.items() if key in room.members]

    def forget_nick(self, key: str) -> None:
        """Drop another node's nick that Redis no longer holds (the node stopped without
        releasing it and the key expired), so that the nick can be taken again."""
        if self.nicks.get(key) not in (None, self.node):
            del self.nicks[key]

    # --- results and remote changes, applied by the runtime ---------------------------------

    def claim_result(self, key: str, owner: str | None) -> bool:
        """Record who really holds a nick after our claim; True if we lost it."""
        if owner is None or owner == self.node:
            return False
        self.nicks[key] = owner
        return True

    def apply_state(self, message: dict[str, Any]) -> None:
        """Apply another node's state message to the mirror (KeyError/TypeError if broken)."""
        op, key = message["op"], str(message["key"])
        if op == "nick":
            if self.nicks.get(key) != self.node:  # our own claim's result decides, not this
                self.nicks[key] = str(message["node"])
        elif op == "unnick":
            if self.nicks.get(key) == message["node"]:
                del self.nicks[key]
        elif op == "room":
            meta = RoomMeta(**message["meta"])
            room = self.rooms_.get(key)
            if room is None:
                self.rooms_[key] = _Room(meta)
            else:
                room.meta = meta
        elif op == "join":
            room = self.rooms_.get(key)
            if room is not None:
                room.members[str(message["nick"]).lower()] = str(message["nick"])
        elif op == "part":
            self._remove(key, str(message["nick"]))
        elif op == "history":
            entry = message["entry"]
            if not message.get("restored"):
                self._append(key, entry, int(message["limit"]))
            elif entry not in self.history_.get(key, ()):  # else we put it back ourselves
                self._insert(key, entry, int(message["limit"]))
        elif op == "ban":
            self.bans.add((str(message["list"]), key))
        elif op == "unban":
            self.bans.discard((str(message["list"]), key))
        else:
            raise KeyError(op)

    def load(
        self,
        nicks: dict[str, str],
        rooms: dict[str, tuple[RoomMeta, dict[str, str]]],
        history: dict[str, list[dict[str, Any]]],
        bans: set[tuple[str, str]],
    ) -> dict[str, RoomMeta]:
        """Replace the mirror with what Redis holds now; return the rooms Redis lost (their
        settings, so that the runtime can re-create those its local users are in)."""
        lost = {k: room.meta for k, room in self.rooms_.items() if k not in rooms}
        self.nicks = {k: v for k, v in nicks.items() if v != self.node}
        self.rooms_ = {k: _Room(meta, dict(members)) for k, (meta, members) in rooms.items()}
        # in time order: lines put back by several nodes reach Redis in any order
        old, self.history_ = (
            self.history_,
            {k: deque(sorted(v, key=_when)) for k, v in history.items()},
        )
        self.bans = set(bans)
        # what we showed and Redis lacks (said here during an outage, or everything after a
        # restart without persistence): put back by restore_history, for rooms that exist
        self._lacking = {}
        for key, ring in old.items():
            lines = _lacking(ring, history.get(key, []))
            if lines:
                self._lacking[key] = (lines, ring.maxlen or len(ring))
        return lost

    def restore_history(self) -> None:
        """Put back the lines Redis lacked at the last ``load``, in the mirror (in time order)
        and in Redis, for the rooms that exist now: call it once Redis is up and the runtime
        has re-created the lost rooms its users are in. A deleted room's history (a locked
        room's, or an idle one's that Redis expired) stays gone."""
        lacking, self._lacking = self._lacking, {}
        for key, (lines, limit) in lacking.items():
            if key not in self.rooms_:
                continue
            merged = sorted([*self.history_.get(key, ()), *lines], key=_when)
            self.history_[key] = deque(merged, maxlen=limit)  # the oldest go if it is full
            for entry in lines:
                state = self._state("history", key, entry=entry, limit=limit, restored=True)
                self._queue(Op("restore", key, (_dumps(entry), limit, state)))

    # --- Backplane --------------------------------------------------------------------------

    def attach(self, node: str) -> None:
        """Register this node (one RedisBackplane per hub)."""
        self.node = node

    def detach(self, node: str) -> None:
        """Release every nick this node holds."""
        for key in self.own_nicks():
            self.release_nick(key, node)

    def claim_nick(self, key: str, node: str) -> bool:
        """Optimistic: False if the mirror knows another owner, else ours until Redis says."""
        owner = self.nicks.get(key)
        if owner is not None and owner != node:
            return False
        if owner is None:
            self.nicks[key] = node
            self._queue(Op("claim", key, state=self._state("nick", key, node=node)))
        return True

    def release_nick(self, key: str, node: str) -> None:
        """Free a nick held by ``node`` (no effect if another node holds it)."""
        if self.nicks.get(key) == node:
            del self.nicks[key]
            self._queue(Op("release", key, state=self._state("unnick", key, node=node)))

    def nick_owner(self, key: str) -> str | None:
        """The node holding a nick, or None."""
        return self.nicks.get(key)

    def create_room(self, key: str, meta: RoomMeta) -> bool:
        """Create a room; False if it already exists."""
        if key in self.rooms_:
            return False
        self.rooms_[key] = _Room(meta)
        self._queue(Op("create", key, (meta,), self._state("room", key, meta=asdict(meta))))
        return True

    def room_meta(self, key: str) -> RoomMeta | None:
        """A room's settings, or None if it does not exist."""
        room = self.rooms_.get(key)
        return None if room is None else room.meta

    def update_room(self, key: str, **changes: Any) -> RoomMeta | None:
        """Change a room's settings; None if the room does not exist."""
        room = self.rooms_.get(key)
        if room is None:
            return None
        room.meta = replace(room.meta, **changes)
        state = self._state("room", key, meta=asdict(room.meta))
        self._queue(Op("update", key, (room.meta,), state))
        return room.meta

    def add_member(self, key: str, nick: str) -> None:
        """Record ``nick`` as a member of the room (the room must exist)."""
        room = self.rooms_.get(key)
        if room is not None:
            room.members[nick.lower()] = nick
            self._queue(Op("join", key, (nick,), self._state("join", key, nick=nick)))

    def remove_member(self, key: str, nick: str) -> int:
        """Remove a member; return how many are left (0 deletes the room)."""
        left = self._remove(key, nick)
        self._queue(Op("part", key, (nick,), self._state("part", key, nick=nick)))
        return left

    def _remove(self, key: str, nick: str) -> int:
        room = self.rooms_.get(key)
        if room is None:
            return 0
        room.members.pop(nick.lower(), None)
        if room.members:
            return len(room.members)
        del self.rooms_[key]
        if room.meta.password is not None:  # a locked room's history dies with it
            self.history_.pop(key, None)
        return 0

    def members(self, key: str) -> list[str]:
        """The nicks in a room, sorted case-insensitively."""
        room = self.rooms_.get(key)
        return [] if room is None else [room.members[k] for k in sorted(room.members)]

    def rooms(self) -> list[tuple[RoomMeta, int]]:
        """Every existing room with its member count."""
        return [(room.meta, len(room.members)) for room in self.rooms_.values()]

    def room_count(self) -> int:
        """How many rooms exist."""
        return len(self.rooms_)

    def append_history(self, key: str, entry: dict[str, Any], limit: int) -> None:
        """Add an event dict to a room's history, keeping the last ``limit``."""
        if limit <= 0:
            return
        self._append(key, entry, limit)
        state = self._state("history", key, entry=entry, limit=limit)
        self._queue(Op("history", key, (_dumps(entry), limit), state))

    def _append(self, key: str, entry: dict[str, Any], limit: int) -> None:
        ring = self.history_.get(key)
        if ring is None or ring.maxlen != limit:
            ring = self.history_[key] = deque(ring or (), maxlen=limit)
        ring.append(entry)

    def _insert(self, key: str, entry: dict[str, Any], limit: int) -> None:
        """Add a line put back after an outage at its place in time."""
        lines = list(self.history_.get(key, ()))
        bisect.insort(lines, entry, key=_when)
        self.history_[key] = deque(lines, maxlen=limit)  # the oldest go if it is full

    def history(self, key: str) -> list[dict[str, Any]]:
        """A room's history, oldest first."""
        return list(self.history_.get(key, ()))

    def add_ban(self, kind: BanKind, value: str) -> None:
        """Ban a nick key or an IP."""
        self.bans.add((kind, value))
        self._queue(Op("ban", value, (kind,), self._state("ban", value, list=kind)))

    def remove_ban(self, kind: BanKind, value: str) -> bool:
        """Lift a ban; False if there was none (in the mirror)."""
        if (kind, value) not in self.bans:
            return False
        self.bans.discard((kind, value))
        self._queue(Op("unban", value, (kind,), self._state("unban", value, list=kind)))
        return True

    def is_banned(self, kind: BanKind, value: str) -> bool:
        """True if the nick key or IP is banned."""
        return (kind, value) in self.bans

    def publish(self, envelope: Envelope) -> None:
        """Queue an envelope for the other nodes (dropped while Redis is down)."""
        self._queue(Op("publish", state=encode_envelope(envelope)))


def _dumps(entry: dict[str, Any]) -> str:
    """A history line as stored in Redis (the same text for the same line, for comparing)."""
    return json.dumps(entry, separators=(",", ":"))


def _when(entry: dict[str, Any]) -> tuple[float, str]:
    """Time order of history lines; the text breaks ties, so every node agrees."""
    ts = entry.get("ts")
    return (ts if isinstance(ts, int | float) else 0.0, _dumps(entry))


def _lacking(ring: deque[dict[str, Any]], stored: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The lines of ``ring`` that Redis's ``stored`` lacks; one older than Redis's oldest
    line was trimmed there, not lost."""
    have = {_dumps(entry) for entry in stored}
    oldest = min(_when(entry)[0] for entry in stored) if stored else None
    return [
        entry
        for entry in ring
        if _dumps(entry) not in have and (oldest is None or _when(entry)[0] >= oldest)
    ]
