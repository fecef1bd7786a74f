"""File transfer benchmark: one big file over loopback, opensocket next to iperf3, socat, nc and
bare Python socket pairs, all in the same run; plus the resume re-send fraction.

    python bench/transfer.py                      # 2 GiB, JSON in bench-transfer.json
    python bench/transfer.py --size-mib 256 --repeat 1 --json /tmp/t.json   # shortened
    python bench/transfer.py --baseline-src /tmp/old/src   # also the opensocket rows of
                                                           # another source tree: before/after
    python bench/transfer.py --size-mib 512 --only "opensocket tcp,iperf3 -l,dd" --no-resume

Every peer is a separate process. Times run from the sender's start to the receiver's exit
(the receiver has everything). Receivers that write (opensocket, socat-to-file) write into a
folder on the same file system as the source (``--dir``, default /dev/shm if it has room,
else /tmp); the others discard. The best of ``--repeat`` rounds is kept for each row (a round
runs every row once, so a load change on a shared machine hits all rows alike).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

GB = 1e9
PY = sys.executable
OPENSOCKET = [PY, "-m", "opensocket"]

BARE_RECEIVER = r"""
import socket, ssl, sys
port, size, certs = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", port)); ls.listen(1)
print("ready", flush=True)
conn, _ = ls.accept()
if certs != "-":
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs + "/server.pem", certs + "/server-key.pem")
    conn = ctx.wrap_socket(conn, server_side=True)
buf = memoryview(bytearray(1 << 20)); got = 0
while got < size:
    n = conn.recv_into(buf)
    if not n: break
    got += n
conn.close()
sys.exit(0 if got == size else 1)
"""

BARE_SENDER = r"""
import socket, ssl, sys
port, path, certs = int(sys.argv[1]), sys.argv[2], sys.argv[3]
import time
start = time.perf_counter()
sock = socket.create_connection(("127.0.0.1", port))
if certs != "-":
    ctx = ssl.create_default_context(cafile=certs + "/ca.pem")
    sock = ctx.wrap_socket(sock, server_hostname="localhost")
buf = bytearray(1 << 20); view = memoryview(buf)
with open(path, "rb", buffering=0) as f:
    while True:
        n = f.readinto(buf)
        if not n: break
        sock.sendall(view[:n])
sock.shutdown(socket.SHUT_WR)  # then drain (TLS session tickets): a close with unread data
while sock.recv(65536):        # would reset the connection and lose the receiver's tail
    pass
sock.close()
print(time.perf_counter() - start)
"""


def free_port() -> int:
    """A loopback port free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[Any], budget: float = 15.0) -> None:
    """Wait until something listens on ``port`` (bounded)."""
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True)
        if out.stdout.strip():
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port} after {budget}s")


def timed_pair(
    server: list[str],
    client: list[str],
    port: int,
    inner: Callable[[str], float] | None = None,
    env: dict[str, str] | None = None,
) -> float:
    """Start ``server``, wait for its port, time ``client`` until both exited.

    ``inner`` reads the client's own measurement from its stdout instead (interpreter start-up
    and imports excluded: C tools start in a millisecond, Python with its imports in ~0.5 s).
    """
    srv = subprocess.Popen(server, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        wait_port(port, srv)
        start = time.perf_counter()
        done = subprocess.run(
            client, check=True, capture_output=True, text=True, timeout=600, env=env
        )
        srv.wait(timeout=600)
        elapsed = time.perf_counter() - start
        if inner is not None:
            elapsed = inner(done.stdout)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    if srv.returncode not in (0, None):
        err = srv.stderr.read().decode() if srv.stderr else ""
        raise RuntimeError(f"{server[0]} failed: {err.strip()}")
    return elapsed


def _summary_seconds(stdout: str) -> float:
    return float(json.loads(stdout.strip().splitlines()[-1])["seconds"])


class Bench:
    """The file, the folders and the measurements."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.size = args.size_mib << 20
        self.repeat = args.repeat
        self.dir = Path(tempfile.mkdtemp(prefix="os-bench-transfer-", dir=args.dir))
        self.src = self.dir / "source.bin"
        self.dest = self.dir / "dest"
        self.certs = self.dir / "certs"
        self.rows: list[dict[str, Any]] = []
        self.plan: list[tuple[str, Callable[[], float], str]] = []
        self.baseline: str | None = args.baseline_src
        self.only: list[str] = [w for w in (args.only or "").split(",") if w]
        self.resume = not args.no_resume
        self.settle: float = args.settle

    def prepare(self) -> None:
        need = 3 * self.size + (64 << 20)
        free = shutil.disk_usage(self.dir).free
        if free < need:
            raise SystemExit(f"{self.dir}: {free >> 20} MiB free, the benchmark needs {need >> 20}")
        with open(self.src, "wb") as handle:
            block = os.urandom(1 << 20)
            for i in range(self.size >> 20):
                handle.write(block[:-8] + i.to_bytes(8, "big"))
        subprocess.run(
            [PY, "-m", "opensocket", "cert", "--dir", str(self.certs)],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def clean_dest(self) -> None:
        shutil.rmtree(self.dest, ignore_errors=True)
        self.dest.mkdir()
        # On a VM with free page reporting (virtio-balloon, Firecracker) the guest hands freed
        # pages back to the host after about 2 s, and touching them again costs several times a
        # normal page allocation: a writing row is fast or slow depending on how long ago the
        # previous row's file was deleted. A pause after the delete gives every row the same start.
        if self.settle:
            time.sleep(self.settle)

    def measure(self, name: str, run: Callable[[], float], note: str = "") -> None:
        """Add a row (unless ``--only`` leaves it out); ``execute`` runs it."""
        if not self.only or any(word in name for word in self.only):
            self.plan.append((name, run, note))

    def execute(self) -> None:
        """Run every row once per round, ``repeat`` rounds, and keep each row's best: rounds
        interleave the rows, so a load change on a shared machine hits all rows alike."""
        best: dict[str, float] = {}
        errors: dict[str, str] = {}
        for round_ in range(self.repeat):
            # every other round backwards: no row always runs first (after the file is made)
            for name, run, _note in self.plan if round_ % 2 == 0 else self.plan[::-1]:
                if name in errors:
                    continue
                self.clean_dest()
                try:
                    seconds = run()
                except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
                    errors[name] = str(exc)
                    continue
                best[name] = min(seconds, best.get(name, seconds))
        for name, _run, note in self.plan:
            if name in errors:
                self.rows.append({"name": name, "error": errors[name], "note": note})
            else:
                gbps = self.size / best[name] / GB
                self.rows.append({"name": name, "seconds": best[name], "gbps": gbps, "note": note})

    # -- the peers ---------------------------------------------------------------------------

    def opensocket(self, scheme: str, *extra: str, src: str | None = None) -> float:
        port = free_port()
        url = f"{scheme}://127.0.0.1:{port}"
        recv = [PY, "-m", "opensocket", "receive", "--listen", url, "--dir", str(self.dest)]
        send = [PY, "-m", "opensocket", "send", "--json", str(self.src)]
        if scheme == "tls":
            recv += ["--tls-cert", f"{self.certs}/server.pem"]
            recv += ["--tls-key", f"{self.certs}/server-key.pem"]
            send += [f"tls://localhost:{port}", "--tls-ca", f"{self.certs}/ca.pem"]
        else:
            send.append(url)
        flags = list(extra) or ["--no-code"]
        recv, send = [*recv, "-q", *flags], [*send, "-q", *flags]
        env = None if src is None else os.environ | {"PYTHONPATH": src}
        elapsed = timed_pair(recv, send, port, _summary_seconds, env)
        if (self.dest / "source.bin").stat().st_size != self.size:
            raise RuntimeError("opensocket: the received file has the wrong size")
        return elapsed

    def iperf3(self, *extra: str) -> float:
        port = free_port()
        server = ["iperf3", "-s", "-1", "-p", str(port)]
        client = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-n", str(self.size), "-J", *extra]
        srv = subprocess.Popen(server, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port, srv)
            out = subprocess.run(client, check=True, capture_output=True, text=True, timeout=600)
        finally:
            srv.wait(timeout=30)
        bps = json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]
        return float(self.size / (bps / 8))

    def socat(self, to_file: bool) -> float:
        port = free_port()
        sink = f"OPEN:{self.dest}/socat.bin,creat,trunc" if to_file else "OPEN:/dev/null"
        server = ["socat", "-u", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr", sink]
        client = ["socat", "-u", f"OPEN:{self.src}", f"TCP:127.0.0.1:{port}"]
        return timed_pair(server, client, port)

    def dd(self) -> float:
        """The floor of any transfer that writes the file: copy it locally (no network, no hash)."""
        start = time.perf_counter()
        subprocess.run(
            ["dd", f"if={self.src}", f"of={self.dest}/dd.bin", "bs=1M", "status=none"], check=True
        )
        return time.perf_counter() - start

    def nc(self) -> float:
        port = free_port()
        server = ["sh", "-c", f"nc -l 127.0.0.1 {port} > /dev/null"]
        client = ["sh", "-c", f"nc -N 127.0.0.1 {port} < {self.src}"]
        return timed_pair(server, client, port)

    def bare(self, tls: bool) -> float:
        port = free_port()
        certs = str(self.certs) if tls else "-"
        server = [PY, "-c", BARE_RECEIVER, str(port), str(self.size), certs]
        client = [PY, "-c", BARE_SENDER, str(port), str(self.src), certs]
        return timed_pair(server, client, port, lambda out: float(out.split()[-1]))

    def resume_fraction(self) -> dict[str, Any]:
        """Cut a transfer by killing the sender at about half, rerun: the re-sent fraction."""
        self.clean_dest()
        port = free_port()
        url = f"tcp://127.0.0.1:{port}"
        recv = [PY, "-m", "opensocket", "receive", "--listen", url, "--dir", str(self.dest)]
        recv += ["-q", "--no-code"]
        srv = subprocess.Popen(recv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port, srv)
        rate = max(self.size // 4, 1 << 20)  # about 2 s of transfer at this limit
        sender = subprocess.Popen(
            [*OPENSOCKET, "send", "-q", "--no-code", "--rate-limit", str(rate), str(self.src), url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        part = self.dest / ".source.bin.opensocket-part"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and sender.poll() is None:
            if part.exists() and part.stat().st_size >= self.size // 2:
                break
            time.sleep(0.01)
        sender.send_signal(signal.SIGKILL)
        sender.wait()
        srv.wait(timeout=60)
        arrived = part.stat().st_size
        port = free_port()
        url = f"tcp://127.0.0.1:{port}"
        recv[5] = url
        srv = subprocess.Popen(recv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port, srv)
        out = subprocess.run(
            [PY, "-m", "opensocket", "send", "--json", "-q", "--no-code", str(self.src), url],
            capture_output=True,
            text=True,
            check=True,
        )
        srv.wait(timeout=60)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        resent = self.size - result["resumed_bytes"] - (self.size - arrived)
        return {
            "arrived_before_kill": arrived,
            "resumed_bytes": result["resumed_bytes"],
            "data_bytes_second_run": result["data_bytes"],
            "resent_bytes": resent,
            "resent_fraction": resent / arrived if arrived else None,
        }

    def run_all(self) -> None:
        sources: list[tuple[str, str | None]] = [("", None)]
        if self.baseline:
            sources.append((" (baseline)", self.baseline))
        for tag, src in sources:
            run = functools.partial(self.opensocket, src=src)
            self.measure(f"opensocket tcp (verified, written){tag}", functools.partial(run, "tcp"))
            self.measure(
                f"opensocket tls (verified, written){tag}",
                functools.partial(run, "tls", "--timeout", "60"),
            )
            self.measure(
                f"opensocket tcp --code (AES-GCM){tag}",
                functools.partial(run, "tcp", "--code", "1-bench-code-phrase"),
            )
        self.measure("iperf3 -l 1M", lambda: self.iperf3("-l", "1M"), "no disk, no hash")
        self.measure("iperf3 (default -l)", lambda: self.iperf3(), "no disk, no hash")
        self.measure("socat -u FILE to file", lambda: self.socat(True), "writes, no hash")
        self.measure("socat -u FILE to /dev/null", lambda: self.socat(False), "no disk")
        self.measure("nc < FILE > /dev/null", self.nc, "no disk")
        self.measure("dd bs=1M FILE to file", self.dd, "local copy: no network, no hash")
        self.measure("python sendall/recv_into", lambda: self.bare(False), "no disk, no hash")
        self.measure("python ssl pair", lambda: self.bare(True), "no disk, no hash")
        self.execute()

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def free_page_reporting() -> bool:
    """True on a VM whose balloon takes freed guest pages back (virtio feature bit 5): new
    pages then cost much more to touch, and writing rows vary with what ran before them."""
    for device in Path("/sys/bus/virtio/devices").glob("*"):
        try:
            kind = (device / "device").read_text().strip()
            features = (device / "features").read_text().strip()
        except OSError:
            continue
        if kind == "0x0005" and len(features) > 5 and features[5] == "1":
            return True
    return False


def _by_name(rows: list[dict[str, Any]], name: str) -> float | None:
    for row in rows:
        if row["name"] == name and "gbps" in row:
            return float(row["gbps"])
    return None


def ratios(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """The targets of issue 6 as ratios measured in this run."""

    def ratio(a: str, b: str) -> float | None:
        x, y = _by_name(rows, a), _by_name(rows, b)
        return None if x is None or not y else x / y

    plain, tls = "opensocket tcp (verified, written)", "opensocket tls (verified, written)"
    return {
        "plain / iperf3 -l 1M (goal >= 0.5)": ratio(plain, "iperf3 -l 1M"),
        "plain / socat to file (goal >= 2)": ratio(plain, "socat -u FILE to file"),
        "plain / socat to /dev/null": ratio(plain, "socat -u FILE to /dev/null"),
        "plain / python sendall pair": ratio(plain, "python sendall/recv_into"),
        "plain / dd local copy (the write floor)": ratio(plain, "dd bs=1M FILE to file"),
        "tls / python ssl pair (goal >= 0.8)": ratio(tls, "python ssl pair"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=2048, help="file size (default 2048)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row, best kept")
    default_dir = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    parser.add_argument("--dir", default=default_dir, help=f"work folder (default {default_dir})")
    parser.add_argument("--json", default="bench-transfer.json", help="JSON report path")
    parser.add_argument(
        "--baseline-src",
        metavar="DIR",
        help="also run the opensocket rows with PYTHONPATH=DIR (another checkout's src folder)",
    )
    parser.add_argument(
        "--only",
        metavar="WORDS",
        help="run only the rows whose name contains one of these comma-separated words",
    )
    parser.add_argument("--no-resume", action="store_true", help="skip the resume measurement")
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="pause after clearing the destination before each row (VMs with free page "
        "reporting: 5 gives every writing row the same, cold, start)",
    )
    args = parser.parse_args()
    bench = Bench(args)
    console = Console(width=max(Console().width, 110))  # row names stay whole in a pipe
    try:
        bench.prepare()
        bench.run_all()
        resume = bench.resume_fraction() if bench.resume else {}
    finally:
        bench.close()
    table = Table(title=f"loopback transfer of {args.size_mib} MiB (best of {args.repeat})")
    for col in ("peer", "seconds", "GB/s", "note"):
        table.add_column(col)
    for row in bench.rows:
        if "error" in row:
            table.add_row(row["name"], "—", "error", row["error"][:60])
        else:
            table.add_row(row["name"], f"{row['seconds']:.3f}", f"{row['gbps']:.2f}", row["note"])
    console.print(table)
    found = ratios(bench.rows)
    for name, value in found.items():
        console.print(f"{name}: {'—' if value is None else f'{value:.2f}x'}")
    console.print(f"resume: {json.dumps(resume)}")
    if free_page_reporting() and not args.settle:
        console.print(
            "note: this VM hands freed pages back to its host (free page reporting): rows that "
            "write vary with what ran before them; --settle 5 gives them all the same start"
        )
    report = {
        "size_bytes": bench.size,
        "repeat": args.repeat,
        "dir": args.dir,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "load": os.getloadavg(),
        "settle": args.settle,
        "free_page_reporting": free_page_reporting(),
        "rows": bench.rows,
        "ratios": found,
        "resume": resume,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
