"""The package's public names, the sans-IO rule, and the event/command classes' shape."""

from __future__ import annotations

import ast
import pathlib

import opensocket.chat as chat
from opensocket.chat import commands, events

FORBIDDEN = {"socket", "asyncio", "threading", "time", "selectors"}


def test_all_names_exist_once() -> None:
    for name in chat.__all__:
        assert hasattr(chat, name), name
    assert len(set(chat.__all__)) == len(chat.__all__)


def test_no_io_imports() -> None:
    root = pathlib.Path(chat.__file__).parent
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = {node.module.split(".")[0]}
            else:
                continue
            assert not names & FORBIDDEN, f"{path.name} imports {names & FORBIDDEN}"


def test_events_and_commands_are_frozen_and_slotted() -> None:
    classes = [*events.EVENTS.values(), *(spec[0] for spec in commands.COMMANDS.values())]
    for cls in classes:
        assert issubclass(cls, events.Event | commands.Command)
        assert "__slots__" in cls.__dict__
        assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
