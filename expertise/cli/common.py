"""Shared pieces of the command line: the typer apps, the consoles, the option types and the
one-line error wrapper every command wears."""

from __future__ import annotations

import errno
import functools
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from expertise.errors import ExpertiseError, disk_error

DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Scalable transfer learning with expert models: build a library upstream, select per task, fine-tune.",
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
            kept = getattr(fn, "resumes", None)
            err.print(f"[yellow]interrupted[/]: {kept}; run the same command again to resume" if kept else
                      "[yellow]interrupted[/]: this command does not resume; running it again starts it over")
            raise typer.Exit(130) from None

    return wrapper


def resumes(what: str):
    """Declare (below ``@user_errors``) what a command keeps when interrupted, so that a rerun
    resumes; the interrupt line says it. Undeclared commands say that a rerun starts over."""

    def deco(fn):
        fn.resumes = what
        return fn

    return deco


def setup(preset: str, overrides: list[str] | None, device: str):
    from expertise.config import get_preset, parse_overrides
    from expertise.runtime import configure

    return get_preset(preset, parse_overrides(overrides or [])), configure(device=device)


def open_library(path: Path):
    from expertise.library import Library

    return Library.open(path)


def task_resolution(lib) -> int:
    """Tasks are loaded at the input size of the library's first member."""
    names = lib.names()
    if not names:
        from expertise.errors import LibraryError

        raise LibraryError(f"the library at {lib.path} has no members; run 'expertise upstream --library {lib.path}' first")
    return int(lib.info(names[0]).preprocessing["size"])


def parse_floats(text: str, what: str) -> tuple[float, ...]:
    from expertise.errors import ConfigError

    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{what} takes comma-separated numbers, e.g. 1,0.3,3; got {text!r}") from None
