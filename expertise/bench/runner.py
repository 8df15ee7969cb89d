"""The benchmark run: every selection strategy on every pool and task, the oracle (the transfer
protocol for every pool member), for one training seed or several.

``run_bench`` does the work as units in a :class:`~expertise.store.RecordStore`:

- ``embed``: one member embedding one task's 1,000 train+val images (cold cost, cached features;
  shared by every seed);
- ``selection``: one strategy ranking one pool for one task (from the cached features), per seed;
- ``protocol``: the transfer protocol for one member on one task (its fine-tunes are units too), per seed.

A killed run resumes where it stopped and never repeats a finished unit. ``write_report``
(:mod:`expertise.bench.report`) makes ``summary.md``, ``summary.json``, the PNG plots and
``records.jsonl`` from the records alone, so ``expertise bench report DIR`` regenerates them without
a library or a model.

How a strategy is scored (paper 002, section 3): with budget B it is worth the best protocol test
accuracy among its first B picks; the oracle is the best of the whole pool. The random strategy is
scored by its exact expectation over all B-subsets of the pool instead of one draw
(:func:`~expertise.bench.folder.expected_best`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING


from expertise.bench.folder import expected_best, task_domains, write_task_meta
from expertise.bench.units import HALVING_KINDS, StrategySpec, bench_plans
from expertise.library.upstream_meta import world_of_library
from expertise.units import LocalExecutor, WorkerContext, drive
from expertise.bench.pools import parse_pool
from expertise.bench.report import SUMMARY, write_report
from expertise.transfer.protocol import SweepConfig
from expertise.store import RecordStore
from expertise.data.tasks import GROUPS, Task
from expertise.errors import ConfigError, DataError
from expertise.library import Library
from expertise.select.embed import EmbeddingCache
from expertise.runtime import RunContext
from expertise.select.proxy_registry import get_proxy
from expertise.select.registry import default_rows, proxy_strategies
from expertise.train import TrainConfig

__all__ = ["HALVING_KINDS", "SUMMARY", "StrategySpec", "expected_best", "parse_strategies", "run_bench", "suite_tasks", "write_report"]

if TYPE_CHECKING:
    from expertise.units.plan import Executor



# The registry's default rows (expertise.select.registry): a strategy added there is a row here.
DEFAULT_STRATEGIES: tuple[StrategySpec, ...] = tuple(
    StrategySpec(row.label, strategy.name, row.proxy or "knn_loo") for row, strategy in default_rows())
DEFAULT_POOLS: tuple[str, ...] = ("all", "experts", "full_experts", "adapter_experts", "baseline")


def parse_strategies(labels: Sequence[str] | None) -> tuple[StrategySpec, ...]:
    """Strategies by label: the default labels, or ``<strategy>:<proxy>`` for a strategy that reads
    features (``proxy:logme``, ``hybrid:leep``)."""
    if not labels:
        return DEFAULT_STRATEGIES
    known = {s.label: s for s in DEFAULT_STRATEGIES}
    proxied = proxy_strategies()
    out = []
    for label in labels:
        kind, _, proxy = label.partition(":")
        if label in known:
            out.append(known[label])
        elif kind in proxied and proxy:
            get_proxy(proxy)
            out.append(StrategySpec(proxy if kind == "proxy" else f"{kind}({proxy})", kind, proxy))
        else:
            raise ConfigError(f"unknown strategy {label!r}; choose from {', '.join(known)}, "
                              f"{' or '.join(f'{n}:<proxy>' for n in proxied)}")
    return tuple(out)


def run_bench(library: Library, tasks: Sequence[Task], out: Path, finetune: TrainConfig,
              sweep: SweepConfig = SweepConfig(lr_factors=(1.0,)), strategies: Sequence[StrategySpec] = DEFAULT_STRATEGIES,
              pools: Sequence[str] = DEFAULT_POOLS, ctx: RunContext = RunContext(), batch_size: int = 500,
              executor: Executor | None = None, seeds: Sequence[int] | None = None,
              domains: Mapping[str, Mapping[str, str | None]] | None = None, halving: bool = False) -> Path:
    """Run (or resume) the benchmark into ``out`` and write its report; returns ``summary.md``.
    Its units (:mod:`expertise.bench.units`) run on ``executor`` (default: one after another in this
    process; ``expertise.units.open_executor("ray")`` for a Ray cluster) with identical records.
    Embeddings go to ``ctx.cache`` (``OUT/cache`` without one; ``expertise bench`` passes the
    library's own ``LIBRARY/cache``, which the demo, ``select`` and ``transfer`` share).

    ``seeds``: the training seeds (fine-tunes, the random strategy), each a full benchmark in the
    same folder (default: ``ctx.seed`` alone, the benchmark as it always ran); the tasks are the ones
    given, loaded with ``ctx.seed`` (their splits). ``domains``: each task's {"group", "domain"} for
    ``OUT/tasks.json`` (default: from the library's world, None for a task outside it). ``halving``:
    also rank the first pool by successive halving with each proxy strategy, on a cold cache, for the
    report's agreement with full scoring (:mod:`expertise.bench.halving`)."""
    device, log = ctx.device, ctx.log
    seeds = tuple(seeds) if seeds is not None else (ctx.seed,)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"the training seeds must be distinct and at least one, got {list(seeds)}")
    out = Path(out)
    store = RecordStore(out)
    cache = ctx.cache if ctx.cache is not None else EmbeddingCache(out / "cache")
    infos = [library.info(n) for n in library.names()]
    pool_members = {spec: parse_pool(spec).names(infos, allow_empty=True) for spec in pools}
    pool_members = {k: v for k, v in pool_members.items() if v}
    if not pool_members:
        raise ConfigError(f"none of the pools {list(pools)} has a member in the library at {library.path}")
    if domains is None:
        domains = task_domains(tasks, world_of_library(library))
    write_task_meta(out, domains)
    t0 = time.perf_counter()
    plans = [plan for s in seeds for plan in bench_plans(library, tasks, store, cache, finetune, sweep, strategies,
                                                          pool_members, s, batch_size, split_seed=ctx.seed,
                                                          halving=halving)]
    worker = WorkerContext(device, ctx.progress).seed_with([library], tasks)
    before = len(store)
    executor = executor or LocalExecutor()
    drive(plans, executor, store, worker, ctx.progress, desc="bench units")
    log(f"{len(tasks)} task(s), {len(pool_members)} pool(s), {len(strategies)} strateg{'y' if len(strategies) == 1 else 'ies'}"
        + (f", {len(seeds)} training seeds" if len(seeds) > 1 else "") +
        f": {len(store) - before} unit(s) recorded by the {executor.name} executor, {before} kept "
        f"({time.perf_counter() - t0:.0f}s)")
    return write_report(out)


def group_of(task: Task) -> str:
    if task.group not in GROUPS:
        raise DataError(f"task {task.name!r} has group {task.group!r}; expected one of {GROUPS}")
    return task.group


def suite_tasks(spec: str, world, resolution: int, seed: int = 0, max_side: int | None = None) -> list[Task]:
    """The tasks of a suite: ``builtin`` (every world task and scikit-learn's digits), a group name
    (``natural``, ``specialized``, ``structured``: the built-in tasks of that group), or a
    comma-separated list of task specs (built-in names, ``sklearn_digits``, ImageFolder paths).
    Built-in tasks are rendered at ``resolution``; ImageFolder tasks are kept at their source
    resolution (the longer side capped at ``max_side``, default the loaders')."""
    from expertise.data.loaders import DEFAULT_MAX_SIDE, load_task

    kw = {"builtin_resolution": resolution, "max_side": max_side or DEFAULT_MAX_SIDE, "seed": seed, "world": world}
    builtin = [*(world.task_names if world is not None else ()), "sklearn_digits"]
    if spec == "builtin":
        names = builtin
    elif spec in GROUPS:
        tasks = [load_task(n, **kw) for n in builtin]
        chosen = [t for t in tasks if t.group == spec]
        if not chosen:
            raise ConfigError(f"suite {spec!r}: no built-in task of that group; is the library built on the embedded world?")
        return chosen
    else:
        names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ConfigError(f"suite {spec!r} names no task; use builtin, natural, specialized, structured or TASK,TASK,...")
    return [load_task(n, **kw) for n in names]
