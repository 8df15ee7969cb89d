"""The transfer protocol as units: each fine-tune (a sweep setting, a retrain) is a unit kind that a
worker runs from its spec alone, and :func:`protocol_units` turns a protocol into a
:class:`~expertise.units.plan.Plan` of such units (the learning-rate sweep fans out)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expertise.errors import ConfigError
from expertise.transfer.protocol import (RETRAIN_KIND, SWEEP_KIND, FinetuneRequest, ProtocolPlan, SweepConfig,
                                         protocol_plan, run_finetune)
from expertise.units.plan import Plan, Steps
from expertise.units.registry import UnitKind, register_kind
from expertise.units.spec import UnitSpec

if TYPE_CHECKING:
    from expertise.data.tasks import Task
    from expertise.library import Library
    from expertise.store import RecordStore, UnitResult
    from expertise.train import TrainConfig
    from expertise.units.context import WorkerContext


def unit_task(spec: UnitSpec, ctx: WorkerContext) -> tuple[Library, Task]:
    """The library and task a unit's spec names, the task checked against the config's fingerprint."""
    lib = ctx.library(spec.inputs)
    task = ctx.task(spec.inputs, lib)
    if "task_fingerprint" in spec.config and task.fingerprint() != spec.config["task_fingerprint"]:
        raise ConfigError(f"unit {spec.describe()}: its inputs name another task than its config; plan it again")
    return lib, task


def _execute_finetune(spec: UnitSpec, ctx: WorkerContext) -> UnitResult:
    c = spec.config
    lib, task = unit_task(spec, ctx)
    keeper = None
    keep = spec.options.get("keep")
    if keep:
        from expertise.transfer.keep import FolderKeeper

        keeper = FolderKeeper(Path(keep["folder"]), task, keep.get("settings") or {})
    return run_finetune(c, lambda: ctx.member(lib, c["member"], c["member_hash"]), task, ctx.device, ctx.progress,
                        str(spec.options.get("desc", spec.describe())), keeper=keeper, key=spec.options.get("key"))


for _kind, _help in ((SWEEP_KIND, "one sweep setting: fine-tune on the 800, score on the 200"),
                     (RETRAIN_KIND, "one retrain: fine-tune on all 1,000 with the chosen setting, score on test")):
    register_kind(UnitKind(_kind, _execute_finetune, num_cpus=1.0, num_gpus=1.0, help=_help), replace=True)


def _spec(req: FinetuneRequest, inputs: Mapping[str, Any], keep: Mapping[str, Any] | None) -> UnitSpec:
    options: dict[str, Any] = {"key": req.key, "desc": req.desc}
    if req.redo:
        options["redo"] = True
    if req.keep and keep is not None:
        options["keep"] = dict(keep)
    return UnitSpec(req.kind, req.config, dict(inputs), options)


def as_specs(plan: ProtocolPlan, inputs: Mapping[str, Any], keep: Mapping[str, Any] | None = None) -> Steps:
    """The protocol plan's fine-tune requests as unit specs with the given ``inputs``."""
    try:
        requests = next(plan)
        while True:
            units = yield [_spec(r, inputs, keep) for r in requests]
            requests = plan.send(units)
    except StopIteration as stop:
        return stop.value


def protocol_units(lib: Library, member: str, task: Task, ref: Mapping[str, Any], base_cfg: TrainConfig,
                   sweep: SweepConfig, seed: int, store: RecordStore, keep: Mapping[str, Any] | None = None,
                   log: Any = None) -> Plan:
    """The protocol for ``member`` on ``task`` as a plan whose result is the
    :class:`~expertise.transfer.protocol.ProtocolResult`. ``ref`` is the task's
    :func:`~expertise.units.spec.task_ref`; ``keep`` ({"folder", "settings"}) keeps the first retrain's
    model in a folder (``expertise transfer``)."""
    from expertise.units.context import library_key

    wants = None
    if keep is not None:
        from expertise.transfer.keep import FolderKeeper

        wants = FolderKeeper(Path(keep["folder"]), task, keep.get("settings") or {}).wants
        keep = {"folder": str(Path(keep["folder"]).resolve()), "settings": keep.get("settings") or {}}
    plan = protocol_plan(member, lib.verified_hash(member), task, base_cfg, sweep, seed, store, log, wants)
    return Plan(as_specs(plan, {"library": library_key(lib.path), "task": dict(ref)}, keep), sweep.num_finetunes)
