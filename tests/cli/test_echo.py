"""``opensocket echo`` and ``opensocket echo serve`` over real loopback sockets."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import opensocket
from opensocket import codecs
from opensocket.address import Address
from opensocket.cli import echo as echo_cli
from opensocket.cli import main
from tests.tlsutil import make_pki

from .conftest import CLI, WAIT, EchoServers, run_cli, socat_echo, tool

REPLY = re.compile(r"^reply 'hello' \d+\.\d{3} ms$")


# ---- subprocess: the framed server on tcp, udp and unix ---------------------------------------


def test_server_announces_every_address_with_its_port(echo_servers: EchoServers) -> None:
    info = echo_servers.info
    assert info["event"] == "listening"
    tcp, udp = echo_servers.urls["tcp"], echo_servers.urls["udp"]
    modes = {item["address"]: item["mode"] for item in info["listeners"]}
    assert modes == {tcp: "framed", udp: "udp", echo_servers.urls["unix"]: "framed"}
    assert [item["connect"] for item in info["listeners"]] == info["connect"]
    assert re.fullmatch(r"tcp://127\.0\.0\.1:[1-9]\d*", tcp)
    assert re.fullmatch(r"udp://127\.0\.0\.1:[1-9]\d*", udp)
    assert f"opensocket echo {tcp}" in info["connect"]
    assert f"opensocket echo {echo_servers.urls['unix']}" in info["connect"]


def test_client_process_counts_framed_replies(echo_servers: EchoServers) -> None:
    done = run_cli("echo", echo_servers.urls["tcp"], "--count", "3", "--interval", "0.01")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert len(lines) == 4
    assert all(REPLY.match(line) for line in lines[:3]), lines
    assert re.fullmatch(r"sent 3, received 3, lost 0, rtt min/avg/max [\d./]+ ms", lines[3])


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_every_codec_is_echoed(echo_servers: EchoServers, codec: str) -> None:
    lines = b'{"a": [1, 2]}\nnot json\n'
    done = run_cli("echo", echo_servers.urls["tcp"], "--codec", codec, "--json", input=lines)
    assert done.returncode == 0, done.stderr
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert [o["reply"] for o in out[:2]] == [{"a": [1, 2]}, "not json"]
    assert all(o["rtt_ms"] > 0 for o in out[:2])
    assert out[2]["sent"] == out[2]["received"] == 2
    assert out[2]["lost"] == 0
    assert set(out[2]["rtt_ms"]) == {"min", "avg", "max"}
    assert out[2]["exit"] == 0


def test_udp_echo_client_process(echo_servers: EchoServers) -> None:
    done = run_cli("echo", echo_servers.urls["udp"], "-c", "2", "-m", "hello")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert REPLY.match(lines[0])
    assert REPLY.match(lines[1])
    assert lines[2].startswith("sent 2, received 2, lost 0")


def test_unix_echo_reads_stdin_lines(echo_servers: EchoServers) -> None:
    done = run_cli("echo", echo_servers.urls["unix"], input=b"first\nsecond\n\xff\n")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert lines[0].startswith("reply 'first' ")
    assert lines[1].startswith("reply 'second' ")
    assert lines[2].startswith("reply '\\\\xff' ")  # undecodable bytes shown escaped
    assert lines[3].startswith("sent 3, received 3, lost 0")


def test_client_process_to_a_closed_port_exits_1(free_port: int) -> None:
    done = run_cli("echo", f"tcp://127.0.0.1:{free_port}", "--count", "1")
    assert done.returncode == 1
    assert b"nothing is listening" in done.stderr
    assert done.stderr.count(b"\n") == 1


def test_framed_client_to_a_byte_echo_suggests_raw(
    spawn: Any, free_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    socat_echo(spawn, f"TCP-LISTEN:{free_port},bind=127.0.0.1,reuseaddr")
    assert main(["echo", f"tcp://127.0.0.1:{free_port}", "-c", "1"]) == 1
    err = capsys.readouterr().err
    assert "not an opensocket server" in err
    assert "--raw" in err


# ---- in process: the client against the shared server ----------------------------------------


def test_in_process_client_json(
    echo_servers: EchoServers, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["echo", echo_servers.urls["tcp"], "--count", "2", "--message", "hi", "--json"]
    assert main([*argv, "--no-uvloop"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [o.get("reply") for o in out[:2]] == ["hi", "hi"]
    assert out[2]["sent"] == out[2]["received"] == 2


def test_in_process_client_reads_replaced_stdin(
    echo_servers: EchoServers, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"one\r\ntwo")))
    assert main(["echo", echo_servers.urls["udp"]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("reply 'one' ")
    assert lines[1].startswith("reply 'two' ")
    assert lines[2].startswith("sent 2, received 2, lost 0")


def test_missing_reply_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    """A peer that accepts and never answers: the reply times out, the run fails."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        assert main(["echo", url, "--raw", "-c", "1", "--timeout", "0.2"]) == 1
    captured = capsys.readouterr()
    assert "no reply within 0.2s" in captured.err
    assert captured.out.splitlines()[-1] == "sent 1, received 0, lost 1"


def test_raw_client_reports_a_closed_stream(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as closing:
        closing.bind(("127.0.0.1", 0))
        closing.listen()
        url = f"tcp://127.0.0.1:{closing.getsockname()[1]}"

        def accept_and_close() -> None:
            conn, _ = closing.accept()
            with conn:
                conn.recv(100)  # read the line first: closing with unread data would reset

        thread = threading.Thread(target=accept_and_close)
        thread.start()
        try:
            assert main(["echo", url, "--raw", "-c", "2"]) == 1
        finally:
            thread.join(10)
    captured = capsys.readouterr()
    assert "the server closed the stream" in captured.err
    assert captured.out.splitlines()[-1] == "sent 1, received 0, lost 1"


# ---- raw echo server with socat and nc as peers -----------------------------------------------


def test_raw_server_with_socat_and_nc(spawn: Any) -> None:
    server = spawn("echo", "serve", "tcp://127.0.0.1:0", "--raw", "--json")
    info = server.json_line()
    assert [item["mode"] for item in info["listeners"]] == ["raw"]
    assert info["connect"] == [f"opensocket echo {info['addresses'][0]} --raw"]
    port = info["addresses"][0].rsplit(":", 1)[1]
    blob = os.urandom(200_000) + b"\n"
    socat = spawn(tool("socat"), "-", f"TCP:127.0.0.1:{port}", stdin=blob, cli=False)
    assert socat.rest_bytes() == blob
    assert socat.wait() == 0
    nc = spawn(tool("nc"), "-N", "127.0.0.1", port, stdin=b"via nc\n", cli=False)
    assert nc.line() == "via nc\n"
    assert nc.wait() == 0
    assert server.stop() == 0
    summary = json.loads(server.rest())
    assert summary["event"] == "stopped"
    assert summary["connections"] == 2
    assert summary["bytes_in"] == summary["bytes_out"] == len(blob) + len(b"via nc\n")


def test_serve_raw_in_process_stops_on_sigint(
    free_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """socat retries until the server is up; once it is done, SIGINT stops the server."""
    socat = _start_socat(["-", f"TCP:127.0.0.1:{free_port},retry=100,interval=0.05"], b"ping\n")
    stopper = threading.Thread(target=_interrupt_after, args=(socat,))
    stopper.start()
    try:
        code = main(["echo", "serve", f"tcp://127.0.0.1:{free_port}", "--raw"])
    finally:
        stopper.join(10)
        echoed = _reap(socat)
    assert code == 0
    assert echoed == b"ping\n"
    out = capsys.readouterr().out
    assert f"echo server listening on tcp://127.0.0.1:{free_port} (raw bytes)" in out
    assert f"  opensocket echo tcp://127.0.0.1:{free_port} --raw" in out
    assert "1 connection, 0 messages, 5 bytes in, 5 bytes out" in out


def _start_socat(args: list[str], data: bytes) -> Any:
    proc = subprocess.Popen([tool("socat"), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(data)
    proc.stdin.close()
    return proc


def _interrupt_after(proc: Any) -> None:
    try:
        proc.wait(timeout=10)
    finally:
        os.kill(os.getpid(), signal.SIGINT)


def _reap(proc: Any) -> bytes:
    """Kill our socat if it still runs; return what it printed."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    with proc.stdout:
        data: bytes = proc.stdout.read()
    return data


# ---- in process: the framed server, TLS ------------------------------------------------------


def _run_server_in_process(argv: list[str], monkeypatch: pytest.MonkeyPatch, client: Any) -> int:
    """Run ``main(argv)``; once it has announced, ``client(service, commands, args)`` runs in
    a thread (``commands``: the connect commands it printed), then SIGINT stops the server."""
    started = threading.Event()
    announced_with: list[tuple[echo_cli.EchoService, list[str], Any]] = []
    announce = echo_cli._announce

    def announced(args: Any, service: echo_cli.EchoService, *rest: Any) -> None:
        announce(args, service, *rest)
        announced_with.append((service, echo_cli.connect_commands(args, service), args))
        started.set()

    errors: list[BaseException] = []

    def run_client() -> None:
        if not started.wait(10):
            return
        try:
            asyncio.run(client(*announced_with[0]))
        except BaseException as exc:
            errors.append(exc)
        finally:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(echo_cli, "_announce", announced)
    thread = threading.Thread(target=run_client)
    thread.start()
    try:
        code = main(argv)
    finally:
        thread.join(10)
    if errors:
        raise errors[0]
    return code


def test_framed_server_in_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], sock_path: str
) -> None:
    async def client(service: echo_cli.EchoService, commands: list[str], args: Any) -> None:
        tcp, unix = (str(a) for a in service.addresses)
        assert commands == [f"opensocket echo {tcp}", f"opensocket echo {unix}"]
        async with await opensocket.connect(tcp, codec="json") as conn:
            await conn.send({"n": 1})
            assert await conn.recv() == {"n": 1}
        async with await opensocket.connect(unix) as conn:
            await conn.send_many([b"a", b"b"])
            assert [await conn.recv(), await conn.recv()] == [b"a", b"b"]

    argv = ["echo", "serve", "tcp://127.0.0.1:0", f"unix://{sock_path}", "--json", "--no-uvloop"]
    assert _run_server_in_process(argv, monkeypatch, client) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["addresses"][1] == f"unix://{sock_path}"
    assert lines[1]["event"] == "stopped"
    assert lines[1]["connections"] == 2
    assert lines[1]["messages"] == 3
    assert not Path(sock_path).exists()


def test_mutual_tls_server_in_process_prints_a_working_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pki = make_pki(tmp_path)

    async def client(service: echo_cli.EchoService, commands: list[str], args: Any) -> None:
        """Connect with exactly the files that the printed command names."""
        words = commands[0].split()
        assert words[:3] == ["opensocket", "echo", str(service.addresses[0])]
        flags = dict(zip(words[3::2], words[4::2], strict=True))
        assert flags == {
            "--tls-ca": pki.ca_cert,
            "--tls-cert": pki.client_cert,
            "--tls-key": pki.client_key,
        }
        tls = opensocket.TLSOptions(
            ca_file=flags["--tls-ca"], cert_file=flags["--tls-cert"], key_file=flags["--tls-key"]
        )
        async with await opensocket.connect(words[2], tls=tls, codec="json") as conn:
            await conn.send(["secure"])
            assert await conn.recv() == ["secure"]

    argv = ["echo", "serve", "tls://127.0.0.1:0", "--tls-cert", pki.server_cert]
    argv += ["--tls-key", pki.server_key, "--tls-ca", pki.ca_cert, "--tls-client-auth", "required"]
    assert _run_server_in_process(argv, monkeypatch, client) == 0
    out = capsys.readouterr().out
    assert "(framed: bytes, json, msgpack)" in out
    assert "1 connection, 1 message," in out


def test_tls_hint_finds_the_ca_beside_the_certificate(tmp_path: Path) -> None:
    """Without --tls-ca the server's folder is searched for ca.pem ('opensocket cert' layout)."""
    pki = make_pki(tmp_path)
    args = main_parser_args(["echo", "serve", "tls://127.0.0.1:0", "--tls-cert", pki.server_cert])
    assert echo_cli._tls_flags(args) == [f"--tls-ca {pki.ca_cert}"]
    lone = tmp_path / "self-signed.pem"
    lone.write_bytes(Path(pki.server_cert).read_bytes())
    args = main_parser_args(["echo", "serve", "tls://127.0.0.1:0", "--tls-cert", str(lone)])
    assert echo_cli._tls_flags(args) == [f"--tls-ca {lone}"]


def main_parser_args(argv: list[str]) -> Any:
    from opensocket.cli import parse_args

    return parse_args(argv)


def test_wildcards_are_dialled_on_loopback() -> None:
    assert str(echo_cli.reachable_address(Address("tcp", "::", 9000))) == "tcp://127.0.0.1:9000"
    assert str(echo_cli.reachable_address(Address("udp", "0.0.0.0", 53))) == "udp://127.0.0.1:53"
    assert str(echo_cli.reachable_address(Address("tcp", "::1", 1))) == "tcp://[::1]:1"


def test_a_late_reply_is_skipped_not_misattributed(capsys: pytest.CaptureFixture[str]) -> None:
    """The peer answers the first line only together with the second one."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"tcp://127.0.0.1:{listener.getsockname()[1]}"

        def hold_then_answer_both() -> None:
            conn, _ = listener.accept()
            with conn, conn.makefile("rb") as lines:
                first = lines.readline()
                second = lines.readline()
                conn.sendall(first + second)
                lines.readline()  # until the client closes

        thread = threading.Thread(target=hold_then_answer_both)
        thread.start()
        try:
            argv = ["echo", url, "--raw", "--timeout", "0.2"]
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"first\nsecond\n")))
                assert main(argv) == 1
        finally:
            thread.join(10)
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].startswith("reply 'second' ")
    assert lines[1] == "sent 2, received 1, lost 1" or lines[1].startswith(
        "sent 2, received 1, lost 1, rtt"
    )
    assert captured.err.count("no reply within 0.2s") == 1


def test_a_closed_stdin_does_not_crash_the_loop(echo_servers: EchoServers) -> None:
    """With fd 0 closed, a socket would get it and libuv aborts when closing fd 0-2."""
    argv = ["sh", "-c", 'exec "$@" <&-', "sh", *CLI, "echo", echo_servers.urls["udp"], "-c", "1"]
    done = subprocess.run(argv, capture_output=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"reply 'hello' ")


# ---- codecs: only the installed ones by default; a narrowed server prints --codec --------------


def _hide_msgpack(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the msgpack package were not installed."""
    monkeypatch.setitem(codecs._REGISTRY, "msgpack", codecs._msgpack)
    monkeypatch.setitem(sys.modules, "msgpack", None)


def test_default_codecs_are_the_installed_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    assert echo_cli.default_codecs() == ("bytes", "json", "msgpack")  # dev installs msgpack
    _hide_msgpack(monkeypatch)
    assert echo_cli.default_codecs() == ("bytes", "json")


def test_server_without_msgpack_offers_bytes_and_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _hide_msgpack(monkeypatch)

    async def client(service: echo_cli.EchoService, commands: list[str], args: Any) -> None:
        assert service.protocol.codecs == ("bytes", "json")
        async with await opensocket.connect(str(service.addresses[0]), codec="json") as conn:
            await conn.send([1])
            assert await conn.recv() == [1]

    assert _run_server_in_process(["echo", "serve", "tcp://127.0.0.1:0"], monkeypatch, client) == 0
    assert "(framed: bytes, json)\n" in capsys.readouterr().out


def test_a_narrowed_server_prints_a_command_that_works(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--codec json: the printed command (run as printed) gets its echo; without the flag the
    client's default codec (bytes) is refused."""
    results: dict[str, Any] = {}

    async def client(service: echo_cli.EchoService, commands: list[str], args: Any) -> None:
        tcp, udp = (str(a) for a in service.addresses)
        assert commands == [f"opensocket echo {tcp} --codec json", f"opensocket echo {udp}"]
        words = shlex.split(commands[0])[1:]
        results["printed"] = await asyncio.to_thread(run_cli, *words, "-c", "1", "-m", '{"k": 1}')
        results["bare"] = await asyncio.to_thread(run_cli, "echo", tcp, "-c", "1")

    argv = ["echo", "serve", "tcp://127.0.0.1:0", "udp://127.0.0.1:0", "--codec", "json"]
    assert _run_server_in_process([*argv, "--json"], monkeypatch, client) == 0
    printed, bare = results["printed"], results["bare"]
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.startswith(b'reply {"k": 1} ')
    assert bare.returncode == 1
    assert b"codec" in bare.stderr
    announced = json.loads(capsys.readouterr().out.splitlines()[0])
    framed, datagrams = announced["listeners"]
    assert framed["mode"] == "framed"
    assert framed["codecs"] == ["json"]
    assert framed["connect"].endswith(" --codec json")
    assert datagrams == {
        "address": announced["addresses"][1],
        "mode": "udp",
        "connect": f"opensocket echo {announced['addresses'][1]}",
    }


def test_raw_and_udp_addresses_report_their_own_mode(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def client(service: echo_cli.EchoService, commands: list[str], args: Any) -> None:
        assert commands[1] == f"opensocket echo {service.addresses[1]}"  # no --raw for UDP

    argv = ["echo", "serve", "tcp://127.0.0.1:0", "udp://127.0.0.1:0", "--raw", "--json"]
    assert _run_server_in_process(argv, monkeypatch, client) == 0
    announced = json.loads(capsys.readouterr().out.splitlines()[0])
    assert [item["mode"] for item in announced["listeners"]] == ["raw", "udp"]
    assert announced["connect"][0].endswith(" --raw")


# ---- Ctrl-C: the summary so far, exit code 130 ------------------------------------------------


@pytest.mark.parametrize("json_mode", [False, True])
def test_ctrl_c_prints_the_summary_so_far(
    json_mode: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """The peer echoes two lines, then sends SIGINT to this process and echoes no more."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"tcp://127.0.0.1:{listener.getsockname()[1]}"

        def echo_two_then_interrupt() -> None:
            conn, _ = listener.accept()
            with conn, conn.makefile("rb") as lines:
                conn.sendall(lines.readline())
                conn.sendall(lines.readline())
                os.kill(os.getpid(), signal.SIGINT)
                while lines.readline():  # until the client closes
                    pass

        thread = threading.Thread(target=echo_two_then_interrupt)
        thread.start()
        try:
            argv = ["echo", url, "--raw", "-c", "1000", "-i", "0.01", "--timeout", "30"]
            assert main(argv + ["--json"] * json_mode) == 130
        finally:
            thread.join(WAIT)
    lines = capsys.readouterr().out.splitlines()
    if json_mode:
        summary = json.loads(lines[-1])
        assert summary["interrupted"] is True
        assert summary["exit"] == 130
        assert summary["received"] == 2
        assert summary["sent"] in (2, 3)
        assert len(lines) == 3
    else:
        assert re.fullmatch(r"sent [23], received 2, lost [01], rtt min/avg/max \S+ ms", lines[-1])
        assert len(lines) == 3


# ---- reliable UDP (rudp://) -------------------------------------------------------------------


def test_rudp_echo_server_and_client(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """rudp:// is served beside tcp://; the printed command reaches it, with any codec."""
    results: dict[str, Any] = {}

    async def client(service: echo_cli.EchoService, commands: list[str], args: Any) -> None:
        rudp = next(str(a) for a in service.addresses if a.is_rudp)
        assert f"opensocket echo {rudp}" in commands
        results["bytes"] = await asyncio.to_thread(run_cli, "echo", rudp, "-c", "2", "-m", "hi")
        results["json"] = await asyncio.to_thread(
            run_cli, "echo", rudp, "-c", "1", "--codec", "json", "-m", '{"k": 1}'
        )

    argv = ["echo", "serve", "tcp://127.0.0.1:0", "rudp://127.0.0.1:0", "--json"]
    assert _run_server_in_process(argv, monkeypatch, client) == 0
    assert results["bytes"].returncode == 0, results["bytes"].stderr
    assert results["bytes"].stdout.count(b"reply 'hi' ") == 2
    assert results["json"].stdout.startswith(b'reply {"k": 1} ')
    announced = json.loads(capsys.readouterr().out.splitlines()[0])
    assert [item["mode"] for item in announced["listeners"]] == ["framed", "rudp"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["echo", "rudp://127.0.0.1:9", "--raw"], "--raw does not apply to rudp://"),
        (["echo", "rudp://127.0.0.1:9", "--secret-env", "X"], "not to rudp:// addresses"),
        (["echo", "serve", "rudp://127.0.0.1:0", "--raw"], "--raw does not apply to rudp://"),
    ],
)
def test_rudp_refuses_stream_options(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_rudp_client_without_a_server_fails_fast(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert main(["echo", f"rudp://127.0.0.1:{port}", "-c", "1", "--timeout", "3"]) == 1
    assert "is the server running?" in capsys.readouterr().err


def _closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again on return: nothing listens


def test_udp_echo_to_a_closed_port_says_it_is_unreachable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"udp://127.0.0.1:{_closed_udp_port()}"
    assert main(["echo", url, "-c", "1", "--timeout", "0.3"]) == 1
    err = capsys.readouterr().err
    assert f"no reply within 0.3s: {url} answered 'port unreachable'" in err


def test_udp_connect_to_a_closed_port_exits_1() -> None:
    url = f"udp://127.0.0.1:{_closed_udp_port()}"
    done = subprocess.run(
        [*CLI, "connect", url, "--quit-after", "0.3"],
        input=b"hi\n",
        capture_output=True,
        timeout=WAIT,
    )
    assert done.returncode == 1
    assert f"{url} answered 'port unreachable'".encode() in done.stderr
