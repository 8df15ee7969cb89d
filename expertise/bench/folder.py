"""A benchmark folder's records, read back by training seed.

Every ``selection`` and ``protocol`` record of ``expertise bench`` names the training seed it ran
with (``config["seed"]``); ``embed`` records are shared by all seeds (features do not depend on
one). :func:`load_folder` splits the records by that seed into one :class:`SeedData` per seed, so a
folder run with ``--seeds 0,1,2`` gives three, and a folder of one seed gives one (the report of a
single seed is the report it always was). ``tasks.json`` beside the records holds what the records
do not: each task's group and upstream domain (:func:`write_task_meta`), which Table 2's check needs
("natural tasks whose domain has an expert").

How a strategy is valued on one task at one seed (paper 002, section 3): with budget B, the best
protocol test accuracy among its first B picks; the random strategy by its exact expectation over
all B-subsets of the pool (:func:`expected_best`) instead of one draw.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from expertise import schema
from expertise.bench import metrics
from expertise.data.tasks import GROUPS
from expertise import reading
from expertise.errors import DataError
from expertise.io import atomic_write_json
from expertise.store import RecordStore

TASKS_FILE = "tasks.json"
TASKS_FORMAT = 1


def expected_best(accs: Sequence[float], budget: int) -> float:
    """E[max accuracy of a uniformly random ``budget``-subset]: with accuracies sorted ascending,
    the i-th (1-based) is the maximum of C(i-1, B-1) of the C(K, B) subsets."""
    a = np.sort(np.asarray(accs, dtype=np.float64))
    k = len(a)
    weights = np.array([math.comb(i - 1, budget - 1) for i in range(1, k + 1)], dtype=np.float64) / math.comb(k, budget)
    return float((weights * a).sum())


def random_hit(accs: Sequence[float], budget: int) -> float:
    """P(a random ``budget``-subset contains a best member)."""
    a = np.asarray(accs, dtype=np.float64)
    m = int((a >= a.max() - 1e-12).sum())
    return 1.0 - math.comb(len(a) - m, budget) / math.comb(len(a), budget)


@dataclass
class SeedData:
    """The records of one training seed."""

    groups: dict[str, str] = field(default_factory=dict)
    acc: dict[str, dict[str, float]] = field(default_factory=dict)               # task -> member -> test accuracy
    protocol_cost: dict[str, dict[str, dict]] = field(default_factory=dict)      # task -> member -> costs
    embed_cost: dict[str, dict[str, tuple[float, int]]] = field(default_factory=dict)  # task -> member -> (s, images)
    selections: dict[tuple[str, str, str], dict] = field(default_factory=dict)   # (pool, strategy, task) -> metrics
    halving: dict[tuple[str, str, str], dict] = field(default_factory=dict)      # the same, of bench --halving's units
    kinds: dict[tuple[str, str], str] = field(default_factory=dict)              # (pool, strategy) -> strategy kind
    member_kind: dict[str, str] = field(default_factory=dict)                    # member -> its library kind
    member_domain: dict[str, str | None] = field(default_factory=dict)           # member -> its domain node
    pools: list[str] = field(default_factory=list)
    strategies: list[str] = field(default_factory=list)

    def pool_members(self, pool: str) -> list[str] | None:
        """The members of ``pool`` as its selection records list them (None: no record)."""
        return next((s["members"] for (p, _, _), s in self.selections.items() if p == pool), None)

    def values(self, pool: str, strategy: str, task: str, budgets: Sequence[int]) -> tuple[list[float], list[float]] | None:
        """(value, zero-regret probability) per budget for one strategy on one task, or None when the
        strategy did not rank this pool (an error) or a member lacks a protocol result."""
        sel = self.selections.get((pool, strategy, task))
        if sel is None or "error" in sel:
            return None
        members = sel["members"]
        accs = self.acc.get(task, {})
        if any(m not in accs for m in members):
            return None
        pool_accs = [accs[m] for m in members]
        best = max(pool_accs)
        if self.kinds[(pool, strategy)] == "random":
            return [expected_best(pool_accs, b) for b in budgets], [random_hit(pool_accs, b) for b in budgets]
        order = [n for n, _ in sel["ranking"]]
        curve = metrics.budget_curve(order, accs, budgets)
        return [float(v) for v in curve], [float(v >= best - 1e-12) for v in curve]


def _seed_of(rec: dict[str, Any]) -> int | None:
    s = rec["config"].get("seed")
    return None if s is None else int(s)


def record_seeds(store: RecordStore) -> list[int]:
    """The training seeds of the folder's protocol records, ascending."""
    return sorted({s for rec in store.all("protocol") if (s := _seed_of(rec)) is not None})


def load_seed(store: RecordStore, seed: int | None = None) -> SeedData:
    """The records of training seed ``seed`` (None: every record, as one seed)."""
    d = SeedData()
    for rec in store.all("protocol"):
        if seed is not None and _seed_of(rec) != seed:
            continue
        c, m = rec["config"], rec["metrics"]
        d.groups[c["task"]] = c["group"]
        d.acc.setdefault(c["task"], {})[c["member"]] = float(m["test_accuracy"])
        d.member_kind[c["member"]] = c.get("info", {}).get("kind", "")
        d.member_domain[c["member"]] = c.get("info", {}).get("domain")
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
        if seed is not None and _seed_of(rec) != seed:
            continue
        c = rec["config"]
        d.selections[(c["pool"], c["strategy"], c["task"])] = {**rec["metrics"], "members": list(c["members"]),
                                                               "score_seconds": rec["seconds"].get("score", 0.0)}
        d.kinds[(c["pool"], c["strategy"])] = c["kind"]
        pool_order.setdefault(c["pool"], c["order"][0])
        strategy_order.setdefault(c["strategy"], c["order"][1])
    for rec in store.all("halving"):
        if seed is not None and _seed_of(rec) != seed:
            continue
        c = rec["config"]
        d.halving[(c["pool"], c["strategy"], c["task"])] = {**rec["metrics"], "seconds": float(sum(rec["seconds"].values()))}
    d.pools = sorted(pool_order, key=pool_order.__getitem__)
    d.strategies = sorted(strategy_order, key=strategy_order.__getitem__)
    if not d.acc:
        raise DataError(f"no finished protocol units in {store.root}; run 'expertise bench' first")
    return d


def load_folder(store: RecordStore) -> dict[int | None, SeedData]:
    """One :class:`SeedData` per training seed of the folder; a folder of one seed (or of records
    without one) gives a single entry holding every record, as the report always read it."""
    seeds = record_seeds(store)
    if len(seeds) <= 1:
        return {seeds[0] if seeds else None: load_seed(store)}
    return {s: load_seed(store, s) for s in seeds}


# -- tasks.json: each task's group and upstream domain -----------------------------------------

def write_task_meta(out: Path, meta: Mapping[str, Mapping[str, str | None]]) -> None:
    """Add ``meta`` (task -> {"group", "domain"}) to ``OUT/tasks.json``, keeping other tasks."""
    path = Path(out) / TASKS_FILE
    tasks = read_task_meta(out)
    tasks.update({t: {"group": m.get("group"), "domain": m.get("domain")} for t, m in meta.items()})
    atomic_write_json(path, {"format": TASKS_FORMAT, "tasks": dict(sorted(tasks.items()))})


def read_task_meta(out: Path) -> dict[str, dict[str, str | None]]:
    """``OUT/tasks.json``, checked (empty when absent: a folder of an older run)."""
    path = Path(out) / TASKS_FILE
    if not path.exists():
        return {}
    where = str(path)
    try:
        data = schema.obj(reading.read_json(path), where)
    except (ValueError, OSError):
        raise DataError(f"{path} is not JSON; delete it and rerun 'expertise bench'") from None
    schema.keys(data, where, required=("format", "tasks"))
    schema.integer(data["format"], f"{where}: format", TASKS_FORMAT, TASKS_FORMAT)
    tasks: dict[str, dict[str, str | None]] = {}
    for name, m in schema.obj(data["tasks"], f"{where}: tasks").items():
        at = f"{where}: task {str(name)[:60]!r}"
        schema.keys(schema.obj(m, at), at, optional=("group", "domain"))
        tasks[str(name)] = {k: None if m.get(k) is None else schema.string(m[k], f"{at}: {k}") for k in ("group", "domain")}
    return tasks


def task_domains(tasks: Sequence[Any], world: Any) -> dict[str, dict[str, str | None]]:
    """{"group", "domain"} of each task: a world task's upstream domain, None for any other."""
    names = set(world.all_task_names) if world is not None else set()
    return {t.name: {"group": t.group, "domain": world.domain_of_task(t.name) if t.name in names else None}
            for t in tasks}


def domain_has_expert(task_domain: str | None, expert_domains: Sequence[str | None]) -> bool:
    """Whether some expert's node is the task's domain, or lies above or below it in the hierarchy
    (node names are paths: ``glyph``, ``glyph/latin``)."""
    if not task_domain:
        return False
    return any(e and (e == task_domain or e.startswith(task_domain + "/") or task_domain.startswith(e + "/"))
               for e in expert_domains)


def group_order(groups: Mapping[str, str]) -> list[str]:
    """Tasks by VTAB group, then name."""
    return sorted(groups, key=lambda t: (GROUPS.index(groups[t]) if groups[t] in GROUPS else len(GROUPS), t))
