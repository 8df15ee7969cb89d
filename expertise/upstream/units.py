"""The upstream build as units (``expertise experts --executor ray``): each full expert, the EPN
and the adapter bank (all its experts, one joint job) is a unit a worker runs from its spec alone,
B first, in this process (every unit needs it).

A worker opens the library, checks that it was built with the upstream settings the unit names and
that B is the one it was planned with (by hash), renders the embedded world or reads the dataset on
disk the library records, trains, and writes the members into the unit's staging folder
(:mod:`expertise.library.staging`): it never writes the manifest. The coordinator
(:func:`build_units`) claims every member it plans (a second builder of the library waits, as in
one process), runs the units on the executor, and commits the staged members in the order one
process would have stored them (the experts in node order, the EPN, the bank), so the library is
the one the local build makes, tensor for tensor. Finished units are recorded in
``LIBRARY/.staged/units`` until committed: a coordinator that dies after its units finished leaves
them staged, and the next run commits them without training them again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expertise import distributed
from expertise.errors import ConfigError, LibraryError
from expertise.library import staging
from expertise.models.backbones import BACKBONES
from expertise.runtime import RunContext
from expertise.store import RecordStore, UnitResult
from expertise.train import TrainConfig
from expertise.units.context import library_key
from expertise.units.executors import LocalExecutor
from expertise.units.plan import batch_plan, drive
from expertise.units.registry import UnitKind, register_kind
from expertise.units.spec import UnitSpec
from expertise.upstream.adapter_bank import adapter_expert_name, bank_identity, bank_members, bank_reusable
from expertise.upstream.baseline import baseline_member, baseline_name, expert_name
from expertise.upstream.epn import epn_member, epn_name, epn_settings, reuse_epn
from expertise.upstream.full_experts import full_expert_member
from expertise.upstream.resume import UpstreamCheckpoints

if TYPE_CHECKING:
    import torch
    from torch import nn

    from expertise.library import Library, MemberInfo
    from expertise.units.context import WorkerContext
    from expertise.units.plan import Executor
    from expertise.upstream.baseline import Holdout, Upstream

SPLITS, TRAIN = "upstream-splits", "upstream-train"  # WorkerContext.cached keys of a library's (train, holdout), (train, None)


@dataclass(frozen=True)
class UpstreamUnits:
    """What the upstream units of one build share: the build's settings digest (``upstream.json``'s
    settings, which a worker checks its library against), seed, the training configs, how a worker
    reads a dataset on disk (``data``: decoding workers, strictness) and checkpoints (``every``:
    steps between checkpoints, None for none)."""

    upstream: str | None  # None: a library without upstream.json, whose units run only in the coordinator
    seed: int
    baseline: TrainConfig
    expert: TrainConfig
    epn: TrainConfig
    adapter: TrainConfig
    epn_backbone: str
    data: dict[str, Any]
    checkpoint_every: int | None = None
    checkpointing: bool = False
    adapter_scaled: bool = False


def check_upstream(lib: Library, spec: UnitSpec) -> dict[str, Any] | None:
    """The library's checked ``upstream.json``, which must be the one the unit was planned on (None
    for a library assembled without one, whose units run only in the process that has its data)."""
    from expertise.library.upstream_meta import config_digest, upstream_meta

    meta = upstream_meta(lib)
    if meta is None and spec.config["upstream"] is None:
        return None
    if meta is None or config_digest(meta.get("settings")) != spec.config["upstream"]:
        raise LibraryError(f"the library at {lib.path} is not the one unit {spec.describe()} was planned on (its "
                           "upstream settings differ); every worker must see the same library: rerun to plan again")
    return meta


def upstream_train(ctx: WorkerContext, lib: Library, spec: UnitSpec) -> Upstream:
    """The upstream train split the library's B was trained on (once per worker): its embedded
    world's, or its dataset on disk's, read as the spec's ``data`` option says."""
    return _upstream(ctx, lib, spec, holdout=False)[0]


def _splits(ctx: WorkerContext, lib: Library, spec: UnitSpec) -> tuple[Upstream, Holdout]:
    """The library's upstream train and holdout splits, as its build made them (once per worker)."""
    train, holdout = _upstream(ctx, lib, spec, holdout=True)
    assert holdout is not None
    return train, holdout


def _upstream(ctx: WorkerContext, lib: Library, spec: UnitSpec, holdout: bool) -> tuple[Upstream, Holdout | None]:
    from expertise.upstream.data_spec import DataSpec, resolve

    meta = check_upstream(lib, spec)

    def make() -> tuple[Upstream, Holdout | None]:
        if meta is None:
            raise LibraryError(f"the library at {lib.path} records no upstream data (no upstream.json): its units run "
                               "only in the process that holds that data (the local executor with one job)")
        settings = meta["settings"]
        if meta.get("world"):
            world = ctx.world(lib)
            return world.upstream("train").materialize(), world.upstream("holdout").materialize() if holdout else None
        data = spec.options.get("data") or {}
        source = resolve(lib.path, meta, DataSpec(workers=int(data.get("workers", 0)), strict=bool(data.get("strict"))),
                         log=lambda _: None)
        assert source is not None
        split = source.holdout_split(settings["seed"], BACKBONES[settings["backbone"]].resolution) if holdout else None
        return source.train(settings["seed"]), split

    return ctx.cached((SPLITS if holdout else TRAIN, library_key(lib.path)), make)


def _unit_run(spec: UnitSpec, ctx: WorkerContext) -> tuple[Library, Upstream, Holdout, RunContext, list[str]]:
    lib = ctx.library(spec.inputs)
    train, holdout = _splits(ctx, lib, spec)
    lines: list[str] = []
    return lib, train, holdout, RunContext(ctx.device, int(spec.config["seed"]), ctx.progress, lines.append), lines


def _checkpoint(spec: UnitSpec, lib: Library, name: str, log: Any = None, **identity: Any):
    """The unit's checkpoint when the build checkpoints: resumed when an earlier try left one (the
    coordinator refused, before any unit ran, one left by a run without --resume); what it says
    goes to ``log``."""
    every = spec.options.get("checkpoint")
    if every is None:
        return None
    ckpts = UpstreamCheckpoints(lib.path, {"settings": spec.config["upstream"]}, resume=True,
                                every_steps=every or None, log=log or (lambda _: None))
    return ckpts.unit(name, **identity)


def _staged(spec: UnitSpec) -> Path:
    stage = spec.options.get("stage")
    if not isinstance(stage, str):
        raise ConfigError(f"unit {spec.describe()} names no staging folder (options.stage)")
    return Path(stage)


def _result(staged: Path, infos: Sequence[Any], lines: list[str], images: int, seconds: float) -> UnitResult:
    return UnitResult({"staged": staged.name, "members": [i.name for i in infos], "log": lines},
                      images={"train": int(images)}, seconds={"train": float(seconds)})


def _execute_baseline(spec: UnitSpec, ctx: WorkerContext) -> UnitResult:
    c = spec.config
    lib, train, holdout, run, lines = _unit_run(spec, ctx)
    cfg = TrainConfig.from_json(c["train"])
    ckpt = _checkpoint(spec, lib, c["member"], run.log, train=cfg.to_json(), seed=run.seed)
    info, model, prior = baseline_member(train, holdout, c["backbone"], cfg, run, ckpt)
    return _stage_one(spec, lib, info, model, prior, ckpt, lines)


def _execute_full_expert(spec: UnitSpec, ctx: WorkerContext) -> UnitResult:
    c = spec.config
    lib, train, holdout, run, lines = _unit_run(spec, ctx)
    baseline = ctx.member(lib, c["baseline"], c["baseline_hash"])
    cfg = TrainConfig.from_json(c["train"])
    ckpt = _checkpoint(spec, lib, c["member"], run.log, train=cfg.to_json(), seed=run.seed, node=c["node"])
    info, model, prior = full_expert_member(baseline, train, holdout, c["node"], c["backbone"], cfg, run, ckpt)  # type: ignore[arg-type]
    return _stage_one(spec, lib, info, model, prior, ckpt, lines)


def _execute_epn(spec: UnitSpec, ctx: WorkerContext) -> UnitResult:
    c = spec.config
    lib, train, holdout, run, lines = _unit_run(spec, ctx)
    cfg = TrainConfig.from_json(c["train"])
    ckpt = _checkpoint(spec, lib, c["member"], run.log, **epn_settings(c["nodes"], cfg, run.seed))
    info, model = epn_member(train, holdout, c["nodes"], c["backbone"], cfg, run, ckpt)
    return _stage_one(spec, lib, info, model, None, ckpt, lines)


def _stage_one(spec: UnitSpec, lib: Library, info: MemberInfo, model: nn.Module, prior: torch.Tensor | None,
               ckpt: Any, lines: list[str]) -> UnitResult:
    """A one-member unit's end: its member staged (under torchrun by rank 0 alone, which commits it),
    its checkpoint cleared, its result."""
    if distributed.is_main():
        with staging.writing(_staged(spec)) as into:
            staging.stage_member(lib, into, info, model, prior)
    if ckpt is not None:
        ckpt.clear()
    stats = info.extra["stats"]
    return _result(_staged(spec), [info], lines, stats.get("images", 0), stats.get("seconds", 0.0))


def _execute_adapter_bank(spec: UnitSpec, ctx: WorkerContext) -> UnitResult:
    c = spec.config
    lib, train, holdout, run, lines = _unit_run(spec, ctx)
    baseline = ctx.member(lib, c["baseline"], c["baseline_hash"])
    cfg = TrainConfig.from_json(c["train"])
    nodes = list(c["nodes"])
    names = {node: adapter_expert_name(c["backbone"], node) for node in nodes}
    scaled = bool(c.get("scaled", False))
    ckpt = _checkpoint(spec, lib, c["member"], run.log, train=cfg.to_json(), seed=run.seed, nodes=nodes, baseline=c["baseline"],
                       **bank_identity(scaled))
    bank, infos, priors = bank_members(baseline, train, holdout, c["baseline"], nodes, names, c["backbone"], cfg,  # type: ignore[arg-type]
                                       run, ckpt, scaled)
    with staging.writing(_staged(spec)) as into:
        stored = staging.stage_bank(lib, into, bank, c["baseline"], infos, priors, c["bank"])
    if ckpt is not None:
        ckpt.clear()
    stats = stored[0].extra["stats"]
    return _result(_staged(spec), stored, lines, stats.get("images", 0), stats.get("seconds", 0.0))


register_kind(UnitKind("baseline", _execute_baseline, num_cpus=1.0, num_gpus=1.0,
                       help="the baseline B on all upstream data, staged for the coordinator"), replace=True)
register_kind(UnitKind("full_expert", _execute_full_expert, num_cpus=1.0, num_gpus=1.0,
                       help="one full expert: B tuned on one node's slice, staged for the coordinator"), replace=True)
register_kind(UnitKind("epn", _execute_epn, num_cpus=1.0, num_gpus=1.0,
                       help="the expert prediction network, staged for the coordinator"), replace=True)
register_kind(UnitKind("adapter_bank", _execute_adapter_bank, num_cpus=1.0, num_gpus=1.0,
                       help="every adapter expert of a bank (one joint job), staged for the coordinator"), replace=True)


def _planned(library: Library, backbone: str, nodes: Sequence[str], kinds: Sequence[str], shared: UpstreamUnits,
             bank_name: str) -> list[tuple[str, dict[str, Any]]]:
    """Every unit of the build as (kind, config), in the order one process stores their members: B,
    the full experts in node order, the EPN, the bank. The configs after B's name it by hash when
    it is stored (``baseline_hash``: filled in once B is)."""
    common = {"seed": shared.seed, "upstream": shared.upstream}
    bname = baseline_name(backbone)
    base = {"baseline": bname, "backbone": backbone}
    planned: list[tuple[str, dict[str, Any]]] = [
        ("baseline", {**common, "member": bname, "backbone": backbone, "train": shared.baseline.to_json()})]
    if "full" in kinds:
        for node in nodes:
            planned.append(("full_expert", {**common, **base, "member": expert_name(backbone, node), "node": node,
                                            "train": shared.expert.to_json()}))
    if nodes:
        planned.append(("epn", {**common, "member": epn_name(shared.epn_backbone), "nodes": list(nodes),
                                "train": shared.epn.to_json(), "backbone": shared.epn_backbone}))
    if nodes and "adapter" in kinds:
        planned.append(("adapter_bank", {**common, **base, "member": f"{bank_name}.adapter-bank", "bank": bank_name,
                                         "nodes": list(nodes), "train": shared.adapter.to_json(),
                                         **bank_identity(shared.adapter_scaled)}))
    return planned


def _cost(kind: str, config: dict[str, Any]) -> int:
    """Images a unit trains on, the order in which a batch of units is handed out (the longest
    first, so that the last to finish is a short one)."""
    train = config["train"]
    return int(train["steps"]) * int(train["batch_size"]) * (len(config["nodes"]) if kind == "adapter_bank" else 1)


def build_units(library: Library, train: Upstream, holdout: Holdout, backbone: str, nodes: Sequence[str],
                kinds: Sequence[str], shared: UpstreamUnits, executor: Executor, ctx: RunContext,
                checkpoints: UpstreamCheckpoints | None = None, bank_name: str = "bank") -> list[str]:
    """The upstream build as units on ``executor``: B, the full experts (``"full"`` in ``kinds``),
    the EPN (when there are ``nodes``) and the adapter bank (``"adapter"``); members already in the
    library are kept. Returns the pool's names: B, the full experts, the adapter experts."""
    planned = _planned(library, backbone, nodes, kinds, shared, bank_name)
    run_units(library, train, holdout, planned, shared, executor, ctx, checkpoints)
    full = [config["member"] for kind, config in planned if kind == "full_expert"]
    adapters = [adapter_expert_name(backbone, n) for n in nodes] if "adapter" in kinds else []
    return [baseline_name(backbone), *full, *adapters]


def build_adapter_experts(library: Library, train: Upstream, holdout: Holdout, baseline: str, nodes: Sequence[str],
                          cfg: TrainConfig, ctx: RunContext = RunContext(), bank_name: str = "bank",
                          scaled: bool = False, executor: Executor | None = None) -> list[str]:
    """One adapter expert per node on the stored baseline ``baseline``, trained as one bank (the
    ``adapter_bank`` unit) and stored in ``library``; returns their names in node order. A bank
    stored with these settings on this baseline is reused; one whose backbone changed is trained
    again. For a library assembled by hand (no ``upstream.json``), its unit runs only here."""
    from expertise.library.upstream_meta import config_digest, upstream_meta

    if not nodes:
        raise ConfigError("adapter experts need at least one expert domain (hierarchy node)")
    meta = upstream_meta(library)
    parent = library.info(baseline)
    backbone = parent.architecture or library.load(baseline).backbone_config.name  # type: ignore[union-attr]
    shared = UpstreamUnits(None if meta is None else config_digest(meta.get("settings")), ctx.seed, cfg, cfg, cfg, cfg,
                           backbone, {}, adapter_scaled=scaled)
    planned = [(kind, config) for kind, config in _planned(library, backbone, nodes, ("adapter",), shared, bank_name)
               if kind == "adapter_bank"]
    planned[0][1]["baseline"] = baseline
    run_units(library, train, holdout, planned, shared, executor or LocalExecutor(), ctx)
    return [adapter_expert_name(backbone, n) for n in nodes]


def run_units(library: Library, train: Upstream, holdout: Holdout, planned: list[tuple[str, dict[str, Any]]],
              shared: UpstreamUnits, executor: Executor, ctx: RunContext,
              checkpoints: UpstreamCheckpoints | None = None) -> None:
    """Run the ``planned`` units (from :func:`_planned`) on ``executor``: B first when planned, beside
    the EPN (which does not start from it), then the units that start from B at once, the longest
    first. Every member is claimed before anything trains (a second builder waits, a member another
    stored is reused) and committed in the planned order, one process's order."""
    from expertise.units.context import WorkerContext

    log = ctx.log
    bank = next((config for kind, config in planned if kind == "adapter_bank"), None)
    bname = bank["baseline"] if bank is not None else next(
        (config["member"] for kind, config in planned if kind == "baseline"), None)
    adapters = {} if bank is None else {n: adapter_expert_name(bank["backbone"], n) for n in bank["nodes"]}

    def bank_stored(quiet: bool = True) -> bool:
        assert bank is not None
        return bank_reusable(library, adapters, bank["baseline"], bank["bank"], shared.adapter, log, quiet,
                             shared.adapter_scaled)

    def reuse(kind: str, config: dict[str, Any]) -> None:
        """What the build says of a member it finds stored (and, for the EPN, checks)."""
        name = config["member"]
        if kind == "baseline":
            log(f"baseline {name} already in the library: reusing it")
        elif kind == "full_expert":
            log(f"expert {name} already in the library: reusing it")
        elif kind == "epn":
            reuse_epn(library, name, epn_settings(config["nodes"], shared.epn, shared.seed), log)
        else:
            log(f"adapter experts of {bname} already in the library: reusing {len(adapters)} experts")

    store = RecordStore(library.path / staging.STAGED)
    lib_path = library_key(library.path)
    worker = WorkerContext(ctx.device, ctx.progress).seed_with([library])
    worker.seed_object((SPLITS, lib_path), (train, holdout))

    def spec_of(kind: str, config: dict[str, Any]) -> UnitSpec:
        name = config["member"]
        if kind == "adapter_bank":
            bank_stored(quiet=False)  # says why a stored bank is trained again
        if checkpoints is not None:  # one left by a run without --resume is refused here, before any unit runs
            checkpoints.unit(name, **_identity(kind, config, shared))
        folder = staging.folder(library.path, f"{kind}.{store.key(kind, config)}")
        if store.has(kind, config) and not (folder / staging.STAGED_FILE).is_file():
            store.path(kind, config).unlink()  # recorded, but its staged members are gone: train it again
        options = {"stage": str(folder.resolve()), "data": shared.data,
                   "checkpoint": (shared.checkpoint_every or 0) if shared.checkpointing else None}
        return UnitSpec(kind, config, {"library": lib_path}, options)

    def run(batch: list[tuple[str, dict[str, Any]]], desc: str) -> list[tuple[UnitSpec, Any]]:
        """The units of ``batch`` on the executor, the longest first; (spec, unit) in batch order."""
        specs = [spec_of(kind, config) for kind, config in batch]
        order = sorted(range(len(specs)), key=lambda i: -_cost(specs[i].kind, specs[i].config))
        done = drive([batch_plan([specs[i] for i in order])], executor, store, worker, ctx.progress, desc=desc,
                     log=log)[0]
        units = dict(zip(order, done))
        return [(spec, units[i]) for i, spec in enumerate(specs)]

    def commit(finished: list[tuple[UnitSpec, Any]]) -> None:
        for spec, unit in finished:
            library.commit_staged(Path(spec.options["stage"]))
            store.path(spec.kind, spec.config).unlink(missing_ok=True)
            if not unit.computed:
                log(f"{spec.describe()}: committed as an earlier run left it staged")

    with contextlib.ExitStack() as claims:
        todo: list[tuple[str, dict[str, Any]]] = []
        for kind, config in planned:
            if not claims.enter_context(library.claim(config["member"], log,
                                                      done=bank_stored if kind == "adapter_bank" else None)):
                reuse(kind, config)
                _forget(store, kind, config)
                continue
            todo.append((kind, config))
        finished: list[tuple[UnitSpec, Any]] = []
        if todo and todo[0][0] == "baseline":
            # B first, and beside it whatever does not start from it (the EPN, trained from scratch);
            # B is committed at once (the rest name it by hash), the others in the planned order below.
            first = [todo[0]] + [(k, c) for k, c in todo[1:] if "baseline" not in c]
            ran = run(first, "upstream: B" + (" and the EPN" if len(first) > 1 else ""))
            commit(ran[:1])
            finished, todo = ran[1:], [(k, c) for k, c in todo[1:] if "baseline" in c]
        if todo:
            need = {config["baseline"] for _, config in todo if "baseline" in config}
            for name in need:
                if name not in library:
                    raise LibraryError(f"the library at {library.path} has no baseline {name!r} to train experts from")
            hashes = {name: library.verified_hash(name) for name in need}
            finished += run([(kind, {**config, "baseline_hash": hashes[config["baseline"]]} if "baseline" in config
                              else config) for kind, config in todo], "upstream: experts, EPN, bank")
        position = {c["member"]: i for i, (_, c) in enumerate(planned)}
        commit(sorted(finished, key=lambda su: position[su[0].config["member"]]))  # one process's order
    with contextlib.suppress(OSError):
        store.units_dir.rmdir()
        store.root.rmdir()


def _identity(kind: str, config: dict[str, Any], shared: UpstreamUnits) -> dict[str, Any]:
    """A unit's checkpoint identity (what a checkpoint of its member must have been trained with)."""
    if kind == "baseline":
        return {"train": config["train"], "seed": shared.seed}
    if kind == "full_expert":
        return {"train": config["train"], "seed": shared.seed, "node": config["node"]}
    if kind == "epn":
        return epn_settings(config["nodes"], shared.epn, shared.seed)
    return {"train": config["train"], "seed": shared.seed, "nodes": config["nodes"], "baseline": config["baseline"]}


def _forget(store: RecordStore, kind: str, config: dict[str, Any]) -> None:
    """Another builder stored the member: what an earlier run of ours left staged for it goes."""
    folder = staging.folder(store.root.parent, f"{kind}.{store.key(kind, config)}")
    store.path(kind, config).unlink(missing_ok=True)
    if folder.exists():
        staging.discard(folder)
