"""Fine-tunes whose models are kept: ``expertise finetune`` into a model folder (checkpointed, so an
interrupted run resumes, and reused when the folder already holds the same fine-tune), and the
:class:`~expertise.transfer.protocol.Keeper` through which ``expertise transfer`` keeps its final
retrain. The folder's layout is :mod:`expertise.transfer.saved`'s."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from expertise.checkpoint import Checkpoint, differences
from expertise.data.tasks import Task
from expertise import reading
from expertise.errors import ConfigError, ModelError
from expertise.records import make_record
from expertise.runtime import RunContext
from expertise.stats import wilson_interval
from expertise.train import TrainConfig
from expertise.transfer.finetune import correct_count, finetune
from expertise.transfer.saved import CHECKPOINT, MANIFEST, RESULT, FILES, has_saved_model, read_manifest, save_model, verify_files

FINETUNE_KIND = "finetune"
RECORD_FORMAT = 1
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def folder_name(task: str, member: str) -> str:
    """``<task>.<member>`` as a plain folder name (a task given as a path keeps only safe characters)."""
    return _UNSAFE.sub("_", f"{task}.{member}").strip("._") or "model"


def test_metrics(correct: int, n: int) -> dict[str, Any]:
    """Test accuracy with its 95% Wilson interval and the counts it rests on."""
    lo, hi = wilson_interval(correct, n)
    return {"test_accuracy": correct / n, "test_correct": int(correct), "test_images": int(n),
            "test_accuracy_ci95": [lo, hi], "ci_method": "wilson"}


def check_out_folder(out: Path) -> None:
    """``out`` is new, empty, or a model folder of ours (which a run may replace)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; choose a folder for the fine-tuned model")
    if out.is_dir() and any(out.iterdir()) and not any((out / f).exists() for f in (MANIFEST, CHECKPOINT, *FILES)):
        raise ConfigError(f"--out {out} exists and holds other files; choose a new or empty folder for the fine-tuned model")


def kept_record(out: Path) -> dict[str, Any] | None:
    """The record of the complete, intact model in ``out``; None when there is none."""
    if not has_saved_model(out):
        return None
    try:
        verify_files(out, read_manifest(out)["files"])
        record = reading.read_json(out / RESULT)
    except (ModelError, OSError, ValueError, ConfigError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("config"), dict) else None


@dataclass(frozen=True)
class KeptFinetune:
    """A fine-tune kept in ``path``: its record (``result.json``), whether the folder held this very
    fine-tune already (``reused``, nothing trained) and the step it resumed from (0: from the start)."""

    path: Path
    record: dict[str, Any]
    reused: bool
    resumed_from: int

    @property
    def metrics(self) -> dict[str, Any]:
        return self.record["metrics"]


def finetune_to_folder(member: str, load_member: Callable[[], nn.Module], member_hash: str, task: Task,
                       cfg: TrainConfig, out: Path, ctx: RunContext, settings: dict[str, Any] | None = None,
                       every_steps: int | None = None) -> KeptFinetune:
    """Fine-tune ``member`` on the task's 1,000 train+val images (``finetune``), test it, and keep the
    model in ``out`` with its record. The run checkpoints into ``out`` (every ``every_steps`` steps,
    default a tenth of the run, and at least every 5 minutes), so a rerun after an interruption
    resumes from the last checkpoint; a checkpoint or kept model of other settings is replaced, with
    a line saying so; a kept model of the same settings is returned as it is. ``settings`` (plain
    JSON: preset, library) go into the record but do not decide reuse."""
    out = Path(out)
    check_out_folder(out)
    identity = {"record_format": RECORD_FORMAT, "member": member, "member_hash": member_hash, "task": task.name,
                "task_fingerprint": task.fingerprint(), "num_classes": task.num_classes, "seed": int(ctx.seed),
                "train": cfg.to_json()}
    identity = json.loads(json.dumps(identity))
    kept = kept_record(out)
    if kept is not None:
        earlier = {k: kept["config"].get(k) for k in identity}
        if earlier == identity:
            return KeptFinetune(out, kept, reused=True, resumed_from=0)
        ctx.log(f"{out} holds a model fine-tuned with other settings (differs in: "
                f"{', '.join(differences(earlier, identity)[:5])}); fine-tuning again and replacing it")
    device = torch.device(ctx.device)
    ckpt = Checkpoint(out / CHECKPOINT, identity, every_steps, log=ctx.log)
    model, stats = finetune(load_member(), task.trainval, task.num_classes, cfg, ctx.seed, device, ctx.progress,
                            f"fine-tune {member} on {task.name}", checkpoint=ckpt)
    t0 = time.perf_counter()
    correct = correct_count(model, task.test, device)
    test_s = time.perf_counter() - t0
    metrics = {**test_metrics(correct, len(task.test)), "final_loss": stats["final_loss"], "steps": stats["steps"],
               "resumed_from_step": ckpt.resumed_from}
    record = make_record(FINETUNE_KIND, {**identity, **(settings or {})}, metrics,
                         {"finetune": stats["seconds"], "test": test_s}, {"finetune": stats["images"], "test": len(task.test)})
    save_model(out, model, task.classes, task.resolution, member, task.name, record, task.max_side)
    ckpt.clear()
    return KeptFinetune(out, record, reused=False, resumed_from=ckpt.resumed_from)


class FolderKeeper:
    """A :class:`~expertise.transfer.protocol.Keeper` for ``expertise transfer``: keeps the first
    retrain of one member on one task in ``folder`` (with its record: the unit's config and key,
    the test accuracy with its 95% Wilson interval and the test-set size)."""

    def __init__(self, folder: Path, task: Task, settings: dict[str, Any] | None = None) -> None:
        self.folder = Path(folder)
        self.task = task
        self.settings = settings or {}
        check_out_folder(self.folder)

    def kept_key(self) -> str | None:
        """The unit key of the model kept in the folder, when it is complete and intact."""
        rec = kept_record(self.folder)
        key = None if rec is None else rec["config"].get("unit_key")
        return key if isinstance(key, str) else None

    def wants(self, key: str) -> bool:
        return self.kept_key() != key

    def save(self, key: str, model: nn.Module, config: dict[str, Any], accuracy: float) -> None:
        n = len(self.task.test)
        correct = int(round(accuracy * n))
        record = make_record("transfer_model", {**config, "unit_key": key, **self.settings}, test_metrics(correct, n),
                             images={"test": n})
        save_model(self.folder, model, self.task.classes, self.task.resolution, str(config["member"]), self.task.name, record,
                   self.task.max_side)
