"""The benchmark command and its report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from expertise.cli import checks
from expertise.cli.common import (DeviceOpt, ExecutorOpt, JobsOpt, RayAddressOpt, RayCpusOpt, FinetuneSetOpt, MaxSideOpt, PresetOpt, QuietOpt, SeedOpt, ThreadsOpt, parse_floats, open_library,
                                  resumes, run_log, task_resolution, setup, bench_app, out, user_errors, BENCH_STRATEGY_HELP, units_executor)
from expertise.runtime import RunContext


@bench_app.callback(invoke_without_command=True)
@user_errors
@resumes("finished units of work are recorded in the --out folder")
def bench(ctx: typer.Context,
          library: Annotated[Optional[Path], typer.Option("--library", "-l", help="Library folder.")] = None,
          suite: Annotated[str, typer.Option("--suite", help="builtin, natural, specialized, structured, TASK,TASK,..., or a "
                                             "suite file (.toml or .json: built-in tasks and ImageFolder folders with "
                                             "their group; docs/benchmark.md).")] = "builtin",
          out_dir: Annotated[Path, typer.Option("--out", help="Output folder: records, summary.md, plots.")] = Path("runs/bench"),
          strategies: Annotated[Optional[list[str]], typer.Option("--strategy", help=BENCH_STRATEGY_HELP)] = None,
          pools: Annotated[Optional[list[str]], typer.Option("--pool", help="Pool specs (repeat), e.g. all, experts, 'params<=5e6'.")] = None,
          lr_factors: Annotated[str, typer.Option("--lr-factors", help="Sweep grid around the preset's learning rate; "
                                                  "one factor skips the sweep.")] = "1",
          sweeps: Annotated[int, typer.Option("--sweeps", help="Independent sweeps (paper: 10).")] = 1,
          retrains: Annotated[int, typer.Option("--retrains", help="Retrains per sweep (paper: 3).")] = 1,
          cache: Annotated[Optional[Path], typer.Option("--cache", help="Embedding cache folder (default LIBRARY/cache).")] = None,
          seeds: Annotated[Optional[str], typer.Option("--seeds", help="Training seeds, e.g. 0,1,2: the benchmark once per "
                                                       "seed (fine-tunes, random selection) on the task splits of --seed, "
                                                       "into one folder; the report takes each task's median over seeds and "
                                                       "gives intervals over tasks, over the runs within each task, and "
                                                       "both. Default: --seed alone.")] = None,
          halving: Annotated[bool, typer.Option("--halving", help="Also rank the first pool by successive halving "
                                                "with each proxy strategy (on a cold cache) and report its agreement "
                                                "with full scoring (top-1, Kendall tau), images embedded and seconds; "
                                                "off by default (docs/benchmark.md).")] = False,
          preset: PresetOpt = "cpu", overrides: FinetuneSetOpt = None, seed: SeedOpt = 0, device: DeviceOpt = "auto",
          quiet: QuietOpt = False, max_side: MaxSideOpt = 512, threads: ThreadsOpt = None, jobs: JobsOpt = None,
          executor: ExecutorOpt = "local", ray_address: RayAddressOpt = None, workers: RayCpusOpt = None) -> None:
    """Evaluate every strategy and pool on a suite: the oracle fine-tunes every member, each unit is
    a record (a killed run resumes), and DIR/summary.md gets Tables 1-2, regret and compute.
    'expertise bench report DIR' rebuilds the report from the records alone. The units (embeddings,
    selection cells, each fine-tune) run --jobs at a time, or with --executor ray as Ray tasks, with the
    same records. With
    --seeds 0,1,2 every cell runs once per training seed, and the report compares strategies by paired
    differences over tasks and seeds ("Does choosing pay?"). With --halving the report adds successive
    halving against full scoring."""
    if ctx.invoked_subcommand is not None:
        return
    cfg, dev = setup(preset, overrides, device, threads)
    checks.bench_options(strategies, pools, lr_factors, sweeps, retrains, preset, overrides, device, seeds)
    checks.executor(executor, ray_address, workers)
    n_jobs, per_job = checks.jobs(jobs, threads, cfg, executor)
    checks.max_side(max_side)
    from expertise.bench import suite_file
    from expertise.bench.folder import task_domains
    from expertise.bench.seeds import parse_seeds
    from expertise.transfer.protocol import SweepConfig
    from expertise.bench.runner import DEFAULT_POOLS, parse_strategies, run_bench, suite_tasks
    from expertise.data.loaders import BUILTIN_TASKS
    from expertise.errors import ConfigError
    from expertise.select.embed import EmbeddingCache
    from expertise.library.upstream_meta import world_of_library

    training_seeds = parse_seeds(seeds) if seeds is not None else (seed,)
    entries = suite_file.read(Path(suite)) if suite_file.is_suite_file(suite) else None  # checked whole, before any work
    if library is None:
        raise ConfigError("give --library LIB (a library built by 'expertise experts'), or use 'expertise bench report DIR'")
    lib = open_library(library)
    world = world_of_library(lib)
    world_tasks = world.all_task_names if world is not None else ()
    if entries is not None:
        suite_file.check_builtins(entries, [*world_tasks, *BUILTIN_TASKS])
        tasks = suite_file.load(entries, world, task_resolution(lib, world), seed, max_side)
    else:
        checks.suite(suite, world_tasks)
        tasks = suite_tasks(suite, world, task_resolution(lib, world), seed, max_side)
    sweep = SweepConfig(lr_factors=parse_floats(lr_factors, "--lr-factors"), sweeps=sweeps, retrains=retrains)
    log = run_log(out_dir)
    log(f"[bold]expertise bench[/]: {len(tasks)} tasks, preset {cfg.name}, {sweep.num_finetunes} fine-tune(s) per "
        f"member and task" + (f", training seeds {', '.join(map(str, training_seeds))}" if seeds is not None else "")
        + f", writing to {out_dir}")
    with units_executor(executor, ray_address, workers, n_jobs, per_job, quiet) as units_on:
        summary = run_bench(lib, tasks, out_dir, cfg.finetune, sweep, parse_strategies(strategies),
                            tuple(pools or DEFAULT_POOLS),
                            RunContext(dev, seed, not quiet, log, cache=EmbeddingCache(cache or library / "cache")),
                            cfg.embed_batch, units_on, training_seeds, task_domains(tasks, world), halving=halving)
    out.print(summary.read_text(), markup=False, highlight=False)


@bench_app.command("report")
@user_errors
def bench_report(folder: Annotated[Path, typer.Argument(help="A benchmark output folder.")]) -> None:
    """Rebuild summary.md, the plots and records.jsonl from the records in FOLDER."""
    from expertise.bench.runner import write_report

    summary = write_report(folder)
    out.print(summary.read_text(), markup=False, highlight=False)
