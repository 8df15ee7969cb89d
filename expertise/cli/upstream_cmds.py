"""Commands that build a library upstream: the demo, the baseline and EPN, the experts."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from expertise.cli import checks
from expertise.cli.common import (DeviceOpt, ExecutorOpt, ExpertSetOpt, JobsOpt, RayAddressOpt, RayCpusOpt, LibOpt, PresetOpt,
                                  QuietOpt, SetOpt, ThreadsOpt, resumes, run_log, setup, app, out, units_executor, user_errors)
from expertise.cli.data_opts import (RESUMES, CheckpointEveryOpt, ClassesOpt, DataOpt, HierarchyOpt, HoldoutOpt, ResumeOpt,
                                     StrictOpt, WorkersOpt, checkpointing, data_spec)
from expertise.errors import ConfigError
from expertise.runtime import RunContext

if TYPE_CHECKING:
    import torch

    from expertise.config import Preset


@app.command()
@user_errors
@resumes("finished members, embeddings and fine-tunes are kept unless --fresh is given")
def demo(
    preset: PresetOpt = "cpu", out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("runs/demo"),
    library: Annotated[Optional[Path], typer.Option("--library", "-l", help="Library folder (default OUT/library).")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Delete earlier results in OUT and start over.")] = False,
    overrides: SetOpt = None, device: DeviceOpt = "auto", quiet: QuietOpt = False, threads: ThreadsOpt = None,
    jobs: JobsOpt = None,
) -> None:
    """Run the whole pipeline on the embedded world: upstream, selection, transfer, results table.
    Its experts, embeddings and fine-tunes run --jobs at a time (default: one per core)."""
    cfg, dev = setup(preset, overrides, device, threads)
    checks.build_options(preset, overrides, device)
    n_jobs, per_job = checks.jobs(jobs, threads, cfg)
    import shutil

    from expertise.demo import run_demo

    if fresh:
        shutil.rmtree(out_dir, ignore_errors=True)
        if library:
            shutil.rmtree(library, ignore_errors=True)
    log = run_log(out_dir)
    log(f"[bold]expertise demo[/]: preset [cyan]{cfg.name}[/] on {dev}, writing to {out_dir}"
        + (f", {n_jobs} jobs of {per_job} thread{'s' if per_job > 1 else ''}" if n_jobs > 1 else ""))
    with units_executor("local", None, None, n_jobs, per_job, quiet) as units_on:
        result = run_demo(cfg, out_dir, library, dev, progress=not quiet, log=log, executor=units_on)
    out.print((out_dir / "results.md").read_text(), markup=False, highlight=False)
    out.print(result["metrics"]["takeaway"], markup=False, highlight=False)  # the last line: what to take away


@app.command()
@user_errors
@resumes(*RESUMES)
def upstream(library: LibOpt, preset: PresetOpt = "cpu", data: DataOpt = None, hierarchy: HierarchyOpt = None,
             classes: ClassesOpt = None, holdout: HoldoutOpt = None, workers: WorkersOpt = 0, strict: StrictOpt = False,
             resume: ResumeOpt = False, checkpoint_every: CheckpointEveryOpt = None, overrides: SetOpt = None,
             device: DeviceOpt = "auto", quiet: QuietOpt = False, threads: ThreadsOpt = None, jobs: JobsOpt = None) -> None:
    """Train the baseline B, and the EPN that routes to the preset's K expert domains, into LIBRARY: on
    the preset's embedded upstream world, or on an upstream dataset on disk (--data), its expert
    domains the K nodes with the most images in their subtree. Each member checkpoints as it trains;
    --resume continues an interrupted one."""
    cfg, dev = setup(preset, overrides, device, threads, data_parallel=True)
    checks.build_options(preset, overrides, device)
    n_jobs, per_job = checks.jobs(jobs, threads, cfg)
    data_parallel_options(cfg, ())
    spec, ckpt = data_spec(data, hierarchy, classes, holdout, workers, strict), checkpointing(resume, checkpoint_every)
    from expertise.upstream.build import build_library

    with units_executor("local", None, None, n_jobs, per_job, quiet) as units_on:
        build_library(cfg, library, rank_context(dev, cfg.seed, quiet), upstream_only=True, data=spec,
                      checkpointing=ckpt, executor=units_on)


@app.command()
@user_errors
@resumes(*RESUMES)
def experts(library: LibOpt, preset: PresetOpt = "cpu",
            kind: Annotated[str, typer.Option("--kind", help="Expert kind: full, adapter, or both.")] = "full",
            num_experts: Annotated[Optional[int], typer.Option("--num-experts", "-k", help="Top-K hierarchy nodes by image count.")] = None,
            data: DataOpt = None, hierarchy: HierarchyOpt = None, classes: ClassesOpt = None, holdout: HoldoutOpt = None,
            workers: WorkersOpt = 0, strict: StrictOpt = False, resume: ResumeOpt = False,
            checkpoint_every: CheckpointEveryOpt = None,
            overrides: ExpertSetOpt = None, device: DeviceOpt = "auto", quiet: QuietOpt = False,
            threads: ThreadsOpt = None, jobs: JobsOpt = None, executor: ExecutorOpt = "local",
            ray_address: RayAddressOpt = None, ray_cpus: RayCpusOpt = None) -> None:
    """Train experts for the top-K hierarchy nodes: full (B tuned on each node's slice) or adapter
    (small residual adapters on the frozen B, all in one bank); trains B and the EPN first if missing.
    On a library built from a dataset on disk, that dataset (recorded in the library; --data must name
    the same one). Each full expert, the EPN and the adapter bank is a unit of work, --jobs at a
    time on this machine or, with --executor ray, a Ray task (B first); this process alone writes the library."""
    kinds = {"full": ("full",), "adapter": ("adapter",), "both": ("full", "adapter")}
    items = list(overrides or []) + ([f"num_experts={num_experts}"] if num_experts is not None else [])
    cfg, dev = setup(preset, items, device, threads, data_parallel=True)
    checks.build_options(preset, overrides, device, kind, kinds, num_experts)
    checks.executor(executor, ray_address, ray_cpus, data_parallel=True)
    n_jobs, per_job = checks.jobs(jobs, threads, cfg, executor)
    data_parallel_options(cfg, kinds[kind])
    spec, ckpt = data_spec(data, hierarchy, classes, holdout, workers, strict), checkpointing(resume, checkpoint_every)
    from expertise.upstream.build import build_library

    with units_executor(executor, ray_address, ray_cpus, n_jobs, per_job, quiet) as units_on:
        build_library(cfg, library, rank_context(dev, cfg.seed, quiet), kinds=kinds[kind], data=spec,
                      checkpointing=ckpt, executor=units_on)


def data_parallel_options(cfg: Preset, kinds: tuple[str, ...]) -> None:
    """Under torchrun: what trains must be able to train data-parallel, and every global batch it
    trains with must split evenly over the ranks (one line each, before any work)."""
    from expertise import distributed

    if distributed.world() == 1:
        return
    if "adapter" in kinds:
        raise ConfigError("adapter experts train in one process (each expert's gradient is clipped on its own): "
                          "run 'expertise experts --kind adapter' without torchrun, after B is built with it")
    batches = {"baseline.batch_size": cfg.baseline.batch_size, "epn.batch_size": cfg.epn.batch_size}
    if "full" in kinds:
        batches["expert.batch_size"] = cfg.expert.batch_size
    distributed.check_divides(batches)


def rank_context(device: torch.device, seed: int, quiet: bool) -> RunContext:
    """The run context of a build: under torchrun only rank 0 shows progress and logs."""
    from expertise import distributed

    main = distributed.is_main()
    return RunContext(device, seed, not quiet and main, out.print if main else (lambda _: None))
