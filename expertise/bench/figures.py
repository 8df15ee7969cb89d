"""Figures made from benchmark results (never drawn by hand), as PNG files written atomically.

- :func:`plot_zero_regret`: fraction of tasks with zero regret against the budget B, one panel
  per pool and one line per strategy (paper 002, Figure 7);
- :func:`plot_task_regret`: relative regret per task, grouped bars per strategy/budget, tasks
  ordered by VTAB group (paper 002, Figures 3-6);
- :func:`plot_group_means`: mean accuracy per VTAB group with confidence-interval error bars, one
  bar per strategy (paper 000, Tables 1-2 as a chart).

matplotlib runs on the non-interactive Agg backend, so no display is needed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from expertise.data.tasks import GROUPS  # noqa: E402
from expertise.errors import DataError  # noqa: E402
from expertise.plots import save_figure  # noqa: E402

_GROUP_ORDER = {g: i for i, g in enumerate(GROUPS)}


def plot_zero_regret(panels: Mapping[str, Mapping[str, Sequence[float]]], budgets: Sequence[int],
                     path: Path | str, title: str | None = None) -> Path:
    """Paper 002, Figure 7: ``panels`` maps pool -> strategy -> zero-regret fraction per budget
    (aligned with ``budgets``, e.g. from :func:`expertise.bench.metrics.zero_regret_fraction`)."""
    if not panels or not any(panels.values()):
        raise DataError("plot_zero_regret needs at least one pool with one strategy")
    bs = [int(b) for b in budgets]
    for pool, curves in panels.items():
        for name, ys in curves.items():
            if len(ys) != len(bs):
                raise DataError(f"pool {pool!r}, strategy {name!r}: {len(ys)} fractions for {len(bs)} budgets")
    names = list(dict.fromkeys(n for curves in panels.values() for n in curves))
    colours = {n: f"C{i % 10}" for i, n in enumerate(names)}  # one colour per strategy in every panel
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False, sharey=True)
    for ax, (pool, curves) in zip(axes[0], panels.items()):
        for name, ys in curves.items():
            ax.plot(bs, np.asarray(ys, dtype=np.float64), marker="o", label=name, color=colours[name])
        ax.legend(fontsize=8, loc="lower right")
        ax.set_title(f"pool: {pool}")
        ax.set_xlabel("budget B (models fine-tuned)")
        ax.set_xticks(bs)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("fraction of tasks with zero regret")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path, tight=True)


def _ordered_tasks(tasks: Sequence[str], groups: Mapping[str, str] | None) -> list[str]:
    if not groups:
        return sorted(tasks)
    return sorted(tasks, key=lambda t: (_GROUP_ORDER.get(groups.get(t, ""), len(GROUPS)), t))


def plot_task_regret(series: Mapping[str, Mapping[str, float]], path: Path | str,
                     groups: Mapping[str, str] | None = None, title: str | None = None,
                     ylabel: str = "relative regret r(m)") -> Path:
    """Paper 002, Figures 3-6: ``series`` maps a label (e.g. "kNN B=1") -> task -> relative regret
    (or a relative delta between two strategies, with ``ylabel`` to match). One group of bars per
    task, tasks ordered by VTAB group when ``groups`` (task -> group) is given."""
    if not series or not any(series.values()):
        raise DataError("plot_task_regret needs at least one series with one task")
    tasks = _ordered_tasks(sorted({t for s in series.values() for t in s}), groups)
    n = len(series)
    width = 0.8 / n
    x = np.arange(len(tasks), dtype=np.float64)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * len(tasks) * max(1, n) ** 0.5 + 2), 3.8))
    for k, (label, values) in enumerate(series.items()):
        ys = np.array([values.get(t, math.nan) for t in tasks], dtype=np.float64)
        ax.bar(x + (k - (n - 1) / 2) * width, np.nan_to_num(ys), width, label=label, alpha=0.9 if k else 0.6)
    ax.axhline(0.0, color="black", linewidth=0.8)
    labels = [f"{t}\n({groups[t]})" if groups and t in groups else t for t in tasks]
    ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return save_figure(fig, path, tight=True)


def plot_group_means(rows: Mapping[str, Mapping[str, Sequence[float]]], path: Path | str,
                     title: str | None = None, percent: bool = True) -> Path:
    """Paper 000, Tables 1-2 as a chart: ``rows`` maps strategy -> group -> ``(mean, lo, hi)`` (the
    output of :func:`expertise.bench.metrics.group_means`); bars are means, error bars the CI.
    Accuracies are fractions, shown in percent when ``percent``."""
    if not rows:
        raise DataError("plot_group_means needs at least one strategy")
    cols = [c for c in (*GROUPS, "all") if any(c in r for r in rows.values())]
    scale = 100.0 if percent else 1.0
    n = len(rows)
    width = 0.8 / n
    x = np.arange(len(cols), dtype=np.float64)
    fig, ax = plt.subplots(figsize=(1.6 * len(cols) + 2.5, 3.8))
    for k, (name, summary) in enumerate(rows.items()):
        cells = [tuple(summary.get(c, (math.nan,) * 3)) for c in cols]
        mean = np.array([c[0] for c in cells], dtype=np.float64) * scale
        lo = np.array([c[1] for c in cells], dtype=np.float64) * scale
        hi = np.array([c[2] for c in cells], dtype=np.float64) * scale
        # A percentile CI need not contain the point estimate (paper 000 has such cells): clip at 0.
        err = np.nan_to_num(np.vstack([np.maximum(mean - lo, 0), np.maximum(hi - mean, 0)]))
        ax.bar(x + (k - (n - 1) / 2) * width, np.nan_to_num(mean), width, yerr=err, capsize=3, label=name)
    ax.set_xticks(x, cols)
    ax.set_ylabel("accuracy (%)" if percent else "accuracy")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return save_figure(fig, path, tight=True)
