"""The upstream build plan: create or resume a library on the embedded world or on a dataset on disk
(B, the full experts, the EPN, the adapter bank, in that order; each a unit of work that a rerun
skips, checkpointed as it trains when asked), and read back which world or dataset a library was
built on (``upstream.json``, checked against its hash and schema)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from expertise.config import Preset
from expertise.data.world import WORLD_VERSION, World
from expertise.errors import LibraryError
from expertise.library import Library
from expertise.library.shared import shared_library
from expertise.library.upstream_meta import UPSTREAM_FILE, config_digest, upstream_meta_at
from expertise.models.backbones import BACKBONES
from expertise.runtime import RunContext
from expertise.units.executors import LocalExecutor
from expertise.upstream.data_spec import DataSpec, recorded, resolve
from expertise.upstream.full_experts import expert_domains
from expertise.upstream.resume import Checkpointing, UpstreamCheckpoints
from expertise.upstream.units import UpstreamUnits, build_units

if TYPE_CHECKING:
    from expertise.units.plan import Executor

def build_library(preset: Preset, path: Path, ctx: RunContext = RunContext(), upstream_only: bool = False,
                  kinds: tuple[str, ...] | None = None, data: DataSpec | None = None,
                  checkpointing: Checkpointing | None = None, executor: Executor | None = None,
                  ) -> tuple[Library, World | None, list[str]]:
    """Create (or resume) a library at ``path``: baseline B, the EPN, and the experts of ``kinds``
    ("full", "adapter"; default: full, plus adapter when the preset builds them) for the top-K
    nodes, on the preset's embedded world (``data`` None: a library built from data on disk is
    refused), or on a dataset on disk (``data``: its ``spec``, or when that is None the one the
    library records, else the world). With ``checkpointing`` every unit checkpoints as it trains
    and, when it says ``resume``, continues from its checkpoint. Returns the library, the world
    (None for a dataset on disk) and the pool members' names. A dataset is read, split and its
    holdout decoded before the library is created, so bad data leaves nothing behind. Every member
    is a unit of :mod:`expertise.upstream.units` run on ``executor`` (default: in this process, one
    after another; ``--jobs N`` or ``--executor ray``: the experts, EPN and bank at once), to the same
    library."""
    ctx = ctx.with_(seed=preset.seed)  # the preset's seed names every random stream of the build
    log = ctx.log
    kinds = () if upstream_only else (kinds if kinds is not None else ("full", "adapter") if preset.adapter_experts else ("full",))
    common = {"backbone": preset.backbone, "baseline": preset.baseline.to_json(), "expert": preset.expert.to_json(),
              "seed": preset.seed}
    old = upstream_meta_at(path)
    if data is None and recorded(old) is not None:
        raise LibraryError(f"the library at {path} was built from the dataset on disk at {recorded(old)['spec']}, not the "
                           "embedded world; build on it with 'expertise upstream' or 'expertise experts', or use another library")
    source = None if data is None else resolve(path, old, data, log=log)
    t0 = time.perf_counter()
    world: World | None = None
    if source is None:
        world = World(preset.world)
        upstream_cfg = {"world": preset.to_json()["world"], "world_version": WORLD_VERSION, **common}
        meta = {"preset": preset.name, "world": upstream_cfg["world"], "settings": upstream_cfg}
        hierarchy = world.hierarchy
    else:  # read and split before anything is written
        train = source.train(preset.seed)
        holdout = source.holdout_split(preset.seed, BACKBONES[preset.backbone].resolution)
        log(f"upstream data: {len(train):,} train / {len(holdout):,} holdout images (holdout decoded in "
            f"{time.perf_counter() - t0:.1f}s)")
        upstream_cfg = {"data": source.settings(), **common}
        meta = {"preset": preset.name, "data": source.record(), "settings": upstream_cfg}
        hierarchy = source.index.hierarchy

    def open_library() -> Library:
        library = Library.create(path, hierarchy, exist_ok=True)
        if old is not None:
            if config_digest(old.get("settings")) != config_digest(upstream_cfg):
                raise LibraryError(
                    f"the library at {path} was built with other upstream settings (preset {old.get('preset')!r}); "
                    "use another --library path, or delete that folder to rebuild it ('expertise demo --fresh' does so for the demo's)"
                )
        else:
            library.write_meta(UPSTREAM_FILE, meta)
        return library

    library = shared_library(path, open_library)  # under torchrun: opened by rank 0, then written by it alone
    if world is not None:
        train, holdout = world.upstream("train").materialize(), world.upstream("holdout").materialize()  # type: ignore[assignment]
        log(f"upstream world: {len(train):,} train / {len(holdout):,} holdout images, "
            f"{len(world.hierarchy.leaves)} leaves, rendered in {time.perf_counter() - t0:.1f}s")
    ckpts = None if checkpointing is None else UpstreamCheckpoints(
        path, {"settings": config_digest(upstream_cfg)}, checkpointing.resume, checkpointing.every_steps, log)
    nodes = expert_domains(train, preset.num_experts)
    shared = UpstreamUnits(config_digest(upstream_cfg), preset.seed, preset.baseline, preset.expert, preset.epn,
                           preset.adapter, preset.epn_backbone or preset.backbone,
                           {} if data is None else {"workers": data.workers, "strict": data.strict},
                           None if checkpointing is None else checkpointing.every_steps, checkpointing is not None,
                           preset.adapter_scaled)
    # The EPN routes to the preset's K expert domains, trained with the upstream stage (so domain
    # prediction works as soon as the experts exist, whichever kind they are).
    names = build_units(library, train, holdout, preset.backbone, nodes, kinds, shared, executor or LocalExecutor(),
                        ctx, ckpts)
    if ckpts is not None:
        ckpts.tidy()
    return library, world, names
