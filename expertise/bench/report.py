"""The benchmark report: ``summary.md``, ``summary.json``, the PNG plots and ``records.jsonl`` of a
benchmark folder, made from its records alone (``expertise bench report DIR``).

A folder of one training seed gets the report it always got (Tables 1-2 with intervals over tasks,
regret, the oracle's per-member table, compute, relative deltas), followed by the paired comparisons
(:mod:`expertise.bench.paired`) and the "Does choosing pay?" figures (:mod:`expertise.bench.pays`);
a folder run with ``--halving`` also gets successive halving against full scoring
(:mod:`expertise.bench.halving`) after the relative deltas.
A folder of several seeds (``--seeds``) takes each task's median over the seeds, shows Tables 1-2
with each of the three intervals of :data:`expertise.bench.seeds.INTERVALS`, the per-task medians
with their range over seeds, and averages regret, deltas and compute over tasks and seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from expertise.bench import figures, halving, metrics, pays, tables
from expertise.bench.folder import SeedData, load_folder, read_task_meta
from expertise.bench.paired import comparisons
from expertise.bench.seeds import INTERVALS, Across, PerTaskSeed, medians, runs_of, summaries
from expertise.io import atomic_write_json, atomic_write_text
from expertise.store import RecordStore

SUMMARY, SUMMARY_JSON = "summary.md", "summary.json"
# Table 2 of paper 000: kNN selection within each kind of pool.
TABLE2_POOLS: dict[str, str] = {"baseline": "baseline", "adapter_experts": "adapters", "full_experts": "full",
                                "experts": "all experts"}
KNN = "knn_loo"


def write_report(out: Path, n_resamples: int = 10_000, seed: int = 0) -> Path:
    """``summary.md``, ``summary.json``, PNG plots and ``records.jsonl`` in ``out``, from its records alone."""
    out = Path(out)
    store = RecordStore(out)
    x = Across(load_folder(store))
    tasks, groups = x.tasks, x.groups
    main_pool = x.pools[0] if x.pools else "all"
    seeds_text = ", ".join(str(s) for s in x.seeds)
    if x.multi:
        intro = (f"{len(tasks)} tasks ({', '.join(tasks)}), {len(x.seeds)} training seeds ({seeds_text}) on the same task "
                 "splits; strategies scored by the transfer-protocol test accuracy of their pick (the best of their first "
                 "B picks), against the oracle that fine-tunes every pool member. Each task's value is its median over "
                 "the seeds; group means over tasks, in percent, with 95% percentile-bootstrap intervals of three kinds: "
                 "over tasks (the tasks resampled: which tasks the suite holds), over repeated runs within each task "
                 "(each task's seeds resampled, the tasks fixed: training randomness alone, as paper 000's intervals) "
                 "and over tasks and runs (both). The random row is the exact expectation over random picks.")
    else:
        intro = (f"{len(tasks)} tasks ({', '.join(tasks)}); strategies scored by the transfer-protocol "
                 "test accuracy of their pick (the best of their first B picks), against the oracle that fine-tunes "
                 "every pool member. Group means with 95% percentile-bootstrap intervals over tasks, in percent. "
                 "The random row is the exact expectation over random picks.")
    lines = ["# Benchmark", "", intro, ""]
    kinds = list(INTERVALS) if x.multi else ["tasks"]
    plot_kind = "both" if x.multi else "tasks"

    # Table 1: strategies x groups at B=1 on the main pool, plus the oracle.
    values = {s: v for s in x.strategies if (v := x.value(main_pool, s))}
    values["oracle (fine-tune every member)"] = _oracle(x, main_pool)
    table1 = {k: {name: summaries(v, groups, k, n_resamples, seed) for name, v in values.items()} for k in kinds}
    title = f"## Table 1 layout: fine-tuned test accuracy of each strategy's pick (pool `{main_pool}`, budget 1)"
    for k in kinds:
        lines += [title + (f", intervals {INTERVALS[k]}" if x.multi else ""), "", tables.group_table(table1[k]), ""]
    figures.plot_group_means(table1[plot_kind], out / "strategies.png",
                             title=f"Test accuracy of each strategy's pick (pool {main_pool}, B=1)")
    if x.multi:
        lines += _medians_table(x, values, main_pool)

    # Table 2: kNN selection within each kind of pool.
    t2 = {label: v for spec, label in TABLE2_POOLS.items() if (v := x.value(spec, KNN))}
    if t2:
        for k in kinds:
            lines += ["## Table 2 layout: kNN selection within each pool" + (f", intervals {INTERVALS[k]}" if x.multi else ""),
                      "", tables.group_table({n: summaries(v, groups, k, n_resamples, seed) for n, v in t2.items()},
                                             first="pool"), ""]

    lines += _regret(x, out, main_pool)
    lines += _oracle_table(x)
    lines += _compute(x, main_pool)
    lines += _deltas(x, out, main_pool)
    halving_lines, halving_json = halving.section(x, main_pool)
    lines += halving_lines

    # Paired comparisons and the figures of "Does choosing pay?".
    paired = comparisons(x, main_pool, n_resamples, seed)
    if paired:
        lines += [f"## Paired comparisons (pool `{main_pool}`, budget 1)", "",
                  "a - b: the difference of the two picks' fine-tuned test accuracy on each task and training seed, "
                  "averaged over seeds and then over the group's tasks, in points, with its 95% bootstrap interval "
                  "resampling tasks and, within each, seeds; >0 marks an interval above zero (a beats b beyond the "
                  "spread of tasks and seeds), <0 one below. B = the baseline member; `X in POOL` = strategy X "
                  "choosing within that pool (Table 2).", "",
                  tables.paired_table({p.name: p.summary for p in paired}), ""]
    found = pays.checks(x, main_pool, read_task_meta(out), n_resamples, seed)
    lines += pays.block(found, main_pool, x.seeds)
    path = out / SUMMARY
    atomic_write_text(path, "\n".join(lines))
    atomic_write_json(out / SUMMARY_JSON, {
        "seeds": [s for s in x.seeds if s is not None], "tasks": tasks, "pool": main_pool, "budget": 1,
        "table1": {k: {name: {g: list(ci) for g, ci in row.items()} for name, row in table1[k].items()} for k in kinds},
        "paired": [p.to_json() for p in paired], "does_choosing_pay": [c.to_json() for c in found],
        **({"halving": halving_json} if halving_json is not None else {})})
    store.export_jsonl(out / "records.jsonl")
    return path


def _oracle(x: Across, pool: str) -> PerTaskSeed:
    """The best protocol accuracy among the pool's members that have one, per task and seed."""
    names = x.pool_members(pool)

    def best(d: SeedData, t: str) -> float | None:
        accs = d.acc.get(t, {})
        have = [accs[m] for m in (names if names is not None else list(accs)) if m in accs]
        return max(have) if have else None
    return x.per_seed(best)


def _medians_table(x: Across, values: dict[str, PerTaskSeed], pool: str) -> list[str]:
    def cell(v: PerTaskSeed, t: str) -> str:
        r = runs_of(v).get(t)
        return tables.DASH if not r else f"{100 * np.median(r):.1f} [{100 * min(r):.1f}, {100 * max(r):.1f}]"
    names = list(values)
    return [f"## Per task: median over seeds [lowest, highest] (pool `{pool}`, budget 1)", "",
            tables.markdown_table(["task", "group", *names], [[t, x.groups[t], *(cell(values[n], t) for n in names)]
                                                              for t in x.tasks]), ""]


def _regret(x: Across, out: Path, main_pool: str) -> list[str]:
    """Regret per pool and budget (mean over tasks and seeds), zero-regret fractions (Figure 7),
    per-task regret bars at B=1."""
    regrets: dict[str, dict[str, dict[int, Any]]] = {}
    zero_panels: dict[str, dict[str, list[float]]] = {}
    per_task_bars: dict[str, dict[str, float]] = {}
    for pool in x.pools:
        members = x.pool_members(pool)
        if members is None or len(members) < 2:
            continue
        k = len(members)
        budgets = list(range(1, k + 1))
        for strategy in x.strategies:
            rel, hits, ok = {b: [] for b in budgets}, np.zeros(k), 0
            for t in x.tasks:
                first: list[float] = []
                for d in x.by_seed.values():
                    v = d.values(pool, strategy, t, budgets)
                    if v is None:
                        continue
                    vals, hit = v
                    best = max(d.acc[t][m] for m in members)
                    for b, val in zip(budgets, vals):
                        rel[b].append(float(metrics.relative_regret(val, best)))
                    hits += np.asarray(hit)
                    ok += 1
                    first.append(float(metrics.relative_regret(vals[0], best)))
                if pool == main_pool and first:
                    per_task_bars.setdefault(strategy, {})[t] = first[0] if len(first) == 1 else float(np.mean(first))
            if ok:
                shown = [b for b in budgets if b <= 4 or b == k]
                regrets.setdefault(pool, {})[strategy] = {b: float(np.mean(rel[b])) for b in shown}
                zero_panels.setdefault(pool, {})[strategy] = list(hits / ok)
    lines: list[str] = []
    if regrets:
        over = "tasks and seeds" if x.multi else "tasks"
        lines += ["## Regret per pool and budget", "",
                  tables.regret_table(regrets, what=f"Mean relative regret over {over}, in percent of the error the "
                                      "oracle leaves (paper 002, eq. 2); B = members fine-tuned"), ""]
        for pool, curves in zero_panels.items():
            k = len(next(iter(curves.values())))
            figures.plot_zero_regret({pool: dict(curves)}, list(range(1, k + 1)), out / f"zero_regret.{_slug(pool)}.png")
        lines += ["Plots: " + ", ".join(f"`zero_regret.{_slug(p)}.png`" for p in zero_panels) +
                  f" (fraction of {over} with zero regret against the budget, paper 002 Figure 7), "
                  "`task_regret.png` (relative regret per task at B=1), `strategies.png` (Table 1 as bars).", ""]
    if per_task_bars:
        figures.plot_task_regret(per_task_bars, out / "task_regret.png", groups=x.groups,
                                 title=f"Relative regret per task at B=1 (pool {main_pool})")
    return lines


def _oracle_table(x: Across) -> list[str]:
    kind_rank = {"baseline": 0, "full_expert": 1, "adapter_expert": 2}
    members = sorted({m for d in x.by_seed.values() for t in x.tasks for m in d.acc.get(t, {})},
                     key=lambda m: (kind_rank.get(x.member_kind.get(m, ""), 3), m))
    accs = {m: medians(x.per_seed(lambda d, t, m=m: d.acc.get(t, {}).get(m))) for m in members}
    return [f"## Protocol test accuracy of every member (the oracle's fine-tunes{', median over seeds' if x.multi else ''})",
            "", tables.markdown_table(["task", "group", *[m.split(".", 1)[-1] for m in members]],
                                      [[t, x.groups[t], *[_pct(accs[m].get(t)) for m in members]] for t in x.tasks]), ""]


def _compute(x: Across, main_pool: str) -> list[str]:
    """Per strategy (mean over tasks), and per task for the first strategy; over seeds, the mean."""
    cost_rows: dict[str, tables.Cost] = {}
    per_task_cost: dict[str, tables.Cost] = {}
    fields = list(tables.Cost.__dataclass_fields__)
    for strategy in x.strategies:
        costs_of = {}
        for t in x.tasks:
            each = [c for d in x.by_seed.values() if (c := _task_cost(d, main_pool, strategy, t)) is not None]
            if each:
                costs_of[t] = each[0] if len(each) == 1 else tables.Cost(
                    *(float(np.mean([getattr(c, f) for c in each])) for f in fields))
        if costs_of:
            cost_rows[strategy] = tables.Cost(*(float(np.mean([getattr(c, f) for c in costs_of.values()])) for f in fields))
            if not per_task_cost:
                per_task_cost = {f"{t} ({strategy})": c for t, c in costs_of.items()}
    if not cost_rows:
        return []
    return ["## Compute per task (mean over tasks" + (" and seeds)" if x.multi else ")"), "",
            "Selection = embedding the members the strategy reads (cold, measured once per member and task) plus "
            "scoring; one fine-tune = one retrain on the 1,000 images; oracle = the whole transfer protocol for "
            "every pool member.", "", tables.cost_table(cost_rows), "",
            "Per task:", "", tables.cost_table(per_task_cost), ""]


def _deltas(x: Across, out: Path, main_pool: str) -> list[str]:
    """Relative delta (paper 002, eq. 2) of every strategy against the task-agnostic pick, B=1."""
    reference = "task_agnostic"
    if reference not in x.strategies:
        return []
    deltas: dict[str, dict[str, float]] = {}
    for strategy in x.strategies:
        if strategy == reference:
            continue
        for t in x.tasks:
            each = []
            for d in x.by_seed.values():
                a_, b_ = d.values(main_pool, strategy, t, [1]), d.values(main_pool, reference, t, [1])
                if a_ is not None and b_ is not None:
                    each.append(float(metrics.relative_delta(a_[0][0], b_[0][0])))
            if each:
                deltas.setdefault(strategy, {})[t] = each[0] if len(each) == 1 else float(np.mean(each))
    if not deltas:
        return []
    body = [[s_, f"{100 * np.mean(list(v.values())):+.1f}", str(sum(y > 0 for y in v.values())),
             str(sum(y < 0 for y in v.values()))] for s_, v in deltas.items()]
    figures.plot_task_regret(deltas, out / "task_delta.png", groups=x.groups,
                             title=f"Relative delta against {reference} per task (B=1, pool {main_pool})",
                             ylabel="relative delta vs task-agnostic")
    per = " (each task's mean over seeds)" if x.multi else ""
    return [f"## Relative delta against `{reference}` (pool `{main_pool}`, B=1)", "",
            "Delta(m, task_agnostic) = (s(m) - s(ta)) / (1 - min(s(m), s(ta))) per task (paper 002, eq. 2), "
            f"in percent{per}; positive when the strategy's pick fine-tunes better. `task_delta.png` shows it per task.",
            "", tables.markdown_table(["strategy", "mean delta (%)", "tasks better", "tasks worse"], body,
                                      ["l", "r", "r", "r"]), ""]


def _task_cost(d: SeedData, pool: str, strategy: str, task: str) -> tables.Cost | None:
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
