"""Charts of a bench result: throughput over time, and a latency histogram for rtt tests.

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


def _throughput(ax: Any, intervals: list[dict[str, Any]], title: str) -> None:
    ends = [i["end"] for i in intervals]
    ids = sorted({s["id"] for i in intervals for s in i["streams"]})
    if len(ids) > 1:
        for sid in ids:
            values = [
                next((s["bits_per_second"] for s in i["streams"] if s["id"] == sid), 0.0) / 1e6
                for i in intervals
            ]
            ax.plot(ends, values, marker=".", linewidth=1, label=f"stream {sid}")
    ax.plot(
        ends,
        [i["sum"]["bits_per_second"] / 1e6 for i in intervals],
        marker="o",
        linewidth=2,
        label="total",
    )
    ax.set_xlabel("time (s)")
    ax.set_ylabel("Mbit/s")
    ax.set_title(title)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")


def _latency(ax: Any, samples: list[float], summary: dict[str, Any] | None) -> None:
    ax.hist(samples, bins=min(60, max(10, len(samples) // 20)), color="tab:orange")
    if summary:
        for key, style in (("p50_ms", "-"), ("p99_ms", "--")):
            ax.axvline(summary[key], color="black", linestyle=style, label=key[:-3])
        ax.legend(fontsize="small")
    ax.set_xlabel("round trip (ms)")
    ax.set_ylabel("count")
    ax.set_title("latency")
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
    _throughput(axes[0][0], result.data["intervals"], title)
    if rtt:
        _latency(axes[0][1], result.latencies_ms, result.data["end"]["latency"])
    fig.tight_layout()
    try:
        fig.savefig(str(path), format="png", dpi=100)
    except OSError as exc:
        raise ConfigError(f"--plot: cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        plt.close(fig)
