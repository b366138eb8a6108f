"""PNG charts of a run, when matplotlib is installed (`pip install matplotlib`, or the `bench`
extra): `throughput.png` (each scenario's headline figure per path) and `latency.png` (p50, p90
and p99 per path for the scenarios that time each operation). Without matplotlib the run goes on
and the report says that the charts were skipped."""

from __future__ import annotations

import math
from pathlib import Path

PATH_COLOURS = {"direct": "#4c72b0", "pair": "#dd8452", "pair-mtls": "#c44e52",
                "haproxy": "#55a868"}


def draw(results: dict, out: Path) -> dict:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {"files": [], "note": "skipped: matplotlib is not installed "
                                     "(`pip install matplotlib`, or `pip install -e .[bench]`)"}
    measured = [s for s in results["scenarios"] if any(p.get("ok") for p in s.get("paths", []))]
    if not measured:
        return {"files": [], "note": "nothing was measured"}
    files = []
    files.append(_throughput(plt, measured, out / "throughput.png", results))
    timed = [s for s in measured if s.get("latency_key")]
    if timed:
        files.append(_latency(plt, timed, out / "latency.png", results))
    return {"files": [f.name for f in files], "note": None}


def _grid(plt, n: int, width: float = 4.2, height: float = 3.2):
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def _title(results: dict) -> str:
    m = results["machine"]
    return (f"pysidecar bench {results['started'][:10]} — {m['usable_cores']} cores, "
            f"{results['settings']['pinning'].split(':')[0]}")


def _throughput(plt, scenarios: list[dict], path: Path, results: dict) -> Path:
    fig, axes = _grid(plt, len(scenarios))
    for ax, scenario in zip(axes, scenarios, strict=False):
        entries = [p for p in scenario["paths"] if p.get("ok")]
        names = [p["path"] for p in entries]
        values = [p["figures"][scenario["rate_key"]] for p in entries]
        bars = ax.bar(names, values, color=[PATH_COLOURS.get(n, "#8172b2") for n in names])
        direct = next((p for p in entries if p["path"] == "direct"), None)
        for bar, entry in zip(bars, entries, strict=False):
            ratio = entry.get("vs_direct", {}).get("ratio")
            label = f"{ratio:.2f}×" if ratio is not None and direct is not entry else ""
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.set_title(scenario["name"], fontsize=10)
        ax.set_ylabel(scenario["rate_unit"], fontsize=8)
        ax.tick_params(labelsize=8)
    fig.suptitle(_title(results) + " — throughput (× direct on the bars)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _latency(plt, scenarios: list[dict], path: Path, results: dict) -> Path:
    fig, axes = _grid(plt, len(scenarios))
    points = ("p50", "p90", "p99")
    legend: dict[str, object] = {}
    for ax, scenario in zip(axes, scenarios, strict=False):
        entries = [p for p in scenario["paths"] if p.get("ok")]
        width = 0.8 / max(1, len(entries))
        for i, entry in enumerate(entries):
            lat = entry["figures"].get(scenario["latency_key"]) or {}
            xs = [j + (i - (len(entries) - 1) / 2) * width for j in range(len(points))]
            bars = ax.bar(xs, [lat.get(p, 0) / 1000 for p in points], width,
                          label=entry["path"], color=PATH_COLOURS.get(entry["path"], "#8172b2"))
            legend.setdefault(entry["path"], bars)
        ax.set_xticks(range(len(points)), points)
        ax.set_yscale("log")
        ax.set_title(scenario["name"], fontsize=10)
        ax.set_ylabel("ms", fontsize=8)
        ax.tick_params(labelsize=8)
    fig.suptitle(_title(results) + " — latency percentiles (log scale)", fontsize=10)
    fig.legend(list(legend.values()), list(legend), loc="upper right", ncol=len(legend),
               fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
