"""The benchmark over several training seeds (``expertise bench --seeds 0,1,2``).

A training seed is what every random stream of a benchmark cell derives from: the fine-tunes of the
transfer protocol (batches, new heads, sweep and retrain seeds) and the random strategy's ranking.
The tasks' 800/200/test splits stay those of ``--seed``, so the seeds repeat the same experiment on
the same data and their spread is run-to-run variability, as the 30 runs per task of paper 000.

:class:`Across` reads a folder's records of every seed (:func:`expertise.bench.folder.load_folder`)
and gives each quantity per task and seed: ``{task: {seed: value}}``. The report takes each task's
**median over seeds** and the **mean over tasks**, with three named 95% percentile-bootstrap
intervals (:data:`INTERVALS`, computed by :func:`expertise.bench.metrics.group_means`):

- *over tasks*: the tasks of a group resampled (their medians fixed): how much the figure depends
  on which tasks the suite holds; it spans the tasks' difficulty, so it is wide;
- *over repeated runs within each task*: each task's seeds resampled, the tasks fixed: paper 000's
  intervals (its "77.4 [77.3-77.6]"), the uncertainty from training randomness alone;
- *over tasks and runs*: both at once (tasks drawn, then each drawn task's seeds).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from expertise.bench import metrics
from expertise.bench.folder import SeedData, group_order
from expertise.errors import ConfigError

INTERVALS: dict[str, str] = {"tasks": "over tasks", "runs": "over repeated runs within each task",
                             "both": "over tasks and runs"}
PerTaskSeed = dict[str, dict[int | None, float]]  # task -> training seed (None: records without one) -> value


def parse_seeds(text: str) -> tuple[int, ...]:
    """``--seeds``: comma-separated distinct non-negative integers, e.g. ``0,1,2``."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise ConfigError(f"--seeds names no seed ({text!r}); give comma-separated integers, e.g. --seeds 0,1,2")
    seeds = []
    for p in parts:
        try:
            s = int(p)
        except ValueError:
            raise ConfigError(f"--seeds takes comma-separated integers, e.g. 0,1,2; {p!r} is not one") from None
        if s < 0:
            raise ConfigError(f"--seeds takes non-negative integers; got {s}")
        if s in seeds:
            raise ConfigError(f"--seeds lists seed {s} twice ({text!r}); name each training seed once")
        seeds.append(s)
    return tuple(seeds)


class Across:
    """The records of every training seed of a folder, quantity by quantity as ``{task: {seed: value}}``."""

    def __init__(self, by_seed: Mapping[int | None, SeedData]) -> None:
        self.by_seed = dict(by_seed)
        self.seeds: list[int | None] = list(self.by_seed)
        self.groups: dict[str, str] = {}
        self.member_kind: dict[str, str] = {}
        self.member_domain: dict[str, str | None] = {}
        pools: dict[str, None] = {}
        strategies: dict[str, None] = {}
        for d in self.by_seed.values():
            self.groups.update(d.groups)
            self.member_kind.update(d.member_kind)
            self.member_domain.update(d.member_domain)
            pools.update(dict.fromkeys(d.pools))
            strategies.update(dict.fromkeys(d.strategies))
        self.pools, self.strategies = list(pools), list(strategies)
        self.tasks = group_order(self.groups)

    @property
    def multi(self) -> bool:
        return len(self.seeds) > 1

    def pool_members(self, pool: str) -> list[str] | None:
        return next((m for d in self.by_seed.values() if (m := d.pool_members(pool)) is not None), None)

    def per_seed(self, fn: Callable[[SeedData, str], float | None]) -> PerTaskSeed:
        """``fn(seed's data, task)`` for every task and seed where it is not None."""
        out: PerTaskSeed = {}
        for t in self.tasks:
            for s, d in self.by_seed.items():
                v = fn(d, t)
                if v is not None:
                    out.setdefault(t, {})[s] = float(v)
        return out

    def value(self, pool: str, strategy: str, budget: int = 1) -> PerTaskSeed:
        """The strategy's value with ``budget`` picks (the random strategy's expectation)."""
        def one(d: SeedData, t: str) -> float | None:
            v = d.values(pool, strategy, t, [budget])
            return None if v is None else v[0][0]
        return self.per_seed(one)

    def pool_stat(self, pool: str, stat: Callable[[list[float]], float]) -> PerTaskSeed:
        """``stat`` of the pool members' protocol accuracies (max: the oracle, min: the worst member)."""
        members = self.pool_members(pool)

        def one(d: SeedData, t: str) -> float | None:
            accs = d.acc.get(t, {})
            if not members or any(m not in accs for m in members):
                return None
            return stat([accs[m] for m in members])
        return self.per_seed(one)

    def member(self, kind: str) -> PerTaskSeed:
        """The protocol accuracy of the (first) member of library kind ``kind`` (``baseline``: B)."""
        name = next((m for m, k in self.member_kind.items() if k == kind), None)
        return {} if name is None else self.per_seed(lambda d, t: d.acc.get(t, {}).get(name))


def runs_of(values: PerTaskSeed, tasks: Sequence[str] | None = None) -> dict[str, list[float]]:
    """Each task's values in seed order (the tasks that have one)."""
    keep = set(values) if tasks is None else set(tasks) & set(values)
    return {t: [v for _, v in sorted(values[t].items(), key=lambda kv: (kv[0] is None, kv[0] or 0))]
            for t in values if t in keep and values[t]}


def medians(values: PerTaskSeed) -> dict[str, float]:
    """Each task's median over seeds."""
    return {t: float(np.median(r)) for t, r in runs_of(values).items()}


def summaries(values: PerTaskSeed, groups: Mapping[str, str], kind: str, n_resamples: int = 10_000,
              seed: int = 0) -> dict[str, metrics.CI]:
    """Mean over tasks of each task's median over seeds, per group, with the interval ``kind``
    (a key of :data:`INTERVALS`)."""
    return metrics.group_means(runs_of(values), groups, n_resamples, seed=seed, resample=kind)  # type: ignore[arg-type]
