""""Does choosing pay?": the few figures that say whether picking an expert beats not choosing.

They follow paper 000 (Tables 1-2) and paper 002 (regret), and the goals of issue 14 that the
embedded world has to reach on the cpu preset over several training seeds:

1. a pool worth choosing from: on natural tasks the oracle beats the expected random pick by at least
   4 points, and the worst member lies at least 8 points below the oracle;
2. Table 1's ordering on natural tasks: kNN >= label matching, domain prediction > random, kNN minus
   random with its paired interval above zero; and on structured tasks no significant gain;
3. Table 2: on natural tasks whose domain has a full expert, kNN among the full experts beats B by at
   least 1.5 points with its paired interval above zero, and adapter experts land between the two;
4. regret: kNN's mean relative regret at budget 1 is at most a third of random's.

Every figure is computed from the records (budget 1, the report's main pool), with the paired
intervals of :mod:`expertise.bench.paired`; :func:`checks` returns them and :func:`block` renders the
report's section.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from expertise.bench import metrics, tables
from expertise.bench.folder import domain_has_expert
from expertise.bench.paired import (ADAPTER_POOL, B, DOMAIN, FULL_POOL, KNN, LABELS, ORACLE, RANDOM, TOL, WORST, Paired,
                                    named_values, paired_difference)
from expertise.bench.seeds import Across

TITLE = "Does choosing pay?"


@dataclass(frozen=True)
class Check:
    """One figure: the goal it serves (1-4), what it measures, the measurement as text, the goal as
    text, whether it is met (None: not measured) and its numbers for the JSON."""

    goal_no: int
    what: str
    measured: str
    goal: str
    met: bool | None
    numbers: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"goal": self.goal_no, "what": self.what, "measured": self.measured, "target": self.goal,
                "met": self.met, **self.numbers}


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def _paired_text(p: Paired, group: str) -> str:
    ci = p.summary[group]
    n = p.pairs[group]
    return f"{_pts(ci.estimate)} [{_pts(ci.lo)}, {_pts(ci.hi)}] points ({n} task-seed pair{'' if n == 1 else 's'})"


def _numbers(p: Paired, group: str) -> dict[str, Any]:
    ci = p.summary[group]
    return {"mean": ci.estimate, "lo": ci.lo, "hi": ci.hi, "pairs": p.pairs[group]}


def _paired_check(goal_no: int, what: str, p: Paired | None, group: str, goal: str, ok, missing: str) -> Check:
    if p is None or group not in p.summary or not np.isfinite(p.summary[group].estimate):
        return Check(goal_no, what, f"not measured: {missing}", goal, None)
    return Check(goal_no, what, _paired_text(p, group), goal, bool(ok(p.summary[group])), _numbers(p, group))


def checks(x: Across, pool: str, task_meta: Mapping[str, Mapping[str, str | None]], n_resamples: int = 10_000,
           seed: int = 0) -> list[Check]:
    """The figures of the module docstring, from the folder's records (every seed)."""
    rows = named_values(x, pool)
    g = x.groups

    def pair(a: str, b: str, tasks: Sequence[str] | None = None) -> Paired | None:
        if a not in rows or b not in rows:
            return None
        return paired_difference(rows[a], rows[b], g, a, b, tasks, n_resamples, seed)

    nat, struct = "natural", "structured"
    need = lambda *names: f"run the strategies {', '.join(names)} on pool {pool}"  # noqa: E731
    out = [
        _paired_check(1, "oracle - expected random pick, natural tasks", pair(ORACLE, RANDOM), nat,
                      "at least +4 points", lambda ci: ci.estimate >= 0.04 - TOL, need(RANDOM) + " on a natural task"),
        _paired_check(1, "oracle - worst member, natural tasks", pair(ORACLE, WORST), nat,
                      "at least +8 points", lambda ci: ci.estimate >= 0.08 - TOL, "fine-tune the pool on a natural task"),
        _paired_check(2, "kNN - label matching, natural tasks", pair(KNN, LABELS), nat,
                      "at least 0", lambda ci: ci.estimate >= -TOL, need(KNN, LABELS)),
        _paired_check(2, "domain prediction - random, natural tasks", pair(DOMAIN, RANDOM), nat,
                      "above 0", lambda ci: ci.estimate > TOL, need(DOMAIN, RANDOM)),
        _paired_check(2, "kNN - random, natural tasks", pair(KNN, RANDOM), nat,
                      "interval above 0", lambda ci: ci.lo > TOL, need(KNN, RANDOM)),
        _paired_check(2, "kNN - random, structured tasks", pair(KNN, RANDOM), struct,
                      "no significant gain (interval reaches 0)", lambda ci: ci.lo <= TOL,
                      need(KNN, RANDOM) + " on a structured task"),
    ]
    out += _table2(x, rows, task_meta, n_resamples, seed)
    out.append(_regret_ratio(x, pool))
    return out


def _table2(x: Across, rows: Mapping[str, Any], task_meta: Mapping[str, Mapping[str, str | None]],
            n_resamples: int, seed: int) -> list[Check]:
    full, adapters = f"{KNN} in {FULL_POOL}", f"{KNN} in {ADAPTER_POOL}"
    experts = x.pool_members(FULL_POOL) or []
    domains = [x.member_domain.get(m) for m in experts]
    natural = [t for t in x.tasks if x.groups[t] == "natural"]
    if not task_meta:
        why = "no task domains recorded (tasks.json); rerun 'expertise bench' on this folder"
        tasks: list[str] = []
    else:
        tasks = [t for t in natural if domain_has_expert(task_meta.get(t, {}).get("domain"), domains)]
        why = (f"no natural task's domain has a full expert (pool {FULL_POOL}: {len(experts)} member(s))" if not tasks
               else f"run the benchmark with the pools {FULL_POOL}, {ADAPTER_POOL} and the {KNN} strategy")

    def pair(a: str, b: str) -> Paired | None:
        if not tasks or a not in rows or b not in rows:
            return None
        return paired_difference(rows[a], rows[b], x.groups, a, b, tasks, n_resamples, seed)

    where = f"natural tasks whose domain has a full expert ({len(tasks)})"
    return [
        _paired_check(3, f"kNN among full experts - B, {where}", pair(full, B), "natural",
                      "at least +1.5 points, interval above 0", lambda ci: ci.estimate >= 0.015 - TOL and ci.lo > TOL, why),
        _paired_check(3, f"kNN among adapter experts - B, {where}", pair(adapters, B), "natural",
                      "at least 0 (adapters no worse than B)", lambda ci: ci.estimate >= -TOL, why),
        _paired_check(3, f"kNN among full - among adapter experts, {where}", pair(full, adapters), "natural",
                      "at least 0 (full experts no worse than adapters)", lambda ci: ci.estimate >= -TOL, why),
    ]


def mean_relative_regret(x: Across, pool: str, strategy: str) -> tuple[float, int] | None:
    """Mean relative regret at budget 1 over every task and seed measured, and how many."""
    value, oracle = x.value(pool, strategy), x.pool_stat(pool, max)
    regrets = [float(metrics.relative_regret(v, oracle[t][s])) for t, by in value.items() for s, v in by.items()
               if s in oracle.get(t, {})]
    return (float(np.mean(regrets)), len(regrets)) if regrets else None


def _regret_ratio(x: Across, pool: str) -> Check:
    what, goal = f"kNN's mean relative regret at budget 1 / random's, pool {pool}", "at most 1/3"
    knn, rnd = mean_relative_regret(x, pool, KNN), mean_relative_regret(x, pool, RANDOM)
    if knn is None or rnd is None:
        return Check(4, what, f"not measured: run the strategies {KNN}, {RANDOM} on pool {pool}", goal, None)
    if rnd[0] <= TOL:
        return Check(4, what, f"not measured: random's regret is 0 (every member equal); kNN's {100 * knn[0]:.1f}%",
                     goal, None, {"knn": knn[0], "random": rnd[0]})
    ratio = knn[0] / rnd[0]
    return Check(4, what, f"{ratio:.2f} ({100 * knn[0]:.1f}% / {100 * rnd[0]:.1f}%, {knn[1]} task-seed pairs)", goal,
                 ratio <= 1 / 3, {"ratio": ratio, "knn": knn[0], "random": rnd[0], "pairs": knn[1]})


def block(found: Sequence[Check], pool: str, seeds: Sequence[int | None]) -> list[str]:
    """The report's section: a short table of every figure, with its goal."""
    seeds_text = ", ".join(str(s) for s in seeds if s is not None) or "one"
    body = [[str(c.goal_no), c.what, c.measured, c.goal, {True: "yes", False: "no", None: tables.DASH}[c.met]]
            for c in found]
    met = sum(c.met is True for c in found)
    measured = sum(c.met is not None for c in found)
    return [f"## {TITLE}", "",
            f"Whether choosing an expert beats not choosing, on pool `{pool}` at budget 1 over training seeds "
            f"{seeds_text}: paired differences of the picks' fine-tuned test accuracy per task and seed, with 95% "
            "intervals resampling tasks and seeds (paper 000 Tables 1-2, paper 002 regret; the goals of issue 14). "
            f"{met} of {measured} measured figures meet their goal.", "",
            tables.markdown_table(["goal", "figure", "measured", "target", "met"], body, ["r", "l", "l", "l", "l"]), ""]
