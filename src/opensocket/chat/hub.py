"""The chat hub: rooms, nicks, messages and limits as a sans-IO state machine.

How it works: the runtime reports connections (``connect``), each command a client sends
(``receive``: raw JSON bytes or text, or a dict already decoded by the native JSON codec) and
disconnections (``disconnect``), always with the time ``now``. Each call returns a list of
``Deliver`` (one event, encoded once, for a tuple of client ids) and ``Close`` (close this
client once what came before it is sent), in order. The hub never blocks and never raises for
anything a client sends: every refused command becomes one ``error`` event for that client.

A session is ``connected`` until its ``hello`` succeeds, then ``registered`` (it has a nick);
before that only ``hello``, ``ping`` and ``quit`` are allowed. State that must hold across
several hub processes (nick ownership, room settings and members, history, bans) lives in the
backplane; events for rooms and nicks are also published there, and ``deliver`` applies the
envelopes other nodes published.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

from ..errors import CloseCode
from . import commands as c
from .backplane import Backplane, Envelope, MemoryBackplane, RoomMeta, check_password, hash_password
from .commands import nick_key, normalize_ip, parse_command, room_key
from .errors import ErrorCode, InvalidChatMessage
from .events import (
    Action,
    ErrorEvent,
    Event,
    History,
    Joined,
    Kicked,
    Left,
    Message,
    NickChanged,
    Notice,
    Pong,
    Private,
    QuitNotice,
    RoomInfo,
    RoomList,
    TopicInfo,
    Welcome,
    WhoList,
    parse_event,
)
from .flow import TokenBucket
from .metrics import ChatCounters
from .options import ChatOptions
from .outgoing import Close, Deliver, Outgoing, Payload

__all__ = ["Hub", "Session"]

Data = bytes | bytearray | memoryview | str | Mapping[str, Any]
_MESSAGES = (c.Say, c.Me, c.Msg)
_BEFORE_HELLO = (c.Hello, c.Ping, c.Quit)


class Session:
    """One connected client as the hub sees it."""

    __slots__ = ("bucket", "client", "connected_at", "ip", "key", "nick", "protocol", "rooms")

    def __init__(
        self, client: Hashable, ip: str | None, protocol: str, bucket: TokenBucket
    ) -> None:
        self.client = client
        self.ip = ip
        self.protocol = protocol
        self.bucket = bucket
        self.nick: str | None = None
        self.key = ""
        self.rooms: dict[str, str] = {}  # room key -> room name
        self.connected_at = bucket.stamp


def _refuse(code: ErrorCode, message: str) -> InvalidChatMessage:
    return InvalidChatMessage(code, message)


def _ts(now: float) -> float:
    return round(float(now), 3)


class Hub:
    """The chat hub state machine (see the module docstring)."""

    def __init__(
        self,
        options: ChatOptions | None = None,
        backplane: Backplane | None = None,
        node: str = "local",
    ) -> None:
        self.options = options or ChatOptions()
        self.node = node
        self.backplane = backplane or MemoryBackplane(self.options.max_idle_rooms)
        self.backplane.attach(node)
        self.sessions: dict[Hashable, Session] = {}
        self.nicks: dict[str, Session] = {}
        self.rooms: dict[str, dict[Hashable, Session]] = {}  # local members only
        self.counters = ChatCounters()
        self._guests = 0
        self._pending: dict[Hashable, float] = {}  # not yet registered -> hello deadline
        self._everyone_cache: dict[str, tuple[Hashable, ...]] = {}
        self._handlers: dict[type[c.Command], Callable[[Session, Any, float], list[Outgoing]]] = {
            c.Hello: self._hello,
            c.Join: self._join,
            c.Leave: self._leave,
            c.ListRooms: self._list_rooms,
            c.Who: self._who,
            c.Nick: self._nick,
            c.Say: self._say,
            c.Me: self._say,
            c.Msg: self._msg,
            c.Topic: self._topic,
            c.Lock: self._lock,
            c.Kick: self._kick,
            c.Ban: self._ban,
            c.Unban: self._unban,
            c.Ping: self._ping,
            c.Quit: self._quit,
        }

    # --- the runtime's entry points ---------------------------------------------------------

    def connect(
        self, client: Hashable, now: float, ip: str | None, protocol: str
    ) -> list[Outgoing]:
        """A client connected over ``protocol`` ("native", "websocket", ...) from ``ip``."""
        out: list[Outgoing] = []
        if client in self.sessions:  # a reused id: the old connection is gone
            out += self.disconnect(client, now, "replaced by a new connection")
        address = normalize_ip(ip) if ip else None
        if address is not None and self.backplane.is_banned("ip", address):
            self.counters.refused_total += 1
            out.append(self._direct(client, ErrorEvent(code=ErrorCode.BANNED, message="banned")))
            out.append(Close(client, CloseCode.ACCESS_DENIED, "this address is banned"))
            self._count_error(ErrorCode.BANNED)
            return out
        bucket = TokenBucket(self.options.rate, self.options.burst, now)
        self.sessions[client] = Session(client, address, protocol, bucket)
        if self.options.hello_timeout is not None:
            self._pending[client] = now + self.options.hello_timeout
        counts = self.counters
        counts.connections_total[protocol] = counts.connections_total.get(protocol, 0) + 1
        counts.connections_open[protocol] = counts.connections_open.get(protocol, 0) + 1
        return out

    def receive(self, client: Hashable, data: Data, now: float) -> list[Outgoing]:
        """One command from a client: raw JSON (bytes or str) or an already decoded dict."""
        session = self.sessions.get(client)
        if session is None:
            return []  # it arrived after the hub closed this client; nothing to say
        self.counters.commands_in += 1
        ref: str | int | None = None
        try:
            try:
                command = parse_command(data, self.options)
            except InvalidChatMessage:
                if not session.bucket.take(now):  # garbage costs a token like anything else
                    raise self._too_fast() from None
                raise
            ref = command.ref
            self._admit(session, command, now)
            return self._handlers[type(command)](session, command, now)
        except InvalidChatMessage as exc:
            retry = session.bucket.wait(now) if exc.error is ErrorCode.RATE_LIMITED else None
            return [self._error(session, exc.error, str(exc), ref, retry)]

    def disconnect(self, client: Hashable, now: float, reason: str = "") -> list[Outgoing]:
        """A client's connection is gone (safe to call for a client already closed)."""
        session = self.sessions.get(client)
        if session is None:
            return []
        return self._drop(session, now, reason or "connection closed")

    def deliver(self, envelope: Envelope, now: float) -> list[Outgoing]:
        """Apply an envelope another node published on the backplane."""
        if envelope.origin == self.node:
            return []
        self.counters.remote_in += 1
        target = self.nicks.get(envelope.target or "")
        if envelope.kind in ("rooms", "nick"):
            if envelope.kind == "rooms":
                clients = list(self._members(envelope.rooms))
            else:
                clients = [] if target is None else [target.client]
            if not clients:
                return []
            try:
                event = parse_event(envelope.data)
            except InvalidChatMessage:
                self.counters.remote_bad += 1  # a broken peer or store: never the clients' problem
                return []
            return self._send(clients, event, Payload(envelope.data))
        if envelope.kind == "kick":
            if target is None:
                return []
            return self._apply_kick(target, envelope.room, envelope.by, envelope.reason, now)
        return self._apply_ban(envelope, now)

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must next be called (None: no deadline pending)."""
        return min(self._pending.values(), default=None)

    def handle_timer(self, now: float) -> list[Outgoing]:
        """Close clients that did not say hello in time."""
        out: list[Outgoing] = []
        late = [client for client, deadline in self._pending.items() if deadline <= now]
        for client in late:
            session = self.sessions[client]
            out.append(self._error(session, ErrorCode.HELLO_TIMEOUT, "no hello in time: goodbye"))
            out += self._drop(session, now, "no hello in time")
            out.append(Close(client, CloseCode.POLICY, "no hello in time"))
        return out

    def record_drop(self, reason: str) -> None:
        """Count a client the runtime dropped (``reason``: "slow", "timeout", ...)."""
        self.counters.drops[reason] = self.counters.drops.get(reason, 0) + 1

    def metrics(self) -> ChatCounters:
        """The counters, with the gauges brought up to date."""
        self.counters.rooms = self.backplane.room_count()
        self.counters.users = len(self.nicks)
        return self.counters

    def resync(self, now: float) -> list[Outgoing]:
        """Re-assert this node's nicks and room memberships (after the backplane came back).

        A nick another node took meanwhile is renamed here to a guest nick, with a notice.
        """
        out: list[Outgoing] = []
        for session in list(self.nicks.values()):
            for key, name in session.rooms.items():
                # The backplane's own copy (a Redis mirror) keeps the password and topic.
                meta = self.backplane.room_meta(key) or RoomMeta(name=name, owner=session.nick)
                self.backplane.create_room(key, meta)
            if self.backplane.claim_nick(session.key, self.node):
                for key in session.rooms:
                    self.backplane.add_member(key, session.nick or "")
            else:
                out += self._rename_guest(session, now, listed=False)
        return out

    def reap(self, nick: str, rooms: Iterable[str], now: float) -> list[Outgoing]:
        """Another node stopped without saying goodbye: take its user ``nick`` out of
        ``rooms`` (room keys), with a quit notice to their members on every node."""
        keys = tuple(rooms)
        if nick_key(nick) in self.nicks or not keys:
            return []  # a user of ours is alive by definition
        self.counters.ghosts += 1
        notice = QuitNotice(nick=nick, ts=_ts(now), reason="their hub stopped")
        out = self._broadcast(keys, notice)
        for key in keys:
            self.backplane.remove_member(key, nick)
        return out

    def nick_lost(self, key: str, now: float) -> list[Outgoing]:
        """The backplane says another node won nick ``key``: rename the local holder to a
        guest nick (an optimistic claim that lost a race, e.g. to a Redis ``SET NX``)."""
        session = self.nicks.get(key)
        if session is None:
            return []
        return self._rename_guest(session, now, listed=True)

    # --- gate: rate limit and registration --------------------------------------------------

    def _admit(self, session: Session, command: c.Command, now: float) -> None:
        if isinstance(command, c.Quit):
            return
        if not session.bucket.take(now):
            raise self._too_fast()
        if session.nick is None and not isinstance(command, _BEFORE_HELLO):
            raise _refuse(ErrorCode.HELLO_REQUIRED, "say hello with a nick first")
        if isinstance(command, _MESSAGES):
            self.counters.messages_in += 1

    def _too_fast(self) -> InvalidChatMessage:
        return _refuse(
            ErrorCode.RATE_LIMITED,
            f"you are sending too fast (limit {self.options.rate:g} per second, bursts of "
            f"{self.options.burst}): this command was dropped, wait a moment",
        )

    # --- output helpers ---------------------------------------------------------------------

    def _count_error(self, code: str) -> None:
        self.counters.errors[code] = self.counters.errors.get(code, 0) + 1

    def _error(
        self,
        session: Session,
        code: ErrorCode,
        message: str,
        ref: str | int | None = None,
        retry_after: float | None = None,
    ) -> Deliver:
        self._count_error(code)
        retry = None if retry_after is None else round(retry_after, 3)
        event = ErrorEvent(code=code, message=message, ref=ref, retry_after=retry)
        return self._direct(session.client, event)

    def _direct(self, client: Hashable, event: Event) -> Deliver:
        payload = Payload.of(event)
        self.counters.events_out += 1
        self.counters.bytes_out += len(payload.data)
        return Deliver((client,), event, payload)

    def _send(self, clients: Iterable[Hashable], event: Event, payload: Payload) -> list[Outgoing]:
        recipients = clients if isinstance(clients, tuple) else tuple(clients)
        if not recipients:
            return []
        self.counters.events_out += len(recipients)
        self.counters.bytes_out += len(payload.data) * len(recipients)
        return [Deliver(recipients, event, payload)]

    def _members(self, keys: Iterable[str], skip: Hashable = None) -> dict[Hashable, None]:
        """Local members of the rooms, each once, in a dict used as an ordered set."""
        seen: dict[Hashable, None] = {}
        for key in keys:
            room = self.rooms.get(key)
            if room:
                seen.update(dict.fromkeys(room))  # C speed: this runs for every room event
        seen.pop(skip, None)
        return seen

    def _broadcast(
        self, keys: tuple[str, ...], event: Event, skip: Hashable = None, also: Hashable = None
    ) -> list[Outgoing]:
        """Send ``event`` to local members of the rooms (and ``also`` to one more client) and
        publish it for the other nodes: one encoding for everyone."""
        payload = Payload.of(event)
        self._publish(Envelope(self.node, "rooms", data=payload.data, rooms=keys))
        if len(keys) == 1 and skip is None and also is None:
            return self._send(self._everyone(keys[0]), event, payload)
        clients = self._members(keys, skip)
        if also is not None:
            clients[also] = None
        return self._send(clients, event, payload)

    def _everyone(self, key: str) -> tuple[Hashable, ...]:
        """The local members of one room as a tuple, cached until its membership changes."""
        members = self._everyone_cache.get(key)
        if members is None:
            members = self._everyone_cache[key] = tuple(self.rooms.get(key, ()))
        return members

    def _publish(self, envelope: Envelope) -> None:
        self.counters.remote_out += 1
        self.backplane.publish(envelope)

    # --- registration and nicks -------------------------------------------------------------

    def _hello(self, s: Session, cmd: c.Hello, now: float) -> list[Outgoing]:
        if s.nick is not None:
            raise _refuse(ErrorCode.ALREADY_REGISTERED, f"you are already registered as {s.nick}")
        wanted = self.options.password
        if wanted is not None and not _same(cmd.password, wanted):
            raise _refuse(ErrorCode.BAD_PASSWORD, "wrong or missing server password")
        key = nick_key(cmd.nick)
        if self.backplane.is_banned("nick", key):
            self._count_error(ErrorCode.BANNED)
            banned = ErrorEvent(code=ErrorCode.BANNED, message=f"{cmd.nick} is banned", ref=cmd.ref)
            out: list[Outgoing] = [self._direct(s.client, banned)]
            return [
                *out,
                *self._drop(s, now, "banned"),
                Close(s.client, CloseCode.ACCESS_DENIED, "banned"),
            ]
        self._claim(key, cmd.nick)
        s.nick, s.key = cmd.nick, key
        self.nicks[key] = s
        self._pending.pop(s.client, None)
        opts = self.options
        limits = {
            "max_message_length": opts.max_message_length,
            "max_rooms_per_user": opts.max_rooms_per_user,
            "rate": opts.rate,
            "burst": opts.burst,
            "history": opts.history,
        }
        welcome = Welcome(nick=cmd.nick, server=opts.server_name, motd=opts.motd, limits=limits)
        return [self._direct(s.client, welcome)]

    def _claim(self, key: str, nick: str) -> None:
        if key in self.nicks or not self.backplane.claim_nick(key, self.node):
            raise _refuse(ErrorCode.NICK_TAKEN, f"the nick {nick} is already in use")

    def _nick(self, s: Session, cmd: c.Nick, now: float) -> list[Outgoing]:
        key = nick_key(cmd.nick)
        if key != s.key:
            if self.backplane.is_banned("nick", key):
                raise _refuse(ErrorCode.BANNED, f"the nick {cmd.nick} is banned")
            self._claim(key, cmd.nick)
        return self._rename(s, cmd.nick, now)

    def _rename(
        self, s: Session, new: str, now: float, *, owned: bool = True, listed: bool = True
    ) -> list[Outgoing]:
        """Rename a session. ``owned=False``: the old nick now belongs to another node (do not
        release it); ``listed=False``: the old nick is in no member list (after a re-sync)."""
        old, old_key, key = s.nick or "", s.key, nick_key(new)
        for room in s.rooms:
            self.backplane.add_member(room, new)  # first: removing the last member ends a room
            if listed and old_key != key:
                self.backplane.remove_member(room, old)
        if self.nicks.get(old_key) is s:
            del self.nicks[old_key]
        if owned and old_key != key:
            self.backplane.release_nick(old_key, self.node)
        self.nicks[key] = s
        s.nick, s.key = new, key
        event = NickChanged(old=old, new=new, ts=_ts(now))
        return self._broadcast(tuple(s.rooms), event, also=s.client)

    def _rename_guest(self, s: Session, now: float, *, listed: bool) -> list[Outgoing]:
        while True:
            self._guests += 1
            guest = f"Guest{self._guests}"
            key = nick_key(guest)
            if key not in self.nicks and self.backplane.claim_nick(key, self.node):
                break
        taken = f"your nick {s.nick} was taken on another node; you are now {guest}"
        out = self._rename(s, guest, now, owned=False, listed=listed)
        return [self._error(s, ErrorCode.NICK_TAKEN, taken), *out]

    # --- rooms ------------------------------------------------------------------------------

    def _room(self, name: str) -> tuple[str, RoomMeta]:
        key = room_key(name)
        meta = self.backplane.room_meta(key)
        if meta is None:
            raise _refuse(ErrorCode.NO_SUCH_ROOM, f"there is no room {name}")
        return key, meta

    def _member_of(self, s: Session, name: str) -> str:
        key = room_key(name)
        if key not in s.rooms:
            raise _refuse(ErrorCode.NOT_IN_ROOM, f"you are not in {name}: join it first")
        return key

    def _join(self, s: Session, cmd: c.Join, now: float) -> list[Outgoing]:
        key = room_key(cmd.room)
        if key in s.rooms:
            raise _refuse(ErrorCode.ALREADY_IN_ROOM, f"you are already in {s.rooms[key]}")
        limit = self.options.max_rooms_per_user
        if len(s.rooms) >= limit:
            raise _refuse(ErrorCode.TOO_MANY_ROOMS, f"you are in {limit} rooms already: leave one")
        meta = self._open_room(s, key, cmd)
        self.backplane.add_member(key, s.nick or "")
        s.rooms[key] = meta.name
        self.rooms.setdefault(key, {})[s.client] = s
        self._everyone_cache.pop(key, None)
        out = self._broadcast((key,), Joined(room=meta.name, nick=s.nick or "", ts=_ts(now)))
        if meta.topic:
            topic = TopicInfo(room=meta.name, topic=meta.topic, by=meta.topic_by, ts=meta.topic_ts)
            out.append(self._direct(s.client, topic))
        out.append(
            self._direct(
                s.client, WhoList(room=meta.name, nicks=tuple(self.backplane.members(key)))
            )
        )
        messages = self._history(key)
        if messages:
            out.append(self._direct(s.client, History(room=meta.name, messages=messages)))
        return out

    def _history(self, key: str) -> tuple[Message | Action, ...]:
        out: list[Message | Action] = []
        for entry in self.backplane.history(key):
            try:
                event = parse_event(entry)
            except InvalidChatMessage:  # a damaged store must not stop anyone from joining
                self.counters.remote_bad += 1
                continue
            if isinstance(event, Message | Action):
                out.append(event)
        return tuple(out)

    def _open_room(self, s: Session, key: str, cmd: c.Join) -> RoomMeta:
        meta = self.backplane.room_meta(key)
        if meta is None:
            if self.backplane.room_count() >= self.options.max_rooms:
                raise _refuse(
                    ErrorCode.SERVER_FULL, "the server has too many rooms: join one of them"
                )
            secret = None if cmd.password is None else hash_password(key, cmd.password)
            meta = RoomMeta(name=cmd.room, owner=s.nick, password=secret)
            if self.backplane.create_room(key, meta):
                return meta
            meta = self.backplane.room_meta(key) or meta  # another node created it just now
        if not check_password(key, cmd.password, meta.password):
            raise _refuse(ErrorCode.BAD_ROOM_PASSWORD, f"{meta.name} needs the right password")
        return meta

    def _leave(self, s: Session, cmd: c.Leave, now: float) -> list[Outgoing]:
        key = self._member_of(s, cmd.room)
        event = Left(room=s.rooms[key], nick=s.nick or "", ts=_ts(now), reason=cmd.reason)
        out = self._broadcast((key,), event)
        self._part(s, key)
        return out

    def _part(self, s: Session, key: str) -> None:
        del s.rooms[key]
        self._everyone_cache.pop(key, None)
        local = self.rooms.get(key)
        if local is not None:
            local.pop(s.client, None)
            if not local:
                del self.rooms[key]
        self.backplane.remove_member(key, s.nick or "")

    def _list_rooms(self, s: Session, cmd: c.ListRooms, now: float) -> list[Outgoing]:
        rows = sorted(self.backplane.rooms(), key=lambda row: row[0].name.lower())
        rooms = tuple(
            RoomInfo(
                name=meta.name, members=count, topic=meta.topic, locked=meta.password is not None
            )
            for meta, count in rows
        )
        return [self._direct(s.client, RoomList(rooms=rooms))]

    def _who(self, s: Session, cmd: c.Who, now: float) -> list[Outgoing]:
        key, meta = self._room(cmd.room)
        if meta.password is not None and key not in s.rooms:
            raise _refuse(
                ErrorCode.NOT_IN_ROOM, f"{meta.name} is locked: only members see who is in it"
            )
        return [
            self._direct(
                s.client, WhoList(room=meta.name, nicks=tuple(self.backplane.members(key)))
            )
        ]

    def _topic(self, s: Session, cmd: c.Topic, now: float) -> list[Outgoing]:
        key, meta = self._room(cmd.room)
        if cmd.topic is None:
            if meta.password is not None and key not in s.rooms:
                raise _refuse(
                    ErrorCode.NOT_IN_ROOM, f"{meta.name} is locked: join it to see its topic"
                )
            event = TopicInfo(room=meta.name, topic=meta.topic, by=meta.topic_by, ts=meta.topic_ts)
            return [self._direct(s.client, event)]
        self._member_of(s, cmd.room)
        self.backplane.update_room(key, topic=cmd.topic, topic_by=s.nick, topic_ts=_ts(now))
        event = TopicInfo(room=meta.name, topic=cmd.topic, by=s.nick, ts=_ts(now))
        return self._broadcast((key,), event)

    def _lock(self, s: Session, cmd: c.Lock, now: float) -> list[Outgoing]:
        key = self._member_of(s, cmd.room)
        meta = self.backplane.room_meta(key)
        if meta is None:  # pragma: no cover - a member's room exists
            raise _refuse(ErrorCode.NO_SUCH_ROOM, f"there is no room {cmd.room}")
        is_owner = meta.owner is not None and nick_key(meta.owner) == s.key
        if not is_owner and not self._operator(cmd.token):
            raise _refuse(
                ErrorCode.NOT_ROOM_OWNER, f"only {meta.owner} (or an operator) can lock {meta.name}"
            )
        secret = None if cmd.password is None else hash_password(key, cmd.password)
        self.backplane.update_room(key, password=secret)
        what = "set a password on" if secret else "removed the password of"
        return self._broadcast((key,), Notice(text=f"{s.nick} {what} {meta.name}", ts=_ts(now)))

    # --- messages ---------------------------------------------------------------------------

    def _say(self, s: Session, cmd: c.Say | c.Me, now: float) -> list[Outgoing]:
        key = self._member_of(s, cmd.room)
        cls = Message if isinstance(cmd, c.Say) else Action
        event = cls(room=s.rooms[key], nick=s.nick or "", text=cmd.text, ts=_ts(now))
        self.backplane.append_history(key, event.to_dict(), self.options.history)
        return self._broadcast((key,), event)

    def _msg(self, s: Session, cmd: c.Msg, now: float) -> list[Outgoing]:
        key = nick_key(cmd.to)
        target = self.nicks.get(key)
        owner = None if target is not None else self.backplane.nick_owner(key)
        if target is None and (owner is None or owner == self.node):
            raise _refuse(ErrorCode.NO_SUCH_NICK, f"nobody is called {cmd.to}")
        to = target.nick if target is not None else cmd.to
        event = Private(nick=s.nick or "", to=to or cmd.to, text=cmd.text, ts=_ts(now))
        payload = Payload.of(event)
        if target is None:
            self._publish(Envelope(self.node, "nick", data=payload.data, target=key))
        clients = [s.client] if target is None or target is s else [target.client, s.client]
        return self._send(clients, event, payload)

    def _ping(self, s: Session, cmd: c.Ping, now: float) -> list[Outgoing]:
        return [self._direct(s.client, Pong(data=cmd.data, ref=cmd.ref))]

    def _quit(self, s: Session, cmd: c.Quit, now: float) -> list[Outgoing]:
        out = self._drop(s, now, cmd.reason or "quit")
        out.append(Close(s.client, CloseCode.NORMAL, "goodbye"))
        return out

    def _drop(self, s: Session, now: float, reason: str) -> list[Outgoing]:
        """Forget a session; everyone sharing a room with it gets one quit notice."""
        del self.sessions[s.client]
        self._pending.pop(s.client, None)
        self.counters.connections_open[s.protocol] -= 1
        if s.nick is None:
            return []
        out = self._broadcast(
            tuple(s.rooms), QuitNotice(nick=s.nick, ts=_ts(now), reason=reason), skip=s.client
        )
        for key in list(s.rooms):
            self._part(s, key)
        if self.nicks.get(s.key) is s:
            del self.nicks[s.key]
            self.backplane.release_nick(s.key, self.node)
        return out

    # --- operators --------------------------------------------------------------------------

    def _operator(self, token: str | None) -> bool:
        wanted = self.options.operator_token
        return wanted is not None and _same(token, wanted)

    def _check_operator(self, token: str) -> None:
        if not self._operator(token):
            raise _refuse(ErrorCode.NOT_OPERATOR, "that needs the operator token")

    def _kick(self, s: Session, cmd: c.Kick, now: float) -> list[Outgoing]:
        self._check_operator(cmd.token)
        key = nick_key(cmd.nick)
        room = room_key(cmd.room) if cmd.room is not None else None
        target = self.nicks.get(key)
        if target is None and self.backplane.nick_owner(key) in (None, self.node):
            raise _refuse(ErrorCode.NO_SUCH_NICK, f"nobody is called {cmd.nick}")
        if room is not None and nick_key(cmd.nick) not in map(
            nick_key, self.backplane.members(room)
        ):
            raise _refuse(ErrorCode.NOT_IN_ROOM, f"{cmd.nick} is not in {cmd.room}")
        by = s.nick or ""
        out: list[Outgoing] = [
            self._direct(s.client, Notice(text=f"kicked {cmd.nick}", ts=_ts(now)))
        ]
        if target is None:
            self._publish(
                Envelope(self.node, "kick", target=key, room=room, by=by, reason=cmd.reason)
            )
            return out
        return [*out, *self._apply_kick(target, room, by, cmd.reason, now)]

    def _apply_kick(
        self, target: Session, room: str | None, by: str, reason: str | None, now: float
    ) -> list[Outgoing]:
        self.counters.kicks += 1
        why = f"kicked by {by}" + (f": {reason}" if reason else "")
        if room is not None:
            name = target.rooms.get(room)
            if name is None:
                return []
            kicked = self._direct(target.client, Kicked(by=by, reason=reason, room=name))
            out = self._broadcast(
                (room,), Left(room=name, nick=target.nick or "", ts=_ts(now), reason=why)
            )
            self._part(target, room)
            return [kicked, *out]
        kicked = self._direct(target.client, Kicked(by=by, reason=reason))
        out = self._drop(target, now, why)
        return [kicked, *out, Close(target.client, CloseCode.POLICY, why)]

    def _ban(self, s: Session, cmd: c.Ban, now: float) -> list[Outgoing]:
        self._check_operator(cmd.token)
        if cmd.nick is None and cmd.ip is None:
            raise _refuse(ErrorCode.MISSING_FIELD, "ban needs a nick, an ip, or both")
        self.counters.bans += 1
        key = nick_key(cmd.nick) if cmd.nick is not None else None
        if key is not None:
            self.backplane.add_ban("nick", key)
        if cmd.ip is not None:
            self.backplane.add_ban("ip", cmd.ip)
        envelope = Envelope(
            self.node,
            "ban",
            target=key,
            ip=cmd.ip,
            by=s.nick or "",
            reason=cmd.reason,
            by_ip=cmd.by_ip,
        )
        self._publish(envelope)
        what = " and ".join(x for x in (cmd.nick, cmd.ip) if x)
        notice = self._direct(s.client, Notice(text=f"banned {what}", ts=_ts(now)))
        return [notice, *self._apply_ban(envelope, now)]

    def _apply_ban(self, envelope: Envelope, now: float) -> list[Outgoing]:
        targets: dict[Hashable, Session] = {}
        holder = self.nicks.get(envelope.target) if envelope.target else None
        ips = {envelope.ip} if envelope.ip else set()
        if holder is not None:
            targets[holder.client] = holder
            if envelope.by_ip and holder.ip is not None:
                self.backplane.add_ban("ip", holder.ip)
                ips.add(holder.ip)
        if ips:
            targets.update((x.client, x) for x in self.sessions.values() if x.ip in ips)
        why = f"banned by {envelope.by}" + (f": {envelope.reason}" if envelope.reason else "")
        out: list[Outgoing] = []
        for target in targets.values():
            out.append(self._direct(target.client, Kicked(by=envelope.by, reason=envelope.reason)))
            out += self._drop(target, now, why)
            out.append(Close(target.client, CloseCode.ACCESS_DENIED, why))
        return out

    def _unban(self, s: Session, cmd: c.Unban, now: float) -> list[Outgoing]:
        self._check_operator(cmd.token)
        if cmd.nick is None and cmd.ip is None:
            raise _refuse(ErrorCode.MISSING_FIELD, "unban needs a nick, an ip, or both")
        lifted = []
        if cmd.nick is not None and self.backplane.remove_ban("nick", nick_key(cmd.nick)):
            lifted.append(cmd.nick)
        if cmd.ip is not None and self.backplane.remove_ban("ip", cmd.ip):
            lifted.append(cmd.ip)
        text = f"unbanned {' and '.join(lifted)}" if lifted else "no such ban"
        return [self._direct(s.client, Notice(text=text, ts=_ts(now)))]


def _same(given: str | None, wanted: str) -> bool:
    """Constant-time comparison of a secret (so its length and prefix do not leak by timing)."""
    return given is not None and hmac.compare_digest(given.encode(), wanted.encode())
