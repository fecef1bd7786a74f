"""The HTTP benchmark's processes: web servers (opensocket, python -m http.server, nginx) started
on free loopback ports and ended by their PID, and the wrk and curl clients, each bounded in time.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _harness import HOST, BenchError

HERE = Path(__file__).resolve().parent
KIB = 1024
MIB = 1 << 20
SMALL_NAME = "1k.bin"
BIG_NAME = "big.bin"
SERVER_CPU = -1  # the server gets the last CPU, the client the first (when there are two)


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def cpus() -> list[int]:
    """The CPUs this process may run on, in order."""
    return sorted(os.sched_getaffinity(0))


def _pin(cpu: int | None) -> Callable[[], None] | None:
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def client_cpu() -> int | None:
    """The CPU for wrk and curl: another one than the server's when there are two or more."""
    found = cpus()
    return found[0] if len(found) > 1 else None


def server_cpu() -> int | None:
    """The CPU for the server under test."""
    found = cpus()
    return found[SERVER_CPU] if len(found) > 1 else None


# ---- the files and the certificate ---------------------------------------------------------


def make_site(tmp: Path, big: int) -> Path:
    """``www/`` with the 1 KiB file and the big file (readable by nginx's unprivileged worker)."""
    www = tmp / "www"
    www.mkdir()
    (www / SMALL_NAME).write_bytes(os.urandom(KIB))
    block = os.urandom(MIB)
    with open(www / BIG_NAME, "wb") as f:
        for _ in range(big // MIB):
            f.write(block)
    for path in (tmp, www):
        path.chmod(0o755)
    for name in (SMALL_NAME, BIG_NAME):
        (www / name).chmod(0o644)
    return www


def make_cert(tmp: Path) -> tuple[str, str, str]:
    """A development CA and a server certificate for 127.0.0.1: (ca, cert, key) paths."""
    from opensocket.certs import make_dev_certs

    made = make_dev_certs(tmp / "certs", hosts=("127.0.0.1", "localhost"))
    assert made.server_cert is not None
    assert made.server_key is not None
    return str(made.ca_cert), str(made.server_cert), str(made.server_key)


# ---- servers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server: ``argv(tmp, www, port, tls)`` for plain or TLS, or None."""

    key: str
    label: str
    argv: Callable[[Path, Path, int, bool], list[str]]
    tls: bool = True


def _opensocket_cli(tmp: Path, www: Path, port: int, tls: bool) -> list[str]:
    scheme = "https" if tls else "http"
    argv = [sys.executable, "-m", "opensocket", "http", "serve", str(www), "--quiet"]
    argv += ["--listen", f"{scheme}://{HOST}:{port}"]
    if tls:
        argv += ["--tls-cert", str(tmp / "certs/server.pem")]
        argv += ["--tls-key", str(tmp / "certs/server-key.pem")]
    return argv


def _opensocket_runner(loop: str, *flags: str) -> Callable[[Path, Path, int, bool], list[str]]:
    def argv(tmp: Path, www: Path, port: int, tls: bool) -> list[str]:
        scheme = "https" if tls else "http"
        out = [sys.executable, str(HERE / "_http_serve.py"), str(www), f"{scheme}://{HOST}:{port}"]
        out += ["--loop", loop, *flags]
        if tls:
            out += ["--tls-cert", str(tmp / "certs/server.pem")]
            out += ["--tls-key", str(tmp / "certs/server-key.pem")]
        return out

    return argv


def _python_http(tmp: Path, www: Path, port: int, tls: bool) -> list[str]:
    return [sys.executable, "-m", "http.server", str(port), "-b", HOST, "-d", str(www)]


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    default_type application/octet-stream;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    server {{
        listen {host}:{port}{ssl};
        root {www};
        {tls}
    }}
}}
"""


def _nginx(tmp: Path, www: Path, port: int, tls: bool) -> list[str]:
    conf = tmp / f"nginx-{port}.conf"
    cert = tmp / "certs/server.pem"
    key = tmp / "certs/server-key.pem"
    tls_lines = f"ssl_certificate {cert};\n        ssl_certificate_key {key};" if tls else ""
    conf.write_text(
        NGINX_CONF.format(
            tmp=tmp, www=www, host=HOST, port=port, ssl=" ssl" if tls else "", tls=tls_lines
        )
    )
    return ["nginx", "-p", str(tmp), "-c", str(conf)]


# the CLI runs on uvloop by default (``--no-uvloop`` opts out), so its row is the uvloop one
OPENSOCKET = ServerSpec("opensocket", "opensocket http serve (uvloop)", _opensocket_cli)
OPENSOCKET_ASYNCIO = ServerSpec(
    "opensocket-asyncio", "opensocket (asyncio loop)", _opensocket_runner("asyncio")
)
OPENSOCKET_SENDFILE = ServerSpec(
    "opensocket-sendfile",
    "opensocket, sendfile (asyncio)",
    _opensocket_runner("asyncio", "--sendfile"),
    tls=False,
)
PYTHON_HTTP = ServerSpec("python", "python -m http.server", _python_http, tls=False)
NGINX = ServerSpec("nginx", "nginx (1 worker)", _nginx)


class Running:
    """A server process (and its children, for nginx) on ``port``; ended by its PID."""

    def __init__(self, spec: ServerSpec, tmp: Path, www: Path, tls: bool) -> None:
        self.spec = spec
        self.port = free_port()
        self.tls = tls
        self.log = tmp / f"{spec.key}-{self.port}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                spec.argv(tmp, www, self.port, tls),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=tmp,
                preexec_fn=_pin(server_cpu()),
            )
        self._wait_listening(15.0)

    @property
    def base(self) -> str:
        """The server's base URL."""
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}/"

    def _wait_listening(self, limit: float) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.spec.label} exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 0.5):
                return
            time.sleep(0.05)
        self.stop()
        raise BenchError(f"{self.spec.label} did not listen on {self.port} within {limit:.0f} s")

    def cpu_seconds(self) -> float:
        """CPU seconds the server and its live children have used (from /proc)."""
        return sum(_proc_cpu(pid) for pid in (self.proc.pid, *_children(self.proc.pid)))

    def stop(self) -> None:
        """SIGTERM (nginx and Python both exit on it), then SIGKILL by PID if it lingers."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5.0)
        except subprocess.TimeoutExpired:
            for pid in (*_children(self.proc.pid), self.proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.wait(5.0)


@contextlib.contextmanager
def running(spec: ServerSpec, tmp: Path, www: Path, tls: bool) -> Iterator[Running]:
    """A server for the duration of the block."""
    server = Running(spec, tmp, www, tls)
    try:
        yield server
    finally:
        server.stop()


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- clients ------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    found = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not found:
        raise BenchError(f"unreadable wrk latency {text!r}")
    return float(found[1]) * _UNITS[found[2]]


def wrk(url: str, connections: int, seconds: float) -> dict[str, Any]:
    """``wrk -t1 -cN -dS --latency``: requests/s, p50/p99 in ms, errors."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "5s", "--latency"]
    try:
        done = subprocess.run(
            [*argv, url],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
            preexec_fn=_pin(client_cpu()),
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk on {url} did not finish in time") from None
    out = done.stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    if done.returncode or not (rate and p50 and p99):
        raise BenchError(f"wrk on {url} failed ({done.returncode}): {out[-800:]}{done.stderr}")
    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(rate[1]),
        "p50_ms": _ms(p50[1]),
        "p99_ms": _ms(p99[1]),
        "errors": (errors[1] if errors else "") + (f" non-2xx {non2xx[1]}" if non2xx else ""),
    }


def curl_speed(url: str, cacert: str | None, size: int) -> float:
    """MB/s of one ``curl -o /dev/null`` download, checked for the full size."""
    argv = ["curl", "-sS", "--http1.1", "-o", "/dev/null", "--max-time", "120"]
    argv += ["-w", "%{speed_download} %{size_download} %{http_code}"]
    if cacert:
        argv += ["--cacert", cacert]
    try:
        done = subprocess.run(
            [*argv, url], capture_output=True, text=True, timeout=130, preexec_fn=_pin(client_cpu())
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"curl on {url} did not finish in time") from None
    fields = done.stdout.split()
    if done.returncode or len(fields) != 3 or fields[2] != "200" or int(fields[1]) != size:
        raise BenchError(f"curl on {url} failed ({done.returncode}): {done.stdout} {done.stderr}")
    return float(fields[0]) / 1e6
