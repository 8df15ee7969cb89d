"""Commands that fine-tune: one member, the transfer protocol, domain adaptive transfer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from expertise.cli import checks
from expertise.cli.common import (DeviceOpt, LibOpt, PresetOpt, ProxyOpt, QuietOpt, SetOpt, SkipOpt, StrategyOpt, TaskOpt,
                                  parse_floats, open_library, task_resolution, setup, app, out,
                                  user_errors)
from expertise.runtime import RunContext


@app.command()
@user_errors
def finetune(library: LibOpt, task: TaskOpt, member: Annotated[str, typer.Option("--member", "-m", help="Library member to fine-tune.")],
             preset: PresetOpt = "cpu", overrides: SetOpt = None, seed: int = 0, device: DeviceOpt = "auto",
             quiet: QuietOpt = False, skip_corrupt: SkipOpt = False) -> None:
    """Fine-tune MEMBER on TASK's 1,000 train+val images with a new head; report test accuracy."""
    checks.finetune_options(library, member, preset, overrides, device)
    from expertise.data.loaders import load_task
    from expertise.upstream.build import world_of_library
    from expertise.transfer.finetune import finetune_and_test

    cfg, dev = setup(preset, overrides, device)
    lib = open_library(library)
    model = lib.load(member)
    t = load_task(task, resolution=task_resolution(lib), seed=seed, world=world_of_library(lib), skip_corrupt=skip_corrupt)
    res = finetune_and_test(model, t, cfg.finetune, seed, dev, not quiet)
    out.print(f"{member} on {t.name}: test accuracy [bold]{res.test_accuracy:.3f}[/] "
              f"({res.images} images in {res.train_seconds:.1f}s)")


@app.command()
@user_errors
def transfer(library: LibOpt, task: TaskOpt,
             strategy: StrategyOpt = "proxy", proxy: ProxyOpt = "knn_loo",
             budget: Annotated[int, typer.Option("--budget", "-b", help="Picks to fine-tune; the best is kept.")] = 1,
             out_dir: Annotated[Path, typer.Option("--out", help="Records folder (resumable).")] = Path("runs/transfer"),
             lr_factors: Annotated[str, typer.Option("--lr-factors", help="Sweep grid: learning-rate factors around the preset's.")] = "1,0.3,3",
             sweeps: Annotated[int, typer.Option("--sweeps", help="Independent sweeps (paper: 10).")] = 1,
             retrains: Annotated[int, typer.Option("--retrains", help="Retrains per sweep (paper: 3).")] = 1,
             cache: Annotated[Optional[Path], typer.Option("--cache", help="Embedding cache folder (default LIBRARY/cache).")] = None,
             preset: PresetOpt = "cpu", overrides: SetOpt = None, seed: int = 0, device: DeviceOpt = "auto",
             quiet: QuietOpt = False, skip_corrupt: SkipOpt = False) -> None:
    """The transfer protocol for one task: select on the 1,000 train+val images, sweep
    hyperparameters on 800/200, retrain the pick on all 1,000, report the median test accuracy."""
    checks.transfer_options(library, strategy, proxy, budget, lr_factors, sweeps, retrains, preset, overrides, device)
    from expertise.transfer.protocol import SweepConfig, transfer_protocol
    from expertise.store import RecordStore
    from expertise.data.loaders import load_task
    from expertise.upstream.build import world_of_library
    from expertise.select.embed import EmbeddingCache
    from expertise.select.run import run_selection

    cfg, dev = setup(preset, overrides, device)
    lib = open_library(library)
    t = load_task(task, resolution=task_resolution(lib), seed=seed, world=world_of_library(lib), skip_corrupt=skip_corrupt)
    sweep = SweepConfig(lr_factors=parse_floats(lr_factors, "--lr-factors"), sweeps=sweeps, retrains=retrains)
    run = run_selection(lib, t, strategy, budget, proxy, ctx=RunContext(dev, seed, not quiet, cache=EmbeddingCache(cache or library / "cache")))
    out.print(f"{run.label} picked {', '.join(run.selection.picks)} in {run.seconds['total']:.1f}s")
    ctx = RunContext(dev, seed, not quiet, out.print, RecordStore(out_dir))
    best = None
    for name in run.selection.picks:
        res = transfer_protocol(name, lambda name=name: lib.load(name), lib.verified_hash(name), t, cfg.finetune, sweep, ctx)
        chosen = ", ".join(f"lr {c['lr']:g}" for c in res.chosen)
        out.print(f"{name} on {t.name}: median test accuracy [bold]{res.test_accuracy:.3f}[/] over "
                  f"{len(res.test_accuracies)} retrain(s) ({chosen}; {res.seconds:.0f}s, {res.units_reused} unit(s) reused)")
        best = res if best is None or res.test_accuracy > best.test_accuracy else best
    if budget > 1 and best is not None:
        out.print(f"best of the {budget} picks: {best.member} ({best.test_accuracy:.3f})")


@app.command()
@user_errors
def dat(library: LibOpt, task: TaskOpt,
        upstream_data: Annotated[str, typer.Option("--upstream", help="Upstream data to re-sample: 'world' (the embedded "
                                                   "world the library was built on; the only source this version reads).")] = "world",
        sampler: Annotated[str, typer.Option("--sampler", help="elastic (without replacement) or same (with replacement).")] = "elastic",
        size: Annotated[Optional[int], typer.Option("--size", help="Pre-training examples to sample (default: a quarter of upstream).")] = None,
        weighting: Annotated[str, typer.Option("--weighting", help="adaptive, uniform or reversed (Table 6 ablation).")] = "adaptive",
        init: Annotated[str, typer.Option("--init", help="scratch (the paper) or baseline (start from B, cheaper).")] = "scratch",
        temperature: Annotated[float, typer.Option("--temperature", help="Softmax temperature on B's predictions.")] = 2.0,
        out_dir: Annotated[Path, typer.Option("--out", help="Where the DAT record goes.")] = Path("runs/dat"),
        preset: PresetOpt = "cpu", overrides: SetOpt = None, seed: int = 0, device: DeviceOpt = "auto",
        quiet: QuietOpt = False, skip_corrupt: SkipOpt = False) -> None:
    """Domain adaptive transfer for TASK: weight upstream labels by B's predictions on the task,
    re-sample upstream, pre-train a specialist (as long as B for --init scratch, as an expert for
    --init baseline), fine-tune it; reports its accuracy and cost beside a kNN selection's."""
    checks.dat_options(upstream_data, sampler, weighting, init, size, temperature, preset, overrides, device)
    import time

    from expertise.dat import DATConfig, cost_ratios, dat_record, run_dat
    from expertise.errors import ConfigError, LibraryError
    from expertise.io import atomic_write_json
    from expertise.data.loaders import load_task
    from expertise.upstream.build import world_of_library
    from expertise.select.run import run_selection

    cfg, dev = setup(preset, overrides, device)
    lib = open_library(library)
    world = world_of_library(lib)
    if upstream_data != "world":
        raise ConfigError(f"--upstream {upstream_data!r}: this version re-samples the embedded world a library was built on; use --upstream world")
    if world is None:
        raise LibraryError(f"the library at {library} was not built on the embedded world; DAT needs its upstream data")
    base = next((m.name for m in lib.members() if m.kind == "baseline"), None)
    if base is None:
        raise LibraryError(f"the library at {library} has no baseline B; run 'expertise upstream' first")
    t = load_task(task, resolution=task_resolution(lib), seed=seed, world=world, skip_corrupt=skip_corrupt)
    t0 = time.perf_counter()
    sel = run_selection(lib, t, "proxy", 1, "knn_loo", ctx=RunContext(dev, seed, not quiet))
    select_s = time.perf_counter() - t0
    upstream = world.upstream("train").materialize()
    pretrain = cfg.baseline if init == "scratch" else cfg.expert
    settings = DATConfig(size or len(upstream) // 4, sampler, temperature, weighting, init)  # type: ignore[arg-type]
    res = run_dat(lib.load(base), upstream, t, settings, pretrain, cfg.finetune, RunContext(dev, seed, not quiet, out.print))
    total = sum(res.seconds.values())
    select_images = sel.images_per_member * len(sel.members_embedded)
    ratios = cost_ratios(res, select_s, select_images)
    record = dat_record(res, {"library": str(library), "preset": cfg.name,
                              "knn_selection": {"seconds": select_s, "images": select_images, "pick": sel.selection.best}})
    path = out_dir / f"dat.{t.name}.{sampler}.{weighting}.{init}.json"
    atomic_write_json(path, record)
    out.print(f"DAT on {t.name}: test accuracy [bold]{res.test_accuracy:.3f}[/]; {res.unique_examples:,} unique of "
              f"{res.sampled_size:,} sampled upstream examples")
    out.print("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in res.seconds.items()) + f" (total {total:.0f}s)")
    out.print(f"kNN selection of {len(sel.members_embedded)} members: {select_s:.1f}s, {select_images:,} images "
              f"(picked {sel.selection.best}); DAT before fine-tuning costs "
              f"{ratios['time_ratio']:,.0f}x the time and {ratios['images_ratio']:,.0f}x the images")
    out.print(f"wrote {path}")
