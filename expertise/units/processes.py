"""The local executor's worker processes: ``--jobs N`` runs N units at a time on this machine.

Each worker is a process of a :class:`concurrent.futures.ProcessPoolExecutor` (started from a fork
server that imported expertise once, so a worker starts in a fraction of a second and shares
nothing live with the coordinator) and runs units exactly as a Ray worker does
(:func:`expertise.units.worker.run_unit_json`: the spec in, plain JSON out; the library, world and
task rebuilt from the spec and kept for its next units). The coordinator alone writes records and
commits to the library.

- **Threads.** Every unit runs with ``threads`` torch (and BLAS) threads, so its floating-point
  results depend on that setting, never on timing. One thread per worker is the default because it
  holds up beside other work: a unit on two threads beside one busy process waits at every parallel
  region for its descheduled thread (B took over 6 times its idle time there), one on one thread
  loses at most its share of the cores.
- **Order.** Units start in the order submitted, as workers free up; the driver hands results to
  its plans as they finish.
- **The coordinator's death** (killed, out of memory) ends the workers too: each watches it and
  exits when it is gone, so no orphan keeps training.
- **Progress.** Workers forward their bars (:func:`expertise.progress.forward_to`), shown here as
  rows under the driver's bar, so a long unit on a worker is never silent.
- **A worker that dies** (killed, out of memory) breaks the pool: a new one is started and every
  unit that was running is submitted again, up to ``MAX_TRIES`` times each; finished units are kept.
- **Ctrl-C** (or any error): :meth:`ProcessExecutor.cancel` kills the workers at once; what finished
  is recorded, so the same command resumes.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections import deque
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from expertise.errors import ConfigError, ExpertiseError
from expertise.progress import RemoteBars, forward_to
from expertise.store import UnitResult
from expertise.units.registry import KINDS, get_kind

if TYPE_CHECKING:
    from expertise.units.context import WorkerContext
    from expertise.units.spec import UnitSpec

MAX_TRIES = 4          # a unit whose worker died is run again, up to this many tries in all
POLL_S = 0.2           # how often the coordinator looks at the workers' progress while it waits
PRELOAD = ["expertise.units.worker"]  # what the fork server imports once for every worker


def _init_worker(events: Any, progress: bool, env: dict[str, str], coordinator: int) -> None:
    """A worker's start: the coordinator's ``EXPERTISE_*`` settings (the fork server started with
    the environment of its time), Ctrl-C left to the coordinator (it kills the workers), bars sent
    to it, and a watch on it: the worker exits when the coordinator is gone."""
    os.environ.update(env)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if progress:
        forward_to(events.put)
    threading.Thread(target=_watch, args=(coordinator,), daemon=True, name="expertise-watch").start()


def _watch(coordinator: int, every_s: float = 1.0) -> None:
    while True:
        time.sleep(every_s)
        try:
            os.kill(coordinator, 0)
        except ProcessLookupError:
            os._exit(3)
        except PermissionError:  # alive, under another user (cannot happen for our own parent): keep going
            pass


def _run(spec_json: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    from expertise.units.worker import run_unit_json

    return run_unit_json(spec_json, settings)


def _result(out: dict[str, Any]) -> UnitResult:
    return UnitResult(out["metrics"], out["images"], out["seconds"])


@dataclass
class _Queued:
    token: int
    spec: UnitSpec
    settings: dict[str, Any]
    tries: int = 0


class ProcessExecutor:
    """Units in ``jobs`` worker processes of ``threads`` threads each (see the module docstring).
    The pool starts with the first unit, so a run whose units are all recorded starts no process."""

    name = "local"
    unit_progress = True

    def __init__(self, jobs: int, threads: int = 1, progress: bool = True, max_tries: int = MAX_TRIES) -> None:
        if jobs < 2:
            raise ConfigError(f"a pool of worker processes needs at least 2 jobs, got {jobs}; one job runs in this process")
        self.jobs, self.threads, self.progress, self.max_tries = jobs, max(1, threads), progress, max_tries
        self._pool: cf.ProcessPoolExecutor | None = None
        self._events: Any = None
        self._bars = RemoteBars(progress)
        self._queue: deque[_Queued] = deque()
        self._running: dict[cf.Future, _Queued] = {}
        self._finished: deque[tuple[int, UnitResult]] = deque()  # results kept when a broken pool was replaced

    # -- the pool ---------------------------------------------------------------------------------
    def _start(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            ctx = mp.get_context("forkserver")
            ctx.set_forkserver_preload(PRELOAD)
            if self._events is None:
                self._events = ctx.Queue()
            env = {k: v for k, v in os.environ.items() if k.startswith("EXPERTISE_")}
            self._pool = cf.ProcessPoolExecutor(self.jobs, mp_context=ctx, initializer=_init_worker,
                                                initargs=(self._events, self.progress, env, os.getpid()))
        return self._pool

    def _kill(self) -> None:
        """Stop every worker now (a unit may be halfway: its record is not written, so it runs again)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        for proc in list(getattr(pool, "_processes", {}).values()):  # the pool has no public way to kill them
            try:
                proc.kill()
            except (OSError, AttributeError):
                pass
        pool.shutdown(wait=True, cancel_futures=True)

    # -- the executor protocol --------------------------------------------------------------------
    def submit(self, token: int, spec: UnitSpec, ctx: WorkerContext) -> None:
        kind = get_kind(spec.kind)
        settings = {"device": ctx.device.type, "threads": self.threads, "progress": self.progress,
                    "module": kind.module, "known": KINDS.names()}  # imported by the worker when new to it
        self._queue.append(_Queued(token, spec, settings))

    def _dispatch(self) -> None:
        while self._queue and len(self._running) < self.jobs:
            unit = self._queue.popleft()
            try:
                fut = self._start().submit(_run, unit.spec.to_json(), unit.settings)
            except BrokenProcessPool:  # a worker died before its unit's future said so
                self._queue.appendleft(unit)
                self._retry(None)
                continue
            unit.tries += 1
            self._running[fut] = unit

    def _drain_events(self) -> None:
        if self._events is None:
            return
        while True:
            try:
                event = self._events.get_nowait()
            except (queue.Empty, OSError, EOFError, ValueError):
                return
            self._bars.handle(event)

    def next_done(self) -> tuple[int, UnitResult]:
        while True:
            if self._finished:
                return self._finished.popleft()
            self._dispatch()
            if not self._running:
                raise RuntimeError("next_done with no unit submitted")
            done, _ = cf.wait(list(self._running), timeout=POLL_S, return_when=cf.FIRST_COMPLETED)
            self._drain_events()
            if not done:
                continue
            fut = min(done, key=lambda f: self._running[f].token)
            unit = self._running.pop(fut)
            try:
                out = fut.result()
            except BrokenProcessPool:
                self._retry(unit)
                continue
            return unit.token, _result(out)

    def _retry(self, broken: _Queued | None) -> None:
        """A worker died: the units that finished are kept, every other unit that was running goes
        back to the front of the queue, in order, for a new pool."""
        again = [] if broken is None else [broken]
        for fut, unit in self._running.items():
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._finished.append((unit.token, _result(fut.result())))
            else:
                again.append(unit)
        again.sort(key=lambda u: u.token)
        self._running.clear()
        self._kill()
        self._bars.close_all()
        failed = next((u for u in again if u.tries >= self.max_tries), None)
        if failed is not None:
            raise ExpertiseError(f"unit {failed.spec.describe()} did not finish after {failed.tries} tries: a worker "
                                 "process died each time (out of memory? see dmesg); finished units are kept, run the "
                                 "same command again with fewer --jobs to resume")
        self._queue.extendleft(reversed(again))

    def cancel(self) -> None:
        self._queue.clear()
        self._finished.clear()
        self._running.clear()
        self._kill()
        self._drain_events()
        self._bars.close_all()

    def close(self) -> None:
        self._queue.clear()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        self._drain_events()
        self._bars.close_all()
        if self._events is not None:
            self._events.close()
            self._events = None


JOBS_ENV = "EXPERTISE_JOBS"   # the default of --jobs, where set (the tests set 1)
WORKER_BASE_BYTES = 700 << 20  # a worker with torch and expertise imported, a model training at 32 px (measured)


def resolve_jobs(jobs: int | None, threads: int | None) -> tuple[int, int]:
    """(units at once, threads each) of the local executor: ``jobs`` (default ``EXPERTISE_JOBS``,
    else the cores this process may use, :func:`expertise.runtime.default_threads`, divided by
    ``threads``) and ``threads`` (default: those cores shared among the jobs, at least 1). One job
    runs in this process with every core torch was given."""
    from expertise.runtime import default_threads

    if jobs is None:
        env = os.environ.get(JOBS_ENV, "").strip()
        if env:
            if not env.isdigit() or int(env) < 1:
                raise ConfigError(f"{JOBS_ENV}={env!r}: give a whole number of jobs, at least 1")
            jobs = int(env)
    cores = default_threads()
    if jobs is None:
        jobs = max(1, cores // (threads or 1))
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: give at least 1 (1 runs the units in this process, one after another; "
                          f"default: the cores this process may use, here {cores})")
    return jobs, threads or max(1, cores // jobs)


def available_memory() -> int | None:
    """Bytes this machine can still give (``MemAvailable``), None where it does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def worker_memory(preset: Any | None) -> int:
    """Bytes one worker takes, estimated from the preset: the process itself and its model
    (``WORKER_BASE_BYTES``) and the upstream world it renders (train and holdout images, uint8),
    which an upstream unit keeps for its next ones."""
    if preset is None:
        return WORKER_BASE_BYTES
    w = preset.world
    return WORKER_BASE_BYTES + (w.upstream_size + w.holdout_size) * 3 * w.resolution ** 2


def check_memory(jobs: int, preset: Any | None, available: int | None = None) -> None:
    """One line when ``jobs`` workers would not fit in the memory this machine has left."""
    if jobs < 2:
        return
    free = available_memory() if available is None else available
    need = worker_memory(preset)
    if free is not None and jobs * need > free:
        fit = max(1, free // need)
        what = f"the {preset.name} preset's" if preset is not None else "a"
        raise ConfigError(f"--jobs {jobs}: each worker needs about {need / 2**30:.1f} GB ({what} upstream images, "
                          f"torch and a model), {jobs * need / 2**30:.1f} GB in all, but {free / 2**30:.1f} GB is "
                          f"available: {fit} fit{'s' if fit == 1 else ''}; pass --jobs {fit}")
