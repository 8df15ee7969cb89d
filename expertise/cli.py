"""The ``expertise`` command line: one thin function per command, parsing and calling the API.

A user error (:class:`~expertise.errors.ExpertiseError`) prints one line and exits with status 2.
"""

from __future__ import annotations

import errno
import functools
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from expertise.errors import ExpertiseError, disk_error
from expertise.runtime import RunContext

DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0] if __doc__ else None,
                  pretty_exceptions_enable=False)
library_app = typer.Typer(no_args_is_help=True, help="Inspect and check a model library.")
app.add_typer(library_app, name="library")
pool_app = typer.Typer(no_args_is_help=True, help="Add external pre-trained models (timm, Hugging Face, checkpoints) to a library.")
app.add_typer(pool_app, name="pool")
bench_app = typer.Typer(help="Benchmark selection strategies and pools on a suite of tasks (see 'expertise bench --help').")
app.add_typer(bench_app, name="bench")
# A terminal gets its own width; piped output (a file, a CI log) is not squeezed into 80 columns.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

def _registry_help() -> tuple[str, str, str]:
    """Option help from the strategy and proxy registries, so a new entry shows up here by itself."""
    from expertise.select.proxies import PROXIES
    from expertise.select.registry import STRATEGIES, default_rows

    proxied = [n for n, s in STRATEGIES.items() if s.uses_proxy]
    return (f"Selection strategy: {', '.join(STRATEGIES)}.",
            f"Proxy of {' and '.join(proxied)}: {', '.join(PROXIES)}.",
            f"Strategy rows (repeat; default all): {', '.join(r.label for r, _ in default_rows())}, "
            f"or {' / '.join(f'{n}:PROXY' for n in proxied)}.")


STRATEGY_HELP, PROXY_HELP, BENCH_STRATEGY_HELP = _registry_help()
StrategyOpt = Annotated[str, typer.Option("--strategy", "-s", help=STRATEGY_HELP)]
ProxyOpt = Annotated[str, typer.Option("--proxy", "-p", help=PROXY_HELP)]
PresetOpt = Annotated[str, typer.Option("--preset", help="Scale preset: tiny, cpu or gpu.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a preset field, e.g. --set baseline.steps=500.")]
LibOpt = Annotated[Path, typer.Option("--library", "-l", help="Library folder.")]
TaskOpt = Annotated[str, typer.Option("--task", "-t", help="Built-in task name, 'sklearn_digits', or an ImageFolder directory.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
SkipOpt = Annotated[bool, typer.Option("--skip-corrupt", help="Skip unreadable images of an ImageFolder task (with a warning).")]


def user_errors(fn):
    """Turn a user error into one red line and exit status 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ExpertiseError as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except OSError as e:  # a disk error our writers did not wrap (a folder made by a library call)
            if e.errno not in DISK_ERRNOS:
                raise
            err.print(f"[bold red]error:[/] {disk_error(e)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]: finished units of work are saved; run the same command again to resume")
            raise typer.Exit(130) from None

    return wrapper


def _setup(preset: str, overrides: list[str] | None, device: str):
    from expertise.config import get_preset, parse_overrides
    from expertise.runtime import configure

    return get_preset(preset, parse_overrides(overrides or [])), configure(device=device)


def _open_library(path: Path):
    from expertise.library import Library

    return Library.open(path)


@app.command()
@user_errors
def demo(
    preset: PresetOpt = "cpu", out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("runs/demo"),
    library: Annotated[Optional[Path], typer.Option("--library", "-l", help="Library folder (default OUT/library).")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Delete earlier results in OUT and start over.")] = False,
    overrides: SetOpt = None, device: DeviceOpt = "auto", quiet: QuietOpt = False,
) -> None:
    """Run the whole pipeline on the embedded world: upstream, selection, transfer, results table."""
    import shutil

    from expertise.demo import run_demo

    cfg, dev = _setup(preset, overrides, device)
    if fresh:
        shutil.rmtree(out_dir, ignore_errors=True)
        if library:
            shutil.rmtree(library, ignore_errors=True)
    out.print(f"[bold]expertise demo[/]: preset [cyan]{cfg.name}[/] on {dev}, writing to {out_dir}")
    run_demo(cfg, out_dir, library, dev, progress=not quiet, log=out.print)
    out.print((out_dir / "results.md").read_text(), markup=False, highlight=False)


@app.command()
@user_errors
def upstream(library: LibOpt, preset: PresetOpt = "cpu", overrides: SetOpt = None, device: DeviceOpt = "auto",
             quiet: QuietOpt = False) -> None:
    """Train the baseline B, and the EPN that routes to the preset's K expert domains, on the preset's
    embedded upstream world into LIBRARY."""
    from expertise.upstream.build import build_library

    cfg, dev = _setup(preset, overrides, device)
    build_library(cfg, library, RunContext(dev, cfg.seed, not quiet, out.print), upstream_only=True)


@app.command()
@user_errors
def experts(library: LibOpt, preset: PresetOpt = "cpu",
            kind: Annotated[str, typer.Option("--kind", help="Expert kind: full, adapter, or both.")] = "full",
            num_experts: Annotated[Optional[int], typer.Option("--num-experts", "-k", help="Top-K hierarchy nodes by image count.")] = None,
            overrides: SetOpt = None, device: DeviceOpt = "auto", quiet: QuietOpt = False) -> None:
    """Train experts for the top-K hierarchy nodes: full (B tuned on each node's slice) or adapter
    (small residual adapters on the frozen B, all in one bank); trains B and the EPN first if missing."""
    from expertise.errors import ConfigError
    from expertise.upstream.build import build_library

    kinds = {"full": ("full",), "adapter": ("adapter",), "both": ("full", "adapter")}
    if kind not in kinds:
        raise ConfigError(f"unknown expert kind {kind!r}; choose full, adapter or both")
    items = list(overrides or []) + ([f"num_experts={num_experts}"] if num_experts is not None else [])
    cfg, dev = _setup(preset, items, device)
    build_library(cfg, library, RunContext(dev, cfg.seed, not quiet, out.print), kinds=kinds[kind])


@app.command()
@user_errors
def select(library: LibOpt, task: TaskOpt,
           strategy: StrategyOpt = "proxy", proxy: ProxyOpt = "knn_loo",
           budget: Annotated[int, typer.Option("--budget", "-b", help="How many members to pick.")] = 1,
           cache: Annotated[Optional[Path], typer.Option("--cache", help="Embedding cache folder (default LIBRARY/cache).")] = None,
           out_dir: Annotated[Optional[Path], typer.Option("--out", help="Where to write the ranking (JSON) and bar chart (PNG); "
                                                          "default runs/select.")] = None,
           seed: int = 0, device: DeviceOpt = "auto", quiet: QuietOpt = False, skip_corrupt: SkipOpt = False) -> None:
    """Rank every pool member of LIBRARY for TASK with a strategy; print and save the picks, each
    member's score (table, JSON and a bar chart) and the time each stage took."""
    from expertise.io import atomic_write_json
    from expertise.data.loaders import load_task
    from expertise.upstream.build import world_of_library
    from expertise.plots import plot_selection
    from expertise.runtime import configure
    from expertise.select.embed import EmbeddingCache
    from expertise.select.run import ranking_table, run_selection

    dev = configure(device=device)
    lib = _open_library(library)
    t = load_task(task, resolution=_resolution(lib), seed=seed, world=world_of_library(lib), skip_corrupt=skip_corrupt)
    run = run_selection(lib, t, strategy, budget, proxy,
                        ctx=RunContext(dev, seed, not quiet, cache=EmbeddingCache(cache or library / "cache")))
    rows = ranking_table(run, lib)
    score_label = SCORE_LABELS.get(run.proxy or strategy, "score")
    table = Table(title=f"{run.label} on {t.name} ({len(t.trainval)} images): {score_label}")
    for col, kw in (("rank", {"justify": "right"}), ("member", {"no_wrap": True}), ("kind", {"no_wrap": True}),
                    ("domain", {"overflow": "fold"}), ("score", {"justify": "right"})):
        table.add_column(col, **kw)
    for r in rows:
        score = "-" if r["score"] is None else f"{r['score']:.4g}"
        table.add_row(str(r["rank"]), r["member"] + (" ✓" if r["picked"] else ""), r["kind"], r["domain"] or "", score)
    out.print(table)
    folder = out_dir or Path("runs/select")
    stem = f"{t.name}.{run.label.replace('(', '-').replace(')', '')}"
    atomic_write_json(folder / f"{stem}.json", run.to_json())
    png = plot_selection(rows, f"{run.label} on {t.name}", score_label, folder / f"{stem}.png")
    s = run.seconds
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in s.items())
    out.print(f"picked: {', '.join(run.selection.picks)}")
    out.print(f"time: {stages}; {len(run.members_embedded)} member(s) x {run.images_per_member} images needed "
              f"({run.embed.cached} read from the cache)")
    out.print(f"wrote {folder / (stem + '.json')} and {png}")


SCORE_LABELS = {
    "knn_loo": "kNN leave-one-out accuracy", "knn_val": "1-NN validation accuracy (800/200)",
    "linear_probe": "linear probe validation accuracy", "ridge_loo": "ridge leave-one-out accuracy",
    "logme": "LogME evidence per sample", "hscore": "H-score", "regularized_hscore": "regularised H-score",
    "leep": "LEEP", "nce": "NCE", "random": "random order (higher = earlier)",
    "task_agnostic": "upstream holdout accuracy", "label_matching": "-KL(task labels || expert prior)",
    "domain_prediction": "mean log EPN probability",
}


@app.command()
@user_errors
def finetune(library: LibOpt, task: TaskOpt, member: Annotated[str, typer.Option("--member", "-m", help="Library member to fine-tune.")],
             preset: PresetOpt = "cpu", overrides: SetOpt = None, seed: int = 0, device: DeviceOpt = "auto",
             quiet: QuietOpt = False, skip_corrupt: SkipOpt = False) -> None:
    """Fine-tune MEMBER on TASK's 1,000 train+val images with a new head; report test accuracy."""
    from expertise.data.loaders import load_task
    from expertise.upstream.build import world_of_library
    from expertise.transfer.finetune import finetune_and_test

    cfg, dev = _setup(preset, overrides, device)
    lib = _open_library(library)
    model = lib.load(member)
    t = load_task(task, resolution=_resolution(lib), seed=seed, world=world_of_library(lib), skip_corrupt=skip_corrupt)
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
             preset: PresetOpt = "cpu", overrides: SetOpt = None, seed: int = 0, device: DeviceOpt = "auto",
             quiet: QuietOpt = False, skip_corrupt: SkipOpt = False) -> None:
    """The transfer protocol for one task: select on the 1,000 train+val images, sweep
    hyperparameters on 800/200, retrain the pick on all 1,000, report the median test accuracy."""
    from expertise.transfer.protocol import SweepConfig, transfer_protocol
    from expertise.store import RecordStore
    from expertise.data.loaders import load_task
    from expertise.upstream.build import world_of_library
    from expertise.select.embed import EmbeddingCache
    from expertise.select.run import run_selection

    cfg, dev = _setup(preset, overrides, device)
    lib = _open_library(library)
    t = load_task(task, resolution=_resolution(lib), seed=seed, world=world_of_library(lib), skip_corrupt=skip_corrupt)
    sweep = SweepConfig(lr_factors=_floats(lr_factors, "--lr-factors"), sweeps=sweeps, retrains=retrains)
    run = run_selection(lib, t, strategy, budget, proxy, ctx=RunContext(dev, seed, not quiet, cache=EmbeddingCache(out_dir / "cache")))
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
    import time

    from expertise.dat import DATConfig, cost_ratios, dat_record, run_dat
    from expertise.errors import ConfigError, LibraryError
    from expertise.io import atomic_write_json
    from expertise.data.loaders import load_task
    from expertise.upstream.build import world_of_library
    from expertise.select.run import run_selection

    cfg, dev = _setup(preset, overrides, device)
    lib = _open_library(library)
    world = world_of_library(lib)
    if upstream_data != "world":
        raise ConfigError(f"--upstream {upstream_data!r}: this version re-samples the embedded world a library was built on; use --upstream world")
    if world is None:
        raise LibraryError(f"the library at {library} was not built on the embedded world; DAT needs its upstream data")
    base = next((m.name for m in lib.members() if m.kind == "baseline"), None)
    if base is None:
        raise LibraryError(f"the library at {library} has no baseline B; run 'expertise upstream' first")
    t = load_task(task, resolution=_resolution(lib), seed=seed, world=world, skip_corrupt=skip_corrupt)
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


def _floats(text: str, what: str) -> tuple[float, ...]:
    from expertise.errors import ConfigError

    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{what} takes comma-separated numbers, e.g. 1,0.3,3; got {text!r}") from None


@bench_app.callback(invoke_without_command=True)
@user_errors
def bench(ctx: typer.Context,
          library: Annotated[Optional[Path], typer.Option("--library", "-l", help="Library folder.")] = None,
          suite: Annotated[str, typer.Option("--suite", help="builtin, natural, specialized, structured, or TASK,TASK,...")] = "builtin",
          out_dir: Annotated[Path, typer.Option("--out", help="Output folder: records, summary.md, plots.")] = Path("runs/bench"),
          strategies: Annotated[Optional[list[str]], typer.Option("--strategy", help=BENCH_STRATEGY_HELP)] = None,
          pools: Annotated[Optional[list[str]], typer.Option("--pool", help="Pool specs (repeat), e.g. all, experts, 'params<=5e6'.")] = None,
          lr_factors: Annotated[str, typer.Option("--lr-factors", help="Sweep grid around the preset's learning rate; "
                                                  "one factor skips the sweep.")] = "1",
          sweeps: Annotated[int, typer.Option("--sweeps", help="Independent sweeps (paper: 10).")] = 1,
          retrains: Annotated[int, typer.Option("--retrains", help="Retrains per sweep (paper: 3).")] = 1,
          preset: PresetOpt = "cpu", overrides: SetOpt = None, seed: int = 0, device: DeviceOpt = "auto",
          quiet: QuietOpt = False) -> None:
    """Evaluate every strategy and pool on a suite: the oracle fine-tunes every member, each unit is
    a record (a killed run resumes), and DIR/summary.md gets Tables 1-2, regret and compute.
    'expertise bench report DIR' rebuilds the report from the records alone."""
    if ctx.invoked_subcommand is not None:
        return
    from expertise.transfer.protocol import SweepConfig
    from expertise.bench.runner import DEFAULT_POOLS, parse_strategies, run_bench, suite_tasks
    from expertise.errors import ConfigError
    from expertise.upstream.build import world_of_library

    if library is None:
        raise ConfigError("give --library LIB (a library built by 'expertise experts'), or use 'expertise bench report DIR'")
    cfg, dev = _setup(preset, overrides, device)
    lib = _open_library(library)
    tasks = suite_tasks(suite, world_of_library(lib), _resolution(lib), seed)
    sweep = SweepConfig(lr_factors=_floats(lr_factors, "--lr-factors"), sweeps=sweeps, retrains=retrains)
    out.print(f"[bold]expertise bench[/]: {len(tasks)} tasks, preset {cfg.name}, {sweep.num_finetunes} fine-tune(s) per "
              f"member and task, writing to {out_dir}")
    summary = run_bench(lib, tasks, out_dir, cfg.finetune, sweep, parse_strategies(strategies), tuple(pools or DEFAULT_POOLS),
                        RunContext(dev, seed, not quiet, out.print), cfg.embed_batch)
    out.print(summary.read_text(), markup=False, highlight=False)


@bench_app.command("report")
@user_errors
def bench_report(folder: Annotated[Path, typer.Argument(help="A benchmark output folder.")]) -> None:
    """Rebuild summary.md, the plots and records.jsonl from the records in FOLDER."""
    from expertise.bench.runner import write_report

    summary = write_report(folder)
    out.print(summary.read_text(), markup=False, highlight=False)


def _resolution(lib) -> int:
    """Tasks are loaded at the input size of the library's first member."""
    names = lib.names()
    if not names:
        from expertise.errors import LibraryError

        raise LibraryError(f"the library at {lib.path} has no members; run 'expertise upstream --library {lib.path}' first")
    return int(lib.info(names[0]).preprocessing["size"])


@pool_app.command("add")
@user_errors
def pool_add(
    library: LibOpt,
    timm_name: Annotated[Optional[str], typer.Option("--timm", help="timm architecture, e.g. resnet50 (see timm.list_models()).")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help="Weights for --timm: a .safetensors state dict.")] = None,
    pretrained: Annotated[bool, typer.Option("--pretrained", help="timm's own pretrained weights for --timm (needs a network or a warm cache).")] = False,
    hf: Annotated[Optional[str], typer.Option("--hf", help="A Hugging Face timm model: a downloaded folder (config.json + model.safetensors) or a Hub id.")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Member name (default ext.<architecture>).")] = None,
    size: Annotated[Optional[int], typer.Option("--size", help="Input size in pixels (default: the weights' own).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a member of the same name.")] = False,
) -> None:
    """Register an external pre-trained model as a pool member of LIBRARY (created if missing).
    Weights are read from safetensors only; pickled checkpoints are refused."""
    from expertise.library import Library
    from expertise.pool import add_external, load_external

    model, source = load_external(timm_name, checkpoint, hf, pretrained, size)
    lib = Library.create(library, None, exist_ok=True)
    info = add_external(lib, model, source, name, overwrite)
    head = info.extra["upstream_classes"]
    out.print(f"[green]added[/] {info.name}: {info.architecture} from {source.location}, {info.parameters:,} parameters, "
              f"embedding {info.embedding_dim}, input {info.preprocessing['size']} px, "
              + (f"upstream head of {head} classes" if head else "no upstream head"), highlight=False)


@library_app.command("ls")
@user_errors
def library_ls(library: Annotated[Path, typer.Argument(help="Library folder.")]) -> None:
    """List the members of a library: kind, expert domain, upstream images, parameters, embedding
    dimension and upstream holdout accuracy."""
    lib = _open_library(library)
    table = Table(title=f"{library} ({len(lib)} members)")
    table.add_column("name", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("domain", overflow="fold")
    for col in ("images", "params", "dim", "acc"):
        table.add_column(col, justify="right")
    for m in lib.members():
        acc = "" if m.upstream_accuracy is None else f"{m.upstream_accuracy:.3f}"
        table.add_row(m.name, m.kind, m.domain or "", f"{m.upstream_images:,}", f"{m.parameters:,}", str(m.embedding_dim), acc)
    out.print(table)


@library_app.command("verify")
@user_errors
def library_verify(library: Annotated[Path, typer.Argument(help="Library folder.")]) -> None:
    """Check that every member is loadable: each file present, inside the library and matching its
    sha256; each config within its schema and building exactly the tensors stored; the hierarchy and
    upstream settings intact. Removes what interrupted writes left behind when no writer holds the
    library. Exit 1 if anything is wrong."""
    lib = _open_library(library)
    for f in lib.clean():
        out.print(f"removed {f}, left over from an interrupted write", highlight=False)
    problems = lib.verify()
    if problems:
        for p in problems:
            err.print(f"[red]✗[/] {p}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    out.print(f"[green]✓[/] {library}: {len(lib)} members, every one loadable and every file matching its hash")


def main() -> None:
    app(prog_name="expertise")


if __name__ == "__main__":
    sys.exit(main())
