"""Members written by a worker and committed by the coordinator: the library's manifest has one
writer.

A unit of work that trains members on another process or machine (``expertise experts --executor
ray``) writes them, complete, into its own folder ``LIBRARY/.staged/<unit>/``: ``members/<name>/``
as :meth:`Library.add` would write it, for an adapter bank also ``adapters/<bank>.*``, and last
``staged.json`` (the members' manifest entries, with each file's sha256). The folder is written
under a temporary name and renamed into place, so a worker killed mid-write leaves no half folder
under that name (a retried unit replaces what an earlier try left). The coordinator then
:func:`commit` s it: under the writer lock it checks every file against its sha256 and every config
against the tensors it builds, moves the folders in and rewrites the manifest, in one
:class:`~expertise.library.transaction.Transaction`. ``.staged`` is not a leftover of an
interrupted write (the lock's cleanup keeps it): a staged unit survives the coordinator's crash and
is committed by the next run, and :func:`discard` removes it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from expertise.errors import ConfigError, LibraryError, disk_error
from expertise.io import atomic_write_json, sha256_file
from expertise.library import banks, checks, member_files
from expertise.library.manifest import ADAPTERS, CONFIG, MEMBERS, WEIGHTS, MemberInfo, bank_of, files_digest
from expertise.library.transaction import Transaction
from expertise.store import UNITS

if TYPE_CHECKING:
    from expertise.library.core import Library
    from expertise.models.adapters import AdapterBank

STAGED = ".staged"  # LIBRARY/.staged/<unit>/: members written by workers, waiting for the coordinator
STAGED_FILE = "staged.json"
FORMAT = 1


def folder(library: Path, unit: str) -> Path:
    """Where the unit named ``unit`` (``<kind>.<digest>``) stages its members."""
    return Path(library) / STAGED / unit


@contextlib.contextmanager
def writing(final: Path) -> Iterator[Path]:
    """A new empty folder that becomes ``final`` (replacing what an earlier try left there) when
    the block finishes; removed when it fails."""
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.writing")
    try:
        tmp.mkdir(parents=True)
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as e:
        raise disk_error(e, final) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_entries(into: Path, infos: Sequence[MemberInfo]) -> None:
    atomic_write_json(into / STAGED_FILE, {"format": FORMAT, "members": [i.to_json() for i in infos]})


def stage_member(lib: Library, into: Path, info: MemberInfo, model: nn.Module,
                 label_prior: torch.Tensor | None = None) -> MemberInfo:
    """Write ``model`` as member ``info.name`` of ``lib`` into the staging folder ``into`` (from
    :func:`writing`), with its manifest entry; nothing of ``lib`` changes."""
    info, config, state, prior = lib.prepare(info, model, label_prior)
    info = replace(info, files=member_files.write_member(into / MEMBERS / info.name, info.name, config, state, prior))
    _write_entries(into, [info])
    return info


def stage_bank(lib: Library, into: Path, bank: AdapterBank, parent: str, members: dict[str, MemberInfo],
               label_priors: dict[str, torch.Tensor], bank_name: str) -> list[MemberInfo]:
    """Write an adapter bank trained on ``lib``'s member ``parent`` (checked by the caller against
    the hash it was planned with) and its experts into the staging folder ``into``."""
    prep = banks.prepare_bank(lib, bank, parent, members, label_priors, bank_name)
    infos = banks.write_bank(prep, into / ADAPTERS, {n: into / MEMBERS / n for n in prep.members},
                             files_digest(lib.info(parent).files))
    _write_entries(into, list(infos.values()))
    return list(infos.values())


def entries(staged: Path) -> list[MemberInfo]:
    """The manifest entries a staging folder holds, checked; one line when it is incomplete."""
    f = staged / STAGED_FILE
    if not f.is_file():
        raise LibraryError(f"{staged} holds no finished unit ({STAGED_FILE} is missing); delete it and run again")
    data = checks.read_json(f, "a staged unit", f"delete {staged} and run again")
    try:
        if data.get("format") != FORMAT:
            raise ConfigError(f"format {data.get('format')!r}, expected {FORMAT}")
        listed = data.get("members")
        if not isinstance(listed, list) or not listed:
            raise ConfigError("it lists no members")
    except ConfigError as e:
        raise LibraryError(f"{f} is not a staged unit ({e}); delete {staged} and run again") from None
    return [MemberInfo.from_json(d) for d in listed]


def _check_files(staged: Path, info: MemberInfo) -> None:
    """Every file the entry lists is in the staging folder with its sha256, and the config builds
    exactly the tensors stored."""
    for fname, digest in info.files.items():
        f = staged / fname if fname.startswith(f"{ADAPTERS}/") else staged / MEMBERS / info.name / fname
        if not f.is_file() or sha256_file(f) != digest:
            raise LibraryError(f"staged member {info.name!r}: {f} is missing or not the file the worker wrote; "
                               f"delete {staged} and run again")
    if bank_of(info) is None:
        where = staged / MEMBERS / info.name
        expected = checks.expected_shapes(checks.read_config(where / CONFIG), where / CONFIG)
        checks.match_shapes(info.name, expected, checks.header_shapes(where / WEIGHTS, info.name))


def commit(lib: Library, staged: Path, overwrite: bool = False) -> list[MemberInfo]:
    """Move the members staged in ``staged`` into ``lib`` and record them in its manifest, in one
    transaction under the writer lock; the staging folder is gone afterwards. Plain members must be
    new (or ``overwrite``); a bank replaces the bank of its name, and its backbone must still be
    the one it was trained on."""
    infos = entries(staged)
    for info in infos:
        _check_files(staged, info)
    with lib.writing():
        if all(bank_of(i) is None for i in infos):
            taken = [i.name for i in infos if i.name in lib and not overwrite]
            if taken:
                raise LibraryError(f"the library already has members {taken}; delete {staged} (another builder stored them)")
            with Transaction() as tx:
                for i in infos:
                    tx.put(staged / MEMBERS / i.name, lib.member_dir(i.name))
                tx.commit(lambda: lib.write_manifest({**lib.entries(), **{i.name: i for i in infos}}))
        else:
            parents = {i.parent for i in infos}
            hashes = {i.extra.get("parent_hash") for i in infos}
            banks_named = {bank_of(i) for i in infos}
            if len(parents) != 1 or len(hashes) != 1 or len(banks_named) != 1 or None in banks_named:
                raise LibraryError(f"{staged} mixes members of several banks; delete it and run again")
            parent, bank_path = parents.pop(), str(banks_named.pop())
            if parent is None or parent not in lib or files_digest(lib.info(parent).files) != hashes.pop():
                raise LibraryError(f"the backbone {parent!r} of the adapter bank staged in {staged} changed since it "
                                   "was trained; delete that folder and run again")
            bank_name = Path(bank_path).stem
            old = banks.check_target(lib, [i.name for i in infos], bank_name, parent, overwrite=True)
            banks.commit_bank(lib, {i.name: i for i in infos}, staged / ADAPTERS,
                              {i.name: staged / MEMBERS / i.name for i in infos}, old)
        discard(staged)
        banks.prune(lib)
    return infos


def pending(library: Path) -> list[tuple[Path, str]]:
    """What waits in ``LIBRARY/.staged``, one (folder, what it is) per entry, for ``library
    verify``: a finished unit names its members (the next build with the same settings commits
    it); a folder without a readable ``staged.json`` or a ``.writing`` folder is what a killed
    worker left (the next try of that unit replaces it)."""
    root = Path(library) / STAGED
    if not root.is_dir():
        return []
    out = []
    for d in sorted(root.iterdir()):
        if d.name == UNITS:  # the records of finished units (a RecordStore), not a unit
            continue
        if d.name.endswith(".writing"):
            out.append((d, "left by a worker killed while writing it"))
            continue
        try:
            names = ", ".join(i.name for i in entries(d))
        except (LibraryError, OSError):
            out.append((d, "an unfinished or unreadable unit"))
            continue
        out.append((d, f"members {names}, waiting for the coordinator to commit them"))
    return out


def discard(staged: Path) -> None:
    """Remove a staging folder (and ``.staged`` once empty)."""
    shutil.rmtree(staged, ignore_errors=True)
    with contextlib.suppress(OSError):
        staged.parent.rmdir()
