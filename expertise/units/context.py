"""What a unit runs with on a worker: the device, the progress flag, and everything its spec names,
rebuilt from the spec (a library by its folder, a task by :func:`~expertise.units.spec.task_ref`, a
member by name) and checked against the content hashes in the spec's config. Rebuilt objects are
kept for the next unit of the same process (a Ray worker runs many), so a library is opened and a
task rendered once per worker, not once per unit. The local executor hands the coordinator's own
library and tasks in (:meth:`WorkerContext.seed_with`), so running in-process rebuilds nothing."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from expertise.errors import ConfigError, LibraryError

if TYPE_CHECKING:
    from torch import nn

    from expertise.data.tasks import Task
    from expertise.library import Library

MEMBERS_KEPT = 2  # loaded members a worker keeps for its next units (fine-tunes copy them, never change them)


def library_key(path: Path | str) -> str:
    """A library's folder as specs name it: absolute, so a worker in another folder finds it."""
    return str(Path(path).resolve())


@dataclass
class WorkerContext:
    """The device and progress flag units run with, and the objects rebuilt from their specs."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: bool = False
    _libraries: dict[str, Library] = field(default_factory=dict)
    _worlds: dict[str, Any] = field(default_factory=dict)
    _tasks: dict[str, Task] = field(default_factory=dict)
    _members: OrderedDict[tuple[str, str, str], nn.Module] = field(default_factory=OrderedDict)
    _objects: dict[Any, Any] = field(default_factory=dict)

    def seed_with(self, libraries: Iterable[Library] = (), tasks: Iterable[Task] = ()) -> WorkerContext:
        """Hand in live objects (the coordinator's), found by folder and fingerprint instead of rebuilt."""
        for lib in libraries:
            self._libraries[library_key(lib.path)] = lib
        for task in tasks:
            self._tasks[task.fingerprint()] = task
        return self

    def cached(self, key: Any, make: Callable[[], Any]) -> Any:
        """Anything else a kind rebuilds from a spec (an upstream world's splits), made once per
        process under ``key``; :meth:`seed_object` hands the coordinator's in."""
        if key not in self._objects:
            self._objects[key] = make()
        return self._objects[key]

    def seed_object(self, key: Any, obj: Any) -> WorkerContext:
        self._objects[key] = obj
        return self

    def library(self, inputs: Mapping[str, Any]) -> Library:
        from expertise.library import Library

        path = inputs.get("library")
        if not isinstance(path, str):
            raise ConfigError("this unit's spec names no library folder (inputs.library)")
        key = library_key(path)
        if key not in self._libraries:
            self._libraries[key] = Library.open(Path(path))
        return self._libraries[key]

    def task(self, inputs: Mapping[str, Any], lib: Library) -> Task:
        from expertise.units.spec import load_task_ref

        ref = inputs.get("task")
        if not isinstance(ref, Mapping) or "fingerprint" not in ref:
            raise ConfigError("this unit's spec names no task (inputs.task, from expertise.units.spec.task_ref)")
        fingerprint = str(ref["fingerprint"])
        if fingerprint not in self._tasks:
            self._tasks[fingerprint] = load_task_ref(ref, self.world(lib))
        return self._tasks[fingerprint]

    def world(self, lib: Library) -> Any:
        from expertise.library.upstream_meta import world_of_library

        key = library_key(lib.path)
        if key not in self._worlds:
            self._worlds[key] = world_of_library(lib)
        return self._worlds[key]

    def check_member(self, lib: Library, name: str, member_hash: str) -> None:
        """The member ``name`` of ``lib`` is the one the spec names by hash (the library read again
        first when it is not: the coordinator may have committed it since this process opened it)."""
        if name not in lib or lib.member_hash(name) != member_hash:
            lib.refresh()
        found = lib.verified_hash(name)
        if found != member_hash:
            raise LibraryError(f"member {name!r} of {lib.path} is not the one this unit was planned with (its weights "
                               "changed); every worker must see the same library: rerun to plan again")

    def member(self, lib: Library, name: str, member_hash: str) -> nn.Module:
        """The member, checked against its hash, loaded once for the next units of this process."""
        key = (library_key(lib.path), name, member_hash)
        if key in self._members:
            self._members.move_to_end(key)
            return self._members[key]
        self.check_member(lib, name, member_hash)
        model = lib.load(name)
        self._members[key] = model
        while len(self._members) > MEMBERS_KEPT:
            self._members.popitem(last=False)
        return model
