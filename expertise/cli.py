"""The ``expertise`` command line: one thin function per command, parsing and calling the API.

A user error (:class:`~expertise.errors.ExpertiseError`) prints one line and exits with status 2.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from expertise.errors import ExpertiseError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0] if __doc__ else None,
                  pretty_exceptions_enable=False)
library_app = typer.Typer(no_args_is_help=True, help="Inspect and check a model library.")
app.add_typer(library_app, name="library")
# A terminal gets its own width; piped output (a file, a CI log) is not squeezed into 80 columns.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

PresetOpt = Annotated[str, typer.Option("--preset", help="Scale preset: tiny, cpu or gpu.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a preset field, e.g. --set baseline.steps=500.")]
LibOpt = Annotated[Path, typer.Option("--library", "-l", help="Library folder.")]
TaskOpt = Annotated[str, typer.Option("--task", "-t", help="Built-in task name, 'sklearn_digits', or an ImageFolder directory.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def user_errors(fn):
    """Turn a user error into one red line and exit status 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ExpertiseError as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False)
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
    """Train the baseline B on the preset's embedded upstream world into LIBRARY."""
    from expertise.pipeline import build_library

    cfg, dev = _setup(preset, overrides, device)
    build_library(cfg, library, dev, not quiet, out.print, upstream_only=True)


@app.command()
@user_errors
def experts(library: LibOpt, preset: PresetOpt = "cpu",
            kind: Annotated[str, typer.Option("--kind", help="Expert kind: full.")] = "full",
            num_experts: Annotated[Optional[int], typer.Option("--num-experts", "-k", help="Top-K hierarchy nodes by image count.")] = None,
            overrides: SetOpt = None, device: DeviceOpt = "auto", quiet: QuietOpt = False) -> None:
    """Train full experts (B tuned on the top-K hierarchy nodes' slices); trains B first if missing."""
    from expertise.errors import ConfigError
    from expertise.pipeline import build_library

    if kind != "full":
        raise ConfigError(f"unknown expert kind {kind!r}; this version builds 'full' experts")
    items = list(overrides or []) + ([f"num_experts={num_experts}"] if num_experts is not None else [])
    cfg, dev = _setup(preset, items, device)
    build_library(cfg, library, dev, not quiet, out.print)


@app.command()
@user_errors
def select(library: LibOpt, task: TaskOpt,
           strategy: Annotated[str, typer.Option("--strategy", "-s", help="random, task_agnostic, domain_prediction, "
                                                 "label_matching, proxy or hybrid.")] = "proxy",
           proxy: Annotated[str, typer.Option("--proxy", "-p", help="Proxy of 'proxy' and 'hybrid': knn_loo, knn_val, "
                                              "linear_probe, ridge_loo, logme, hscore, regularized_hscore, leep, nce.")] = "knn_loo",
           budget: Annotated[int, typer.Option("--budget", "-b", help="How many members to pick.")] = 1,
           cache: Annotated[Optional[Path], typer.Option("--cache", help="Embedding cache folder (default LIBRARY/cache).")] = None,
           out_dir: Annotated[Optional[Path], typer.Option("--out", help="Where to write the ranking (JSON) and bar chart (PNG); "
                                                          "default runs/select.")] = None,
           seed: int = 0, device: DeviceOpt = "auto", quiet: QuietOpt = False) -> None:
    """Rank every pool member of LIBRARY for TASK with a strategy; print and save the picks, each
    member's score (table, JSON and a bar chart) and the time each stage took."""
    from expertise.io import atomic_write_json
    from expertise.pipeline import resolve_task, world_of_library
    from expertise.plots import plot_selection
    from expertise.runtime import configure
    from expertise.select.embed import EmbeddingCache
    from expertise.select.run import ranking_table, run_selection

    dev = configure(device=device)
    lib = _open_library(library)
    t = resolve_task(task, _resolution(lib), world_of_library(lib), seed)
    run = run_selection(lib, t, strategy, budget, proxy, EmbeddingCache(cache or library / "cache"), seed=seed,
                        device=dev, progress=not quiet)
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
             quiet: QuietOpt = False) -> None:
    """Fine-tune MEMBER on TASK's 1,000 train+val images with a new head; report test accuracy."""
    from expertise.pipeline import resolve_task, world_of_library
    from expertise.transfer import finetune_and_test

    cfg, dev = _setup(preset, overrides, device)
    lib = _open_library(library)
    model = lib.load(member)
    t = resolve_task(task, _resolution(lib), world_of_library(lib), seed)
    res = finetune_and_test(model, t, cfg.finetune, seed, dev, not quiet)
    out.print(f"{member} on {t.name}: test accuracy [bold]{res.test_accuracy:.3f}[/] "
              f"({res.images} images in {res.train_seconds:.1f}s)")


def _resolution(lib) -> int:
    """Tasks are loaded at the input size of the library's first member."""
    names = lib.names()
    if not names:
        from expertise.errors import LibraryError

        raise LibraryError(f"the library at {lib.path} has no members; run 'expertise upstream --library {lib.path}' first")
    return int(lib.info(names[0]).preprocessing["size"])


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
    """Check every file's sha256 against the manifest; exit 1 if anything changed or is missing."""
    lib = _open_library(library)
    problems = lib.verify()
    if problems:
        for p in problems:
            err.print(f"[red]✗[/] {p}", highlight=False)
        raise typer.Exit(1)
    out.print(f"[green]✓[/] {library}: {len(lib)} members, every file matches its hash")


def main() -> None:
    app(prog_name="expertise")


if __name__ == "__main__":
    sys.exit(main())
