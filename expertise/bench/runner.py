"""The benchmark run: every selection strategy on every pool and task, the oracle (the transfer
protocol for every pool member), regret, confidence intervals and compute accounting.

``run_bench`` does the work as units in a :class:`~expertise.store.RecordStore`:

- ``embed``: one member embedding one task's 1,000 train+val images (cold cost, cached features);
- ``selection``: one strategy ranking one pool for one task (from the cached features);
- ``protocol``: the transfer protocol for one member on one task (its fine-tunes are units too).

A killed run resumes where it stopped and never repeats a finished unit. ``write_report`` makes
``summary.md``, the PNG plots and ``records.jsonl`` from the records alone, so ``expertise bench
report DIR`` regenerates them without a library or a model.

How a strategy is scored (paper 002, section 3): with budget B it is worth the best protocol test
accuracy among its first B picks; the oracle is the best of the whole pool. The random strategy is
scored by its exact expectation over all B-subsets of the pool instead of one draw.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from expertise.bench import figures, metrics, tables
from expertise.bench.pools import parse_pool
from expertise.transfer.protocol import SweepConfig
from expertise.store import RecordStore, UnitResult
from expertise.data.tasks import GROUPS, Task
from expertise.errors import ConfigError, DataError, ExpertiseError
from expertise.io import atomic_write_text
from expertise.library import Library, MemberInfo
from expertise.select.embed import EmbeddingCache, cache_key, embed_pool
from expertise.runtime import RunContext
from expertise.select.proxies import get_proxy
from expertise.select.registry import STRATEGIES, default_rows
from expertise.select.run import run_selection
from expertise.train import TrainConfig

if TYPE_CHECKING:
    from expertise.units.plan import Executor

SUMMARY = "summary.md"


@dataclass(frozen=True)
class StrategySpec:
    """A row of the benchmark: a label, the strategy of :func:`run_selection`, and its proxy."""

    label: str
    strategy: str
    proxy: str = "knn_loo"


# The registry's default rows (expertise.select.registry): a strategy added there is a row here.
DEFAULT_STRATEGIES: tuple[StrategySpec, ...] = tuple(
    StrategySpec(row.label, strategy.name, row.proxy or "knn_loo") for row, strategy in default_rows())
DEFAULT_POOLS: tuple[str, ...] = ("all", "experts", "full_experts", "adapter_experts", "baseline")
# Table 2 of paper 000: kNN selection within each kind of pool.
TABLE2_POOLS: dict[str, str] = {"baseline": "baseline", "adapter_experts": "adapters", "full_experts": "full",
                                "experts": "all experts"}


def parse_strategies(labels: Sequence[str] | None) -> tuple[StrategySpec, ...]:
    """Strategies by label: the default labels, or ``<strategy>:<proxy>`` for a strategy that reads
    features (``proxy:logme``, ``hybrid:leep``)."""
    if not labels:
        return DEFAULT_STRATEGIES
    known = {s.label: s for s in DEFAULT_STRATEGIES}
    proxied = [n for n, s in STRATEGIES.items() if s.uses_proxy]
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


def _member_json(info: MemberInfo) -> dict[str, Any]:
    d = info.to_json()
    d.pop("files", None)
    return d


def run_bench(library: Library, tasks: Sequence[Task], out: Path, finetune: TrainConfig,
              sweep: SweepConfig = SweepConfig(lr_factors=(1.0,)), strategies: Sequence[StrategySpec] = DEFAULT_STRATEGIES,
              pools: Sequence[str] = DEFAULT_POOLS, ctx: RunContext = RunContext(), batch_size: int = 500,
              executor: Executor | None = None) -> Path:
    """Run (or resume) the benchmark into ``out`` and write its report; returns ``summary.md``.
    Its units (:mod:`expertise.bench.units`) run on ``executor`` (default: one after another in this
    process; ``expertise.units.open_executor("ray")`` for a Ray cluster) with identical records.
    Embeddings go to ``ctx.cache`` (``OUT/cache`` without one; ``expertise bench`` passes the
    library's own ``LIBRARY/cache``, which the demo, ``select`` and ``transfer`` share)."""
    seed, device, log = ctx.seed, ctx.device, ctx.log
    out = Path(out)
    store = RecordStore(out)
    cache = ctx.cache if ctx.cache is not None else EmbeddingCache(out / "cache")
    infos = [library.info(n) for n in library.names()]
    pool_members = {spec: parse_pool(spec).names(infos, allow_empty=True) for spec in pools}
    pool_members = {k: v for k, v in pool_members.items() if v}
    if not pool_members:
        raise ConfigError(f"none of the pools {list(pools)} has a member in the library at {library.path}")
    from expertise.bench.units import bench_plans
    from expertise.units import LocalExecutor, WorkerContext, drive

    t0 = time.perf_counter()
    plans = bench_plans(library, tasks, store, cache, finetune, sweep, strategies, pool_members, seed, batch_size)
    worker = WorkerContext(device, ctx.progress).seed_with([library], tasks)
    before = len(store)
    executor = executor or LocalExecutor()
    drive(plans, executor, store, worker, ctx.progress, desc="bench units")
    log(f"{len(tasks)} task(s), {len(pool_members)} pool(s), {len(strategies)} strateg{'y' if len(strategies) == 1 else 'ies'}: "
        f"{len(store) - before} unit(s) recorded by the {executor.name} executor, {before} kept "
        f"({time.perf_counter() - t0:.0f}s)")
    return write_report(out)


def _embed_unit(library: Library, task: Task, cache: EmbeddingCache, name: str, batch_size: int,
                device: torch.device) -> UnitResult:
    """The cold cost of one member embedding the task (loading and hash checks included), measured
    without the cache even when an earlier run filled it, so compute accounting never counts a
    cache hit as the price of selection; the features then fill the cache if it lacks them."""
    emb = embed_pool([name], library.load, library.verified_hash, task, EmbeddingCache(None), "trainval", batch_size,
                     device, False, preprocessing=lambda n: library.info(n).preprocessing)
    key = cache_key(task, library.info(name).preprocessing)
    if not cache.has(library.verified_hash(name), key, "trainval"):
        entry = {"features": emb.features[name]}
        if name in emb.upstream_logits:
            entry["upstream_logits"] = emb.upstream_logits[name]
        cache.put(library.verified_hash(name), key, "trainval", entry)
    return UnitResult({"cold": True}, images={"embed": len(task.trainval)}, seconds={"embed": emb.stats.seconds})


def _selection_unit(library: Library, task: Task, strat: StrategySpec, members: list[str], cache: EmbeddingCache,
                    seed: int, device: torch.device, batch_size: int) -> UnitResult:
    try:
        # resamples=0: a unit records the ranking alone, so the scores' bootstrap would go unused.
        run = run_selection(library, task, strat.strategy, len(members), strat.proxy, members,
                            RunContext(device, seed, False, cache=cache), batch_size, resamples=0)
    except ExpertiseError as e:  # e.g. domain prediction on a pool without experts: recorded, not fatal
        return UnitResult({"error": str(e)}, images={}, seconds={"score": 0.0})
    rec = run.to_json()
    scoring = sum(v for k, v in run.selection.seconds.items() if k != "embed")  # hybrid: agnostic + aware + combine
    return UnitResult({"ranking": rec["ranking"], "picks": rec["picks"], "members_embedded": rec["members_embedded"],
                       "select_seconds": rec["seconds"]}, images={"needed": rec["images_needed"]},
                      seconds={"score": scoring})


# ------------------------------------------------------------------------------------- report


def expected_best(accs: Sequence[float], budget: int) -> float:
    """E[max accuracy of a uniformly random ``budget``-subset]: with accuracies sorted ascending,
    the i-th (1-based) is the maximum of C(i-1, B-1) of the C(K, B) subsets."""
    a = np.sort(np.asarray(accs, dtype=np.float64))
    k = len(a)
    weights = np.array([math.comb(i - 1, budget - 1) for i in range(1, k + 1)], dtype=np.float64) / math.comb(k, budget)
    return float((weights * a).sum())


def _random_hit(accs: Sequence[float], budget: int) -> float:
    """P(a random ``budget``-subset contains a best member)."""
    a = np.asarray(accs, dtype=np.float64)
    m = int((a >= a.max() - 1e-12).sum())
    return 1.0 - math.comb(len(a) - m, budget) / math.comb(len(a), budget)


@dataclass
class _Data:
    groups: dict[str, str]
    acc: dict[str, dict[str, float]]                 # task -> member -> protocol test accuracy
    protocol_cost: dict[str, dict[str, dict]]        # task -> member -> {"seconds", "images", "retrain_seconds", ...}
    embed_cost: dict[str, dict[str, tuple[float, int]]]  # task -> member -> (seconds, images)
    selections: dict[tuple[str, str, str], dict]     # (pool, strategy, task) -> metrics
    kinds: dict[tuple[str, str], str]                # (pool, strategy) -> strategy kind
    member_kind: dict[str, str]                      # member -> its library kind
    pools: list[str]
    strategies: list[str]


def _load(store: RecordStore) -> _Data:
    d = _Data({}, {}, {}, {}, {}, {}, {}, [], [])
    for rec in store.all("protocol"):
        c, m = rec["config"], rec["metrics"]
        d.groups[c["task"]] = c["group"]
        d.acc.setdefault(c["task"], {})[c["member"]] = float(m["test_accuracy"])
        d.member_kind[c["member"]] = c.get("info", {}).get("kind", "")
        retrains = max(1, len(m.get("test_accuracies", [])) or 1)
        d.protocol_cost.setdefault(c["task"], {})[c["member"]] = {
            "seconds": float(m["seconds"]), "images": int(m["images"]),
            "finetune_seconds": float(m["phase_seconds"].get("retrain", 0.0)) / retrains,
            "finetune_images": int(m["phase_images"].get("retrain", 0)) // retrains,
        }
    for rec in store.all("embed"):
        c = rec["config"]
        d.embed_cost.setdefault(c["task"], {})[c["member"]] = (float(sum(rec["seconds"].values())),
                                                               int(sum(rec["images"].values())))
    pool_order: dict[str, int] = {}
    strategy_order: dict[str, int] = {}
    for rec in store.all("selection"):
        c = rec["config"]
        d.selections[(c["pool"], c["strategy"], c["task"])] = {**rec["metrics"], "members": list(c["members"]),
                                                               "score_seconds": rec["seconds"].get("score", 0.0)}
        d.kinds[(c["pool"], c["strategy"])] = c["kind"]
        pool_order.setdefault(c["pool"], c["order"][0])
        strategy_order.setdefault(c["strategy"], c["order"][1])
    d.pools = sorted(pool_order, key=pool_order.__getitem__)
    d.strategies = sorted(strategy_order, key=strategy_order.__getitem__)
    if not d.acc:
        raise DataError(f"no finished protocol units in {store.root}; run 'expertise bench' first")
    return d


def _values(d: _Data, pool: str, strategy: str, task: str, budgets: Sequence[int]) -> tuple[list[float], list[float]] | None:
    """(value, zero-regret probability) per budget for one strategy on one task, or None when the
    strategy did not rank this pool (an error) or a member lacks a protocol result."""
    sel = d.selections.get((pool, strategy, task))
    if sel is None or "error" in sel:
        return None
    members = sel["members"]
    accs = d.acc.get(task, {})
    if any(m not in accs for m in members):
        return None
    pool_accs = [accs[m] for m in members]
    best = max(pool_accs)
    if d.kinds[(pool, strategy)] == "random":
        return ([expected_best(pool_accs, b) for b in budgets], [_random_hit(pool_accs, b) for b in budgets])
    order = [n for n, _ in sel["ranking"]]
    curve = metrics.budget_curve(order, accs, budgets)
    return [float(v) for v in curve], [float(v >= best - 1e-12) for v in curve]


def write_report(out: Path, n_resamples: int = 10_000, seed: int = 0) -> Path:
    """``summary.md``, PNG plots and ``records.jsonl`` in ``out``, from its records alone."""
    out = Path(out)
    store = RecordStore(out)
    d = _load(store)
    tasks = sorted(d.acc, key=lambda t: (GROUPS.index(d.groups[t]) if d.groups[t] in GROUPS else len(GROUPS), t))
    lines = ["# Benchmark", "", f"{len(tasks)} tasks ({', '.join(tasks)}); strategies scored by the transfer-protocol "
             "test accuracy of their pick (the best of their first B picks), against the oracle that fine-tunes "
             "every pool member. Group means with 95% percentile-bootstrap intervals over tasks, in percent. "
             "The random row is the exact expectation over random picks.", ""]
    main_pool = d.pools[0] if d.pools else "all"

    # Table 1: strategies x groups at B=1 on the main pool, plus the oracle.
    rows: dict[str, dict] = {}
    for strategy in d.strategies:
        per_task = {}
        for t in tasks:
            v = _values(d, main_pool, strategy, t, [1])
            if v is not None:
                per_task[t] = v[0][0]
        if per_task:
            rows[strategy] = metrics.group_means(per_task, d.groups, n_resamples, seed=seed)
    pool_names = next((s["members"] for (p, _, _), s in d.selections.items() if p == main_pool), list(d.acc[tasks[0]]))
    oracle = {t: max(d.acc[t][m] for m in pool_names if m in d.acc[t]) for t in tasks}
    rows["oracle (fine-tune every member)"] = metrics.group_means(oracle, d.groups, n_resamples, seed=seed)
    lines += [f"## Table 1 layout: fine-tuned test accuracy of each strategy's pick (pool `{main_pool}`, budget 1)", "",
              tables.group_table(rows), ""]
    figures.plot_group_means(rows, out / "strategies.png", title=f"Test accuracy of each strategy's pick (pool {main_pool}, B=1)")

    # Table 2: kNN selection within each kind of pool.
    t2 = {}
    for spec, label in TABLE2_POOLS.items():
        per_task = {}
        for t in tasks:
            v = _values(d, spec, "knn_loo", t, [1])
            if v is not None:
                per_task[t] = v[0][0]
        if per_task:
            t2[label] = metrics.group_means(per_task, d.groups, n_resamples, seed=seed)
    if t2:
        lines += ["## Table 2 layout: kNN selection within each pool", "", tables.group_table(t2, first="pool"), ""]

    # Regret per pool and budget, zero-regret fractions (Figure 7), per-task regret bars.
    regrets: dict[str, dict[str, dict[int, Any]]] = {}
    zero_panels: dict[str, dict[str, list[float]]] = {}
    per_task_bars: dict[str, dict[str, float]] = {}
    max_k = 1
    for pool in d.pools:
        members = next(s["members"] for (p, _, _), s in d.selections.items() if p == pool)
        k = len(members)
        if k < 2:
            continue
        max_k = max(max_k, k)
        budgets = list(range(1, k + 1))
        for strategy in d.strategies:
            rel, hits, ok = {b: [] for b in budgets}, np.zeros(k), 0
            for t in tasks:
                v = _values(d, pool, strategy, t, budgets)
                if v is None:
                    continue
                vals, hit = v
                best = max(d.acc[t][m] for m in members)
                for b, val in zip(budgets, vals):
                    rel[b].append(float(metrics.relative_regret(val, best)))
                hits += np.asarray(hit)
                ok += 1
                if pool == main_pool:
                    per_task_bars.setdefault(strategy, {})[t] = float(metrics.relative_regret(vals[0], best))
            if ok:
                shown = [b for b in budgets if b <= 4 or b == k]
                regrets.setdefault(pool, {})[strategy] = {b: float(np.mean(rel[b])) for b in shown}
                zero_panels.setdefault(pool, {})[strategy] = list(hits / ok)
    if regrets:
        lines += ["## Regret per pool and budget", "",
                  tables.regret_table(regrets, what="Mean relative regret over tasks, in percent of the error the "
                                      "oracle leaves (paper 002, eq. 2); B = members fine-tuned"), ""]
        for pool, curves in zero_panels.items():
            k = len(next(iter(curves.values())))
            curves = {s: c for s, c in curves.items()}
            figures.plot_zero_regret({pool: curves}, list(range(1, k + 1)), out / f"zero_regret.{_slug(pool)}.png")
        lines += ["Plots: " + ", ".join(f"`zero_regret.{_slug(p)}.png`" for p in zero_panels) +
                  " (fraction of tasks with zero regret against the budget, paper 002 Figure 7), "
                  "`task_regret.png` (relative regret per task at B=1), `strategies.png` (Table 1 as bars).", ""]
    if per_task_bars:
        figures.plot_task_regret(per_task_bars, out / "task_regret.png", groups=d.groups,
                               title=f"Relative regret per task at B=1 (pool {main_pool})")

    # Per-task accuracies of every member (the oracle table).
    kind_rank = {"baseline": 0, "full_expert": 1, "adapter_expert": 2}
    members = sorted({m for t in tasks for m in d.acc[t]}, key=lambda m: (kind_rank.get(d.member_kind.get(m, ""), 3), m))
    lines += ["## Protocol test accuracy of every member (the oracle's fine-tunes)", "",
              tables.markdown_table(["task", "group", *[m.split(".", 1)[-1] for m in members]],
                                    [[t, d.groups[t], *[_pct(d.acc[t].get(m)) for m in members]] for t in tasks]), ""]

    # Compute: per strategy (mean over tasks), and per task for the first strategy.
    cost_rows = {}
    per_task_cost: dict[str, tables.Cost] = {}
    for strategy in d.strategies:
        costs_of = {t: c for t in tasks if (c := _task_cost(d, main_pool, strategy, t)) is not None}
        if costs_of:
            cost_rows[strategy] = tables.Cost(*(float(np.mean([getattr(c, f) for c in costs_of.values()]))
                                                for f in tables.Cost.__dataclass_fields__))
            if not per_task_cost:
                per_task_cost = {f"{t} ({strategy})": c for t, c in costs_of.items()}
    if cost_rows:
        lines += ["## Compute per task (mean over tasks)", "",
                  "Selection = embedding the members the strategy reads (cold, measured once per member and task) plus "
                  "scoring; one fine-tune = one retrain on the 1,000 images; oracle = the whole transfer protocol for "
                  "every pool member.", "", tables.cost_table(cost_rows), "",
                  "Per task:", "", tables.cost_table(per_task_cost), ""]

    # Relative delta (paper 002, eq. 2) of every strategy against the task-agnostic pick, B=1.
    reference = "task_agnostic" if "task_agnostic" in d.strategies else None
    if reference is not None:
        deltas: dict[str, dict[str, float]] = {}
        for strategy in d.strategies:
            if strategy == reference:
                continue
            for t in tasks:
                a_, b_ = _values(d, main_pool, strategy, t, [1]), _values(d, main_pool, reference, t, [1])
                if a_ is not None and b_ is not None:
                    deltas.setdefault(strategy, {})[t] = float(metrics.relative_delta(a_[0][0], b_[0][0]))
        if deltas:
            body = [[s_, f"{100 * np.mean(list(v.values())):+.1f}", str(sum(x > 0 for x in v.values())),
                     str(sum(x < 0 for x in v.values()))] for s_, v in deltas.items()]
            lines += [f"## Relative delta against `{reference}` (pool `{main_pool}`, B=1)", "",
                      "Delta(m, task_agnostic) = (s(m) - s(ta)) / (1 - min(s(m), s(ta))) per task (paper 002, eq. 2), "
                      "in percent; positive when the strategy's pick fine-tunes better. `task_delta.png` shows it per task.",
                      "", tables.markdown_table(["strategy", "mean delta (%)", "tasks better", "tasks worse"], body,
                                                ["l", "r", "r", "r"]), ""]
            figures.plot_task_regret(deltas, out / "task_delta.png", groups=d.groups,
                                   title=f"Relative delta against {reference} per task (B=1, pool {main_pool})",
                                   ylabel="relative delta vs task-agnostic")
    path = out / SUMMARY
    atomic_write_text(path, "\n".join(lines))
    store.export_jsonl(out / "records.jsonl")
    return path


def _task_cost(d: _Data, pool: str, strategy: str, task: str) -> tables.Cost | None:
    """Selection (cold embedding of what the strategy read, plus scoring), one fine-tune (the mean
    retrain over the pool) and the oracle (every pool member's whole protocol) on one task."""
    sel = d.selections.get((pool, strategy, task))
    if sel is None or "error" in sel or task not in d.protocol_cost:
        return None
    emb = d.embed_cost.get(task, {})
    read = sel.get("members_embedded", [])
    costs = [d.protocol_cost[task][m] for m in sel["members"] if m in d.protocol_cost[task]]
    if not costs:
        return None
    return tables.Cost(
        selection_seconds=sel["score_seconds"] + sum(emb.get(m, (0.0, 0))[0] for m in read),
        selection_images=sum(emb.get(m, (0.0, 0))[1] for m in read),
        finetune_seconds=float(np.mean([c["finetune_seconds"] for c in costs])),
        finetune_images=int(np.mean([c["finetune_images"] for c in costs])),
        oracle_seconds=sum(c["seconds"] for c in costs), oracle_images=sum(c["images"] for c in costs),
    )


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _slug(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in s)


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
