"""The entry point of a unit on a Ray worker: plain JSON in (the spec and how to run it), plain
JSON out (the unit's metrics and cost). Everything else the unit needs it rebuilds from the spec
(:mod:`expertise.units.context`); what it built stays for the worker's next unit."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from expertise.units.context import WorkerContext

# A test hook: with this set to a folder, the first unit that finds the file ARMED there (holding its
# kind, or nothing for any kind) renames it to FIRED and kills its worker process after doing its work
# but before handing the result back, as a machine lost mid-unit would. Ray then retries the unit.
KILL_ENV = "EXPERTISE_TEST_KILL_WORKER"
ARMED, FIRED = "armed", "fired"

_contexts: dict[tuple[str, int], WorkerContext] = {}


def run_context(settings: dict[str, Any]) -> WorkerContext:
    """This worker's context for ``settings`` (device type, threads, progress), made once per
    process; torch's and the BLAS libraries' threads are set for the unit."""
    from threadpoolctl import threadpool_limits

    device, threads = str(settings.get("device", "cpu")), max(1, int(settings.get("threads", 1)))
    torch.set_num_threads(threads)
    threadpool_limits(threads)
    key = (device, 0)
    if key not in _contexts:  # one per device: what it rebuilt serves every thread count
        _contexts[key] = WorkerContext(torch.device(device), progress=False)
    ctx = _contexts[key]
    ctx.progress = bool(settings.get("progress", False))
    return ctx


def _kill_if_armed(kind: str) -> None:
    folder = os.environ.get(KILL_ENV)
    if not folder:
        return
    try:
        wanted = (Path(folder) / ARMED).read_text().strip()
        if wanted and wanted != kind:
            return
        os.rename(Path(folder) / ARMED, Path(folder) / FIRED)  # atomic: exactly one unit fires
    except OSError:
        return
    os._exit(17)


def run_unit_json(spec_json: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """Run the unit ``spec_json`` (:meth:`UnitSpec.to_json`) here; its result as plain JSON."""
    from expertise.units.executors import timed
    from expertise.units.spec import UnitSpec

    spec = UnitSpec.from_json(spec_json)
    module, known = settings.get("module"), settings.get("known")  # where the coordinator's kind was registered
    out = timed(spec, run_context(settings), module if isinstance(module, str) else None,
                [str(k) for k in known] if isinstance(known, list) else None)
    _kill_if_armed(spec.kind)
    return {"metrics": out.metrics, "images": out.images, "seconds": out.seconds}
