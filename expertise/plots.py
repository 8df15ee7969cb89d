"""Plots people would rather look at than read: written with matplotlib's Agg backend (no display
needed) and saved atomically, so a plot on disk is never half-written."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path | str, dpi: int = 120, tight: bool = False) -> Path:
    """Save ``fig`` as PNG under a temporary name in the target folder, then rename it into place;
    closes the figure. ``tight`` trims the margins to the drawn content."""
    from expertise.errors import disk_error

    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
        os.replace(tmp, path)
    except OSError as e:  # the one line names the plot, not "a file"
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise disk_error(e, path) from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        pyplot().close(fig)
    return path


def short_name(name: str) -> str:
    """``bit_s.expert_glyph-latin`` -> ``expert_glyph-latin``: the architecture prefix adds nothing
    on a plot of one library."""
    return name.split(".", 1)[-1]


def plot_selection(rows: list[dict], title: str, score_label: str, path: Path) -> Path:
    """A horizontal bar per member (best at the top), picks highlighted, unscored members shown
    as empty rows; like the per-expert kNN plots of paper 000. ``rows`` as from
    :func:`expertise.select.run.ranking_table`."""
    plt = pyplot()
    scored = [r["score"] for r in rows if r["score"] is not None]
    scored += [v for r in rows if r.get("interval") is not None for v in r["interval"]]
    lo = min(scored) if scored else 0.0
    hi = max(scored) if scored else 1.0
    pad = 0.05 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.05
    base = lo - pad if lo < 0 or lo > 0.5 * hi else 0.0  # zoom in where scores are close and far from 0
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.32 * len(rows)))
    for i, r in enumerate(rows):
        y = len(rows) - 1 - i
        if r["score"] is None:
            ax.text(base, y, "  not scored by this strategy", va="center", fontsize=7, color="grey")
            continue
        ax.barh(y, r["score"] - base, left=base, color="tab:orange" if r["picked"] else "tab:blue")
        right = r["score"]
        if r.get("interval") is not None:  # the bootstrap's 95% interval (expertise.select.uncertainty)
            ax.hlines(y, *r["interval"], color="black", lw=1)
            right = max(right, r["interval"][1])
        ax.text(right, y, f" {r['score']:.3f}", va="center", fontsize=7)
    ax.set_yticks(range(len(rows)), [short_name(r["member"]) for r in reversed(rows)], fontsize=8)
    ax.set_xlim(base, hi + 4 * pad if math.isfinite(hi) else 1.0)
    ax.set_xlabel(score_label)
    ax.set_title(title + "\n(orange: picked" + ("; lines: 95% intervals" if any(r.get("interval") for r in rows) else "")
                 + ")", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
