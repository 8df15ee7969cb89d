"""Progress on long work. On a terminal (or in Jupyter): a rich bar with the latest loss. Anywhere
else (output redirected to a file, a CI log): plain lines, at most one every ``PLAIN_INTERVAL_S``
seconds and a last one when the work ends, each with the stage, steps done, rate, time left and the
latest loss. A run's log file (:func:`log_progress_to`) gets the same plain lines. ``EXPERTISE_PROGRESS=0``
(as in tests) or ``enabled=False`` (``--quiet``) turns all of it off.

Bars nest: a bar opened while another is live on the terminal is a row of the same display (rich
shows one live display at a time), removed when it ends. In a worker process of the local
executor, bars are forwarded (:func:`forward_to`) to the coordinator, which shows them as such rows
(:class:`RemoteBars`), so a long unit on a worker is never silent."""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)

# Seconds between two plain progress lines of one bar (a redirected stderr, a log file).
PLAIN_INTERVAL_S = 15.0
# Extra writers of plain progress lines for the current run (its log file); see log_progress_to.
_sinks: list[Callable[[str], None]] = []
# Seconds between two forwarded updates of one bar (a worker's bars, sent to the coordinator).
FORWARD_INTERVAL_S = 0.5
_live: Progress | None = None  # the terminal's live display, which nested bars join as rows
_forward: Callable[[tuple[Any, ...]], None] | None = None  # set in a worker process: bars go to the coordinator
_bar_ids = itertools.count()


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


def forward_to(send: Callable[[tuple[Any, ...]], None] | None) -> None:
    """In a worker process: every enabled bar from now on is sent through ``send`` as events
    (``("open", id, desc, total)``, ``("advance", id, n, fields)`` at most every
    ``FORWARD_INTERVAL_S`` per bar, ``("close", id)``) instead of being shown; None stops it."""
    global _forward
    _forward = send


@contextmanager
def _forwarded(desc: str, total: int, send: Callable[[tuple[Any, ...]], None]) -> Iterator[Callable[..., None]]:
    bar = (os.getpid(), next(_bar_ids))
    send(("open", bar, desc, total))
    pending = [0, {}, time.monotonic()]

    def flush() -> None:
        if pending[0]:
            send(("advance", bar, pending[0], dict(pending[1])))
            pending[0] = 0

    def advance(n: int = 1, **fields: float) -> None:
        pending[0] += n
        pending[1].update(fields)
        now = time.monotonic()
        if now - pending[2] >= FORWARD_INTERVAL_S:
            pending[2] = now
            flush()

    try:
        yield advance
    finally:
        flush()
        send(("close", bar))


@contextmanager
def progress_bar(desc: str, total: int, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """Yields ``advance(n, **fields)``: a rich bar on a terminal, plain lines elsewhere, plus the plain
    lines in the run's log file when one is open. Opened while another bar is live, it is a row of
    that bar's display (removed when it ends); in a worker process it is forwarded to the coordinator."""
    global _live
    if not (enabled and enabled_by_default()):
        yield lambda n=1, **kw: None
        return
    if _forward is not None:
        with _forwarded(desc, total, _forward) as advance:
            yield advance
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
        with contextlib.ExitStack() as stack:
            nested = _live is not None
            if nested:
                prog = _live
            else:
                prog = _live = stack.enter_context(Progress(*columns, console=console, transient=False))
                stack.callback(_clear_live)
            task = prog.add_task(desc, total=total, info="")  # type: ignore[union-attr]
            if nested:
                stack.callback(prog.remove_task, task)  # type: ignore[union-attr]

            def advance(n: int = 1, **fields: float) -> None:
                prog.update(task, advance=n, info=" ".join(f"{k} {v:.3f}" for k, v in fields.items()))  # type: ignore[union-attr]
                advance_plain(n, **fields)

            yield advance
    else:
        yield advance_plain
    for p in plain:  # not reached when the work raised
        p.finish()


def _clear_live() -> None:
    global _live
    _live = None


class RemoteBars:
    """The coordinator's side of :func:`forward_to`: each forwarded bar shown as a bar here (a row of
    the live display, or plain lines), until its worker closes it or :meth:`close_all`."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._bars: dict[Any, tuple[contextlib.ExitStack, Callable[..., None]]] = {}

    def handle(self, event: tuple[Any, ...]) -> None:
        what, bar = event[0], event[1]
        if what == "open":
            stack = contextlib.ExitStack()
            self._bars[bar] = (stack, stack.enter_context(progress_bar(str(event[2]), int(event[3]), self.enabled)))
        elif what == "advance" and bar in self._bars:
            self._bars[bar][1](int(event[2]), **event[3])
        elif what == "close" and bar in self._bars:
            self._bars.pop(bar)[0].close()

    def close_all(self) -> None:
        """Every bar still open (its worker died or was stopped) ends here."""
        for stack, _ in self._bars.values():
            stack.close()
        self._bars.clear()
