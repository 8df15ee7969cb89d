"""The benchmark as units: the ``embed`` and ``selection`` unit kinds (run by a worker from their
spec alone) and :func:`bench_plans`, the benchmark of one training seed as plans of units: per task,
its embeddings then its selection cells; per task and member, the transfer protocol (each fine-tune
a unit) and its ``protocol`` record, which the coordinator writes from its fine-tunes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expertise.errors import ConfigError, ExpertiseError
from expertise.runtime import RunContext
from expertise.select.embed import EmbeddingCache, cache_key, embed_pool
from expertise.select.run import run_selection
from expertise.store import UnitResult
from expertise.select.halving import ETA
from expertise.transfer.units import protocol_units, unit_task
from expertise.units.context import library_key
from expertise.units.plan import Plan, Steps, batch_plan
from expertise.units.registry import UnitKind, register_kind
from expertise.units.spec import UnitSpec, task_ref

if TYPE_CHECKING:
    import torch

    from expertise.data.tasks import Task
    from expertise.library import Library, MemberInfo
    from expertise.store import RecordStore
    from expertise.train import TrainConfig
    from expertise.transfer.protocol import SweepConfig
    from expertise.units.context import WorkerContext


@dataclass(frozen=True)
class StrategySpec:
    """A row of the benchmark: a label, the strategy of :func:`run_selection`, and its proxy."""

    label: str
    strategy: str
    proxy: str = "knn_loo"


# The strategy kinds bench --halving also runs by successive halving: those a proxy alone ranks (a
# hybrid's pick at budget 1 is the task-agnostic one, which halving does not touch).
HALVING_KINDS: tuple[str, ...] = ("proxy",)


def _member_json(info: MemberInfo) -> dict[str, Any]:
    d = info.to_json()
    d.pop("files", None)
    return d


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


def _halving_unit(library: Library, task: Task, strat: StrategySpec, members: list[str], seed: int,
                  device: torch.device, batch_size: int) -> UnitResult:
    """Successive halving (budget 1) of one proxy strategy on one pool and task, on a cold cache
    (no cache at all: the embed units filled it, and a cache hit is not the cost of a search), so its
    seconds and images are what halving costs from scratch, to set against the embed units' cold
    cost of full scoring. The report compares its ranking with the ``selection`` unit's
    (:mod:`expertise.bench.halving`)."""
    try:
        run = run_selection(library, task, strat.strategy, 1, strat.proxy, members,
                            RunContext(device, seed, False, cache=None), batch_size, resamples=0, search="halving")
    except ExpertiseError as e:  # recorded, not fatal, as a selection unit's error
        return UnitResult({"error": str(e)}, images={}, seconds={"halving": 0.0})
    rec, report = run.to_json(), run.search
    assert report is not None
    return UnitResult({"ranking": rec["ranking"], "picks": rec["picks"], **report.to_json()},
                      images={"embedded": report.images_embedded},
                      seconds={"halving": sum(run.selection.seconds.values())})


def _cache(spec: UnitSpec) -> EmbeddingCache:
    root = spec.inputs.get("cache")
    return EmbeddingCache(Path(root) if root else None)


def _execute_embed(spec: UnitSpec, ctx: WorkerContext) -> UnitResult:
    lib, task = unit_task(spec, ctx)
    name = spec.config["member"]
    ctx.check_member(lib, name, spec.config["member_hash"])
    return _embed_unit(lib, task, _cache(spec), name, int(spec.options.get("batch_size", 500)), ctx.device)


def _execute_selection(spec: UnitSpec, ctx: WorkerContext) -> UnitResult:
    c = spec.config
    lib, task = unit_task(spec, ctx)
    members = list(spec.inputs.get("members") or c["members"])  # the pool's order: ties go to the earlier member
    for name in members:
        ctx.check_member(lib, name, c["members"][name])
    return _selection_unit(lib, task, StrategySpec(c["strategy"], c["kind"], c["proxy"]), members, _cache(spec),
                           int(c["seed"]), ctx.device, int(spec.options.get("batch_size", 500)))


def _execute_halving(spec: UnitSpec, ctx: WorkerContext) -> UnitResult:
    c = spec.config
    lib, task = unit_task(spec, ctx)
    members = list(spec.inputs.get("members") or c["members"])
    for name in members:
        ctx.check_member(lib, name, c["members"][name])
    return _halving_unit(lib, task, StrategySpec(c["strategy"], c["kind"], c["proxy"]), members, int(c["seed"]),
                         ctx.device, int(spec.options.get("batch_size", 500)))


register_kind(UnitKind("embed", _execute_embed, num_cpus=1.0, num_gpus=0.5,
                       help="one member embedding one task's 1,000 images (the cold cost; fills the cache)"), replace=True)
register_kind(UnitKind("selection", _execute_selection, num_cpus=1.0, num_gpus=0.25,
                       help="one strategy ranking one pool for one task, from the cached features"), replace=True)
register_kind(UnitKind("halving", _execute_halving, num_cpus=1.0, num_gpus=0.5,
                       help="a proxy strategy's successive halving of one pool for one task, on a cold cache "
                            "(bench --halving)"), replace=True)


def embed_spec(library: Library, task: Task, inputs: dict[str, Any], name: str, batch_size: int) -> UnitSpec:
    """The ``embed`` unit of member ``name`` on ``task`` (``inputs``: the library folder, the task's
    :func:`task_ref` and the cache folder); its config is the one every benchmark records."""
    config = {"task": task.name, "task_fingerprint": task.fingerprint(), "group": task.group, "member": name,
              "member_hash": library.verified_hash(name)}
    return UnitSpec("embed", config, inputs, {"batch_size": batch_size})


def embed_plan(library: Library, task: Task, names: Sequence[str], cache: EmbeddingCache, split_seed: int,
               batch_size: int, skip_corrupt: bool = False) -> Plan:
    """One ``embed`` unit for each member of ``names`` whose features of ``task`` are not cached yet
    (``expertise select --executor ray``): the workers fill the cache, and the selection reads it."""
    from expertise.select.embed import cache_key

    if cache.root is None:
        raise ConfigError("embedding units hand their features over through a cache; give one")
    inputs = {"library": library_key(library.path), "task": task_ref(task, split_seed, skip_corrupt),
              "cache": str(Path(cache.root).resolve())}
    todo = [n for n in names if not cache.has(library.verified_hash(n), cache_key(task, library.info(n).preprocessing),
                                              "trainval")]
    return batch_plan([embed_spec(library, task, inputs, n, batch_size) for n in todo])


def _selection_steps(embeds: list[UnitSpec], selections: list[UnitSpec]) -> Steps:
    yield embeds
    yield selections


def _protocol_steps(inner: Plan, store: RecordStore, config: dict[str, Any]) -> Steps:
    res = yield from inner.steps
    store.put("protocol", config, res.to_json(), seconds=dict(res.phase_seconds),
              images={k: int(v) for k, v in res.phase_images.items()})
    return res


def _nothing() -> Steps:
    return
    yield  # a generator that asks for nothing


def bench_plans(library: Library, tasks: Sequence[Task], store: RecordStore, cache: EmbeddingCache,
                finetune: TrainConfig, sweep: SweepConfig, strategies: Sequence[StrategySpec],
                pool_members: Mapping[str, list[str]], seed: int, batch_size: int,
                split_seed: int | None = None, halving: bool = False) -> list[Plan]:
    """Every unit of the benchmark at training seed ``seed`` as plans (see the module docstring);
    the tasks were loaded with ``split_seed`` (default ``seed``), which is how a worker rebuilds them.
    The records' configs are the ones the benchmark always wrote, so earlier runs (and the demo's
    folder) resume; ``embed`` units name no seed, so every seed shares them. ``halving``: also a
    ``halving`` unit per task for each proxy strategy on the first pool (of 3 members or more: on
    fewer, halving at budget 1 is full scoring), beside its selection units."""
    everyone = [n for n in library.names() if any(n in v for v in pool_members.values())]
    routers = [m.name for m in library.members() if m.kind == "epn"]
    lib_path = library_key(library.path)
    cache_root = None if cache.root is None else str(Path(cache.root).resolve())
    plans = []
    for task in tasks:
        ref = task_ref(task, seed if split_seed is None else split_seed)
        inputs = {"library": lib_path, "task": ref, "cache": cache_root}
        base = {"task": task.name, "task_fingerprint": task.fingerprint(), "group": task.group}
        embeds = [embed_spec(library, task, inputs, name, batch_size) for name in [*everyone, *routers]]
        selections = []
        for p, (spec, members) in enumerate(pool_members.items()):
            for s, strat in enumerate(strategies):
                # "order" keeps the rows and pools of the report in the order asked for (the first pool is the
                # main one), read back from the records alone.
                config = {**base, "pool": spec, "strategy": strat.label, "kind": strat.strategy, "proxy": strat.proxy,
                          "members": {n: library.verified_hash(n) for n in members}, "seed": seed, "order": [p, s]}
                selections.append(UnitSpec("selection", config, {**inputs, "members": list(members)},
                                           {"batch_size": batch_size}))
                if halving and p == 0 and strat.strategy in HALVING_KINDS and len(members) >= 3:
                    cfg = {k: v for k, v in config.items() if k != "order"}
                    selections.append(UnitSpec("halving", {**cfg, "budget": 1, "eta": ETA}, {**inputs, "members": list(members)},
                                               {"batch_size": batch_size}))
        plans.append(Plan(_selection_steps(embeds, selections), len(embeds) + len(selections)))
        for name in everyone:
            config = {**base, "member": name, "member_hash": library.verified_hash(name), "finetune": finetune.to_json(),
                      "sweep": sweep.to_json(), "seed": seed, "info": _member_json(library.info(name))}
            if store.has("protocol", config):
                plans.append(Plan(_nothing(), sweep.num_finetunes))
                continue
            inner = protocol_units(library, name, task, ref, finetune, sweep, seed, store)
            plans.append(Plan(_protocol_steps(inner, store, config), inner.size))
    return plans
