"""Progress bars on long work (rich), silenced in tests and when output is not a terminal-like
stream the user wants (``EXPERTISE_PROGRESS=0``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


def enabled_by_default() -> bool:
    return os.environ.get("EXPERTISE_PROGRESS", "1") != "0"


@contextmanager
def progress_bar(desc: str, total: int, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """Yields ``advance(n, **fields)``; shows a bar with the latest loss when enabled."""
    if not (enabled and enabled_by_default()):
        yield lambda n=1, **kw: None
        return
    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as prog:
        task = prog.add_task(desc, total=total, info="")

        def advance(n: int = 1, **fields: float) -> None:
            info = " ".join(f"{k} {v:.3f}" for k, v in fields.items())
            prog.update(task, advance=n, info=info)

        yield advance
