"""Plot ``bench/reconcile_scale.py`` runs: seconds against payments for each stage, with the floor.

    .venv/bin/pip install -e '.[bench]'     # matplotlib
    .venv/bin/python bench/reconcile_scale.py --payments 250000 --fees --reports > run-250k-1.txt
    .venv/bin/python bench/reconcile_scale.py --payments 1000000 --fees --reports > run-1m-1.txt
    .venv/bin/python bench/plot_reconcile.py run-*.txt -o bench/reconcile.png

Each file is one run's output as the bench prints it (its ``seeded N payments`` line and its last line,
``total_s= floor_s= ratio= fees_s= reports_s=``). One panel: import + match + classify, the floor measured in
the same run (COPY + classify into unindexed tables), the fees posted and the report files, one marker per
run and a line through each stage's median per size; issue #14's targets dotted (10 s for the fees and for
the reports, 2.2 x the floor for import + classify).
"""

from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

SEEDED = re.compile(r"^seeded (\d+) payments", re.MULTILINE)
LAST = re.compile(r"^total_s=(\S+) floor_s=(\S+) ratio=(\S+) fees_s=(\S+) reports_s=(\S+)$", re.MULTILINE)
#: (key in a run, label, marker)
STAGES = (
    ("total_s", "import + match + classify", "o"),
    ("floor_s", "floor: COPY + classify, unindexed", "v"),
    ("fees_s", "fees posted", "s"),
    ("reports_s", "report files (6)", "D"),
)
#: Issue #14's targets at 1,000,000 payments (seconds), drawn where they are absolute.
TARGETS = {"fees_s": 10.0, "reports_s": 10.0}
FLOOR_RATIO = 2.2


def read(path: Path) -> dict[str, float]:
    """One run: its payments and each stage's seconds (a stage not run is left out)."""
    text = path.read_text()
    seeded, last = SEEDED.search(text), LAST.search(text)
    if seeded is None or last is None:
        raise SystemExit(f"{path}: not the output of bench/reconcile_scale.py (no 'seeded' or last line)")
    run = {"payments": float(seeded.group(1))}
    for (key, _, _), value in zip(STAGES, (last.group(1), last.group(2), last.group(4), last.group(5)), strict=True):
        if value != "none":
            run[key] = float(value)
    return run


def plot(runs: list[dict[str, float]], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.get_cmap("tab10")
    sizes = sorted({run["payments"] for run in runs})
    for i, (key, label, marker) in enumerate(STAGES):
        points = [(run["payments"], run[key]) for run in runs if key in run]
        if not points:
            continue
        colour = colours(i)
        ax.scatter(*zip(*points, strict=True), marker=marker, color=colour, alpha=0.6)
        medians = [
            (n, statistics.median(v for p, v in points if p == n)) for n in sizes if any(p == n for p, _ in points)
        ]
        ax.plot(*zip(*medians, strict=True), color=colour, label=f"{label} (median)")
        if key in TARGETS:
            ax.hlines(TARGETS[key], sizes[0], sizes[-1], colors=colour, linestyles=":", linewidth=1)
        if key == "floor_s":  # import + classify must stay within 2.2 x the floor of the same run
            target = [(n, FLOOR_RATIO * v) for n, v in medians]
            ax.plot(*zip(*target, strict=True), color=colours(0), linestyle=":", linewidth=1,
                    label=f"{FLOOR_RATIO} x the floor (target of import + classify)")  # fmt: skip
    ax.set_xlabel("payments in the day")
    ax.set_ylabel("seconds")
    ax.set_xticks(sizes)
    ax.set_xticklabels([f"{int(n):,}" for n in sizes])
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(f"bench/reconcile_scale.py --fees --reports: {len(runs)} runs (dotted: the targets)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, help="outputs of bench/reconcile_scale.py, one run each")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args()
    plot([read(p) for p in args.files], args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
