"""Cluster state behind the hub: nicks, rooms, members, history, bans, and fan-out to peers.

A hub keeps its own connections and which of them are in which room; everything that must
be true across hub processes goes through a ``Backplane``: nick ownership (a nick belongs to
one node), room metadata and member lists (for ``who`` and ``rooms``), history, bans, and
``publish`` of events to the other nodes. ``MemoryBackplane`` is the embedded default (one
process) and, shared by several hubs, a deterministic in-process cluster for tests: published
envelopes wait in a per-node inbox until ``take(node)`` drains them and the caller hands them
to that node's ``Hub.deliver``. A Redis implementation satisfies the same interface (the
design is in the chat documentation: keys, channels, and the re-sync after an outage).
"""

from __future__ import annotations

import hashlib
import hmac
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from dataclasses import dataclass, field, replace
from typing import Any, Literal

__all__ = [
    "Backplane",
    "Envelope",
    "MemoryBackplane",
    "RoomMeta",
    "check_password",
    "hash_password",
]

BanKind = Literal["nick", "ip"]
EnvelopeKind = Literal["rooms", "nick", "kick", "ban"]


def hash_password(room: str, password: str) -> str:
    """The stored form of a room password (salted with the room key, never kept in clear)."""
    text = f"opensocket-chat-room\x00{room}\x00{password}".encode()
    return hashlib.sha256(text).hexdigest()


def check_password(room: str, password: str | None, stored: str | None) -> bool:
    """True if the room is open or ``password`` matches (constant-time comparison)."""
    if stored is None:
        return True
    if password is None:
        return False
    return hmac.compare_digest(hash_password(room, password), stored)


@dataclass(frozen=True, slots=True)
class RoomMeta:
    """A room's shared settings: display name, creator, join password hash, topic."""

    name: str
    owner: str | None = None
    password: str | None = None
    topic: str = ""
    topic_by: str | None = None
    topic_ts: float | None = None


@dataclass(frozen=True, slots=True)
class Envelope:
    """An event or an order for the other nodes.

    ``rooms``: deliver ``data`` (an encoded event) to local members of these rooms.
    ``nick``: deliver ``data`` to the local holder of nick key ``target``.
    ``kick``/``ban``: apply an operator's decision to the local holder of ``target`` (and
    for ``ban``, to every local connection from ``ip``).
    """

    origin: str
    kind: EnvelopeKind
    data: bytes = b""
    rooms: tuple[str, ...] = ()
    target: str | None = None
    room: str | None = None
    ip: str | None = None
    by: str = ""
    reason: str | None = None
    by_ip: bool = False


class Backplane(ABC):
    """The interface a hub needs for state shared across nodes (all keys are lowercase)."""

    @abstractmethod
    def attach(self, node: str) -> None:
        """Register a node that receives published envelopes."""

    @abstractmethod
    def detach(self, node: str) -> None:
        """Forget a node: its nicks are released and its inbox dropped."""

    @abstractmethod
    def claim_nick(self, key: str, node: str) -> bool:
        """Reserve a nick for ``node``; False if another node holds it (idempotent)."""

    @abstractmethod
    def release_nick(self, key: str, node: str) -> None:
        """Free a nick held by ``node`` (no effect if another node holds it)."""

    @abstractmethod
    def nick_owner(self, key: str) -> str | None:
        """The node holding a nick, or None."""

    @abstractmethod
    def create_room(self, key: str, meta: RoomMeta) -> bool:
        """Create a room; False if it already exists."""

    @abstractmethod
    def room_meta(self, key: str) -> RoomMeta | None:
        """A room's settings, or None if it does not exist."""

    @abstractmethod
    def update_room(self, key: str, **changes: Any) -> RoomMeta | None:
        """Change a room's settings; None if the room does not exist."""

    @abstractmethod
    def add_member(self, key: str, nick: str) -> None:
        """Record ``nick`` as a member of the room."""

    @abstractmethod
    def remove_member(self, key: str, nick: str) -> int:
        """Remove a member; return how many are left (0 deletes the room)."""

    @abstractmethod
    def members(self, key: str) -> list[str]:
        """The nicks in a room, sorted case-insensitively."""

    @abstractmethod
    def rooms(self) -> list[tuple[RoomMeta, int]]:
        """Every existing room with its member count."""

    @abstractmethod
    def room_count(self) -> int:
        """How many rooms exist."""

    @abstractmethod
    def append_history(self, key: str, entry: dict[str, Any], limit: int) -> None:
        """Add an event dict to a room's history, keeping the last ``limit``."""

    @abstractmethod
    def history(self, key: str) -> list[dict[str, Any]]:
        """A room's history, oldest first."""

    @abstractmethod
    def add_ban(self, kind: BanKind, value: str) -> None:
        """Ban a nick key or an IP."""

    @abstractmethod
    def remove_ban(self, kind: BanKind, value: str) -> bool:
        """Lift a ban; False if there was none."""

    @abstractmethod
    def is_banned(self, kind: BanKind, value: str) -> bool:
        """True if the nick key or IP is banned."""

    @abstractmethod
    def publish(self, envelope: Envelope) -> None:
        """Send an envelope to every other attached node."""


@dataclass(slots=True)
class _Room:
    meta: RoomMeta
    members: dict[str, str] = field(default_factory=dict)  # nick key -> nick


class MemoryBackplane(Backplane):
    """Everything in this process: the single-node default, and a test cluster when shared.

    Empty rooms disappear; the history of an empty unlocked room is kept (the last
    ``max_idle_rooms`` such rooms) so that whoever comes back sees it. A locked room's history
    goes with it: it must not be readable by whoever recreates the room without a password.
    """

    def __init__(self, max_idle_rooms: int = 1000) -> None:
        self.max_idle_rooms = max_idle_rooms
        self.inboxes: dict[str, deque[Envelope]] = {}
        self._nicks: dict[str, str] = {}
        self._rooms: dict[str, _Room] = {}
        self._history: dict[str, deque[dict[str, Any]]] = {}
        self._idle: OrderedDict[str, None] = OrderedDict()
        self._bans: set[tuple[str, str]] = set()

    def attach(self, node: str) -> None:
        """Register a node that receives published envelopes."""
        self.inboxes.setdefault(node, deque())

    def detach(self, node: str) -> None:
        """Forget a node: its nicks are released and its inbox dropped."""
        self.inboxes.pop(node, None)
        for key in [k for k, owner in self._nicks.items() if owner == node]:
            del self._nicks[key]

    def take(self, node: str) -> list[Envelope]:
        """Drain the envelopes waiting for ``node``, oldest first."""
        inbox = self.inboxes.get(node)
        if not inbox:
            return []
        items = list(inbox)
        inbox.clear()
        return items

    def claim_nick(self, key: str, node: str) -> bool:
        """Reserve a nick for ``node``; False if another node holds it (idempotent)."""
        return self._nicks.setdefault(key, node) == node

    def release_nick(self, key: str, node: str) -> None:
        """Free a nick held by ``node`` (no effect if another node holds it)."""
        if self._nicks.get(key) == node:
            del self._nicks[key]

    def nick_owner(self, key: str) -> str | None:
        """The node holding a nick, or None."""
        return self._nicks.get(key)

    def create_room(self, key: str, meta: RoomMeta) -> bool:
        """Create a room; False if it already exists."""
        if key in self._rooms:
            return False
        self._rooms[key] = _Room(meta)
        self._idle.pop(key, None)
        return True

    def room_meta(self, key: str) -> RoomMeta | None:
        """A room's settings, or None if it does not exist."""
        room = self._rooms.get(key)
        return None if room is None else room.meta

    def update_room(self, key: str, **changes: Any) -> RoomMeta | None:
        """Change a room's settings; None if the room does not exist."""
        room = self._rooms.get(key)
        if room is None:
            return None
        room.meta = replace(room.meta, **changes)
        return room.meta

    def add_member(self, key: str, nick: str) -> None:
        """Record ``nick`` as a member of the room (the room must exist)."""
        room = self._rooms.get(key)
        if room is not None:
            room.members[nick.lower()] = nick

    def remove_member(self, key: str, nick: str) -> int:
        """Remove a member; return how many are left (0 deletes the room)."""
        room = self._rooms.get(key)
        if room is None:
            return 0
        room.members.pop(nick.lower(), None)
        if room.members:
            return len(room.members)
        del self._rooms[key]
        self._retire(key, locked=room.meta.password is not None)
        return 0

    def _retire(self, key: str, *, locked: bool) -> None:
        if locked or key not in self._history:
            self._history.pop(key, None)
            return
        self._idle[key] = None
        while len(self._idle) > self.max_idle_rooms:
            old, _ = self._idle.popitem(last=False)
            self._history.pop(old, None)

    def members(self, key: str) -> list[str]:
        """The nicks in a room, sorted case-insensitively."""
        room = self._rooms.get(key)
        return [] if room is None else [room.members[k] for k in sorted(room.members)]

    def rooms(self) -> list[tuple[RoomMeta, int]]:
        """Every existing room with its member count."""
        return [(room.meta, len(room.members)) for room in self._rooms.values()]

    def room_count(self) -> int:
        """How many rooms exist."""
        return len(self._rooms)

    def append_history(self, key: str, entry: dict[str, Any], limit: int) -> None:
        """Add an event dict to a room's history, keeping the last ``limit``."""
        if limit <= 0:
            return
        ring = self._history.get(key)
        if ring is None or ring.maxlen != limit:
            ring = self._history[key] = deque(ring or (), maxlen=limit)
        ring.append(entry)

    def history(self, key: str) -> list[dict[str, Any]]:
        """A room's history, oldest first."""
        return list(self._history.get(key, ()))

    def add_ban(self, kind: BanKind, value: str) -> None:
        """Ban a nick key or an IP."""
        self._bans.add((kind, value))

    def remove_ban(self, kind: BanKind, value: str) -> bool:
        """Lift a ban; False if there was none."""
        try:
            self._bans.remove((kind, value))
        except KeyError:
            return False
        return True

    def is_banned(self, kind: BanKind, value: str) -> bool:
        """True if the nick key or IP is banned."""
        return (kind, value) in self._bans

    def publish(self, envelope: Envelope) -> None:
        """Queue an envelope in every other attached node's inbox."""
        for node, inbox in self.inboxes.items():
            if node != envelope.origin:
                inbox.append(envelope)
