"""The :class:`Library` facade: open or create a library, read members, load them, verify, add and
remove; see :mod:`expertise.library` for the layout on disk."""

from __future__ import annotations

import contextlib
import difflib
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from expertise.data.hierarchy import Hierarchy
from expertise.errors import DiskError, LibraryError, disk_error
from expertise.io import atomic_write_json, sha256_file
from expertise.library import banks, checks, locking, member_files, top_files
from expertise.library.manifest import (
    BANK_FILE, CONFIG, HIERARCHY, LOCK, MANIFEST, MEMBERS, STAGING, TOP_FILES,
    WEIGHTS, Manifest, MemberInfo, bank_of, check_name, files_digest,
)
from expertise.library.admission import check_prior, complete_info, shareless_state_dict
from expertise.library.transaction import Transaction
from expertise.library.verify import verify
from expertise.models.adapters import AdapterBank


class Library:
    """A folder of pool members with a manifest; see :mod:`expertise.library` for the layout."""

    def __init__(self, path: Path, hierarchy: Hierarchy | None, members: dict[str, MemberInfo],
                 top_files: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        self.hierarchy = hierarchy
        self._members = members
        self._top_files = top_files
        self._verified: dict[str, str] = {}  # member -> its hash, once its files verified in this process

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, hierarchy: Hierarchy | None, exist_ok: bool = False) -> Library:
        """Make a new, empty library at ``path`` (created if needed). With ``exist_ok`` an existing
        library is opened instead, provided its hierarchy is the same one."""
        path = Path(path)
        if (path / MANIFEST).exists():
            if not exist_ok:
                raise LibraryError(f"{path} is already a model library; open it with Library.open or pass exist_ok=True")
            lib = cls.open(path)
            if hierarchy is not None and (lib.hierarchy is None or lib.hierarchy.to_json() != hierarchy.to_json()):
                raise LibraryError(f"the library at {path} was built on a different hierarchy; use a new folder")
            return lib
        if path.exists() and not path.is_dir():
            raise LibraryError(f"{path} is a file, not a folder; choose another library path")
        if (path / MEMBERS).exists():
            raise LibraryError(f"{path} has a members/ folder but no {MANIFEST}: a damaged library? restore it or use a new folder")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise disk_error(e, path) from None
        lib = cls(path, hierarchy, {}, {})
        with lib.writing():
            if hierarchy is not None:
                hierarchy.save(path / HIERARCHY)
                lib._top_files = {HIERARCHY: sha256_file(path / HIERARCHY)}
            lib.write_manifest()  # last: its presence is what makes the folder a library
        return lib

    @classmethod
    def open(cls, path: Path) -> Library:
        path = Path(path)
        if not path.exists():
            raise LibraryError(f"no model library at {path}; check the path or build one (expertise upstream / expertise experts)")
        if not path.is_dir():
            raise LibraryError(f"{path} is a file, not a model library folder; pass the library folder")
        if not (path / MANIFEST).exists():
            raise LibraryError(f"{path} is not a model library (no {MANIFEST}); pass a folder made by Library.create")
        manifest = Manifest.read(path)
        lib = cls(path, None, manifest.members, manifest.files)
        lib.hierarchy = lib.read_hierarchy()
        return lib

    def read_hierarchy(self) -> Hierarchy | None:
        """``hierarchy.json``, checked against its recorded sha256 (None when the library has none)."""
        return top_files.read_hierarchy(self, self._top_files)

    def read_meta(self, fname: str) -> dict[str, Any] | None:
        """A top-level JSON file (``upstream.json``), checked against its recorded sha256; None
        when the library has none."""
        if fname not in TOP_FILES:
            raise ValueError(f"{fname!r} is not a top-level library file; use one of {TOP_FILES}")
        f = top_files.check_top_file(self, fname, self._top_files)
        return None if f is None else checks.read_json(f, "a library metadata file", "restore it from a backup")

    def write_meta(self, fname: str, data: dict[str, Any]) -> None:
        """Write a top-level JSON file and record its sha256 in the manifest, under the lock."""
        if fname not in TOP_FILES or fname == HIERARCHY:
            raise ValueError(f"{fname!r} is not a metadata file; use one of {TOP_FILES[1:]}")
        with self.writing():
            atomic_write_json(self.path / fname, data)
            self._top_files = {**(self._top_files or {}), fname: sha256_file(self.path / fname)}
            self.write_manifest()

    def refresh(self) -> None:
        """Re-read the manifest, e.g. after another process added members."""
        manifest = Manifest.read(self.path)
        self._members, self._top_files, self._verified = manifest.members, manifest.files, {}

    # -- reading ---------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Member names in manifest (insertion) order."""
        return list(self._members)

    def members(self) -> list[MemberInfo]:
        return list(self._members.values())

    def __contains__(self, name: object) -> bool:
        return name in self._members

    def __len__(self) -> int:
        return len(self._members)

    def __repr__(self) -> str:
        return f"Library({str(self.path)!r}, {len(self)} members)"

    def info(self, name: str) -> MemberInfo:
        if name not in self._members:
            known = self.names()
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            listing = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "") if known else "none"
            raise LibraryError(f"no member {name!r} in the library at {self.path}{hint} (members: {listing})")
        return self._members[name]

    def member_dir(self, name: str) -> Path:
        return self.path / MEMBERS / check_name(name)

    def member_hash(self, name: str) -> str:
        """16 hex digits over the member's file hashes: a key that changes whenever a file does
        (and is the same for two members with identical files). Unverified: use
        :meth:`verified_hash` for a key under which results computed from the member are reused.

        Adapter experts of one bank list the same bank files, so their hash also covers the member's
        name, its node and its parent's file hashes: distinct experts never share cache entries, and
        retraining the bank or replacing the backbone invalidates them."""
        info = self.info(name)
        if bank_of(info) is None:
            return files_digest(info.files)
        parent = self._members.get(info.parent) if info.parent is not None else None
        parent_digest = files_digest(parent.files) if parent is not None else "missing"
        return files_digest(info.files, f"member:{name}\nnode:{info.extra.get('node')}\nparent:{info.parent}:{parent_digest}\n")

    def verified_hash(self, name: str) -> str:
        """:meth:`member_hash` after checking the member's files against it, once per process (per
        handle): cached embeddings and records keyed by it are never used for a member whose files
        fail verification."""
        if name not in self._verified:
            self.check_member(name)
            self._verified[name] = self.member_hash(name)
        return self._verified[name]

    def file_path(self, name: str, fname: str) -> Path | None:
        """Where a file listed in a member's manifest entry lives: its own folder for a plain name, the
        library root for a bank file (``adapters/...``); None for anything else (a hand-edited
        manifest must not point outside the library)."""
        if BANK_FILE.fullmatch(fname):
            return self.path / fname
        if not fname or "/" in fname or "\\" in fname or fname in (".", ".."):
            return None
        return self.member_dir(name) / fname

    def problems(self, name: str) -> list[str]:
        """What is wrong with one member's files; [] when intact (see :func:`member_files.problems`)."""
        return member_files.problems(self, name)

    def check_member(self, name: str) -> None:
        """Every file of member ``name`` is the one its manifest entry's sha256 names (a one-line error otherwise)."""
        member_files.check_intact(self, name)

    def config(self, name: str) -> dict[str, Any]:
        return checks.read_config(self.member_dir(name) / CONFIG)

    def check_loadable(self, name: str) -> dict[str, Any]:
        """The member's config, after checking from the safetensors headers alone that it builds
        exactly the tensors stored (see :func:`member_files.check_loadable`)."""
        return member_files.check_loadable(self, name)

    def load(self, name: str, verify: bool = True) -> nn.Module:
        """The member rebuilt from config.json with its weights loaded strictly, in eval mode.
        ``verify`` first checks the sha256 of each of the member's files; the config and the
        weights' shapes are always checked before anything is allocated."""
        from expertise.models.backbones import model_from_config

        info = self.info(name)  # unknown names fail here, with a did-you-mean
        if verify:
            self.check_member(name)
        cfg = self.check_loadable(name)
        model = model_from_config(cfg)
        bank = bank_of(info)
        state = self.load_tensors(self.member_dir(name) / WEIGHTS, name) if bank is None else \
            banks.expert_state(self, name, info, bank, verify)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()
            raise LibraryError(f"member {name!r}: weights do not match its config ({' '.join(first[:3])}); re-create the member") from None
        return model.eval()

    def load_adapter_bank(self, bank: str = "bank", verify: bool = True) -> AdapterBank:
        """The whole bank as one :class:`AdapterBank` (see :func:`expertise.library.banks.load_bank`)."""
        return banks.load_bank(self, bank, verify)

    def label_prior(self, name: str) -> torch.Tensor | None:
        """float64 [num_label_nodes], or None when the member has no label prior. Always verified."""
        return member_files.label_prior(self, name)

    load_tensors = staticmethod(member_files.load_tensors)  # a safetensors file's tensors, checked: for the library's writers

    def clean(self) -> list[Path]:
        """Remove what interrupted writes left behind (temporary files, staging folders) and return
        it; nothing when a live writer holds the library (its files are in use) or it is read-only."""
        found = checks.leftovers(self.path)
        if found:
            with contextlib.suppress(LibraryError, DiskError):
                with self.writing(wait_s=0):  # taking the lock removes what dead writers left
                    pass
        return [f for f in found if not f.exists()]

    def verify(self) -> list[str]:
        """Every problem found, one line each; [] when every member is loadable (see
        :func:`expertise.library.checks.verify`). :meth:`clean` removes leftovers of interrupted writes."""
        return verify(self)

    # -- writing ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def writing(self, wait_s: float | None = None) -> Iterator[None]:
        """Exclusive writer lock (see :mod:`expertise.library.locking`), waited for while another
        writer holds it (at most ``wait_s``, default ``locking.LOCK_WAIT_S``). Under it nobody else is
        writing, so the manifest is re-read (never clobber another writer's members) and what dead
        writers left behind is removed."""
        lock = self.path / LOCK
        locking.acquire(lock, self.path, wait_s)
        with locking.held(lock):
            if (self.path / MANIFEST).exists():
                self.refresh()
            for f in checks.leftovers(self.path):
                shutil.rmtree(f, ignore_errors=True) if f.is_dir() else f.unlink(missing_ok=True)
            yield

    def claim(self, name: str, log: Callable[[str], None] = print, done: Callable[[], bool] | None = None,
              poll_s: float = 2.0) -> contextlib.AbstractContextManager[bool]:
        """Claim the building of ``name`` so two builders never train the same thing; the context
        yields True when this process should build it (see :func:`expertise.library.locking.claim`)."""
        return locking.claim(self, name, log, done, poll_s)

    def commit_staged(self, folder: Path) -> list[MemberInfo]:
        """Move the members a unit staged in ``folder`` (:mod:`expertise.library.staging`) in, in one
        transaction under the writer lock."""
        from expertise.library import staging

        return staging.commit(self, folder)

    def entries(self) -> dict[str, MemberInfo]:
        """Every member's manifest entry by name, in manifest order (a copy: change the library
        through its writers, never through this)."""
        return dict(self._members)

    def write_manifest(self, members: dict[str, MemberInfo] | None = None) -> None:
        """Write the manifest with ``members`` (default: the current ones); for the library's writers,
        under :meth:`writing`, as the commit of a :class:`~expertise.library.transaction.Transaction`."""
        members = self._members if members is None else members
        if self._top_files is None:  # a library written before top-level files were hashed: record them now
            self._top_files = {f: sha256_file(self.path / f) for f in TOP_FILES if (self.path / f).is_file()}
        Manifest(members, self._top_files).write(self.path)
        self._members, self._verified = dict(members), {}

    def prepare(self, info: MemberInfo, model: nn.Module, label_prior: torch.Tensor | None = None,
                ) -> tuple[MemberInfo, dict[str, Any], dict[str, torch.Tensor], torch.Tensor | None]:
        """What :meth:`add` writes for ``model``, checked before the disk is touched: the completed
        MemberInfo (without ``files``), the config, the state dict and the checked label prior."""
        name = check_name(info.name)
        if bank_of(info) is not None:  # e.g. info copied from a bank's expert: this member is stored whole
            info = replace(info, extra={k: v for k, v in info.extra.items() if k not in ("bank", "bank_config", "parent_hash")})
        info = complete_info(info, model, self.hierarchy)
        config = model.member_config()  # type: ignore[operator]
        state = shareless_state_dict(model)
        checks.match_shapes(name, checks.expected_shapes(config, Path(f"member {name!r}: member_config()")),
                            {k: tuple(v.shape) for k, v in state.items()})
        return info, config, state, check_prior(name, label_prior, self.hierarchy)

    def add(self, info: MemberInfo, model: nn.Module, label_prior: torch.Tensor | None = None,
            overwrite: bool = False) -> MemberInfo:
        """Write ``model`` (and its optional label prior, float [num_label_nodes]) as member
        ``info.name`` and return the stored MemberInfo, with ``files`` (sha256 per file) and any
        zero ``parameters``/``embedding_dim`` filled from the model.

        The member is assembled in a hidden staging folder and swapped in by one
        :class:`Transaction` that the manifest rewrite commits; on any error the library is left as it was.
        """
        info, config, state, prior = self.prepare(info, model, label_prior)  # what can fail before the disk is touched
        name = info.name
        with self.writing():
            if name in self._members and not overwrite:
                raise LibraryError(f"the library already has a member {name!r}; pick another name (--name), or "
                                   "replace it (--overwrite on the command line, overwrite=True in Python)")
            staging = self.path / MEMBERS / f"{STAGING}{name}-{uuid.uuid4().hex[:8]}"
            try:
                info = replace(info, files=member_files.write_member(staging, name, config, state, prior))
                with Transaction() as tx:
                    tx.put(staging, self.path / MEMBERS / name)
                    tx.commit(lambda: self.write_manifest({**self._members, name: info}))
            except OSError as e:
                raise disk_error(e, staging) from None
            finally:
                shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful commit
            banks.prune(self)  # the member replaced may have been a bank's last adapter expert
        return info

    def add_adapter_bank(self, bank: AdapterBank, parent: str, members: Mapping[str, MemberInfo],
                         label_priors: Mapping[str, torch.Tensor] | None = None, bank_name: str = "bank",
                         overwrite: bool = False) -> list[MemberInfo]:
        """Store a trained :class:`AdapterBank` once beside its backbone ``parent`` (see
        :func:`expertise.library.banks.add_bank`)."""
        return banks.add_bank(self, bank, parent, members, label_priors, bank_name, overwrite)

    def remove(self, name: str) -> None:
        """Drop a member, its folder and the manifest entry in one :class:`Transaction`.

        Removing an adapter expert leaves its bank to the bank's other experts, and deletes the bank
        files with the last one. A backbone that adapter experts are built on cannot be removed
        before them: they hold no copy of its weights."""
        with self.writing():
            self.info(name)
            dependents = [n for n, m in self._members.items() if n != name and bank_of(m) is not None and m.parent == name]
            if dependents:
                raise LibraryError(
                    f"member {name!r} is the backbone of adapter experts {dependents}, which hold no copy of its weights; "
                    "remove them first"
                )
            with Transaction() as tx:
                tx.remove(self.member_dir(name))
                tx.commit(lambda: self.write_manifest({n: m for n, m in self._members.items() if n != name}))
            banks.prune(self)

