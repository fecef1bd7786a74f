"""Pre-forked worker processes: the parent binds the listening sockets, forks N workers that
serve on them (the kernel hands each new connection to one of them), restarts a worker that
dies, and stops them all on SIGINT or SIGTERM.

The parent runs no event loop and no threads: it only waits for signals, so forking is safe
and a worker starts from a clean state (its own event loop, its own TLS context).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Final

from .errors import ConfigError

__all__ = ["GRACE", "run_workers"]

log = logging.getLogger("opensocket.workers")

GRACE: Final = 10.0  # seconds a stopping worker has to finish what it is serving
_STOP: Final = frozenset({signal.SIGINT, signal.SIGTERM})
_WATCHED: Final = _STOP | {signal.SIGCHLD}
_FAST_DEATH: Final = 2.0  # a worker that dies this soon after its start is failing to start
_PR_SET_PDEATHSIG: Final = 1  # prctl(2): the signal a child gets when its parent dies
_FAST_DEATHS: Final = 3  # that many in a row: give up instead of restarting in a loop


def run_workers(count: int, work: Callable[[], int], *, grace: float = GRACE) -> int:
    """Run ``work()`` in ``count`` forked processes until SIGINT or SIGTERM, restarting any
    that dies. Returns 0 after a stop by signal, 1 when workers keep dying at start."""
    if count < 1:
        raise ConfigError(f"the number of workers must be 1 or more, not {count}")
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHED)
    workers: dict[int, float] = {}  # pid -> when it started
    try:
        for _ in range(count):
            _spawn(workers, work, old_mask)
        return _supervise(workers, work, old_mask)
    finally:
        _stop_all(workers, grace)
        while signal.sigtimedwait(_STOP, 0) is not None:
            pass  # a second Ctrl-C already did its work (above): not a KeyboardInterrupt now
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _spawn(
    workers: dict[int, float], work: Callable[[], int], mask: set[int | signal.Signals]
) -> None:
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # or the child writes the parent's buffered lines again
    parent = os.getpid()
    pid = os.fork()
    if pid:
        workers[pid] = time.monotonic()
        return
    code = 1
    try:  # the child: never returns into the parent's stack
        _end_with(parent)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        code = work()
    except KeyboardInterrupt:
        code = 0
    except BaseException:
        log.exception("worker %d failed", os.getpid())
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def _end_with(parent: int) -> None:
    """Have the kernel send us SIGTERM when the parent dies (killed, OOM), so that workers
    never keep the port forever with nobody to stop them."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:
        os._exit(0)  # the parent died before the request took effect


def _supervise(
    workers: dict[int, float], work: Callable[[], int], mask: set[int | signal.Signals]
) -> int:
    fast_deaths = 0
    while True:
        info = signal.sigtimedwait(_WATCHED, 1.0)
        if info is not None and info.si_signo in _STOP:
            return 0
        for pid, status, started in _reap(workers):
            if _STOP & signal.sigpending():
                return 0  # stopping anyway (a terminal's Ctrl-C reaches the workers too)
            lived = time.monotonic() - started
            fast_deaths = fast_deaths + 1 if lived < _FAST_DEATH else 0
            if fast_deaths >= _FAST_DEATHS:
                log.error("worker %d %s; workers keep dying at start: stopping", pid, status)
                return 1
            log.warning("worker %d %s: starting another", pid, status)
            _spawn(workers, work, mask)


def _reap(workers: dict[int, float]) -> list[tuple[int, str, float]]:
    """Take the workers that ended since the last look out of ``workers``: each with how it
    ended and when it had started."""
    ended = []
    while workers:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        if pid in workers:
            ended.append((pid, _describe(status), workers.pop(pid)))
    return ended


def _describe(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def _stop_all(workers: dict[int, float], grace: float) -> None:
    """SIGTERM every worker; SIGKILL those still running after ``grace`` seconds, or at once
    on another SIGINT/SIGTERM (a second Ctrl-C: stop now)."""
    for pid in workers:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    hurry = False
    while workers:
        _reap(workers)
        left = deadline - time.monotonic()
        if not workers:
            break
        if left <= 0 or hurry:
            for pid in workers:
                if not hurry:
                    log.warning("worker %d did not stop within %g s: killed", pid, grace)
                _signal(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
            workers.clear()
            break
        info = signal.sigtimedwait(_WATCHED, min(left, 0.5))
        hurry = info is not None and info.si_signo in _STOP


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
