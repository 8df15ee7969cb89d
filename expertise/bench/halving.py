"""Successive halving against full scoring on the benchmark (``expertise bench --halving``).

With ``--halving`` the benchmark also ranks its first pool with every proxy strategy by successive
halving (:mod:`expertise.select.halving`, budget 1), in one ``halving`` unit per task and training
seed, on a cold cache. The report (section "Successive halving against full scoring") sets each
halving ranking against the same strategy's full ranking (its ``selection`` unit) on the same pool,
task and seed:

- **top-1 agreement**: whether both pick the same member;
- **Kendall tau** (:func:`scipy.stats.kendalltau`) between the two rankings of the whole pool. The
  halving ranking is the one ``select --search halving`` prints: the finalists (the members scored
  on all images) by their score, then the members dropped in each earlier round, the later rounds
  first (a member that fell out in round r is ranked below every member that reached round r + 1),
  each round's dropped members by the score they fell out with (on that round's sample). Both are
  total orders of the same members, so tau is computed on their positions (tau-b = tau-a, no ties);
  1 is the same order, -1 the reverse;
- **images embedded and seconds**: the halving unit's own, on a cold cache (every image it embeds
  counted, the members loaded), against full scoring's: the embed units' cold cost of every member
  of the pool (each on all train+val images) plus the selection unit's scoring seconds (the same
  accounting as the report's compute table);
- **pick accuracy**: the protocol test accuracy of halving's pick minus full scoring's, in points
  (0 where the top-1s agree).

Everything comes from the records, so ``expertise bench report`` rebuilds it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from expertise.bench import tables
from expertise.bench.folder import SeedData
from expertise.bench.seeds import Across


@dataclass(frozen=True)
class Agreement:
    """One halving unit against its full ranking: one strategy on one task at one training seed."""

    task: str
    strategy: str
    seed: int | None
    full_pick: str
    halving_pick: str
    tau: float
    images: int
    full_images: int
    seconds: float
    full_seconds: float
    pick_delta: float | None  # halving's pick minus full scoring's, test accuracy (None: a protocol missing)

    @property
    def top1(self) -> bool:
        return self.full_pick == self.halving_pick

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["top1"] = self.top1
        d["tau"] = None if not math.isfinite(self.tau) else self.tau
        return d


def kendall_tau(full: Sequence[str], halving: Sequence[str]) -> float:
    """Kendall's tau between two rankings (best first) of the same members; NaN under 2 members."""
    from scipy.stats import kendalltau

    if sorted(full) != sorted(halving):
        raise ValueError(f"the rankings hold different members: {sorted(set(full) ^ set(halving))[:5]}")
    if len(full) < 2:
        return math.nan
    pos = {n: i for i, n in enumerate(full)}
    return float(kendalltau([pos[n] for n in halving], list(range(len(halving)))).statistic)


def _one(d: SeedData, seed: int | None, pool: str, strategy: str, task: str) -> Agreement | None:
    h, sel = d.halving.get((pool, strategy, task)), d.selections.get((pool, strategy, task))
    if h is None or sel is None or "error" in h or "error" in sel:
        return None
    emb = d.embed_cost.get(task, {})
    read = sel.get("members_embedded", [])
    if any(m not in emb for m in read):
        return None
    full = [n for n, _ in sel["ranking"]]
    halving = [n for n, _ in h["ranking"]]
    accs = d.acc.get(task, {})
    delta = accs[halving[0]] - accs[full[0]] if halving[0] in accs and full[0] in accs else None
    return Agreement(task, strategy, seed, full[0], halving[0], kendall_tau(full, halving), int(h["images_embedded"]),
                     sum(emb[m][1] for m in read), float(h["seconds"]),
                     sel["score_seconds"] + sum(emb[m][0] for m in read), delta)


def agreements(x: Across, pool: str) -> list[Agreement]:
    """Every halving unit of ``pool`` against its full ranking, by strategy, task and seed."""
    strategies = [s for s in x.strategies if any((pool, s, t) in d.halving for d in x.by_seed.values() for t in x.tasks)]
    return [a for s in strategies for t in x.tasks for seed, d in x.by_seed.items()
            if (a := _one(d, seed, pool, s, t)) is not None]


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _row(first: list[str], rows: Sequence[Agreement]) -> list[str]:
    delta = _mean([a.pick_delta for a in rows if a.pick_delta is not None])
    images, full_images = _mean([a.images for a in rows]), _mean([a.full_images for a in rows])
    seconds, full_seconds = _mean([a.seconds for a in rows]), _mean([a.full_seconds for a in rows])
    return [*first, f"{sum(a.top1 for a in rows)}/{len(rows)}", tables.fmt_value(_mean([a.tau for a in rows]), 2, 1.0),
            f"{images:,.0f} / {full_images:,.0f} ({images / full_images:.2f})" if full_images else tables.DASH,
            f"{seconds:.2f} / {full_seconds:.2f} ({seconds / full_seconds:.2f})" if full_seconds else tables.DASH,
            tables.DASH if math.isnan(delta) else f"{100 * delta:+.1f}"]


HEADER = ["top-1 agrees", "Kendall tau", "images embedded: halving / full (ratio)", "seconds: halving / full (ratio)",
          "pick accuracy, halving - full (points)"]


def section(x: Across, pool: str) -> tuple[list[str], dict[str, Any] | None]:
    """The report's lines and ``summary.json``'s ``halving`` entry (None without halving units)."""
    found = agreements(x, pool)
    if not found:
        return [], None
    strategies = list(dict.fromkeys(a.strategy for a in found))
    over = "tasks and seeds" if x.multi else "tasks"
    overall = [_row([s], [a for a in found if a.strategy == s]) for s in strategies]
    per_task = [_row([t, s], rows) for s in strategies for t in x.tasks
                if (rows := [a for a in found if a.strategy == s and a.task == t])]
    lines = [f"## Successive halving against full scoring (pool `{pool}`, budget 1)", "",
             "`--halving`: each proxy strategy also ranked the pool by successive halving (every member on a sample, "
             "the best half on twice as many images, until all images; on a cold cache). Top-1 agrees: tasks where "
             "halving picks full scoring's member. Kendall tau between the two rankings of the whole pool (halving's: "
             "the finalists by their score on all images, then the members dropped in each earlier round, later rounds "
             "first, each round's by the score it fell out with). Images and seconds: halving's, against full "
             "scoring's (every member embedded cold on all images, plus its scoring), mean per task. Pick accuracy: "
             f"the protocol test accuracy of halving's pick minus full scoring's. Over {over}.", "",
             tables.markdown_table(["strategy", *HEADER], overall, ["l", "r", "r", "r", "r", "r"]),
             "Per task" + (" (mean over seeds)" if x.multi else "") + ":", "",
             tables.markdown_table(["task", "strategy", *HEADER], per_task, ["l", "l", "r", "r", "r", "r", "r"])]
    summary = {"pool": pool, "budget": 1, "strategies": {
        s: {"top1_agreement": float(np.mean([a.top1 for a in rows])), "kendall_tau": _nan_none(_mean([a.tau for a in rows])),
            "images_embedded": int(sum(a.images for a in rows)), "full_scoring_images": int(sum(a.full_images for a in rows)),
            "seconds": float(sum(a.seconds for a in rows)), "full_scoring_seconds": float(sum(a.full_seconds for a in rows)),
            "runs": len(rows)}
        for s in strategies if (rows := [a for a in found if a.strategy == s])},
        "runs": [a.to_json() for a in found]}
    return lines, summary


def _nan_none(v: float) -> float | None:
    return None if math.isnan(v) else v
