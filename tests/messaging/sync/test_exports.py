"""The blocking messaging package exports the asyncio package's shape."""

from __future__ import annotations

import inspect

from opensocket import sync
from opensocket.aio import messaging as aio
from opensocket.sync import messaging


def test_all_names_exist_sorted_and_match_asyncio() -> None:
    for name in messaging.__all__:
        assert hasattr(messaging, name), name
    assert sorted(messaging.__all__) == messaging.__all__
    assert set(messaging.__all__) == set(aio.__all__) - {"Broker", "BrokerMode"}
    for name in ("Requester", "Replier", "Publisher", "Subscriber", "Pusher", "Puller", "Pair"):
        assert getattr(sync, name) is getattr(messaging, name)


def test_same_public_methods_as_asyncio_minus_async() -> None:
    for name in messaging.__all__:
        blocking, other = getattr(messaging, name), getattr(aio, name)
        if not inspect.isclass(blocking) or name == "ReplyError":
            continue
        # kick() is the asyncio runtime's batching within one loop iteration
        public = {m for m in dir(other) if not m.startswith("_")} - {"kick"}
        assert public <= {m for m in dir(blocking) if not m.startswith("_")}, name
        for method in public:
            if callable(getattr(other, method)) and not inspect.isclass(getattr(other, method)):
                assert not inspect.iscoroutinefunction(getattr(blocking, method)), method
