"""The one registry of unit kinds: each kind's ``execute(spec, ctx)`` and the resources a unit of it
takes on a cluster. The coordinator and every worker look kinds up here; an unknown kind is one line
that names the known ones (a worker of another version, a typo in a hand-written spec)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from expertise.errors import ConfigError

if TYPE_CHECKING:
    from expertise.store import UnitResult
    from expertise.units.context import WorkerContext
    from expertise.units.spec import UnitSpec

Execute = Callable[["UnitSpec", "WorkerContext"], "UnitResult"]


@dataclass(frozen=True)
class UnitKind:
    """A kind of unit: its name (the record kind), what runs one, and what one takes on a cluster:
    ``num_cpus`` (also its torch threads there) and, when the run's device is CUDA, ``num_gpus``
    (a fraction lets light units share a GPU). A ``wide`` unit is one that the others wait for (B,
    which every expert starts from): the local executor runs it alone, on every worker's threads."""

    name: str
    execute: Execute
    num_cpus: float = 1.0
    num_gpus: float = 1.0
    help: str = ""
    wide: bool = False

    def resources(self, device_type: str) -> dict[str, float]:
        """Ray's resource request of one unit on a run whose device is ``device_type``."""
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus if device_type == "cuda" else 0.0}


KINDS: dict[str, UnitKind] = {}
_BUILTIN = "expertise.units.kinds"  # registers the built-in kinds when imported


def register_kind(kind: UnitKind, replace: bool = False) -> UnitKind:
    if kind.name in KINDS and not replace and KINDS[kind.name] is not kind:
        raise ConfigError(f"unit kind {kind.name!r} is registered already")
    KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> UnitKind:
    """The registered kind ``name``; one line naming every known kind otherwise."""
    import importlib

    importlib.import_module(_BUILTIN)
    if name not in KINDS:
        raise ConfigError(f"unknown unit kind {name!r}; this version of expertise knows {', '.join(sorted(KINDS))} "
                          "(run the coordinator and its workers on the same version)")
    return KINDS[name]


def execute(spec: UnitSpec, ctx: WorkerContext) -> UnitResult:
    """Run one unit here: its kind's ``execute``."""
    return get_kind(spec.kind).execute(spec, ctx)
