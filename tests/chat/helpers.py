"""A scripted hub: clients by name, an explicit clock, and every client's inbox decoded."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Hashable, Mapping
from typing import Any

from opensocket.chat import ChatOptions, Close, Deliver, Hub, Outgoing, parse_event

TOKEN = "operator-token-123"


class Harness:
    """Drives one hub; ``inbox[client]`` holds the event dicts each client received."""

    def __init__(self, hub: Hub | None = None, **options: Any) -> None:
        options.setdefault("operator_token", TOKEN)
        self.hub = hub or Hub(ChatOptions(**options))
        self.now = 1000.0
        self.inbox: dict[Hashable, list[dict[str, Any]]] = defaultdict(list)
        self.closed: dict[Hashable, tuple[int, str]] = {}
        self.last: list[Outgoing] = []

    def apply(self, out: list[Outgoing]) -> list[Outgoing]:
        """Route a hub result to the inboxes, checking each payload matches its event."""
        self.last = out
        for item in out:
            if isinstance(item, Close):
                assert item.client not in self.closed, f"{item.client} closed twice"
                self.closed[item.client] = (item.code, item.reason)
                continue
            assert isinstance(item, Deliver)
            assert item.recipients, "a delivery without recipients"
            assert len(set(item.recipients)) == len(item.recipients), "a recipient twice"
            decoded = json.loads(item.payload.data)
            assert decoded == item.event.to_dict()
            assert parse_event(item.payload.data) == item.event
            for client in item.recipients:
                assert client not in self.closed, f"event for {client} after its close"
                self.inbox[client].append(decoded)
        return out

    def connect(
        self, client: Hashable, ip: str = "127.0.0.1", protocol: str = "native"
    ) -> list[Outgoing]:
        return self.apply(self.hub.connect(client, self.now, ip, protocol))

    def send(self, client: Hashable, command: Mapping[str, Any] | bytes | str) -> list[Outgoing]:
        return self.apply(self.hub.receive(client, command, self.now))

    def cmd(self, client: Hashable, kind: str, **fields: Any) -> list[Outgoing]:
        return self.send(client, json.dumps({"type": kind, **fields}))

    def disconnect(self, client: Hashable, reason: str = "") -> list[Outgoing]:
        return self.apply(self.hub.disconnect(client, self.now, reason))

    def login(self, client: Hashable, nick: str, ip: str = "127.0.0.1", **hello: Any) -> None:
        self.connect(client, ip)
        self.cmd(client, "hello", nick=nick, **hello)
        events = self.take(client)
        assert [e["type"] for e in events] == ["welcome"], events

    def join(self, client: Hashable, room: str, **fields: Any) -> list[dict[str, Any]]:
        self.cmd(client, "join", room=room, **fields)
        return self.take(client)

    def take(self, client: Hashable) -> list[dict[str, Any]]:
        return self.inbox.pop(client, [])

    def take_all(self) -> dict[Hashable, list[dict[str, Any]]]:
        out = {k: v for k, v in self.inbox.items() if v}
        self.inbox.clear()
        return out

    def error(self, client: Hashable) -> str:
        """The code of the one event the client got, which must be an error."""
        events = self.take(client)
        assert len(events) == 1 and events[0]["type"] == "error", events
        return str(events[0]["code"])
