"""The benchmark's figures (matplotlib, Agg backend): one function per PNG, each taking the section's result.

A section that failed or was not run still gets its PNG, with the reason written on it, so the set of
files a run produces never changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # after use(): the backend must be chosen first
from matplotlib import ticker
from matplotlib.axes import Axes
from matplotlib.figure import Figure

DPI = 120
SLO_MS = 1000.0


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


class _PlainLogFormatter(ticker.LogFormatter):
    """matplotlib's choice of which log ticks to label, written as plain numbers (0.3, 1, 20)."""

    def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
        return f"{x:g}"


def _plain(axis: Any) -> None:
    """Tick labels as plain numbers, not powers of ten, on a log axis."""
    axis.set_major_formatter(ticker.FuncFormatter(lambda value, _pos: f"{value:g}"))
    axis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False))


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def placeholder(path: Path, title: str, reason: str) -> Path:
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, reason[:300], ha="center", va="center", wrap=True, fontsize=10)
    return _save(fig, path)


def latency_cdf(pipeline: dict[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 5))
    for row in pipeline["rates"]:
        values = sorted(v for v in row["latencies_ms"] if _finite(v))
        if not values:
            continue
        seconds = [v / 1000 for v in values]
        fractions = [(i + 1) / len(values) for i in range(len(values))]
        label = f"{row['rate_per_s']:g} studies/s offered ({row['completed']}/{row['offered']} completed)"
        ax.step(seconds, fractions, where="post", label=label)
    ax.axvline(SLO_MS / 1000, color="grey", linestyle="--", linewidth=1, label="1 s")
    ax.set_xscale("log")
    _plain(ax.xaxis)
    ax.set_xlabel("end-to-end latency, STOW acknowledged -> result available (s, log scale)")
    ax.set_ylabel("fraction of studies")
    ax.set_ylim(0, 1.02)
    ax.set_title("End-to-end latency CDF per open-loop arrival rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def throughput_p95(pipeline: dict[str, Any], path: Path) -> Path:
    rows = pipeline["rates"]
    offered = [r["rate_per_s"] for r in rows]
    completed = [r["completed"] / r["seconds"] for r in rows]
    p95_s = [r["p95_ms"] / 1000 if _finite(r["p95_ms"]) else float("nan") for r in rows]
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot(offered, offered, color="lightgrey", linestyle=":", label="completed = offered")
    ax.plot(offered, completed, marker="o", color="tab:blue", label="completed studies / sending time")
    ax.set_xlabel("offered load (studies/s, open loop)")
    ax.set_ylabel("completed studies/s (completed / sending time)", color="tab:blue")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    right: Axes = ax.twinx()
    right.plot(offered, p95_s, marker="s", color="tab:red", label="p95 latency")
    right.axhline(SLO_MS / 1000, color="tab:red", linestyle="--", linewidth=1, label="p95 target 1 s")
    right.set_yscale("log")
    _plain(right.yaxis)
    right.set_ylabel("p95 end-to-end latency (s, log scale)", color="tab:red")
    sustained = pipeline.get("max_sustained_rate_p95_under_1s")
    best = "none" if sustained is None else f"{sustained:g} studies/s"
    ax.set_title(f"Throughput and p95 latency vs offered load (highest rate with p95 < 1 s: {best})", fontsize=11)
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + right.get_legend_handles_labels()[1]
    ax.legend(handles, labels, fontsize=8, loc="upper left")
    return _save(fig, path)


def stage_breakdown(pipeline: dict[str, Any], path: Path) -> Path:
    stages = pipeline["stages"]
    if not stages:
        return placeholder(path, "Per-stage latency", "no telemetry events reached the data lake")
    names = sorted(stages, key=lambda s: stages[s].get("p50_ms", 0.0))
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.55 * len(names)))
    ys = list(range(len(names)))
    height = 0.4
    p50 = [stages[n].get("p50_ms", float("nan")) for n in names]
    p95 = [stages[n].get("p95_ms", float("nan")) for n in names]
    ax.barh([y - height / 2 for y in ys], p50, height, label="p50", color="tab:blue")
    ax.barh([y + height / 2 for y in ys], p95, height, label="p95", color="tab:orange")
    ax.set_yticks(ys, [f"{n} ({stages[n].get('events', 0):.0f})" for n in names])
    ax.set_xscale("log")
    _plain(ax.xaxis)
    ax.set_xlabel("milliseconds (log scale)")
    ax.set_title("Per-stage latency from the telemetry data lake (events in brackets)")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def inference(result: dict[str, Any], path: Path) -> Path:
    labels: list[str] = []
    values: list[float] = []
    colors: list[str] = []
    for batch, value in result["in_process_images_per_s"].items():
        labels.append(f"in-process\nbatch {batch}")
        values.append(value)
        colors.append("tab:grey")
    for callers, value in result["batcher"].items():
        labels.append(f"batcher->Triton\n{callers} caller{'' if callers == '1' else 's'}")
        values.append(value["images_per_s"])
        colors.append("tab:green")
    fig, ax = plt.subplots(figsize=(9, 4.5))
    bars = ax.bar(labels, values, color=colors)
    ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_ylabel("images/s")
    ax.set_title(
        f"Inference throughput, {result['model']} "
        f"(batcher@32 / in-process b32 = {result['ratio_batcher32_vs_in_process_b32']:.2f}, "
        f"batching gain = {result['batching_gain_32_vs_1']:.1f}x)",
        fontsize=10,
    )
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


#: file name -> (section it draws, title for its placeholder, function)
PLOTS: dict[str, tuple[str, str, Callable[[dict[str, Any], Path], Path]]] = {
    "latency_cdf.png": ("pipeline", "End-to-end latency CDF", latency_cdf),
    "throughput_p95.png": ("pipeline", "Throughput and p95 latency vs offered load", throughput_p95),
    "stage_breakdown.png": ("pipeline", "Per-stage latency", stage_breakdown),
    "inference.png": ("inference", "Inference throughput", inference),
}


def draw_all(results: dict[str, Any], out: Path) -> dict[str, str]:
    """Every PNG in :data:`PLOTS` under ``out``; returns file name -> problem for those drawn as placeholders."""
    problems: dict[str, str] = {}
    out.mkdir(parents=True, exist_ok=True)
    for name, (section, title, draw) in PLOTS.items():
        data = results.get(section)
        reason = None
        if not isinstance(data, dict):
            reason = f"the {section} section has no result"
        elif "error" in data:
            reason = f"the {section} section failed: {data['error']}"
        elif "skipped" in data:
            reason = f"the {section} section was not run: {data['skipped']}"
        if reason is None and isinstance(data, dict):
            try:
                draw(data, out / name)
                continue
            except Exception as exc:  # one bad figure must not cost the others
                plt.close("all")
                reason = f"drawing failed: {type(exc).__name__}: {exc}"
        assert reason is not None
        problems[name] = reason
        placeholder(out / name, title, reason)
    return problems
