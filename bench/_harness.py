"""Process plumbing for the benchmarks: one child process per peer, results over pipes.

Every child is started with the ``fork`` method (the parent never creates an event loop or a
zmq context, so forking is safe and a child starts in milliseconds), reports what it measured
as a dict, and is ended by its PID if it outlives its deadline.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import resource
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from typing import Any

HOST = "127.0.0.1"
CTX = mp.get_context("fork")

PeerFn = Callable[..., dict[str, Any]]


class BenchError(RuntimeError):
    """A benchmark could not produce a result (a peer failed or timed out)."""


@dataclass
class Case:
    """One measurement: a server peer and a client peer, each run in its own process."""

    server: PeerFn
    client: PeerFn
    params: dict[str, Any] = field(default_factory=dict)
    pin: int | None = None  # pin both processes to this CPU
    timeout: float = 30.0


def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE to the hard limit (idle-connection tests open thousands)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _child(fn: PeerFn, pipe: Pipe, params: dict[str, Any], pin: int | None) -> None:
    if pin is not None:
        os.sched_setaffinity(0, {pin})
    raise_nofile()
    try:
        result = fn(pipe, **params)
        pipe.send(("result", result))
    except BaseException:
        pipe.send(("error", traceback.format_exc()))
    finally:
        pipe.close()


class Peer:
    """A running child process and the parent's end of its pipe."""

    def __init__(self, fn: PeerFn, params: dict[str, Any], pin: int | None) -> None:
        self.name = getattr(fn, "__name__", "peer")
        self.pipe, child_end = CTX.Pipe()
        self.proc = CTX.Process(target=_child, args=(fn, child_end, params, pin), daemon=True)
        self.proc.start()
        child_end.close()

    def expect(self, kind: str, deadline: float) -> Any:
        """Wait for a message of ``kind`` until ``deadline`` (a time.monotonic value)."""
        remaining = max(deadline - time.monotonic(), 0.0)
        if not self.pipe.poll(remaining):
            raise BenchError(f"{self.name}: no {kind!r} within the time limit")
        try:
            got, value = self.pipe.recv()
        except EOFError:
            raise BenchError(f"{self.name}: exited without reporting {kind!r}") from None
        if got == "error":
            raise BenchError(f"{self.name} failed:\n{value}")
        if got != kind:
            raise BenchError(f"{self.name}: expected {kind!r}, got {got!r}")
        return value

    def send(self, value: Any) -> None:
        """Send a command to the child."""
        self.pipe.send(value)

    def end(self) -> None:
        """Let the child exit on its own for a moment, then end it by its PID."""
        self.proc.join(2.0)
        if self.proc.is_alive() and self.proc.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.join(2.0)
        self.pipe.close()


def _busy_seconds() -> float:
    """CPU seconds all processors of the machine have spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class LoadMeter:
    """CPU used by processes other than this one and its children while a case runs.

    Other work on the machine (a test suite, a build) steals cores from the two peers and
    skews the numbers; a figure well above 0.1 cores marks a measurement to repeat.
    """

    def __init__(self) -> None:
        self.wall = time.monotonic()
        self.busy = _busy_seconds()
        self.own = self._own()

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def stop(self) -> float:
        """Cores used by other processes on average (0.0 on an idle machine)."""
        wall = time.monotonic() - self.wall
        other = (_busy_seconds() - self.busy) - (self._own() - self.own)
        return max(other, 0.0) / wall if wall > 0 else 0.0


def wait_quiet(max_load: float, budget: float, step: float = 0.25) -> tuple[float, float]:
    """Wait (at most ``budget`` seconds) until other processes use at most ``max_load`` cores.

    Returns the last load seen and the seconds spent waiting.
    """
    start = time.monotonic()
    while True:
        meter = LoadMeter()
        time.sleep(step)
        load = meter.stop()
        waited = time.monotonic() - start
        if load <= max_load or waited + step > budget:
            return load, waited


def run_case(case: Case) -> tuple[dict[str, Any], dict[str, Any]]:
    """Start the server peer, then the client with the server's address; return both results.

    The client's result also gets ``other_load``: cores used by other processes meanwhile.
    """
    meter = LoadMeter()
    server_result, client_result = _run_peers(case)
    return server_result, {**client_result, "other_load": meter.stop()}


def _run_peers(case: Case) -> tuple[dict[str, Any], dict[str, Any]]:
    deadline = time.monotonic() + case.timeout
    server = Peer(case.server, case.params, case.pin)
    client: Peer | None = None
    try:
        address = server.expect("ready", time.monotonic() + 15.0)
        client = Peer(case.client, {**case.params, "address": address}, case.pin)
        client_result = client.expect("result", deadline)
        with contextlib.suppress(OSError):
            server.send("stop")  # servers that run until told to stop (connection churn)
        server_result = server.expect("result", deadline)
        return server_result, client_result
    finally:
        if client is not None:
            client.end()
        server.end()


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB, from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS line for process {pid}")


class CpuClock:
    """Wall time and this process's CPU time (all threads) over a measured window."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def stop(self) -> dict[str, float]:
        """Elapsed seconds and the CPU share used (1.0 = one core busy all the time)."""
        wall = time.perf_counter() - self.wall
        cpu = time.process_time() - self.cpu
        return {"elapsed": wall, "cpu": cpu / wall if wall > 0 else 0.0}


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    """p50, p99 and mean of round-trip samples, in microseconds."""
    ordered = sorted(samples_ns)
    n = len(ordered)
    if not n:
        raise BenchError("no latency samples")

    def pick(q: float) -> float:
        return ordered[min(n - 1, int(q * n))] / 1000.0

    return {"p50_us": pick(0.50), "p99_us": pick(0.99), "mean_us": sum(ordered) / n / 1000.0}
