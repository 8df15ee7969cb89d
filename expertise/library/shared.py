"""A library that every rank of a torchrun job builds into and rank 0 alone writes.

In a data-parallel build (``torchrun -m expertise upstream``) every rank runs the same build plan and
trains each member together (:func:`expertise.train.fit` shards the batches); only rank 0 may touch
the library. :func:`shared_library` creates or opens it on rank 0 and then on the others;
:class:`SharedLibrary` makes the plan's claims collective (rank 0 claims, waiting for other builders
as a lone process does, and tells every rank whether to build) and its writes rank 0's alone. In one
process, :func:`shared_library` returns the plain :class:`Library` and nothing changes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from expertise import distributed
from expertise.errors import LibraryError
from expertise.library.core import Library
from expertise.library.manifest import MemberInfo
from expertise.models.adapters import AdapterBank

_FAILED = -1  # what rank 0 broadcasts when it could not claim or open the library: the others stop too


class SharedLibrary(Library):
    """A :class:`Library` of a torchrun job: claims are decided by rank 0 for every rank (a rank told
    that a member is already built re-reads the manifest, so it can load it), and ``add``,
    ``add_adapter_bank``, ``write_meta`` and ``remove`` write on rank 0 only (elsewhere they return
    what they were given)."""

    @contextlib.contextmanager  # type: ignore[override]
    def claim(self, name: str, log: Callable[[str], None] = print, done: Callable[[], bool] | None = None,
              poll_s: float = 2.0) -> Iterator[bool]:
        if not distributed.is_main():
            flag = distributed.broadcast_int(0)
            if flag == _FAILED:
                raise LibraryError(f"rank 0 could not claim {name!r} in {self.path} (its error is above); fix it and rerun")
            if not flag:
                self.refresh()
            yield bool(flag)
            return
        with contextlib.ExitStack() as stack:
            try:
                build = stack.enter_context(Library.claim(self, name, log, done, poll_s))
            except BaseException:
                distributed.broadcast_int(_FAILED)
                raise
            distributed.broadcast_int(int(build))
            yield build

    def add(self, info: MemberInfo, model: nn.Module, label_prior: torch.Tensor | None = None,
            overwrite: bool = False) -> MemberInfo:
        return super().add(info, model, label_prior, overwrite) if distributed.is_main() else info

    def add_adapter_bank(self, bank: AdapterBank, parent: str, members: Mapping[str, MemberInfo],
                         label_priors: Mapping[str, torch.Tensor] | None = None, bank_name: str = "bank",
                         overwrite: bool = False) -> list[MemberInfo]:
        if distributed.is_main():
            return super().add_adapter_bank(bank, parent, members, label_priors, bank_name, overwrite)
        return list(members.values())

    def commit_staged(self, folder: Path) -> list[MemberInfo]:
        """Rank 0 commits what it staged; the others wait for it and read the manifest again."""
        infos = super().commit_staged(folder) if distributed.is_main() else []
        distributed.barrier()
        if not distributed.is_main():
            self.refresh()
        return infos

    def write_meta(self, fname: str, data: dict[str, Any]) -> None:
        if distributed.is_main():
            super().write_meta(fname, data)

    def remove(self, name: str) -> None:
        if distributed.is_main():
            super().remove(name)


def shared_library(path: Path, make: Callable[[], Library]) -> Library:
    """``make()``: create or open the library at ``path`` (it may check and write it). Under torchrun
    rank 0 runs it while the others wait, then every rank opens it as a :class:`SharedLibrary`; an
    error on rank 0 stops the other ranks with a line that points to it."""
    if distributed.world() == 1:
        return make()
    if distributed.is_main():
        try:
            make()
        except BaseException:
            distributed.broadcast_int(_FAILED)
            raise
        distributed.broadcast_int(1)
    elif distributed.broadcast_int(0) == _FAILED:
        raise LibraryError(f"rank 0 could not open the library at {path} (its error is above)")
    return SharedLibrary.open(path)
