"""The package's public names, and the sans-IO rule."""

from __future__ import annotations

import ast
import pathlib

import opensocket.messaging as messaging
from opensocket.messaging import events

FORBIDDEN = {"socket", "asyncio", "threading", "time", "selectors"}


def test_all_names_exist() -> None:
    for name in messaging.__all__:
        assert hasattr(messaging, name), name
    assert sorted(messaging.__all__) == messaging.__all__


def test_no_io_imports() -> None:
    root = pathlib.Path(messaging.__file__).parent
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = {node.module.split(".")[0]}
            else:
                continue
            assert not names & FORBIDDEN, f"{path.name} imports {names & FORBIDDEN}"


def test_events_are_frozen_slotted_under_one_base() -> None:
    for name in events.__all__:
        cls = getattr(events, name)
        assert issubclass(cls, events.Event)
        assert "__slots__" in cls.__dict__
        assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
