"""Executors: where a plan's units run. ``local`` runs them on this machine: with one job one after
another in this process (:class:`LocalExecutor`), with ``--jobs N`` N at a time in worker processes
(:class:`~expertise.units.processes.ProcessExecutor`); ``ray`` runs them as Ray tasks
(:mod:`expertise.units.ray_executor`, imported only when asked for)."""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING

from expertise.errors import ConfigError
from expertise.store import UnitResult
from expertise.units.registry import execute, get_kind

if TYPE_CHECKING:
    from expertise.units.context import WorkerContext
    from expertise.units.plan import Executor
    from expertise.units.spec import UnitSpec

EXECUTORS = ("local", "ray")


def timed(spec: UnitSpec, ctx: WorkerContext, module: str | None = None, known: list[str] | None = None) -> UnitResult:
    """Run one unit (its kind registered by ``module`` where this process does not know it yet;
    ``known``: the coordinator's kinds, for the message when it cannot) and fill in its wall time
    when its kind measured none."""
    t0 = time.perf_counter()
    out = execute(spec, ctx, module, known)
    if not isinstance(out, UnitResult):
        raise ConfigError(f"unit kind {spec.kind!r} returned {type(out).__name__}; an execute must return a UnitResult")
    if out.seconds is None:
        out = UnitResult(out.metrics, out.images, time.perf_counter() - t0)
    return out


class LocalExecutor:
    """Units run in this process, in the order submitted, each with its own progress bar."""

    name = "local"
    unit_progress = False

    def __init__(self) -> None:
        self._queue: deque[tuple[int, UnitSpec, WorkerContext]] = deque()

    def submit(self, token: int, spec: UnitSpec, ctx: WorkerContext) -> None:
        get_kind(spec.kind)
        self._queue.append((token, spec, ctx))

    def next_done(self) -> tuple[int, UnitResult]:
        token, spec, ctx = self._queue.popleft()
        return token, timed(spec, ctx)

    def cancel(self) -> None:
        self._queue.clear()

    def close(self) -> None:
        self._queue.clear()


def ray_address(address: str | None) -> str | None:
    """The Ray cluster to connect to: ``--ray-address``, else ``RAY_ADDRESS``, else None (start one)."""
    return address or os.environ.get("RAY_ADDRESS") or None


@contextlib.contextmanager
def open_executor(name: str = "local", address: str | None = None, workers: int | None = None, jobs: int = 1,
                  threads: int = 1, progress: bool = True) -> Iterator[Executor]:
    """The executor ``name`` for one run, closed (its worker processes stopped, a Ray started for it
    shut down) at the end. ``local`` runs ``jobs`` units at a time (1: in this process, with the
    threads torch has; more: in worker processes of ``threads`` threads each, showing their progress
    when ``progress``); ``ray`` connects to ``address`` (else ``RAY_ADDRESS``) or starts a local Ray
    with ``workers`` CPUs."""
    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor {name!r}; choose {' or '.join(EXECUTORS)}")
    if name == "local" and jobs > 1:
        from expertise.units.processes import ProcessExecutor

        executor: LocalExecutor | object = ProcessExecutor(jobs, threads, progress)
    elif name == "local":
        executor = LocalExecutor()
    else:
        from expertise.units.ray_executor import RayExecutor

        executor = RayExecutor(ray_address(address), workers)
    try:
        yield executor  # type: ignore[misc]
    finally:
        executor.close()  # type: ignore[attr-defined]
