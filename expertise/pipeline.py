"""The stages as library calls the CLI and the demo share: open or build a library on an upstream
world, load a task, rank a library for a task, fine-tune one member. Each call is a unit of work
whose result is cached, so a repeated or interrupted run redoes nothing that finished."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch

from expertise.config import Preset
from expertise.data.loaders import load_task
from expertise.data.tasks import Task
from expertise.data.world import World, WorldConfig
from expertise.errors import LibraryError
from expertise.io import atomic_write_json
from expertise.library import Library
from expertise.records import make_record, write_record
from expertise.select.epn import build_epn
from expertise.transfer import FinetuneResult, finetune_and_test
from expertise.upstream import build_upstream

UPSTREAM_FILE = "upstream.json"


def config_digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def world_of_library(library: Library) -> World | None:
    """The embedded world a library was trained on, when it was (``upstream.json`` says so)."""
    path = library.path / UPSTREAM_FILE
    if not path.exists():
        return None
    meta = json.loads(path.read_text())
    cfg = meta.get("world")
    return World(WorldConfig(**cfg)) if cfg else None


def build_library(preset: Preset, path: Path, device: torch.device, progress: bool = True, log=print,
                  upstream_only: bool = False) -> tuple[Library, World, list[str]]:
    """Create (or resume) a library at ``path``: baseline and full experts on the preset's world."""
    world = World(preset.world)
    upstream_cfg = {"world": preset.to_json()["world"], "backbone": preset.backbone,
                    "baseline": preset.baseline.to_json(), "expert": preset.expert.to_json(), "seed": preset.seed}
    library = Library.create(path, world.hierarchy, exist_ok=True)
    meta_path = library.path / UPSTREAM_FILE
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if config_digest(old.get("settings")) != config_digest(upstream_cfg):
            raise LibraryError(
                f"the library at {path} was built with other upstream settings (preset {old.get('preset')!r}); "
                "use another --library path or pass --fresh to rebuild it"
            )
    else:
        atomic_write_json(meta_path, {"preset": preset.name, "world": upstream_cfg["world"], "settings": upstream_cfg})
    t0 = time.perf_counter()
    train = world.upstream("train").materialize()
    holdout = world.upstream("holdout").materialize()
    log(f"upstream world: {len(train):,} train / {len(holdout):,} holdout images, "
        f"{len(world.hierarchy.leaves)} leaves, rendered in {time.perf_counter() - t0:.1f}s")
    names = build_upstream(library, train, holdout, preset.backbone, preset.baseline, preset.expert,
                           0 if upstream_only else preset.num_experts, preset.seed, device, progress, log)
    # The EPN routes to the preset's K expert domains, trained with the upstream stage (so domain
    # prediction works as soon as the experts exist, whichever kind they are).
    nodes = train.hierarchy.choose_expert_domains(train.leaf_counts(), preset.num_experts)
    if nodes:
        build_epn(library, train, holdout, nodes, preset.epn_backbone or preset.backbone, preset.epn, preset.seed,
                  device, progress, log)
    return library, world, names


def resolve_task(spec: str, resolution: int, world: World | None, seed: int = 0) -> Task:
    return load_task(spec, resolution=resolution, seed=seed, world=world)


def finetune_cached(library: Library, member: str, task: Task, preset: Preset, records_dir: Path,
                    device: torch.device, progress: bool = True) -> FinetuneResult:
    """Fine-tune ``member`` on ``task`` and test it, or read the record of a run that already did."""
    settings = {"member": member, "member_hash": library.member_hash(member), "task": task.name,
                "task_fingerprint": task.fingerprint(), "finetune": preset.finetune.to_json(), "seed": preset.seed}
    path = records_dir / f"finetune.{task.name}.{member}.{config_digest(settings)}.json"
    if path.exists():
        m = json.loads(path.read_text())["metrics"]
        return FinetuneResult(m["test_accuracy"], m["train_seconds"], m["images"], m["final_loss"])
    result = finetune_and_test(library.load(member), task, preset.finetune, preset.seed, device, progress,
                               desc=f"fine-tune {member} on {task.name}")
    write_record(path, make_record("finetune", settings, result.to_json(), {"finetune": result.train_seconds},
                                   {"finetune": result.images}))
    return result
