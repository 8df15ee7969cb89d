"""The selection command: rank a library's members for a task."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from expertise.cli import checks
from expertise.cli.common import (DeviceOpt, ExecutorOpt, ProxyOpt, RayAddressOpt, RayCpusOpt, QuietOpt, SeedOpt, SkipOpt, MaxSideOpt, StrategyOpt, TaskOpt, ThreadsOpt,
                                  open_library, load_cli_task, app, out,
                                  user_errors, JobsOpt, units_executor)
from expertise.errors import ConfigError
from expertise.runtime import RunContext


@app.command()
@user_errors
def select(task: TaskOpt,
           library: Annotated[Optional[Path], typer.Option("--library", "-l", help="Library folder.")] = None,
           pool: Annotated[Optional[Path], typer.Option("--pool", help="A pool file (TOML, docs/pools.md) instead of a "
                                                        "library: its members are added to a library in a cache folder "
                                                        "(EXPERTISE_CACHE, else ~/.cache/expertise), made once per pool "
                                                        "file.")] = None,
           strategy: StrategyOpt = "proxy", proxy: ProxyOpt = "knn_loo",
           budget: Annotated[int, typer.Option("--budget", "-b", help="How many members to pick.")] = 1,
           cache: Annotated[Optional[Path], typer.Option("--cache", help="Embedding cache folder (default LIBRARY/cache).")] = None,
           out_dir: Annotated[Optional[Path], typer.Option("--out", help="Where to write the ranking (JSON) and bar chart (PNG); "
                                                          "default runs/select.")] = None,
           search: Annotated[str, typer.Option("--search", help="How a proxy scores the pool: full (every member on "
                                               "all train+val images) or halving (successive halving: every member on a "
                                               "sample, the best half on twice as many images, ...; far fewer images "
                                               "embedded for a large pool; with --strategy proxy or "
                                               "hybrid, whose task-aware part it ranks).")] = "full",
           resamples: Annotated[int, typer.Option("--resamples", help="Paired bootstrap resamples of the task's images for "
                                                  "each score's 95% interval and the ties with the best (0: none).")] = 1000,
           seed: SeedOpt = 0, device: DeviceOpt = "auto", quiet: QuietOpt = False, skip_corrupt: SkipOpt = False, max_side: MaxSideOpt = 512,
           threads: ThreadsOpt = None, jobs: JobsOpt = None, executor: ExecutorOpt = "local",
           ray_address: RayAddressOpt = None, workers: RayCpusOpt = None) -> None:
    """Rank every pool member of LIBRARY (or of a pool file) for TASK with a strategy; print and save
    the picks, each member's score with its 95% interval and whether it is tied with the best or at
    chance (table, JSON and a bar chart) and the time each stage took. Each member the strategy
    reads embeds the task as a unit of work, --jobs at a time (or with --executor ray as a Ray task,
    worth it for a large pool); the ranking is then made here from the cache they fill."""
    from expertise.runtime import configure

    dev = configure(threads, device)
    checks.at_least(resamples, 0, "--resamples")
    checks.select_options(library, strategy, proxy, budget, device, pool)
    checks.search(search, strategy)
    checks.executor(executor, ray_address, workers)
    n_jobs, per_job = checks.jobs(jobs, threads, None, executor)
    if executor != "local" and search != "full":
        raise ConfigError(f"--search {search} embeds only the members that survive each round, in this process; "
                          f"drop --executor {executor} or --search {search}")
    checks.max_side(max_side)
    from expertise.io import atomic_write_json
    from expertise.plots import plot_selection
    from expertise.runtime import configure
    from expertise.select.embed import EmbeddingCache
    from expertise.select.run import ranking_table, run_selection

    lib = open_library(library) if pool is None else _pool_library(pool)
    t = load_cli_task(lib, task, seed, skip_corrupt, max_side)
    folder = out_dir or Path("runs/select")
    embeddings = EmbeddingCache(cache or lib.path / "cache")
    units = []
    if search == "full":
        with units_executor(executor, ray_address, workers, n_jobs, per_job, quiet) as units_on:
            units = _embed_as_units(lib, t, strategy, embeddings, folder, seed, skip_corrupt, dev, not quiet, units_on)
    run = run_selection(lib, t, strategy, budget, proxy, ctx=RunContext(dev, seed, not quiet, cache=embeddings),
                        resamples=resamples, search=search).embedded_by(units)
    rows = ranking_table(run, lib)
    score_label = SCORE_LABELS.get(run.proxy or strategy, "score")
    table = Table(title=f"{run.label} on {t.name} ({len(t.trainval)} images): {score_label}")
    unc = run.uncertainty
    intervals = unc is not None and unc.available
    cols = [("rank", {"justify": "right"}), ("member", {"no_wrap": True}), ("kind", {"no_wrap": True}),
            ("domain", {"overflow": "fold"}), ("score", {"justify": "right"})]
    chance = intervals and unc.chance is not None
    if intervals:
        cols += [(f"{unc.level:.0%} CI", {"justify": "right", "no_wrap": True}), ("≈best", {"justify": "center"})]
    if chance:
        cols.append(("at chance", {"justify": "center"}))
    for col, kw in cols:
        table.add_column(col, **kw)
    for r in rows:
        score = "-" if r["score"] is None else f"{r['score']:.4g}"
        cells = [str(r["rank"]), r["member"] + (" ✓" if r["picked"] else ""), r["kind"], r["domain"] or "", score]
        if intervals:
            cells.append("-" if r["interval"] is None else f"{r['interval'][0]:.3g}–{r['interval'][1]:.3g}")
            cells.append("best" if r["best"] else ("≈" if r["tied_with_best"] else ""))
        if chance:
            cells.append("yes" if r["at_chance"] else "")
        table.add_row(*cells)
    out.print(table)
    for line in unc.notes() if unc is not None else []:
        out.print(line)
    stem = f"{t.name}.{run.label.replace('(', '-').replace(')', '')}" + ("" if run.search is None else ".halving")
    atomic_write_json(folder / f"{stem}.json", run.to_json())
    png = plot_selection(rows, f"{run.label} on {t.name}", score_label, folder / f"{stem}.png")
    s = run.seconds
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in s.items())
    if unc is not None and unc.available:
        stages += f" (and the bootstrap {unc.seconds:.2f}s)"
    if run.search is not None:
        out.print(run.search.line())
    out.print(f"picked: {', '.join(run.selection.picks)}")
    if run.search is None:
        out.print(f"time: {stages}; {len(run.members_embedded)} member(s) x {run.images_per_member} images needed "
                  f"({run.embed.cached} read from the cache)")
    else:
        out.print(f"time: {stages}; {run.embed.cached} member(s) read from the cache")
    out.print(f"wrote {folder / (stem + '.json')} and {png}")


def _embed_as_units(lib, task, strategy: str, cache, folder: Path, seed: int, skip_corrupt: bool, dev, progress: bool,
                    units_on) -> list:
    """Every member the strategy reads that has no cached features of the task embeds it as an
    ``embed`` unit on the executor (recorded in FOLDER/units, as the benchmark records them); their
    :class:`~expertise.store.Unit` s."""
    from expertise.bench.units import embed_plan
    from expertise.select.registry import get_strategy
    from expertise.select.run import pool_names
    from expertise.store import RecordStore
    from expertise.units import WorkerContext, drive

    names = get_strategy(strategy).members_to_embed(lib, pool_names(lib))
    plan = embed_plan(lib, task, names, cache, seed, batch_size=500, skip_corrupt=skip_corrupt)
    if plan.size == 0:
        return []
    return drive([plan], units_on, RecordStore(folder), WorkerContext(dev, progress).seed_with([lib], [task]), progress,
                 desc="embedding units")[0]


def _pool_library(pool: Path):
    """The cached library of a pool file's members, reporting each member added to it."""
    from expertise.pool_cache import pool_library

    def report(o) -> None:
        if o.added:
            out.print(f"added {o.info.name} to the pool's library", highlight=False)

    lib = pool_library(pool, report=report)
    out.print(f"pool {pool}: {len(lib.names())} member(s), library {lib.path}", highlight=False)
    return lib


SCORE_LABELS = {
    "knn_loo": "kNN leave-one-out accuracy", "knn_val": "1-NN validation accuracy (800/200)",
    "linear_probe": "linear probe validation accuracy", "ridge_loo": "ridge leave-one-out accuracy",
    "logme": "LogME evidence per sample", "hscore": "H-score", "regularized_hscore": "regularised H-score",
    "leep": "LEEP", "nce": "NCE", "random": "random order (higher = earlier)",
    "task_agnostic": "upstream holdout accuracy", "label_matching": "-KL(task labels || expert prior)",
    "domain_prediction": "mean log EPN probability",
}
