"""Paired comparisons of strategies: is one pick better than another on the same task and seed?

Group means of two strategies overlap whenever tasks differ in difficulty (a 20-point spread of
task accuracies gives every mean a 20-point interval over tasks), although one strategy may beat the
other on every task. A paired comparison removes the tasks' difficulty: for strategies ``a`` and
``b``, the difference ``a(task, seed) - b(task, seed)`` of their picks' fine-tuned test accuracies
on each task and training seed where both were measured; the mean over a group's tasks of each
task's mean over seeds; and its 95% percentile-bootstrap interval resampling tasks and, within each
drawn task, seeds (:func:`expertise.bench.metrics.group_means` with ``resample="both"``). An
interval above zero says ``a`` beats ``b`` beyond what the choice of tasks and training randomness
explain.

:func:`comparisons` lists the pairs the report shows: every strategy against ``random`` and against
``task_agnostic`` (B), kNN against label matching, the oracle against random and the worst member,
and Table 2's kNN within full and adapter experts against B.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from expertise.bench import metrics
from expertise.bench.seeds import Across, PerTaskSeed
from expertise.data.tasks import GROUPS

RANDOM, AGNOSTIC, KNN, LABELS, DOMAIN = "random", "task_agnostic", "knn_loo", "label_matching", "domain_prediction"
ORACLE, WORST, B = "oracle", "worst member", "B"
FULL_POOL, ADAPTER_POOL = "full_experts", "adapter_experts"
# A difference within TOL of zero is zero: sums of equal accuracies leave float rounding (1e-17), not a finding.
TOL = 1e-9


@dataclass(frozen=True)
class Paired:
    """``a - b`` per group (and "all"): the mean difference with its interval, and how many
    (task, seed) pairs went into it."""

    name: str
    a: str
    b: str
    summary: dict[str, metrics.CI]
    pairs: dict[str, int]

    def above_zero(self, group: str) -> bool:
        ci = self.summary.get(group)
        return ci is not None and bool(np.isfinite(ci.lo)) and ci.lo > TOL

    def below_zero(self, group: str) -> bool:
        ci = self.summary.get(group)
        return ci is not None and bool(np.isfinite(ci.hi)) and ci.hi < -TOL

    def to_json(self) -> dict[str, Any]:
        def cell(g: str) -> dict[str, Any] | None:
            ci = self.summary.get(g)
            if ci is None or not np.isfinite(ci.estimate):
                return None
            return {"mean": ci.estimate, "lo": ci.lo, "hi": ci.hi, "above_zero": self.above_zero(g), "pairs": self.pairs[g]}
        return {"comparison": self.name, "a": self.a, "b": self.b, **{g: cell(g) for g in (*GROUPS, metrics.ALL)}}


def differences(a: PerTaskSeed, b: PerTaskSeed, tasks: Sequence[str] | None = None) -> dict[str, list[float]]:
    """``a - b`` per task, for each seed both have (tasks without a common seed are left out)."""
    out = {}
    for t in (tasks if tasks is not None else sorted(a)):
        common = sorted(set(a.get(t, {})) & set(b.get(t, {})), key=lambda s: (s is None, s or 0))
        if common:
            out[t] = [a[t][s] - b[t][s] for s in common]
    return out


def paired_difference(a: PerTaskSeed, b: PerTaskSeed, groups: Mapping[str, str], a_name: str = "a", b_name: str = "b",
                      tasks: Sequence[str] | None = None, n_resamples: int = 10_000, seed: int = 0) -> Paired | None:
    """The paired comparison ``a - b`` (module docstring) over ``tasks`` (default: every task of
    ``a``); None when no task has both."""
    diffs = differences(a, b, tasks)
    if not diffs:
        return None
    summary = metrics.group_means(diffs, groups, n_resamples, seed=seed, resample="both", per_task_stat=np.mean)
    members = {g: [t for t in diffs if groups[t] == g] for g in GROUPS}
    members[metrics.ALL] = list(diffs)
    pairs = {g: sum(len(diffs[t]) for t in ts) for g, ts in members.items()}
    return Paired(f"{a_name} - {b_name}", a_name, b_name, summary, pairs)


def named_values(x: Across, pool: str) -> dict[str, PerTaskSeed]:
    """Every row a comparison can name, at budget 1 on ``pool``: the strategies, the oracle, the
    worst member, B, and kNN within the full and the adapter experts (Table 2)."""
    rows = {s: x.value(pool, s) for s in x.strategies}
    rows[ORACLE] = x.pool_stat(pool, max)
    rows[WORST] = x.pool_stat(pool, min)
    rows[B] = x.member("baseline")
    for spec in (FULL_POOL, ADAPTER_POOL):
        if KNN in x.strategies and spec in x.pools:
            rows[f"{KNN} in {spec}"] = x.value(spec, KNN)
    return {k: v for k, v in rows.items() if v}


def pairs_of_interest(names: Sequence[str]) -> list[tuple[str, str]]:
    """(a, b) pairs in the report's order, each once: kNN - random first, every strategy against
    random and against task_agnostic, kNN - label matching, the oracle against random and the worst
    member, Table 2 against B."""
    have = set(names)
    strategies = [n for n in names if n not in (ORACLE, WORST, B) and " in " not in n]
    want = [(KNN, RANDOM)]
    want += [(s, RANDOM) for s in strategies if s != RANDOM]
    want += [(s, AGNOSTIC) for s in strategies if s not in (AGNOSTIC, RANDOM)]
    want += [(KNN, LABELS), (ORACLE, RANDOM), (ORACLE, WORST),
             (f"{KNN} in {FULL_POOL}", B), (f"{KNN} in {ADAPTER_POOL}", B),
             (f"{KNN} in {FULL_POOL}", f"{KNN} in {ADAPTER_POOL}")]
    out: list[tuple[str, str]] = []
    for a, b in want:
        if a in have and b in have and a != b and (a, b) not in out and (b, a) not in out:
            out.append((a, b))
    return out


def comparisons(x: Across, pool: str, n_resamples: int = 10_000, seed: int = 0) -> list[Paired]:
    """Every pair of :func:`pairs_of_interest` on ``pool`` at budget 1 (Table 2's on their pools)."""
    rows = named_values(x, pool)
    out = []
    for a, b in pairs_of_interest(list(rows)):
        p = paired_difference(rows[a], rows[b], x.groups, a, b, n_resamples=n_resamples, seed=seed)
        if p is not None:
            out.append(p)
    return out
