"""A DAT run as a unit (``expertise dat``, on any executor): the ``dat`` kind rebuilds the library,
B (checked by hash), the task (checked by fingerprint) and the upstream train split B was trained
on from its spec, runs :func:`~expertise.dat.pretrain.run_dat`, and hands back the run's JSON; the
coordinator records it (``OUT/units/dat.<digest>.json``: a run with the same settings is never run
twice) and writes the run's record file from it."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from expertise.dat.pretrain import DATConfig, DATResult, run_dat
from expertise.runtime import RunContext
from expertise.store import UnitResult
from expertise.train import TrainConfig
from expertise.units.context import library_key
from expertise.units.registry import UnitKind, register_kind
from expertise.units.spec import UnitSpec

if TYPE_CHECKING:
    from expertise.data.tasks import Task
    from expertise.library import Library
    from expertise.store import Unit
    from expertise.units.context import WorkerContext


def dat_spec(library: Library, task: Task, ref: dict[str, Any], baseline: str, settings: DATConfig,
             pretrain: TrainConfig, finetune: TrainConfig, seed: int, upstream: str,
             data: dict[str, Any] | None = None) -> UnitSpec:
    """The ``dat`` unit of one run: B by name and hash, the task by its fingerprint (``ref``: its
    :func:`~expertise.units.spec.task_ref`), the library's upstream settings digest (``upstream``),
    the DAT settings, both training configs and the seed; ``data``: how a worker reads a dataset on disk."""
    config = {"task": task.name, "task_fingerprint": task.fingerprint(), "baseline": baseline,
              "baseline_hash": library.verified_hash(baseline), "upstream": upstream, "dat": asdict(settings),
              "pretrain": pretrain.to_json(), "finetune": finetune.to_json(), "seed": int(seed)}
    return UnitSpec("dat", config, {"library": library_key(library.path), "task": ref}, {"data": data or {}})


def _execute_dat(spec: UnitSpec, ctx: WorkerContext) -> UnitResult:
    from expertise.transfer.units import unit_task
    from expertise.upstream.units import upstream_train

    c = spec.config
    lib, task = unit_task(spec, ctx)
    baseline = ctx.member(lib, c["baseline"], c["baseline_hash"])
    res = run_dat(baseline, upstream_train(ctx, lib, spec), task, DATConfig(**c["dat"]),  # type: ignore[arg-type]
                  TrainConfig.from_json(c["pretrain"]), TrainConfig.from_json(c["finetune"]),
                  RunContext(ctx.device, int(c["seed"]), ctx.progress))
    metrics = res.to_json()
    metrics.pop("seconds"), metrics.pop("images")
    return UnitResult(metrics, images=res.images, seconds=res.seconds)


register_kind(UnitKind("dat", _execute_dat, num_cpus=1.0, num_gpus=1.0,
                       help="one DAT run: weights from B, a re-sampled upstream set, pre-training, the fine-tune"),
              replace=True)


def dat_result(unit: Unit) -> DATResult:
    """The run a ``dat`` unit recorded (without the specialist, its label weights and sampled indices,
    which stay on the worker)."""
    m = unit.metrics
    return DATResult(task=m["task"], test_accuracy=m["test_accuracy"], config=m["config"], sampled_size=m["sampled_size"],
                     unique_examples=m["unique_examples"], labels_selected=m["labels_selected"],
                     labels_sampled=m["labels_sampled"], label_summary=m["label_summary"], seconds=dict(unit.seconds),
                     images=dict(unit.images), pretrain=m["pretrain"], finetune=m["finetune"],
                     label_weights=np.zeros(0), indices=np.zeros(0, dtype=np.int64))
