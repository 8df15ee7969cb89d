"""Plans of units and the one driver that runs them on an executor.

A :class:`Plan` is a generator that yields lists of :class:`~expertise.units.spec.UnitSpec` that
may run at the same time, is sent their finished :class:`~expertise.store.Unit` (in the same order)
and returns what it makes of them (a transfer protocol yields its sweep, then its retrains, and
returns the median). :func:`drive` runs many plans at once: a unit already recorded in the store
is read back and never run again, one asked for by two plans runs once, the rest go to the
executor, and only the driver (the coordinator) writes records. A plan moves on as soon as its
own units are done, so on a cluster one member's retrains start while another's sweep still runs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from expertise.progress import progress_bar
from expertise.units.registry import get_kind

if TYPE_CHECKING:
    from expertise.store import RecordStore, Unit, UnitResult
    from expertise.units.context import WorkerContext
    from expertise.units.spec import UnitSpec

Steps = Generator[list["UnitSpec"], list["Unit"], Any]


@dataclass
class Plan:
    """A generator of unit batches (see the module docstring) and how many units it will ask for
    at most (``size``: the progress bar's share; a plan that finds its result recorded asks for none)."""

    steps: Steps
    size: int


def _batch(units: list[UnitSpec]) -> Steps:
    if not units:
        return []
    done = yield units
    return done


def batch_plan(units: list[UnitSpec]) -> Plan:
    """A plan of one batch of independent units; its result is their :class:`~expertise.store.Unit` s, in order."""
    return Plan(_batch(list(units)), len(units))


class Executor(Protocol):
    """Where units run: ``submit`` hands one over (``token`` names it), ``next_done`` blocks until
    one finishes and returns its token and result (its cost measured), ``cancel`` drops what is
    still queued or running. ``unit_progress``: the driver shows one bar over units (False where
    units show their own bars, in this process)."""

    name: str
    unit_progress: bool

    def submit(self, token: int, spec: UnitSpec, ctx: WorkerContext) -> None: ...

    def next_done(self) -> tuple[int, UnitResult]: ...

    def cancel(self) -> None: ...


@dataclass
class _Running:
    plan: Plan
    slots: list[Unit | None]
    outstanding: int = 0
    started: bool = False
    asked: int = 0


def drive(plans: Sequence[Plan], executor: Executor, store: RecordStore, ctx: WorkerContext,
          progress: bool = True, desc: str = "units", log: Callable[[str], None] | None = None) -> list[Any]:
    """Run every plan to its end on ``executor``; returns each plan's result, in order. On an error
    whatever is still queued is cancelled; every unit finished so far is recorded, so a rerun resumes.
    ``log`` gets the lines a finished unit returns (its metrics' ``log``) and, where units run in
    other processes (the executor shows one bar over units), one line per finished unit."""
    running = [_Running(p, []) for p in plans]
    results: list[Any] = [None] * len(plans)
    waiting: dict[int, list[tuple[int, int]]] = {}          # token -> (plan, slot) waiting for it
    token_of: dict[str, int] = {}                            # unit key -> token in flight
    specs: dict[int, tuple[str, UnitSpec]] = {}
    ready: deque[tuple[int, list[Unit] | None]] = deque((i, None) for i in range(len(plans)))
    tokens = iter(range(1 << 62))
    total = sum(p.size for p in plans)
    with progress_bar(desc, total, enabled=progress and executor.unit_progress) as advance:
        try:
            while ready or waiting:
                while ready:
                    i, sent = ready.popleft()
                    run = running[i]
                    try:
                        batch = run.plan.steps.send(sent) if run.started else next(run.plan.steps)
                    except StopIteration as stop:
                        results[i] = stop.value
                        if run.asked < run.plan.size:  # the bar ends full when a plan asked for less
                            advance(run.plan.size - run.asked)
                        continue
                    run.started = True
                    for spec in batch:
                        get_kind(spec.kind)  # an unknown kind fails before any of the batch runs
                    run.slots, run.outstanding = [None] * len(batch), 0
                    for pos, spec in enumerate(batch):
                        run.asked += 1
                        key = store.key(spec.kind, spec.config)
                        done = None if spec.redo else store.finished(spec.kind, spec.config)
                        if done is not None:
                            run.slots[pos] = done
                            advance(1)
                            continue
                        run.outstanding += 1
                        if key in token_of:  # asked for by another plan too: runs once
                            waiting[token_of[key]].append((i, pos))
                            continue
                        token = next(tokens)
                        token_of[key], specs[token], waiting[token] = token, (key, spec), [(i, pos)]
                        executor.submit(token, spec, ctx)
                    if run.outstanding == 0:
                        ready.append((i, run.slots))  # type: ignore[arg-type]
                if not waiting:
                    break
                token, result = executor.next_done()
                key, spec = specs.pop(token)
                del token_of[key]
                unit = store.record_result(spec.kind, spec.config, result, 0.0)
                if log is not None:
                    _tell(log, spec, unit, executor.unit_progress)
                for i, pos in waiting.pop(token):
                    run = running[i]
                    run.slots[pos] = unit
                    run.outstanding -= 1
                    advance(1)
                    if run.outstanding == 0:
                        ready.append((i, run.slots))  # type: ignore[arg-type]
        except BaseException:
            executor.cancel()
            raise
    return results


def _tell(log: Callable[[str], None], spec: UnitSpec, unit: Unit, each: bool) -> None:
    """What a finished unit says: its own lines, and (``each``) one line that it finished."""
    if each:
        log(f"done: {spec.describe()} in {unit.total_seconds:.1f}s")
    lines = unit.metrics.get("log")
    for line in lines if isinstance(lines, list) else []:
        log(str(line))
