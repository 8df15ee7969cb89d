"""A unit of work as plain data: what a worker needs to run it, and nothing live.

A :class:`UnitSpec` is JSON through and through:

- ``kind``: the unit kind (a name in :mod:`expertise.units.registry`, also the record's kind);
- ``config``: the unit's identity, exactly the config its record is keyed by in the
  :class:`~expertise.store.RecordStore` (``DIR/units/<kind>.<digest>.json``). It names its inputs by
  content hash (a member's weight hash, a task's data fingerprint) and holds the settings and the
  seed the unit's random streams derive from;
- ``inputs``: where a worker finds those inputs: the library folder, the task (:func:`task_ref`), the
  embedding cache. A worker rebuilds each and checks it against the hash in ``config`` before running
  anything, so a worker that sees another library or other images refuses instead of recording a
  wrong result. Inputs are not part of the identity: a library moved to another path keeps its units;
- ``options``: how to run it, also outside the identity: batch size, a folder to keep a model in, and
  ``redo`` (run it although it is recorded, because something it makes besides its record is wanted).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from expertise.errors import ConfigError

if TYPE_CHECKING:
    from expertise.data.tasks import Task

SPEC_FORMAT = 1
TASK_SOURCES_BY_NAME = ("world", "sklearn")  # tasks rebuilt from their name; any other source is a folder


def _plain(value: Any, what: str) -> Any:
    """``value`` as it reads back from JSON; one line when it is not plain JSON."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"a unit's {what} must be plain JSON (no NaN, tensors or objects): {e}") from None


@dataclass(frozen=True)
class UnitSpec:
    """One unit of work as plain data (see the module docstring)."""

    kind: str
    config: dict[str, Any]
    inputs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not self.kind:
            raise ConfigError(f"a unit spec needs a kind (a name), got {self.kind!r}")
        for name in ("config", "inputs", "options"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise ConfigError(f"a unit's {name} must be a JSON object, got {type(value).__name__}")
            object.__setattr__(self, name, _plain(dict(value), name))

    @property
    def redo(self) -> bool:
        return bool(self.options.get("redo", False))

    def to_json(self) -> dict[str, Any]:
        return {"format": SPEC_FORMAT, "kind": self.kind, "config": self.config, "inputs": self.inputs,
                "options": self.options}

    @classmethod
    def from_json(cls, data: Any) -> UnitSpec:
        if not isinstance(data, Mapping) or data.get("format") != SPEC_FORMAT:
            raise ConfigError(f"not a unit spec of format {SPEC_FORMAT}; the coordinator and its workers must run "
                              "the same version of expertise")
        unknown = sorted(set(data) - {"format", "kind", "config", "inputs", "options"})
        if unknown:
            raise ConfigError(f"a unit spec has unknown fields {unknown}")
        return cls(data.get("kind"), data.get("config", {}), data.get("inputs", {}), data.get("options", {}))

    def describe(self) -> str:
        """A short name for messages: the kind and what it is about."""
        c = self.config
        about = [str(c[k]) for k in ("member", "task", "strategy", "pool", "phase") if k in c]
        return f"{self.kind} ({', '.join(about)})" if about else self.kind


def task_ref(task: Task, seed: int, skip_corrupt: bool = False) -> dict[str, Any]:
    """How a worker rebuilds ``task`` (loaded with ``seed``): its source, name, resolution and seed,
    and its fingerprint, which the rebuilt task must match."""
    return {"source": task.source, "name": task.name, "group": task.group, "resolution": task.resolution,
            "max_side": task.max_side, "seed": int(seed), "skip_corrupt": bool(skip_corrupt),
            "fingerprint": task.fingerprint()}


def load_task_ref(ref: Mapping[str, Any], world: Any) -> Task:
    """The task a :func:`task_ref` names, rebuilt here and checked against its fingerprint."""
    from expertise.data.loaders import load_image_folder, load_task

    try:
        source, name, fingerprint = str(ref["source"]), str(ref["name"]), str(ref["fingerprint"])
        resolution, seed = int(ref["resolution"]), int(ref["seed"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"a unit's task reference needs source, name, resolution, seed and fingerprint; got {ref!r}") from None
    if source == "world":
        task = load_task(name, resolution, seed, world)
    elif source == "sklearn":
        task = load_task(name, resolution, seed)
    else:
        from pathlib import Path

        max_side = ref.get("max_side")  # set: read at the source resolution, capped; else resized to resolution
        task = load_image_folder(Path(source), None if max_side is not None else resolution, seed,
                                 group=str(ref.get("group", "natural")), name=name,
                                 skip_corrupt=bool(ref.get("skip_corrupt", False)),
                                 **({"max_side": int(max_side)} if max_side is not None else {}))
    if task.fingerprint() != fingerprint:
        raise ConfigError(f"task {name!r} rebuilt on this worker is not the coordinator's (its images or labels differ); "
                          f"every worker must see the same task files and library")
    return task
