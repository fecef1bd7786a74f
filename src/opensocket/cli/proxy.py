"""``opensocket proxy LISTEN UPSTREAM``: a fault-injecting, frame-inspecting proxy, and
``opensocket proxy ctl CONTROL_URL ACTION``: change its faults while it runs."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Final

from .. import aio
from ..address import parse_address
from ..errors import ConfigError
from ..proxy import KINDS, Fault, Proxy, make_fault
from ..proxy._units import parse_duration, parse_size
from ..proxy.control import ControlClient
from ..proxy.inspect import FrameRecord, format_record
from ._common import add_uvloop_arg, print_json, stop_on_signals

__all__ = ["HELP", "HELPS", "configure", "execute"]

HELP: Final = "a TCP/UDP proxy that injects faults (latency, resets, loss...) and shows frames"
HELPS: Final = {
    "proxy": HELP,
    "proxy ctl": "add, list and clear a running proxy's faults; show its counters",
}

_PROXY_EPILOG: Final = """\
LISTEN and UPSTREAM are tcp:// (or unix://) for streams, udp:// for datagrams. Faults given
here are in force from the start; --direction (up = client to upstream, down = upstream to
client, both) and --probability apply to each of them. Offsets and byte counts are per
connection and direction, from the connection's start. Change faults at run time through
--control with 'opensocket proxy ctl', or from Python (opensocket.proxy.Proxy).

--inspect prints every opensocket frame crossing the proxy (direction, connection, type,
flags, length, decoded payload); a stream that is not opensocket frames (TLS, HTTP...) is
said so once and passed through untouched. Runs until Ctrl-C or SIGTERM, then prints the
counters.

examples:
  opensocket proxy tcp://127.0.0.1:9001 tcp://127.0.0.1:9000 --latency 50ms --jitter 5ms
  opensocket proxy tcp://127.0.0.1:9001 tcp://127.0.0.1:9000 --reset-after-bytes 1000 \\
      --direction down
  opensocket proxy udp://127.0.0.1:9003 udp://127.0.0.1:9002 --loss 0.1 --seed 1
  opensocket proxy rudp://127.0.0.1:9005 rudp://127.0.0.1:9004 --loss 0.1   # reliable UDP
  opensocket proxy tcp://127.0.0.1:9001 tcp://127.0.0.1:9000 --inspect --json
  opensocket proxy tcp://127.0.0.1:9001 tcp://127.0.0.1:9000 --control unix:///tmp/px.sock
  opensocket proxy ctl unix:///tmp/px.sock add latency --delay 100ms --direction up
"""

_CTL_EPILOG: Final = """\
actions: add KIND [parameters], list, clear [ID], stats, info. Kinds and their parameters:
  latency --delay --jitter | bandwidth --rate BYTES/S | reset, close --nbytes --seconds
  stall | corrupt --offset --xor | loss, duplicate --rate | reorder --rate --hold
each with --direction up|down|both and --probability P.

examples:
  opensocket proxy ctl unix:///tmp/px.sock add latency --delay 50ms --jitter 5ms
  opensocket proxy ctl unix:///tmp/px.sock add reset --nbytes 1000 --direction down
  opensocket proxy ctl tcp://127.0.0.1:9100 add loss --rate 0.2
  opensocket proxy ctl unix:///tmp/px.sock list
  opensocket proxy ctl unix:///tmp/px.sock clear 2
  opensocket proxy ctl unix:///tmp/px.sock stats --json
"""


def configure(parser: argparse.ArgumentParser, name: str = "proxy") -> None:
    """Arguments of ``proxy`` or ``proxy ctl``."""
    if name == "proxy ctl":
        _configure_ctl(parser)
        return
    parser.epilog = _PROXY_EPILOG
    parser.add_argument(
        "listen", metavar="LISTEN", help="address to listen on: tcp://, unix://, udp:// or rudp://"
    )
    parser.add_argument("upstream", metavar="UPSTREAM", help="address to forward to")
    faults = parser.add_argument_group("faults in force from the start")
    faults.add_argument("--latency", metavar="TIME", help="added delay, e.g. 50ms")
    faults.add_argument("--jitter", metavar="TIME", help="± random part of the delay")
    faults.add_argument("--bandwidth", metavar="RATE", help="bytes per second, e.g. 64k")
    faults.add_argument("--reset-after-bytes", type=int, metavar="N", help="RST after N bytes")
    faults.add_argument("--reset-after", metavar="TIME", help="RST after TIME")
    faults.add_argument("--close-after-bytes", type=int, metavar="N", help="FIN after N bytes")
    faults.add_argument("--close-after", metavar="TIME", help="FIN after TIME")
    faults.add_argument("--stall", action="store_true", help="forward nothing until cleared")
    faults.add_argument("--corrupt", type=int, metavar="OFFSET", help="flip the byte at OFFSET")
    faults.add_argument(
        "--xor", type=_byte, default=0xFF, metavar="MASK", help="XOR mask for --corrupt (0xff)"
    )
    faults.add_argument("--loss", type=float, metavar="P", help="UDP: drop with chance P")
    faults.add_argument("--duplicate", type=float, metavar="P", help="UDP: send twice")
    faults.add_argument("--reorder", type=float, metavar="P", help="UDP: swap with the next")
    _add_scope_args(faults)
    parser.add_argument("--seed", type=int, help="seed the RNG: random faults repeat")
    parser.add_argument("--control", metavar="URL", help="serve the control protocol here")
    parser.add_argument("--inspect", action="store_true", help="print opensocket frames")
    parser.add_argument("--json", action="store_true", help="JSON lines output")
    add_uvloop_arg(parser)


def _byte(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r} (e.g. 0xff or 1)") from None


def _add_scope_args(group: Any) -> None:
    group.add_argument(
        "--direction",
        choices=("up", "down", "both"),
        default="both",
        help="up: client to upstream, down: upstream to client (default: both)",
    )
    group.add_argument(
        "--probability", type=float, default=1.0, metavar="P", help="chance a fault applies"
    )


def _configure_ctl(parser: argparse.ArgumentParser) -> None:
    parser.epilog = _CTL_EPILOG
    parser.add_argument("control", metavar="CONTROL_URL", help="the proxy's --control address")
    parser.add_argument("--json", action="store_true", help="print the reply as JSON")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="S", help="(default: 5)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = actions.add_parser("add", help="add a fault")
    add.add_argument("kind", choices=KINDS, metavar="KIND", help=", ".join(KINDS))
    add.add_argument("--delay", metavar="TIME")
    add.add_argument("--jitter", metavar="TIME")
    add.add_argument("--rate", metavar="R", help="bytes/s (bandwidth) or a fraction")
    add.add_argument("--nbytes", type=int, metavar="N")
    add.add_argument("--seconds", metavar="TIME")
    add.add_argument("--offset", type=int, metavar="N")
    add.add_argument("--xor", type=_byte, metavar="MASK")
    add.add_argument("--hold", metavar="TIME")
    _add_scope_args(add)
    listing = actions.add_parser("list", help="list the faults in force")
    clear = actions.add_parser("clear", help="remove one fault (or all)")
    clear.add_argument("id", type=int, nargs="?", metavar="ID", help="default: every fault")
    stats = actions.add_parser("stats", help="connections, bytes, drops...")
    info = actions.add_parser("info", help="the proxy's addresses")
    for sub in (add, listing, clear, stats, info):
        # --json also after the action ('ctl URL stats --json'); SUPPRESS keeps an earlier one
        sub.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="JSON")


def execute(args: argparse.Namespace) -> int:
    """Run the proxy, or one control request."""
    if args.command == "proxy ctl":
        return _run_ctl(args)
    return _run_proxy(args)


# ---- the proxy -------------------------------------------------------------------------------


def startup_faults(args: argparse.Namespace) -> list[Fault]:
    """The faults the command line asks for, validated."""
    scope = {"direction": args.direction, "probability": args.probability}
    faults = []
    if args.latency is not None or args.jitter is not None:
        delay = parse_duration(args.latency or 0, "--latency")
        jitter = parse_duration(args.jitter or 0, "--jitter")
        faults.append(make_fault("latency", delay=delay, jitter=jitter, **scope))
    if args.bandwidth is not None:
        faults.append(make_fault("bandwidth", rate=parse_size(args.bandwidth), **scope))
    for kind in ("reset", "close"):
        nbytes = getattr(args, f"{kind}_after_bytes")
        after = getattr(args, f"{kind}_after")
        if nbytes is not None or after is not None:
            seconds = None if after is None else parse_duration(after, f"--{kind}-after")
            faults.append(make_fault(kind, nbytes=nbytes, seconds=seconds, **scope))
    if args.stall:
        faults.append(make_fault("stall", **scope))
    if args.corrupt is not None:
        faults.append(make_fault("corrupt", offset=args.corrupt, xor=args.xor, **scope))
    for kind in ("loss", "duplicate", "reorder"):
        rate = getattr(args, kind)
        if rate is not None:
            faults.append(make_fault(kind, rate=rate, **scope))
    return faults


def _check(proxy: Proxy, faults: list[Fault], inspect: bool) -> None:
    """Refuse what does not apply before anything is bound (the same check as 'ctl add')."""
    for fault in faults:
        proxy.check_fault(fault)
    if inspect and proxy.is_datagram:
        raise ConfigError("--inspect decodes opensocket frames on streams: use tcp:// or unix://")


def _printer(json_mode: bool) -> Any:
    def show(record: FrameRecord) -> None:
        if json_mode:
            print_json({"event": "note" if "note" in record else "frame", **record})
        else:
            sys.stdout.write(format_record(record) + "\n")
            sys.stdout.flush()

    return show


def _describe(fault: Fault) -> str:
    params = " ".join(f"{k}={v}" for k, v in fault.to_json().items() if k not in ("kind",))
    return f"{fault.kind} {params}"


def _announce(args: argparse.Namespace, proxy: Proxy, faults: list[Fault]) -> None:
    control = str(proxy.control_address) if proxy.control_address else None
    if args.json:
        print_json(
            {
                "event": "listening",
                "listen": proxy.url,
                "upstream": str(proxy.upstream),
                "control": control,
                "faults": proxy.list_faults(),
            }
        )
        return
    lines = [f"proxy {proxy.url} -> {proxy.upstream}"]
    lines += [f"  fault {fid}: {_describe(f)}" for fid, f in proxy.faults.items()]
    if control:
        lines.append(f"  control: opensocket proxy ctl {control} list")
    print("\n".join(lines), flush=True)


def _report(args: argparse.Namespace, stats: dict[str, Any]) -> None:
    if args.json:
        print_json({"event": "stopped", "stats": stats})
        return
    up, down = stats["up"], stats["down"]
    print(
        f"stopped: {stats['connections']} connections, {up['bytes_out']} bytes up, "
        f"{down['bytes_out']} bytes down, {stats['resets']} resets, {stats['closes']} closes, "
        f"{up['dropped'] + down['dropped']} dropped"
        + (
            f", {stats['upstream_failures']} upstream failures"
            if stats["upstream_failures"]
            else ""
        ),
        flush=True,
    )


def _run_proxy(args: argparse.Namespace) -> int:
    faults = startup_faults(args)
    proxy = Proxy(
        parse_address(args.listen),
        parse_address(args.upstream),
        seed=args.seed,
        inspect=_printer(args.json) if args.inspect else None,
        control=args.control,
    )
    _check(proxy, faults, args.inspect)

    async def main() -> None:
        with stop_on_signals() as stop:
            await proxy.start()
            try:
                for fault in faults:
                    proxy.add(fault)
                _announce(args, proxy, faults)
                await stop.wait()
            finally:
                await proxy.close()
        _report(args, proxy.stats)

    aio.run(main(), use_uvloop=not args.no_uvloop)
    return 0


# ---- proxy ctl -------------------------------------------------------------------------------


def _fault_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {"kind": args.kind, "direction": args.direction}
    params["probability"] = args.probability
    for key in ("delay", "jitter", "seconds", "hold"):
        value = getattr(args, key)
        if value is not None:
            params[key] = parse_duration(value, f"--{key}")
    if args.rate is not None:
        params["rate"] = _rate(args.kind, args.rate)
    for key in ("nbytes", "offset", "xor"):
        if getattr(args, key) is not None:
            params[key] = getattr(args, key)
    return params


def _rate(kind: str, text: str) -> float:
    if kind == "bandwidth":
        return parse_size(text, "--rate")
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--rate for {kind} is a fraction from 0 to 1 (got {text!r})") from None


def ctl_request(args: argparse.Namespace) -> dict[str, Any]:
    """The control request a ``proxy ctl`` command line stands for."""
    if args.action == "add":
        return {"action": "add", "fault": _fault_params(args)}
    if args.action == "clear":
        return {"action": "clear", "id": args.id}
    return {"action": args.action}


def _show_reply(action: str, reply: dict[str, Any]) -> str:
    if action == "add":
        return f"added fault {reply['id']}"
    if action == "clear":
        cleared = reply["cleared"]
        return f"cleared {', '.join(map(str, cleared))}" if cleared else "no such fault"
    if action == "list":
        faults = reply["faults"]
        if not faults:
            return "no faults"
        return "\n".join(
            f"{f['id']}: {f['kind']} "
            + " ".join(f"{k}={v}" for k, v in f.items() if k not in ("id", "kind"))
            for f in faults
        )
    body = {k: v for k, v in reply.items() if k != "ok"}
    return json.dumps(body.get("stats", body), indent=2)


def _run_ctl(args: argparse.Namespace) -> int:
    request = ctl_request(args)

    async def main() -> dict[str, Any]:
        async with ControlClient(args.control, timeout=args.timeout) as client:
            return await client.request(request)

    reply = aio.run(main(), use_uvloop=False)
    if args.json:
        print_json(reply)
    else:
        print(_show_reply(args.action, reply), flush=True)
    return 0
