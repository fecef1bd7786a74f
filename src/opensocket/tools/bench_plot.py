"""Charts of a bench result: throughput (Mbit/s) over time, or messages/s for rate and rtt
tests, and a latency histogram for rtt tests.

Needs matplotlib (``pip install 'opensocket[plot]'``); draws with the Agg backend, so no
display is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .bench import BenchResult

__all__ = ["plot_result"]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'opensocket[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _value(entry: dict[str, Any], seconds: float, messages: bool) -> float:
    """Mbit/s, or messages per second for rate/rtt tests."""
    if messages:
        return entry["packets"] / seconds if seconds > 0 else 0.0
    return float(entry["bits_per_second"]) / 1e6


def _over_time(ax: Any, intervals: list[dict[str, Any]], title: str, messages: bool) -> None:
    """Throughput (or message rate) per stream and in total, one point per interval."""
    ends = [i["end"] for i in intervals]
    ids = sorted({s["id"] for i in intervals for s in i["streams"]})
    if len(ids) > 1:
        for sid in ids:
            values = [
                next((_value(s, i["seconds"], messages) for s in i["streams"] if s["id"] == sid), 0)
                for i in intervals
            ]
            ax.plot(ends, values, marker=".", linewidth=1, label=f"stream {sid}")
    ax.plot(
        ends,
        [_value(i["sum"], i["seconds"], messages) for i in intervals],
        marker="o",
        linewidth=2,
        label="total",
    )
    ax.set_xlabel("time (s)")
    ax.set_ylabel("messages/s" if messages else "Mbit/s")
    ax.set_title(title)
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")


def _latency(ax: Any, samples: list[float], summary: dict[str, Any] | None) -> None:
    """Histogram of round trips up to the 99.5th percentile, so that a few slow outliers do
    not squeeze the rest into one bar; how many lie beyond is written on the chart."""
    ordered = sorted(samples)
    top = ordered[min(len(ordered) - 1, int(len(ordered) * 0.995))]
    shown = [x for x in ordered if x <= top]
    ax.hist(shown, bins=min(60, max(10, len(shown) // 20)), color="tab:orange")
    if summary:
        for key, style in (("p50_ms", "-"), ("p99_ms", "--")):
            ax.axvline(summary[key], color="black", linestyle=style, label=key[:-3])
        ax.legend(fontsize="small")
    beyond = len(ordered) - len(shown)
    if beyond:
        ax.set_title(f"latency ({beyond} above {top:.3g} ms not shown; max {ordered[-1]:.3g} ms)")
    else:
        ax.set_title("latency")
    ax.set_xlabel("round trip (ms)")
    ax.set_ylabel("count")
    ax.grid(alpha=0.3)


def plot_result(result: BenchResult, path: str | Path) -> None:
    """Write a PNG of ``result`` to ``path``."""
    plt = _pyplot()
    params = result.data["start"]["params"]
    rtt = params["mode"] == "rtt" and bool(result.latencies_ms)
    fig, axes = plt.subplots(1, 2 if rtt else 1, figsize=(11 if rtt else 7, 4), squeeze=False)
    title = (
        f"{params['protocol']} {params['mode']}, {params['streams']} stream(s)"
        f"{', reverse' if params['reverse'] else ''}"
    )
    messages = params["mode"] != "throughput"
    _over_time(axes[0][0], result.data["intervals"], title, messages)
    if rtt:
        _latency(axes[0][1], result.latencies_ms, result.data["end"]["latency"])
    fig.tight_layout()
    try:
        fig.savefig(str(path), format="png", dpi=100)
    except OSError as exc:
        raise ConfigError(f"--plot: cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        plt.close(fig)
