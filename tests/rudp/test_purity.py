"""The core stays sans-IO: no module of opensocket.rudp imports I/O, threads or clocks."""

from __future__ import annotations

import ast
from pathlib import Path

import opensocket.rudp

FORBIDDEN = {"socket", "asyncio", "threading", "time", "selectors"}


def test_no_io_imports() -> None:
    package = Path(opensocket.rudp.__file__).parent
    modules = sorted(package.glob("*.py"))
    assert len(modules) >= 9
    for path in modules:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = {node.module.split(".")[0]}
            else:
                continue
            assert not names & FORBIDDEN, f"{path.name} imports {names & FORBIDDEN}"
