"""Progress on long work. On a terminal (or in Jupyter): a rich bar with the latest loss. Anywhere
else (output redirected to a file, a CI log): plain lines, at most one every ``PLAIN_INTERVAL_S``
seconds and a last one when the work ends, each with the stage, steps done, rate, time left and the
latest loss. A run's log file (:func:`log_progress_to`) gets the same plain lines. ``EXPERTISE_PROGRESS=0``
(as in tests) or ``enabled=False`` (``--quiet``) turns all of it off."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)

# Seconds between two plain progress lines of one bar (a redirected stderr, a log file).
PLAIN_INTERVAL_S = 15.0
# Extra writers of plain progress lines for the current run (its log file); see log_progress_to.
_sinks: list[Callable[[str], None]] = []


def enabled_by_default() -> bool:
    return os.environ.get("EXPERTISE_PROGRESS", "1") != "0"


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``: a short duration for progress lines."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class PlainProgress:
    """Plain progress lines for one stage of ``total`` steps, written through ``write``: one when at
    least ``interval`` seconds (default ``PLAIN_INTERVAL_S``) passed since the stage began or the last line, and one when it ends."""

    def __init__(self, desc: str, total: int, write: Callable[[str], None], interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.desc, self.total, self.write, self.clock = desc, total, write, clock
        self.interval = PLAIN_INTERVAL_S if interval is None else interval
        self.start = self.last = clock()
        self.done = 0
        self.fields: dict[str, float] = {}

    def _info(self) -> str:
        return "".join(f", {k} {v:.3f}" for k, v in self.fields.items())

    def advance(self, n: int = 1, **fields: float) -> None:
        self.done += n
        self.fields.update(fields)
        now = self.clock()
        if self.done < self.total and now - self.last >= self.interval:
            self.last = now
            elapsed = now - self.start
            rate = self.done / elapsed if elapsed > 0 else 0.0
            eta = duration((self.total - self.done) / rate) if rate > 0 else "?"
            self.write(f"{self.desc}: {self.done}/{self.total} ({100 * self.done // max(self.total, 1)}%), "
                       f"{rate:.3g}/s, {duration(elapsed)} elapsed, eta {eta}{self._info()}")

    def finish(self) -> None:
        elapsed = self.clock() - self.start
        rate = f" ({self.done / elapsed:.3g}/s)" if elapsed > 0 else ""
        self.write(f"{self.desc}: {self.done}/{self.total} done in {duration(elapsed)}{rate}{self._info()}")


@contextmanager
def log_progress_to(write: Callable[[str], None]) -> Iterator[None]:
    """While open, every enabled progress bar also writes its plain lines through ``write`` (a run's
    log file), at the plain rate, whether or not stderr is a terminal."""
    _sinks.append(write)
    try:
        yield
    finally:
        _sinks.remove(write)


def _plain_line(text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


@contextmanager
def progress_bar(desc: str, total: int, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """Yields ``advance(n, **fields)``: a rich bar on a terminal, plain lines elsewhere, plus the plain
    lines in the run's log file when one is open."""
    if not (enabled and enabled_by_default()):
        yield lambda n=1, **kw: None
        return
    fancy = console.is_terminal or console.is_jupyter
    plain = [PlainProgress(desc, total, w) for w in ([] if fancy else [_plain_line]) + _sinks]

    def advance_plain(n: int = 1, **fields: float) -> None:
        for p in plain:
            p.advance(n, **fields)

    if fancy:
        columns = (
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        )
        with Progress(*columns, console=console, transient=False) as prog:
            task = prog.add_task(desc, total=total, info="")

            def advance(n: int = 1, **fields: float) -> None:
                prog.update(task, advance=n, info=" ".join(f"{k} {v:.3f}" for k, v in fields.items()))
                advance_plain(n, **fields)

            yield advance
    else:
        yield advance_plain
    for p in plain:  # not reached when the work raised
        p.finish()
