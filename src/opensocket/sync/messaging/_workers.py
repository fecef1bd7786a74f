"""A small thread pool for request handlers: daemon threads, and a bounded stop.

``concurrent.futures.ThreadPoolExecutor`` waits for a handler that never returns, at
``shutdown(wait=True)`` and again at interpreter exit, and raises when shut down from one of
its own workers: a replier's ``close()`` must do neither.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

__all__ = ["Workers"]

log = logging.getLogger("opensocket.messaging")


class Workers:
    """At most ``size`` daemon threads, started on demand, running queued jobs in order."""

    def __init__(self, size: int, name: str) -> None:
        if size < 1:
            raise ValueError(f"a worker pool needs at least 1 thread, not {size}")
        self.size = size
        self._name = name
        self._jobs: deque[Callable[[], None]] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._stopped = False

    def submit(self, job: Callable[[], None]) -> bool:
        """Queue ``job``; False (not queued) once stopped."""
        with self._cond:
            if self._stopped:
                return False
            self._jobs.append(job)
            if len(self._jobs) > self._idle and len(self._threads) < self.size:
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            else:
                self._cond.notify()
        return True

    @property
    def queued(self) -> int:
        """Jobs waiting for a free thread."""
        return len(self._jobs)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._stopped:
                    self._idle += 1
                    self._cond.wait()
                    self._idle -= 1
                if self._stopped:
                    return
                job = self._jobs.popleft()
            try:
                job()
            except Exception:  # jobs handle their own errors; this is a last resort
                log.exception("worker job failed")

    def stop(self, timeout: float) -> list[str]:
        """Drop the queued jobs and wait up to ``timeout`` seconds for the running ones
        (never for the calling thread: a job may stop its own pool). Returns the names of
        the threads still running (logged)."""
        with self._cond:
            self._stopped = True
            dropped = len(self._jobs)
            self._jobs.clear()
            self._cond.notify_all()
            threads = list(self._threads)
        if dropped:
            log.info("%s: %d queued job(s) dropped at stop", self._name, dropped)
        me = threading.current_thread()
        deadline = time.monotonic() + timeout
        for thread in threads:
            if thread is not me:
                thread.join(max(deadline - time.monotonic(), 0.0))
        left = [t.name for t in threads if t is not me and t.is_alive()]
        if left:
            log.warning(
                "%d handler(s) did not return within %gs and are left running: %s",
                len(left),
                timeout,
                ", ".join(left),
            )
        return left
