"""Markdown tables made from benchmark results (never typed by hand).

- :func:`group_table`: paper 000's Table 1 / Table 2 layout: one row per strategy (or model
  family), columns natural / specialized / structured / all, cells ``mean [lo, hi]`` in percent;
- :func:`regret_table`: regret per pool, strategy and budget (paper 002, section 5);
- :func:`paired_table`: paired differences of two strategies per group, ``+mean [lo, hi]`` in
  points, marked where the interval lies above (or below) zero;
- :func:`cost_table`: what selection costs against one fine-tune and against the oracle (which
  fine-tunes the whole pool), with the ratio oracle / selection.

Accuracies and regrets come in as fractions; the tables show percent. A missing or NaN value
renders as an en dash.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from expertise.data.tasks import GROUPS
from expertise.errors import DataError

DASH = "–"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured markdown table; ``align`` per column is "l" or "r" (default: first column
    left, the rest right)."""
    align = list(align) if align is not None else ["l"] + ["r"] * (len(header) - 1)
    if len(align) != len(header) or any(len(r) != len(header) for r in rows):
        raise DataError(f"every table row needs {len(header)} cells (the header's)")
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _bad(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt_value(x: float | None, digits: int = 1, scale: float = 100.0) -> str:
    """``x * scale`` with ``digits`` decimals; a dash for None/NaN."""
    return DASH if _bad(x) else f"{float(x) * scale:.{digits}f}"


def fmt_ci(cell: Sequence[float] | float | None, digits: int = 1, scale: float = 100.0) -> str:
    """``mean [lo, hi]`` for a ``(mean, lo, hi)`` triple (e.g. a metrics.CI), or just the value."""
    if cell is None or isinstance(cell, (int, float)):
        return fmt_value(cell, digits, scale)
    if len(cell) != 3:
        raise DataError(f"a CI cell is (mean, lo, hi), got {cell!r}")
    mean, lo, hi = cell
    if _bad(mean):
        return DASH
    if _bad(lo) or _bad(hi):
        return fmt_value(mean, digits, scale)
    return f"{fmt_value(mean, digits, scale)} [{fmt_value(lo, digits, scale)}, {fmt_value(hi, digits, scale)}]"


def group_table(rows: Mapping[str, Mapping[str, Sequence[float] | float]], first: str = "strategy",
                digits: int = 1, scale: float = 100.0) -> str:
    """Paper 000, Table 1 layout: ``rows`` maps a row name -> ``{"natural", "specialized",
    "structured", "all"} -> (mean, lo, hi)`` (the output of
    :func:`expertise.bench.metrics.group_means`); cells read ``mean [lo, hi]`` in percent."""
    if not rows:
        raise DataError("group_table needs at least one row")
    cols = [*GROUPS, "all"]
    body = [[name, *(fmt_ci(summary.get(c), digits, scale) for c in cols)] for name, summary in rows.items()]
    return markdown_table([first, "natural", "specialized", "structured", "all"], body)


def regret_table(regrets: Mapping[str, Mapping[str, Mapping[int, Sequence[float] | float]]],
                 digits: int = 1, scale: float = 100.0, what: str = "mean relative regret (%)") -> str:
    """Regret per pool and budget: ``regrets`` maps pool -> strategy -> budget B -> the regret
    summarised over tasks (a value, or ``(mean, lo, hi)``). One row per (pool, strategy), one
    column per budget present; ``what`` names the quantity in the header."""
    if not regrets or not any(regrets.values()):
        raise DataError("regret_table needs at least one pool with one strategy")
    budgets = sorted({int(b) for by_strategy in regrets.values() for per_b in by_strategy.values() for b in per_b})
    body = []
    for pool, by_strategy in regrets.items():
        for strategy, per_b in by_strategy.items():
            cells = {int(b): v for b, v in per_b.items()}
            body.append([pool, strategy, *(fmt_ci(cells.get(b), digits, scale) for b in budgets)])
    header = ["pool", "strategy", *(f"B={b}" for b in budgets)]
    return f"{what}\n\n" + markdown_table(header, body, ["l", "l"] + ["r"] * len(budgets))


def fmt_signed_ci(cell: Sequence[float] | None, digits: int = 1, scale: float = 100.0) -> str:
    """``+mean [lo, hi]`` of a difference, each signed; ``>0`` after it when the whole interval lies
    above zero, ``<0`` when below."""
    if cell is None or _bad(cell[0]):
        return DASH
    mean, lo, hi = (float(v) for v in cell)
    text = f"{mean * scale:+.{digits}f}"
    if _bad(lo) or _bad(hi):
        return text
    mark = " >0" if lo > 1e-9 else (" <0" if hi < -1e-9 else "")  # float rounding of equal accuracies is no difference
    return f"{text} [{lo * scale:+.{digits}f}, {hi * scale:+.{digits}f}]{mark}"


def paired_table(rows: Mapping[str, Mapping[str, Sequence[float]]], digits: int = 1, scale: float = 100.0) -> str:
    """One row per comparison ``a - b`` -> ``{"natural", ..., "all"} -> (mean, lo, hi)`` of the
    paired difference (:mod:`expertise.bench.paired`), in points."""
    if not rows:
        raise DataError("paired_table needs at least one comparison")
    cols = [*GROUPS, "all"]
    body = [[name, *(fmt_signed_ci(summary.get(c), digits, scale) for c in cols)] for name, summary in rows.items()]
    return markdown_table(["a - b", "natural", "specialized", "structured", "all"], body)


@dataclass(frozen=True)
class Cost:
    """The cost of one way to choose a member for a task: the selection itself (embedding and
    scoring the pool), one fine-tune of the chosen member, and the oracle (fine-tuning every pool
    member). ``images`` count images processed (forward or forward+backward)."""

    selection_seconds: float
    selection_images: int
    finetune_seconds: float
    finetune_images: int
    oracle_seconds: float
    oracle_images: int

    @classmethod
    def from_mapping(cls, d: Mapping[str, float]) -> Cost:
        try:
            return cls(**{f: d[f] for f in cls.__dataclass_fields__})
        except KeyError as e:
            raise DataError(f"a cost row needs {list(cls.__dataclass_fields__)}; {e} is missing") from None


def _ratio(a: float, b: float) -> str:
    return f"{a / b:,.0f}x" if b > 0 and a / b >= 10 else (f"{a / b:,.1f}x" if b > 0 else DASH)


def _secs(s: float) -> str:
    return DASH if _bad(s) else (f"{s:,.1f}" if s < 100 else f"{s:,.0f}")


def cost_table(rows: Mapping[str, Cost | Mapping[str, float]]) -> str:
    """Selection vs one fine-tune vs the oracle, per row (e.g. per strategy or per pool): seconds
    and images for each, and the ratios oracle / selection (how much cheaper choosing is than
    trying every member)."""
    if not rows:
        raise DataError("cost_table needs at least one row")
    body = []
    for name, c in rows.items():
        c = c if isinstance(c, Cost) else Cost.from_mapping(c)
        body.append([
            name, _secs(c.selection_seconds), f"{int(c.selection_images):,}", _secs(c.finetune_seconds),
            f"{int(c.finetune_images):,}", _secs(c.oracle_seconds), f"{int(c.oracle_images):,}",
            _ratio(c.oracle_seconds, c.selection_seconds), _ratio(c.oracle_images, c.selection_images),
        ])
    header = ["", "selection s", "selection images", "one fine-tune s", "one fine-tune images",
              "oracle s", "oracle images", "oracle/selection s", "oracle/selection images"]
    return markdown_table(header, body)
