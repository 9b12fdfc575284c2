"""Plot ``bench/throughput.py --json`` figures: events/s against batch size, and the half-load latency.

    .venv/bin/pip install -e '.[bench]'     # matplotlib
    .venv/bin/python bench/throughput.py --events 1000 --sweep 1,10,50,100,200 --json throughput.json
    .venv/bin/python bench/plot_throughput.py throughput.json bench/throughput.png
    .venv/bin/python bench/plot_throughput.py run1.json run2.json run3.json -o bench/throughput.png

Two panels, one PNG: (1) payrecon's events/s per batch size, with the Celery no-op floor of the same run as
a horizontal line (log scale: the floor is an order of magnitude above); (2) enqueue→settled p50, p95 and
p99 at half load per batch size. Several JSON files (runs of the same command) are drawn side by side,
one shade per run. A run without ``--batch-size`` or ``--sweep`` (the project's default) is labelled
"default".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter, NullLocator

PERCENTILES = (("p50_ms", "p50", "-", "o"), ("p95_ms", "p95", "--", "s"), ("p99_ms", "p99", ":", "^"))


def _positions(reports: list[dict[str, Any]]) -> tuple[dict[int | None, float], bool]:
    """An x position per batch size: the size itself (log axis) when every size is a number, else evenly
    spaced categories with "default" first."""
    sizes = {run["batch_size"] for report in reports for run in report["runs"]}
    if None not in sizes:
        return {size: float(size) for size in sizes}, True
    ordered = [None, *sorted(s for s in sizes if s is not None)]
    return {size: float(i) for i, size in enumerate(ordered)}, False


def _label(size: int | None) -> str:
    return "default" if size is None else str(size)


def _x_axis(ax: Axes, positions: dict[int | None, float], numeric: bool) -> None:
    if numeric:
        ax.set_xscale("log")
    ax.set_xticks(sorted(positions.values()))
    ax.set_xticklabels([_label(size) for size, _ in sorted(positions.items(), key=lambda item: item[1])])
    ax.xaxis.set_minor_locator(NullLocator())  # the log axis's minor ticks would label 20, 30, ...
    ax.set_xlabel("batch size (PAYRECON_BATCH_SIZE)")
    ax.grid(True, which="major", alpha=0.3)


def plot(reports: list[dict[str, Any]], out: Path) -> None:
    positions, numeric = _positions(reports)
    fig, (rate_ax, latency_ax) = plt.subplots(1, 2, figsize=(12, 4.8))
    colours = plt.get_cmap("tab10")
    for i, report in enumerate(reports):
        runs = sorted(report["runs"], key=lambda run: positions[run["batch_size"]])
        xs = [positions[run["batch_size"]] for run in runs]
        colour = colours(i % 10)
        name = f"run {i + 1}" if len(reports) > 1 else "payrecon"
        rate_ax.plot(xs, [run["events_per_s"] for run in runs], "o-", color=colour, label=f"{name}: events/s")
        floor = report["noop_floor"]["events_per_s"]
        rate_ax.axhline(floor, color=colour, linestyle="--", linewidth=1, label=f"{name}: no-op floor {floor:.0f}/s")
        for key, percentile, style, marker in PERCENTILES:
            points = [(x, run["half_load"][key]) for x, run in zip(xs, runs, strict=True) if run.get("half_load")]
            if points:
                label = f"{name}: {percentile}" if len(reports) > 1 else percentile
                latency_ax.plot(*zip(*points, strict=True), marker=marker, linestyle=style, color=colour, label=label)
    settings = reports[0]["settings"]
    latency_ms = settings["latency_s"] * 1000
    latency_ax.axhline(latency_ms, color="grey", linewidth=1, label=f"provider answer time {latency_ms:.0f} ms")
    rate_ax.set_yscale("log")
    plain = FuncFormatter(lambda value, _pos: f"{value:g}")  # 600, not 6 x 10^2
    rate_ax.yaxis.set_major_formatter(plain)
    rate_ax.yaxis.set_minor_formatter(plain)
    rate_ax.set_ylabel("events/s (log)")
    rate_ax.set_title("Throughput: verified and settled events/s")
    latency_ax.set_ylabel("enqueue → settled (ms)")
    latency_ax.set_ylim(bottom=0)
    latency_ax.set_title("Latency at half of the measured rate")
    for ax in (rate_ax, latency_ax):
        _x_axis(ax, positions, numeric)
        ax.legend(fontsize="small")
    dates = sorted({report["date"][:10] for report in reports})
    fig.suptitle(
        f"bench/throughput.py: {settings['events']} events, provider {latency_ms:.0f} ms, "
        f"{settings['processes']} x {settings['threads']} threads; {reports[0]['machine']['cpus']} cores; "
        f"{', '.join(dates)}",
        fontsize="medium",
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, help="JSON files of bench/throughput.py --json, then the PNG")
    parser.add_argument("-o", "--output", type=Path, help="the PNG to write (instead of a last argument .png)")
    args = parser.parse_args()
    inputs = [p for p in args.files if p.suffix != ".png"]
    out = args.output or next((p for p in args.files if p.suffix == ".png"), None)
    if out is None or not inputs:
        parser.error("give one or more JSON files and the PNG to write (a last argument ending in .png, or -o)")
    plot([json.loads(p.read_text()) for p in inputs], out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
