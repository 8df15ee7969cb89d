"""Commands that fine-tune: one member, the transfer protocol, domain adaptive transfer."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from expertise.cli import checks
from expertise.cli.common import (DatSetOpt, DeviceOpt, ExecutorOpt, RayAddressOpt, RayCpusOpt, FinetuneSetOpt, MaxSideOpt, LibOpt, PresetOpt, ProxyOpt, QuietOpt, SeedOpt, SkipOpt,
                                  StrategyOpt, TaskOpt, ThreadsOpt, parse_floats, open_library, resumes, run_log, load_cli_task,
                                  setup, app, out, user_errors, JobsOpt, units_executor)
from expertise.cli.data_opts import ClassesOpt, DataOpt, HierarchyOpt, StrictOpt, WorkersOpt, data_spec
from expertise.runtime import RunContext


@app.command()
@user_errors
@resumes("its last checkpoint is kept in the --out folder")
def finetune(library: LibOpt, task: TaskOpt, member: Annotated[str, typer.Option("--member", "-m", help="Library member to fine-tune.")],
             out_dir: Annotated[Optional[Path], typer.Option("--out", help="Model folder to keep the fine-tuned model in "
                                                             "(default runs/finetune/TASK.MEMBER); checkpoints go there too.")] = None,
             preset: PresetOpt = "cpu", overrides: FinetuneSetOpt = None, seed: SeedOpt = 0, device: DeviceOpt = "auto",
             quiet: QuietOpt = False, skip_corrupt: SkipOpt = False, max_side: MaxSideOpt = 512, threads: ThreadsOpt = None) -> None:
    """Fine-tune MEMBER on TASK's 1,000 train+val images with a new head; report test accuracy and
    keep the model in --out (for 'expertise predict'). An interrupted run resumes from its last
    checkpoint when run again; a finished one is reused."""
    cfg, dev = setup(preset, overrides, device, threads)
    checks.finetune_options(library, member, preset, overrides, device)
    checks.max_side(max_side)
    from expertise.transfer.keep import finetune_to_folder, folder_name

    lib = open_library(library)
    lib.info(member)  # an unknown member fails before the task is loaded
    t = load_cli_task(lib, task, seed, skip_corrupt, max_side)
    folder = out_dir or Path("runs/finetune") / folder_name(t.name, member)
    kept = finetune_to_folder(member, lambda: lib.load(member), lib.verified_hash(member), t, cfg.finetune, folder,
                              RunContext(dev, seed, not quiet, out.print), {"preset": cfg.name, "library": str(library)})
    m = kept.metrics
    lo, hi = m["test_accuracy_ci95"]
    how = "kept from an earlier run" if kept.reused else f"{kept.record['images']['finetune']} images in {kept.record['seconds']['finetune']:.1f}s"
    out.print(f"{member} on {t.name}: test accuracy [bold]{m['test_accuracy']:.3f}[/] (95% CI {lo:.3f}-{hi:.3f}, "
              f"{m['test_images']} test images; {how})")
    out.print(f"model kept in {kept.path}", highlight=False)


@app.command()
@user_errors
@resumes("finished fine-tunes are recorded in the --out folder")
def transfer(library: LibOpt, task: TaskOpt,
             strategy: StrategyOpt = "proxy", proxy: ProxyOpt = "knn_loo",
             budget: Annotated[int, typer.Option("--budget", "-b", help="Picks to fine-tune; the best is kept.")] = 1,
             out_dir: Annotated[Path, typer.Option("--out", help="Records folder (resumable); each pick's final model "
                                                   "goes to OUT/models/TASK.MEMBER.")] = Path("runs/transfer"),
             lr_factors: Annotated[str, typer.Option("--lr-factors", help="Sweep grid: learning-rate factors around the preset's.")] = "1,0.3,3",
             sweeps: Annotated[int, typer.Option("--sweeps", help="Independent sweeps (paper: 10).")] = 1,
             retrains: Annotated[int, typer.Option("--retrains", help="Retrains per sweep (paper: 3).")] = 1,
             cache: Annotated[Optional[Path], typer.Option("--cache", help="Embedding cache folder (default LIBRARY/cache).")] = None,
             preset: PresetOpt = "cpu", overrides: FinetuneSetOpt = None, seed: SeedOpt = 0, device: DeviceOpt = "auto",
             quiet: QuietOpt = False, skip_corrupt: SkipOpt = False, max_side: MaxSideOpt = 512, threads: ThreadsOpt = None,
             jobs: JobsOpt = None, executor: ExecutorOpt = "local", ray_address: RayAddressOpt = None,
             workers: RayCpusOpt = None) -> None:
    """The transfer protocol for one task: select on the 1,000 train+val images, sweep
    hyperparameters on 800/200, retrain the pick on all 1,000, report the median test accuracy.
    The first retrain of each pick is kept as a model folder (for 'expertise predict'). Every
    fine-tune (each sweep setting of each pick) is a unit of work, --jobs at a time, or with
    --executor ray a Ray task."""
    cfg, dev = setup(preset, overrides, device, threads)
    checks.transfer_options(library, strategy, proxy, budget, lr_factors, sweeps, retrains, preset, overrides, device)
    checks.executor(executor, ray_address, workers)
    n_jobs, per_job = checks.jobs(jobs, threads, cfg, executor)
    checks.max_side(max_side)
    from expertise.transfer.protocol import SweepConfig
    from expertise.transfer.keep import folder_name
    from expertise.transfer.units import protocol_units
    from expertise.store import RecordStore
    from expertise.units import WorkerContext, drive, task_ref
    from expertise.select.embed import EmbeddingCache
    from expertise.select.run import run_selection

    run_log(out_dir)  # messages and progress lines go to OUT/log.txt too
    lib = open_library(library)
    t = load_cli_task(lib, task, seed, skip_corrupt, max_side)
    sweep = SweepConfig(lr_factors=parse_floats(lr_factors, "--lr-factors"), sweeps=sweeps, retrains=retrains)
    run = run_selection(lib, t, strategy, budget, proxy, ctx=RunContext(dev, seed, not quiet, cache=EmbeddingCache(cache or library / "cache")))
    out.print(f"{run.label} picked {', '.join(run.selection.picks)} in {run.seconds['total']:.1f}s")
    store = RecordStore(out_dir)
    settings = {"preset": cfg.name, "library": str(library), "sweep_config": sweep.to_json()}
    folders = {name: out_dir / "models" / folder_name(t.name, name) for name in run.selection.picks}
    ref = task_ref(t, seed, skip_corrupt)
    with units_executor(executor, ray_address, workers, n_jobs, per_job, quiet) as units_on:
        plans = [protocol_units(lib, name, t, ref, cfg.finetune, sweep, seed, store, {"folder": folders[name], "settings": settings})
                 for name in run.selection.picks]
        results = drive(plans, units_on, store, WorkerContext(dev, not quiet).seed_with([lib], [t]), not quiet,
                        desc="transfer units")
    best = None
    for res in results:
        chosen = ", ".join(f"lr {c['lr']:g}" for c in res.chosen)
        out.print(f"{res.member} on {t.name}: median test accuracy [bold]{res.test_accuracy:.3f}[/] over "
                  f"{len(res.test_accuracies)} retrain(s) ({chosen}; {res.seconds:.0f}s, {res.units_reused} unit(s) reused)")
        if best is None or res.test_accuracy > best.test_accuracy:
            best = res
    if budget > 1 and best is not None:
        out.print(f"best of the {budget} picks: {best.member} ({best.test_accuracy:.3f})")
    if best is not None:
        _report_kept(folders[best.member])


def _report_kept(folder: Path) -> None:
    """One line on the best pick's kept model: its own test accuracy, interval and folder."""
    from expertise.transfer.keep import kept_record

    rec = kept_record(folder)
    if rec is None:
        out.print(f"no model kept in {folder}: its first retrain diverged", highlight=False)
        return
    m = rec["metrics"]
    lo, hi = m["test_accuracy_ci95"]
    out.print(f"model kept in {folder} (first retrain: test accuracy {m['test_accuracy']:.3f}, 95% CI {lo:.3f}-{hi:.3f}, "
              f"{m['test_images']} test images)", highlight=False)


@app.command()
@user_errors
def predict(model: Annotated[Path, typer.Option("--model", help="A model folder kept by 'expertise finetune' or 'expertise transfer'.")],
            images: Annotated[list[Path], typer.Option("--images", "-i", help="An image file, or a folder searched recursively; repeat for more.")],
            out_file: Annotated[Optional[Path], typer.Option("--out", help="Write predictions to FILE.csv or FILE.json "
                                                              "(default: CSV on standard output).")] = None,
            top_k: Annotated[int, typer.Option("--top-k", help="Classes per image, best first.")] = 1,
            device: DeviceOpt = "auto",
            skip_corrupt: Annotated[bool, typer.Option("--skip-corrupt", help="Leave out unreadable image files (with a warning) "
                                                       "instead of stopping.")] = False) -> None:
    """Classify new images with a kept fine-tuned model: path, label and probability per image (and
    the next TOP_K - 1 classes), with the model's own preprocessing; the folder is verified first."""
    from expertise.runtime import configure
    from expertise.transfer.predict import image_files, output_format, predict as run_predict, to_csv, write_predictions
    from expertise.transfer.saved import load_model

    if out_file is not None:
        output_format(out_file)  # a wrong extension fails before any work
    saved = load_model(model)
    preds = run_predict(saved, image_files(images), top_k, configure(device=device), skip_corrupt=skip_corrupt)
    if out_file is None:
        sys.stdout.write(to_csv(preds, top_k))
        return
    write_predictions(out_file, preds, saved, top_k)
    out.print(f"wrote {len(preds)} prediction(s) to {out_file}", highlight=False)


@app.command()
@user_errors
def dat(library: LibOpt, task: TaskOpt,
        upstream_data: Annotated[str, typer.Option("--upstream", help="Upstream data to re-sample: 'world', the data the "
                                                   "library was built on (its embedded world, or the dataset on disk it "
                                                   "records; see --data).")] = "world",
        sampler: Annotated[str, typer.Option("--sampler", help="elastic (without replacement) or same (with replacement).")] = "elastic",
        size: Annotated[Optional[int], typer.Option("--size", help="Pre-training examples to sample (default: a quarter of upstream).")] = None,
        weighting: Annotated[str, typer.Option("--weighting", help="adaptive, uniform or reversed (Table 6 ablation).")] = "adaptive",
        init: Annotated[str, typer.Option("--init", help="scratch (the paper) or baseline (start from B, cheaper).")] = "scratch",
        temperature: Annotated[float, typer.Option("--temperature", help="Softmax temperature on B's predictions.")] = 2.0,
        out_dir: Annotated[Path, typer.Option("--out", help="Where the DAT record goes.")] = Path("runs/dat"),
        data: DataOpt = None, hierarchy: HierarchyOpt = None, classes: ClassesOpt = None, workers: WorkersOpt = 0,
        strict: StrictOpt = False,
        preset: PresetOpt = "cpu", overrides: DatSetOpt = None, seed: SeedOpt = 0, device: DeviceOpt = "auto",
        quiet: QuietOpt = False, skip_corrupt: SkipOpt = False, max_side: MaxSideOpt = 512, threads: ThreadsOpt = None,
        jobs: JobsOpt = None, executor: ExecutorOpt = "local", ray_address: RayAddressOpt = None,
        ray_cpus: RayCpusOpt = None) -> None:
    """Domain adaptive transfer for TASK: weight upstream labels by B's predictions on the task,
    re-sample upstream, pre-train a specialist (as long as B for --init scratch, as an expert for
    --init baseline), fine-tune it; reports its accuracy and cost beside a kNN selection's. The
    upstream data is the library's: its embedded world, or the dataset on disk it was built from
    (recorded in the library; --data must name the same one). The run is one unit recorded in
    OUT/units (a rerun with the same settings reads it back); it runs in a worker process (--jobs 1: in
    this one), or with --executor ray as a Ray task."""
    cfg, dev = setup(preset, overrides, device, threads)
    checks.dat_options(upstream_data, sampler, weighting, init, size, temperature, preset, overrides, device)
    checks.executor(executor, ray_address, ray_cpus)
    n_jobs, per_job = checks.jobs(jobs, threads, cfg, executor)
    spec = data_spec(data, hierarchy, classes, None, workers, strict)
    checks.max_side(max_side)
    import time

    from expertise.dat import DATConfig, cost_ratios, dat_record
    from expertise.dat.units import dat_result, dat_spec
    from expertise.store import RecordStore
    from expertise.units import WorkerContext, batch_plan, drive, task_ref
    from expertise.library.upstream_meta import config_digest
    from expertise.upstream.units import TRAIN
    from expertise.units.context import library_key
    from expertise.errors import ConfigError, LibraryError
    from expertise.io import atomic_write_json
    from expertise.library.upstream_meta import upstream_meta, world_of_library
    from expertise.upstream.data_spec import resolve
    from expertise.select.run import run_selection

    log = run_log(out_dir)
    lib = open_library(library)
    world = world_of_library(lib)
    if upstream_data != "world":
        raise ConfigError(f"--upstream {upstream_data!r}: DAT re-samples the upstream data a library was built on; "
                          "use --upstream world (and --data for a dataset on disk)")
    meta = upstream_meta(lib)
    source = resolve(library, meta, spec, log=log) if meta is not None else None
    if world is None and source is None:
        raise LibraryError(f"the library at {library} records no upstream data (neither the embedded world nor a dataset "
                           "on disk); DAT needs the data B was trained on")
    base = next((m.name for m in lib.members() if m.kind == "baseline"), None)
    if base is None:
        raise LibraryError(f"the library at {library} has no baseline B; run 'expertise upstream' first")
    t = load_cli_task(lib, task, seed, skip_corrupt, max_side, world)
    t0 = time.perf_counter()
    sel = run_selection(lib, t, "proxy", 1, "knn_loo", ctx=RunContext(dev, seed, not quiet))
    select_s = time.perf_counter() - t0
    # the train split the library's B was trained on (a dataset's split is seeded by the library's seed)
    upstream = world.upstream("train").materialize() if world is not None else source.train(meta["settings"]["seed"])
    pretrain = cfg.baseline if init == "scratch" else cfg.expert
    settings = DATConfig(size or len(upstream) // 4, sampler, temperature, weighting, init)  # type: ignore[arg-type]
    unit_spec = dat_spec(lib, t, task_ref(t, seed, skip_corrupt), base, settings, pretrain, cfg.finetune, seed,
                         config_digest(meta["settings"]), {"workers": workers, "strict": strict})
    worker = WorkerContext(dev, not quiet).seed_with([lib], [t]).seed_object((TRAIN, library_key(lib.path)), (upstream, None))
    with units_executor(executor, ray_address, ray_cpus, n_jobs, per_job, quiet) as units_on:
        [unit] = drive([batch_plan([unit_spec])], units_on, RecordStore(out_dir), worker, not quiet, desc="DAT unit")[0]
    res = dat_result(unit)
    if not unit.computed:
        log(f"DAT on {t.name} with these settings is recorded in {out_dir}: read back, not run again")
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
