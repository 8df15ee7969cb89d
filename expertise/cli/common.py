"""Shared pieces of the command line: the typer apps, the consoles, the option types, the one-line
error wrapper every command wears, the run log of commands that write an output folder, and the
one-line format of warnings."""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import sys
import time
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from expertise.errors import DiskError, ConfigError, ExpertiseError, disk_error

DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def one_paragraph(text: str) -> str:
    """Help text with each paragraph on one line: docstrings are wrapped in the source, and rich help
    keeps single line breaks, which shows them as ragged lines."""
    return "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(text).split("\n\n"))


class _Help:
    """Help as users should see it: prose reflowed (:func:`one_paragraph`), and no value type shown
    for a flag (typer prints ``<bool>`` beside ``--quiet`` and ``--help``, which take no value)."""

    help: str | None
    params: list[Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.help:
            self.help = one_paragraph(self.help)

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for p in params:
            if getattr(p, "is_flag", False) and p.metavar is None:
                p.metavar = ""
        return params


class Command(_Help, TyperCommand):
    pass


class Group(_Help, TyperGroup):
    pass


class Typer(typer.Typer):
    """A typer app whose commands and groups show help the way :class:`_Help` says."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cls", Group)
        super().__init__(**kwargs)

    def command(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        kwargs.setdefault("cls", Command)
        return super().command(*args, **kwargs)


app = Typer(add_completion=False, no_args_is_help=True,
            help="Scalable transfer learning with expert models: build a library upstream, select per task, fine-tune.",
            pretty_exceptions_enable=False)
library_app = Typer(no_args_is_help=True, help="Inspect and check a model library.")
app.add_typer(library_app, name="library")
pool_app = Typer(no_args_is_help=True, help="Add external pre-trained models (timm, Hugging Face, checkpoints) to a library.")
app.add_typer(pool_app, name="pool")
records_app = Typer(no_args_is_help=True, help="The unit records of an output folder.")
app.add_typer(records_app, name="records")
bench_app = Typer(short_help="Benchmark selection strategies and pools on a suite of tasks (oracle, regret, compute).")
app.add_typer(bench_app, name="bench")
# A terminal gets its own width; piped output (a file, a CI log) is not squeezed into 80 columns.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

def _registry_help() -> tuple[str, str, str]:
    """Option help from the strategy and proxy registries, so a new entry shows up here by itself."""
    from expertise.select.proxy_registry import PROXIES
    from expertise.select.registry import STRATEGIES, default_rows, proxy_strategies

    proxied = proxy_strategies()
    return (f"Selection strategy: {', '.join(STRATEGIES)}.",
            f"Proxy of {' and '.join(proxied)}: {', '.join(PROXIES)}.",
            f"Strategy rows (repeat; default all): {', '.join(r.label for r, _ in default_rows())}, "
            f"or {' / '.join(f'{n}:PROXY' for n in proxied)}.")


STRATEGY_HELP, PROXY_HELP, BENCH_STRATEGY_HELP = _registry_help()
StrategyOpt = Annotated[str, typer.Option("--strategy", "-s", help=STRATEGY_HELP)]
ProxyOpt = Annotated[str, typer.Option("--proxy", "-p", help=PROXY_HELP)]
PresetOpt = Annotated[str, typer.Option("--preset", help="Scale preset: cpu (two cores, minutes), gpu, or tiny "
                                         "(seconds; near-chance models, for tests and smoke runs).")]


def _set(example: str) -> Any:
    """A ``--set`` option with an example of a field the command uses."""
    return typer.Option("--set", metavar="FIELD=VALUE", help=f"Override a preset field (repeat), e.g. --set {example}.")


SetOpt = Annotated[Optional[list[str]], _set("baseline.steps=500")]             # demo, upstream: they build B
ExpertSetOpt = Annotated[Optional[list[str]], _set("expert.steps=300")]
FinetuneSetOpt = Annotated[Optional[list[str]], _set("finetune.steps=200")]    # finetune, transfer, bench
DatSetOpt = Annotated[Optional[list[str]], _set("baseline.steps=1000")]        # DAT pre-trains as long as B
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed of the run: the task's 800/200 split and every random "
                                      "stream (batches, new heads, random selection) derive from it.")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", help="CPU threads for torch (default: OMP_NUM_THREADS when "
                                                   "set, else the cores this process may use). Fewer can be faster when "
                                                   "other work shares the cores.")]
ExecutorOpt = Annotated[str, typer.Option("--executor", help="Where the units of work run: local (this machine, --jobs "
                                           "at a time) or ray (Ray tasks on the cluster at --ray-address or RAY_ADDRESS, "
                                           "else on a local Ray of --ray-cpus CPUs); the records are the same.")]
JobsOpt = Annotated[Optional[int], typer.Option("--jobs", "-j", help="Units of work (experts, embeddings, fine-tunes) "
                                             "run at once on this machine, each in a worker process of --threads threads "
                                             "(default: the cores shared among the jobs); default: the cores this process "
                                             "may use (or EXPERTISE_JOBS); 1 runs them in this process, one after another.")]
RayAddressOpt = Annotated[Optional[str], typer.Option("--ray-address", help="The Ray cluster of --executor ray: HOST:PORT of "
                                                      "its head (default: RAY_ADDRESS; unset: start a local Ray).")]
RayCpusOpt = Annotated[Optional[int], typer.Option("--ray-cpus", help="CPUs of the local Ray that --executor ray starts when "
                                                   "no cluster is given (default: every core); one unit a CPU.")]
LibOpt = Annotated[Path, typer.Option("--library", "-l", help="Library folder.")]
TaskOpt = Annotated[str, typer.Option("--task", "-t", help="Built-in task name, 'sklearn_digits', or an ImageFolder directory.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when there is a GPU, else the CPU), cpu, cuda or cuda:N.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress (bars on a terminal, plain lines elsewhere).")]
SkipOpt = Annotated[bool, typer.Option("--skip-corrupt", help="Skip unreadable images of an ImageFolder task (with a warning).")]
MaxSideOpt = Annotated[int, typer.Option("--max-side", help="Longer side (pixels) an ImageFolder task's images are kept at; "
                                         "larger ones are shrunk. Each member resizes and crops them by its own "
                                         "preprocessing.")]


def user_errors(fn):
    """Turn a user error into one red line and exit status 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with contextlib.ExitStack() as scope:  # what a command opens for its duration (its run log)
                token = _COMMAND_SCOPE.set(scope)
                try:
                    return fn(*args, **kwargs)
                finally:
                    _COMMAND_SCOPE.reset(token)
        except ExpertiseError as e:
            message = str(e)
            if isinstance(e, DiskError) and getattr(fn, "rerun", None):  # this command's own way to resume
                message = message.replace("run the same command again", fn.rerun)
            err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except OSError as e:  # a disk error our writers did not wrap (a folder made by a library call)
            if e.errno not in DISK_ERRNOS:
                raise
            err.print(f"[bold red]error:[/] {escape(str(disk_error(e)))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            kept, rerun = getattr(fn, "resumes", None), getattr(fn, "rerun", "run the same command again to resume")
            err.print(f"[yellow]interrupted[/]: {kept}; {rerun}" if kept else
                      "[yellow]interrupted[/]: this command does not resume; running it again starts it over")
            raise typer.Exit(130) from None

    return wrapper


_COMMAND_SCOPE: ContextVar[contextlib.ExitStack | None] = ContextVar("expertise_command_scope", default=None)

TINY_WARNING = ("preset tiny: its models are near chance (B's upstream accuracy is about 0.08); it is meant for "
                "tests and smoke runs. Use --preset cpu (or gpu) for results")


def resumes(what: str, rerun: str = "run the same command again to resume"):
    """Declare (below ``@user_errors``) what a command keeps when interrupted, so that a rerun
    resumes, and how to rerun it; the interrupt line says it. Undeclared commands say that a rerun
    starts over."""

    def deco(fn):
        fn.resumes, fn.rerun = what, rerun
        return fn

    return deco


def setup(preset: str, overrides: list[str] | None, device: str, threads: int | None = None,
          data_parallel: bool = False):
    """The preset with its overrides, and the device, with the thread count applied; every value is
    checked before any work starts. Under torchrun a ``data_parallel`` command joins the process
    group (the device is then this rank's, :func:`expertise.distributed.init`); any other command
    is refused in one line."""
    import warnings

    from expertise import distributed
    from expertise.config import get_preset, parse_overrides
    from expertise.runtime import configure

    cfg = get_preset(preset, parse_overrides(overrides or []))
    if distributed.launched():
        if not data_parallel:
            raise ConfigError("this command runs in one process: launch it without torchrun (expertise upstream and "
                              "expertise experts --kind full train data-parallel under torchrun)")
        configure(threads, "cpu")  # the thread count; the device is the rank's
        dev = distributed.init(device)
    else:
        dev = configure(threads, device)
    if cfg.name == "tiny" and distributed.is_main():
        warnings.warn(TINY_WARNING, UserWarning, stacklevel=2)
    return cfg, dev


def run_log(folder: Path) -> Callable[[str], None]:
    """The log of a command that writes to FOLDER: prints each message as before and appends it,
    with the time, to FOLDER/log.txt; until the command ends, progress goes there too as plain lines
    (at most one every ``progress.PLAIN_INTERVAL_S`` seconds per stage, and each stage's last)."""
    from expertise.progress import log_progress_to

    path = folder / "log.txt"

    def append(line: str) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
        except OSError as e:
            raise disk_error(e, path) from None

    scope = _COMMAND_SCOPE.get()
    if scope is not None:
        scope.enter_context(log_progress_to(append))

    def log(message: str) -> None:
        out.print(message)
        append(Text.from_markup(message).plain)

    return log


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: Any = None, line: str | None = None) -> None:
    """``warnings.showwarning`` for the command line: one line, ``warning: MESSAGE``, without the
    source file, line and category Python prints by default."""
    text = " ".join(str(message).split())
    if file is not None:
        file.write(f"warning: {text}\n")
    else:
        err.print(f"[yellow]warning:[/] {escape(text)}", highlight=False, soft_wrap=True)


def print_version(value: bool) -> None:
    if not value:
        return
    import importlib.metadata
    import platform

    import torch

    try:
        version = importlib.metadata.version("expertise")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        from expertise import __version__ as version
    out.print(f"expertise {version} (torch {torch.__version__}, Python {platform.python_version()})", highlight=False)
    raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", help="Print the version of expertise and exit.",
                                                callback=print_version, is_eager=True)] = False) -> None:
    pass


def open_library(path: Path):
    from expertise.library import Library

    return Library.open(path)


def task_resolution(lib, world=None) -> int:
    """The resolution built-in tasks (scikit-learn's digits) are rendered at: the library's world's
    (our experts' input size), else the largest input size of its members. ImageFolder tasks are
    kept at their source resolution instead, and each member resizes them itself."""
    names = lib.names()
    if not names:
        from expertise.errors import LibraryError

        raise LibraryError(f"the library at {lib.path} has no members; run 'expertise upstream --library {lib.path}' first")
    if world is not None:
        return int(world.cfg.resolution)
    return max(int(lib.info(n).preprocessing["size"]) for n in names)


def load_cli_task(lib, task: str, seed: int, skip_corrupt: bool, max_side: int, world=None):
    """TASK of a command: a world task of the library's world, scikit-learn's digits at
    :func:`task_resolution`, or an ImageFolder at its source resolution capped at ``max_side``."""
    from expertise.data.loaders import load_task
    from expertise.library.upstream_meta import world_of_library

    world = world if world is not None else world_of_library(lib)
    return load_task(task, seed=seed, world=world, skip_corrupt=skip_corrupt, max_side=max_side,
                     builtin_resolution=task_resolution(lib, world))


def parse_floats(text: str, what: str) -> tuple[float, ...]:
    from expertise.errors import ConfigError

    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{what} takes comma-separated numbers, e.g. 1,0.3,3; got {text!r}") from None


def units_executor(name: str, ray_address: str | None, ray_cpus: int | None, jobs: int, threads: int, quiet: bool):
    """The executor a command's units run on (a context: its workers stop when it closes), from the
    options :func:`expertise.cli.checks.jobs` and :func:`~expertise.cli.checks.executor` checked."""
    import expertise.wiring  # noqa: F401  every built-in unit kind, before any is planned or named
    from expertise.units import open_executor

    return open_executor(name, ray_address, ray_cpus, jobs=jobs, threads=threads, progress=not quiet)
