"""The registry of unit kinds: each kind's ``execute(spec, ctx)`` and the resources a unit of it
takes. Every stage registers its kinds beside its code (``upstream/units.py``, ``transfer/units.py``,
``bench/units.py``, ``dat/units.py``), so whoever plans a unit has its kind; a worker process
imports the module a kind was registered in (the executor sends it with the unit) when it does not
know the kind yet. An unknown kind is one line that names the known ones (a worker of another
version, a typo in a hand-written spec)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from expertise.errors import ConfigError
from expertise.registry import Registry

if TYPE_CHECKING:
    from expertise.store import UnitResult
    from expertise.units.context import WorkerContext
    from expertise.units.spec import UnitSpec

Execute = Callable[["UnitSpec", "WorkerContext"], "UnitResult"]


@dataclass(frozen=True)
class UnitKind:
    """A kind of unit: its name (the record kind), what runs one, and what one takes on a cluster:
    ``num_cpus`` (also its torch threads there) and, when the run's device is CUDA, ``num_gpus``
    (a fraction lets light units share a GPU)."""

    name: str
    execute: Execute
    num_cpus: float = 1.0
    num_gpus: float = 1.0
    help: str = ""

    def resources(self, device_type: str) -> dict[str, float]:
        """Ray's resource request of one unit on a run whose device is ``device_type``."""
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus if device_type == "cuda" else 0.0}

    @property
    def module(self) -> str:
        """The module that registers this kind (a worker imports it to know the kind)."""
        return self.execute.__module__


KINDS: Registry[UnitKind] = Registry("unit kind", hint="run the coordinator and its workers on the same version")


def register_kind(kind: UnitKind, replace: bool = False) -> UnitKind:
    return KINDS.register(kind.name, kind, replace)


def get_kind(name: str, module: str | None = None, known: list[str] | None = None) -> UnitKind:
    """The registered kind ``name``, after importing ``module`` (the one it was registered in on the
    coordinator) when it is not known here yet; one line naming every known kind otherwise (on a
    worker: ``known``, the kinds the coordinator knows)."""
    if name in KINDS or not module:
        return KINDS.get(name)
    try:
        importlib.import_module(module)
    except ImportError as e:
        theirs = f"the coordinator knows {', '.join(known)}; " if known else ""
        raise ConfigError(f"unknown unit kind {name!r} on this worker: it cannot import {module!r}, where the coordinator "
                          f"registered it ({e}); {theirs}run the coordinator and its workers on the same version of "
                          "expertise and of the code that registers the kind") from None
    return KINDS.get(name)


def execute(spec: UnitSpec, ctx: WorkerContext, module: str | None = None, known: list[str] | None = None) -> UnitResult:
    """Run one unit here: its kind's ``execute``."""
    return get_kind(spec.kind, module, known).execute(spec, ctx)
