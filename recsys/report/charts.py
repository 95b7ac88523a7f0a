"""The report's charts: matplotlib figures rendered to PNG data URIs.

matplotlib is imported lazily, and only its object-oriented API is used (``Figure`` with the
Agg canvas, no ``pyplot``): no global backend state, nothing left open after a chart. Every
function takes plain numbers and returns ``data:image/png;base64,...``, or None when there is
nothing to draw.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

DPI = 110
WIDTH = 7.6
"""Inches; at :data:`DPI` the charts are about as wide as the page's text column."""
HALF = 4.3
"""Inches of a chart shown in one of two columns."""

INK = "#1f2933"
GRID = "#d9dee4"
STATUS_COLOURS = {
    "succeeded": "#2f855a",
    "failed": "#c53030",
    "interrupted": "#d69e2e",
    "skipped": "#a0aec0",
    "running": "#3182ce",
}
STEP_COLOURS = ("#3b6ea5", "#5aa469", "#e0a43a", "#9c5fb5", "#d1605e", "#4fa3a5", "#8a8f98")
SERIES = ("#3b6ea5", "#e07b39", "#5aa469", "#9c5fb5", "#d1605e", "#4fa3a5", "#8a8f98")


def _figure(height: float, width: float = WIDTH):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    fig.patch.set_facecolor("white")
    return fig


def _style(ax: Any) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.spines[["left", "bottom"]].set_color(GRID)
    ax.tick_params(colors=INK, labelsize=9)
    ax.grid(axis="both", color=GRID, linewidth=0.6)
    ax.set_axisbelow(True)
    ax.xaxis.label.set_color(INK)
    ax.yaxis.label.set_color(INK)


def _png(fig: Any) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.tight_layout(pad=0.4)
    fig.savefig(buffer, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _seconds(value: float) -> str:
    if value < 10:
        return f"{value:.1f}s"
    if value < 600:
        return f"{value:.0f}s"
    return f"{value / 60:.0f}min"


def steps_timeline(steps: Sequence[tuple[str, str, float, float]]) -> str | None:
    """Gantt bars: (step, status, start offset in seconds, seconds) per step, in order."""
    if not steps:
        return None
    fig = _figure(0.42 * len(steps) + 0.8)
    ax = fig.add_subplot()
    total = max((start + sec for _, _, start, sec in steps), default=0.0) or 1.0
    for i, (_name, status, start, sec) in enumerate(steps):
        colour = STATUS_COLOURS.get(status, "#718096")
        width = max(sec, total * 0.004)
        ax.barh(i, width, left=start, color=colour, height=0.6)
        label = f"{_seconds(sec)}  {status}"
        ax.text(start + width + total * 0.01, i, label, va="center", fontsize=8.5, color=INK)
    ax.set_yticks(range(len(steps)), [s[0] for s in steps])
    ax.invert_yaxis()
    ax.set_xlim(0, total * 1.3)
    ax.set_xlabel("seconds since the run started")
    _style(ax)
    ax.grid(axis="y", visible=False)
    return _png(fig)


def steps_trend(
    runs: Sequence[tuple[int, str, dict[str, float]]], step_order: Sequence[str], current: int
) -> str | None:
    """Stacked seconds per step of each run: (run id, run status, {step: seconds})."""
    if not runs:
        return None
    fig = _figure(2.9)
    ax = fig.add_subplot()
    x = list(range(len(runs)))
    bottom = [0.0] * len(runs)
    for j, step in enumerate(step_order):
        values = [r[2].get(step, 0.0) for r in runs]
        if not any(values):
            continue
        ax.bar(
            x,
            values,
            bottom=bottom,
            color=STEP_COLOURS[j % len(STEP_COLOURS)],
            width=0.7,
            label=step,
        )
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    top = max(bottom) or 1.0
    for i, (_, status, _) in enumerate(runs):
        if status != "succeeded":
            ax.text(
                i,
                bottom[i] + top * 0.02,
                status,
                ha="center",
                fontsize=7.5,
                color=STATUS_COLOURS.get(status, INK),
                rotation=90,
                va="bottom",
            )
    ax.set_ylim(0, top * 1.35)
    ax.set_xlim(-0.6, max(len(runs), 8) - 0.4)  # a lone run is not one wall-wide bar
    labels = [f"#{r[0]}" for r in runs]
    ax.set_xticks(x, labels)
    for tick, r in zip(ax.get_xticklabels(), runs, strict=True):
        if r[0] == current:
            tick.set_fontweight("bold")
    ax.set_ylabel("seconds")
    ax.set_xlabel("pipeline run")
    _style(ax)
    ax.grid(axis="x", visible=False)
    ax.legend(fontsize=8, ncols=min(6, len(step_order)), loc="upper left", frameon=False)
    return _png(fig)


def loss_curve(
    train: Sequence[float], validation: Sequence[float], best_epoch: int | None
) -> str | None:
    """Loss per epoch (train, and validation where recorded)."""
    if not train and not validation:
        return None
    fig = _figure(2.9, HALF)
    ax = fig.add_subplot()
    if train:
        ax.plot(range(1, len(train) + 1), train, marker="o", ms=3, color=SERIES[0], label="train")
    if validation:
        ax.plot(
            range(1, len(validation) + 1),
            validation,
            marker="o",
            ms=3,
            color=SERIES[1],
            label="validation",
        )
    if best_epoch:
        ax.axvline(best_epoch, color="#718096", linestyle=":", label=f"epoch {best_epoch} kept")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    _style(ax)
    ax.legend(fontsize=8, frameon=False)
    return _png(fig)


def ndcg_curve(points: Sequence[tuple[float, float]]) -> str | None:
    """Internal-validation NDCG@10 per evaluation: (epoch, value)."""
    if not points:
        return None
    fig = _figure(2.9, HALF)
    ax = fig.add_subplot()
    xs, ys = zip(*points, strict=True)
    ax.plot(xs, ys, marker="o", ms=4, color=SERIES[2])
    best = max(range(len(ys)), key=lambda i: ys[i])
    ax.annotate(
        f"best {ys[best]:.4f}",
        (xs[best], ys[best]),
        textcoords="offset points",
        xytext=(6, -12),
        fontsize=8.5,
        color=INK,
    )
    ax.set_xlabel("epoch")
    ax.set_ylabel("NDCG@10")
    _style(ax)
    return _png(fig)


def metric_bars(rows: Sequence[tuple[str, float, bool]], xlabel: str) -> str | None:
    """Horizontal bars, one per (label, value, highlighted) row."""
    if not rows:
        return None
    fig = _figure(0.36 * len(rows) + 0.9)
    ax = fig.add_subplot()
    top = max(v for _, v, _ in rows) or 1.0
    for i, (_label, value, highlight) in enumerate(rows):
        ax.barh(i, value, color=SERIES[0] if highlight else "#a3b8cc", height=0.6)
        ax.text(value + top * 0.01, i, f"{value:.4f}", va="center", fontsize=8.5, color=INK)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.2)
    ax.set_xlabel(xlabel)
    _style(ax)
    ax.grid(axis="y", visible=False)
    return _png(fig)


def strategy_bars(counts: Sequence[tuple[str, int]]) -> str | None:
    """Users per strategy."""
    if not counts:
        return None
    fig = _figure(0.4 * len(counts) + 0.9, HALF)
    ax = fig.add_subplot()
    total = sum(n for _, n in counts) or 1
    top = max(n for _, n in counts) or 1
    for i, (_name, n) in enumerate(counts):
        ax.barh(i, n, color=SERIES[i % len(SERIES)], height=0.6)
        ax.text(n + top * 0.01, i, f"{n:,} ({n / total:.0%})", va="center", fontsize=8.5)
    ax.set_yticks(range(len(counts)), [c[0] for c in counts])
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.3)
    ax.set_xlabel("users")
    _style(ax)
    ax.grid(axis="y", visible=False)
    return _png(fig)


def popularity_histogram(buckets: Sequence[int]) -> str | None:
    """Share of recommendations per popularity-percentile decile (bucket 0: no ratings)."""
    total = sum(buckets)
    if not total:
        return None
    deciles = list(buckets[1:])
    shares = [b / total for b in deciles]
    fig = _figure(2.9)
    ax = fig.add_subplot()
    n = len(deciles)
    labels = [f"{100 * i // n}-{100 * (i + 1) // n}" for i in range(n)]
    x = list(range(n))
    ax.bar(x, shares, color=SERIES[0], width=0.8, label="recommendations")
    ax.axhline(1 / n, color=SERIES[1], linestyle="--", linewidth=1.2, label="uniform over products")
    if buckets[0]:
        ax.bar(
            [-1.2], [buckets[0] / total], color="#a0aec0", width=0.8, label="products no one rated"
        )
        x = [-1.2, *x]
        labels = ["none", *labels]
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_xlabel("popularity percentile of the recommended product (by number of ratings)")
    ax.set_ylabel("share of recommendations")
    ax.yaxis.set_major_formatter(_percent())
    _style(ax)
    ax.grid(axis="x", visible=False)
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    return _png(fig)


def _percent():
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(1.0, decimals=0)
