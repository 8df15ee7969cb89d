"""A model library on disk: a manifest plus one folder per pool member.

Layout::

    LIBRARY/
      library.json                 manifest {"format": 1, "members": {name: MemberInfo JSON}}
      hierarchy.json               the upstream Hierarchy (absent for a library of external models)
      members/<name>/config.json   member_config(): rebuilds the module with model_from_config
      members/<name>/model.safetensors
      members/<name>/label_prior.safetensors   optional: "prior", float64 [num_label_nodes]
      adapters/<bank>.safetensors  the adapters of every adapter expert of one bank (all in one file)
      adapters/<bank>.json         the bank's structure: experts, reduction, parent backbone
      .lock                        present while a writer holds the library; holds the writer's pid

Weights are safetensors and everything else is JSON: nothing is ever unpickled. Every file is
written under a temporary name and renamed into place; a member is assembled in a hidden staging
folder and swapped in whole, and the manifest (written last) is the commit point, so an error or a
crash never leaves a half-written member that the manifest names. The sha256 of every member file
is kept in the manifest and checked by :meth:`Library.load` and :meth:`Library.verify`.

Adapter experts (paper 000, section 4.1) share one backbone, so they are stored without copying it:
:meth:`Library.add_adapter_bank` writes every expert's adapters once, to ``adapters/<bank>.safetensors``,
and each expert becomes a manifest entry of kind ``adapter_expert`` whose ``parent`` names the stored
backbone member (an ExpertModel, usually the baseline) and whose folder holds only its config.json and
label prior. Its ``files`` also list the bank files by their library-relative path (``adapters/...``)
with their sha256, so the usual checks cover them; ``extra`` holds the bank, the expert's node and the
parent's hash when the adapters were trained. :meth:`Library.load` assembles the expert from the
parent's weights and its slice of the bank.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from expertise.data.hierarchy import Hierarchy
from expertise.errors import ExpertiseError, LibraryError
from expertise.io import atomic_save_safetensors, atomic_write_json, sha256_file
from expertise.models.adapters import AdapterBank, expert_key
from expertise.models.backbones import ExpertModel, count_parameters, model_from_config
from expertise.models import external as _external  # noqa: F401  registers ExternalModel for model_from_config

FORMAT = 1
MANIFEST, HIERARCHY, LOCK, MEMBERS = "library.json", "hierarchy.json", ".lock", "members"
CONFIG, WEIGHTS, PRIOR = "config.json", "model.safetensors", "label_prior.safetensors"
KINDS = ("baseline", "full_expert", "adapter_expert", "epn", "external")
ADAPTERS = "adapters"  # folder of adapter banks
# A library-relative bank file named in a member's ``files``: adapters/<bank>.safetensors or .json.
_BANK_FILE = re.compile(r"^adapters/([A-Za-z0-9_-][A-Za-z0-9._-]{0,127})\.(safetensors|json)$")
_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")
# Hidden folders under members/ used while a write is in flight; a crash can leave them behind.
_STAGING, _RETIRED = ".staging-", ".retired-"
# A lock file without a readable pid is only presumed stale after this long: its writer may be
# between creating the file and writing the pid into it.
_UNREADABLE_LOCK_GRACE_S = 10.0


@dataclass(frozen=True)
class MemberInfo:
    """One pool member's manifest entry. ``files`` maps file name -> sha256 and is filled by the
    library; ``parameters`` and ``embedding_dim`` given as 0 are filled from the model by
    :meth:`Library.add`."""

    name: str
    kind: str  # one of KINDS
    parent: str | None  # e.g. the baseline an expert was tuned from
    domain: str | None  # hierarchy node the expert specialises in
    upstream_images: int  # images in its upstream training slice
    parameters: int
    embedding_dim: int
    upstream_accuracy: float | None  # upstream holdout accuracy
    preprocessing: dict  # Preprocessing.to_json()
    files: dict[str, str] = field(default_factory=dict)
    architecture: str = ""  # e.g. the backbone name "bit_s"
    extra: dict = field(default_factory=dict)  # free-form JSON: training config, steps, wall time

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MemberInfo:
        if not isinstance(d, dict):
            raise LibraryError(f"a manifest member entry must be a JSON object, got {type(d).__name__}")
        required = [f.name for f in fields(cls) if f.name not in ("files", "architecture", "extra")]
        missing = [k for k in required if k not in d]
        if missing:
            raise LibraryError(f"manifest entry {d.get('name', '?')!r} lacks {missing}; restore library.json or re-add the member")
        try:
            return cls._from_checked_json(d)
        except (TypeError, ValueError, AttributeError) as e:
            raise LibraryError(f"manifest entry {d.get('name', '?')!r} has a malformed field ({e}); restore library.json") from None

    @classmethod
    def _from_checked_json(cls, d: dict[str, Any]) -> MemberInfo:
        acc = d["upstream_accuracy"]
        return cls(
            name=str(d["name"]), kind=str(d["kind"]), parent=d["parent"], domain=d["domain"],
            upstream_images=int(d["upstream_images"]), parameters=int(d["parameters"]),
            embedding_dim=int(d["embedding_dim"]), upstream_accuracy=None if acc is None else float(acc),
            preprocessing=dict(d["preprocessing"]), files={str(k): str(v) for k, v in d.get("files", {}).items()},
            architecture=str(d.get("architecture", "")), extra=dict(d.get("extra", {})),
        )


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _lock_holder(lock: Path) -> tuple[int | None, str | None]:
    """(pid, host) written in a lock file; (None, None) when it cannot be read."""
    try:
        lines = lock.read_text().split()
        return int(lines[0]), (lines[1] if len(lines) > 1 else None)
    except (OSError, ValueError, IndexError):
        return None, None


@contextlib.contextmanager
def _directory_mutex(path: Path) -> Iterator[None]:
    """flock on the library folder itself, so two writers cannot both judge a lock stale and both
    take it over. Only held for the instant of acquiring; a no-op where flock is unavailable."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise LibraryError(
            f"invalid member name {name!r}: use 1-128 letters, digits, '.', '_' or '-', not starting with '.' "
            "(no spaces or path separators), e.g. 'bit_s.expert_animal'"
        )
    return name


def _shareless_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state as independent CPU tensors: safetensors refuses tensors that share memory
    (tied weights, views), so each one is cloned."""
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}


def _bank_of(info: MemberInfo) -> str | None:
    """The bank file (``adapters/<bank>.safetensors``) an adapter expert lives in; None for a
    member stored whole in its own folder."""
    bank = info.extra.get("bank")
    return bank if isinstance(bank, str) else None


def _bank_config_path(bank: str) -> str:
    """``adapters/<bank>.safetensors`` -> ``adapters/<bank>.json``."""
    return bank.removesuffix(".safetensors") + ".json"


def _files_digest(files: dict[str, str], extra: str = "") -> str:
    h = hashlib.sha256(("".join(f"{k}:{v}\n" for k, v in sorted(files.items())) + extra).encode())
    return h.hexdigest()[:16]


class Library:
    """A folder of pool members with a manifest; see the module docstring for the layout."""

    def __init__(self, path: Path, hierarchy: Hierarchy | None, members: dict[str, MemberInfo]) -> None:
        self.path = Path(path)
        self.hierarchy = hierarchy
        self._members = members

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
        path.mkdir(parents=True, exist_ok=True)
        lib = cls(path, hierarchy, {})
        with lib._locked():
            if hierarchy is not None:
                hierarchy.save(path / HIERARCHY)
            lib._write_manifest()  # last: its presence is what makes the folder a library
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
        hierarchy = None
        if (path / HIERARCHY).exists():
            try:
                hierarchy = Hierarchy.load(path / HIERARCHY)
            except ExpertiseError as e:
                raise LibraryError(f"{path / HIERARCHY} cannot be read ({e}); restore it from a backup") from None
        return cls(path, hierarchy, cls._read_manifest(path))

    @staticmethod
    def _read_manifest(path: Path) -> dict[str, MemberInfo]:
        f = path / MANIFEST
        try:
            data = json.loads(f.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LibraryError(f"{f} cannot be read ({e}); restore it from a backup") from None
        if not isinstance(data, dict) or "format" not in data or not isinstance(data.get("members"), dict):
            raise LibraryError(f"{f} is not a library manifest (needs 'format' and 'members'); restore it from a backup")
        if data["format"] != FORMAT:
            raise LibraryError(f"{f} has format {data['format']!r}; this version of expertise reads format {FORMAT}: upgrade expertise")
        members = {}
        for name, d in data["members"].items():
            _check_name(name)  # a hand-edited manifest must not point outside members/
            info = MemberInfo.from_json(d)
            if info.name != name:
                raise LibraryError(f"{f}: entry {name!r} is named {info.name!r} inside; restore library.json")
            members[name] = info
        return members

    def refresh(self) -> None:
        """Re-read the manifest, e.g. after another process added members."""
        self._members = self._read_manifest(self.path)

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
        return self.path / MEMBERS / _check_name(name)

    def member_hash(self, name: str) -> str:
        """16 hex digits over the member's file hashes: a cache key that changes whenever a file does
        (and is the same for two members with identical files).

        Adapter experts of one bank list the same bank files, so their hash also covers the member's
        name, its node and its parent's file hashes: distinct experts never share cache entries, and
        retraining the bank or replacing the backbone invalidates them."""
        info = self.info(name)
        if _bank_of(info) is None:
            return _files_digest(info.files)
        parent = self._members.get(info.parent) if info.parent is not None else None
        parent_digest = _files_digest(parent.files) if parent is not None else "missing"
        return _files_digest(info.files, f"member:{name}\nnode:{info.extra.get('node')}\nparent:{info.parent}:{parent_digest}\n")

    def _file_path(self, name: str, fname: str) -> Path | None:
        """Where a file listed in a member's manifest entry lives: its own folder for a plain name, the
        library root for a bank file (``adapters/...``); None for anything else (a hand-edited
        manifest must not point outside the library)."""
        if _BANK_FILE.match(fname):
            return self.path / fname
        if not fname or "/" in fname or "\\" in fname or fname in (".", ".."):
            return None
        return self.member_dir(name) / fname

    def _file_problems(self, name: str) -> list[str]:
        """Missing files and hash mismatches for one member."""
        info, folder = self.info(name), self.member_dir(name)
        if not folder.is_dir():
            return [f"member {name!r}: folder {folder} is missing"]
        bank = _bank_of(info)
        required = (CONFIG, WEIGHTS) if bank is None else (CONFIG, bank, _bank_config_path(bank))
        problems = [f"member {name!r}: manifest lists no {f}" for f in required if f not in info.files]
        for fname, digest in info.files.items():
            f = self._file_path(name, fname)
            if f is None:
                problems.append(f"member {name!r}: manifest lists a file {fname!r} outside the library; restore library.json")
            elif not f.is_file():
                problems.append(f"member {name!r}: file {f} is missing")
            elif sha256_file(f) != digest:
                problems.append(f"member {name!r}: {f} was modified since it was written (sha256 mismatch)")
        if bank is not None:
            problems += self._bank_member_problems(name, info, bank)
        return problems

    def _bank_member_problems(self, name: str, info: MemberInfo, bank: str) -> list[str]:
        """An adapter expert also needs its bank path to be well-formed and its parent backbone to be
        the one its adapters were trained on."""
        if not bank.endswith(".safetensors") or not _BANK_FILE.match(bank):
            return [f"member {name!r}: bank {bank!r} is not adapters/<bank>.safetensors; restore library.json"]
        if not isinstance(info.extra.get("node"), str):
            return [f"member {name!r}: its manifest entry names no bank node (extra.node); restore library.json"]
        parent = self._members.get(info.parent) if info.parent is not None else None
        if parent is None:
            return [f"member {name!r}: its backbone member {info.parent!r} is not in the library; restore it or "
                    "re-create the adapter experts"]
        if _bank_of(parent) is not None:
            return [f"member {name!r}: its backbone {info.parent!r} is itself an adapter expert; restore library.json"]
        if _files_digest(parent.files) != info.extra.get("parent_hash"):
            return [f"member {name!r}: its backbone {info.parent!r} changed since the adapters were trained; "
                    f"re-train the adapter experts on it or restore the old {info.parent!r}"]
        return []

    def problems(self, name: str) -> list[str]:
        """What is wrong with one member's files (missing, modified, or for an adapter expert a
        backbone that changed since its adapters were trained); [] when it is intact."""
        return self._file_problems(name)

    def _check_member(self, name: str) -> None:
        problems = self._file_problems(name)
        if problems:
            raise LibraryError(f"member {name!r} was modified since it was written; re-create it or restore it ({'; '.join(problems)})")

    def load(self, name: str, verify: bool = True) -> nn.Module:
        """The member rebuilt from config.json with its weights loaded strictly, in eval mode.
        ``verify`` first checks the sha256 of each of the member's files."""
        info = self.info(name)  # unknown names fail here, with a did-you-mean
        if verify:
            self._check_member(name)
        folder = self.member_dir(name)
        cfg = self._read_config(folder / CONFIG)
        try:
            model = model_from_config(cfg)
        except (ExpertiseError, KeyError, TypeError, ValueError) as e:
            raise LibraryError(f"member {name!r}: {folder / CONFIG} does not rebuild a model ({e}); re-create the member") from None
        bank = _bank_of(info)
        if bank is None:
            state = self._load_tensors(folder / WEIGHTS, name)
        else:
            state = self._adapter_expert_state(name, info, bank, verify)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()
            raise LibraryError(
                f"member {name!r}: weights do not match its config ({' '.join(first[:3])}); re-create the member"
            ) from None
        return model.eval()

    def _adapter_expert_state(self, name: str, info: MemberInfo, bank: str, verify: bool) -> dict[str, torch.Tensor]:
        """The parent's weights (backbone and head) plus this expert's adapters from the bank, named
        as :class:`AdapterExpert` names them."""
        parent = info.parent
        if parent is None or parent not in self._members:
            raise LibraryError(f"member {name!r}: its backbone member {parent!r} is not in the library; restore it or re-create the adapter experts")
        if verify:
            self._check_member(parent)
        state = self._load_tensors(self.member_dir(parent) / WEIGHTS, parent)
        prefix = f"{expert_key(str(info.extra.get('node')))}."
        adapters = self._load_tensors(self.path / bank, name, prefix)
        if not adapters:
            raise LibraryError(f"member {name!r}: {self.path / bank} holds no adapters for node {info.extra.get('node')!r}; re-create the adapter experts")
        state.update({f"adapters.{k[len(prefix):]}": v for k, v in adapters.items()})
        return state

    def load_adapter_bank(self, bank: str = "bank", verify: bool = True) -> AdapterBank:
        """The whole bank as one :class:`AdapterBank`: its parent backbone (with upstream head) and the
        adapters of every adapter expert the manifest still names in it, keyed by node, in manifest
        order. Embedding many experts through it computes the shared stem once."""
        path = f"{ADAPTERS}/{bank}.safetensors"
        members = [m for m in self._members.values() if _bank_of(m) == path]
        if not members:
            raise LibraryError(f"the library at {self.path} has no adapter experts in bank {bank!r}; build them first (expertise.adapters.build_adapter_experts)")
        parents = {m.parent for m in members}
        if len(parents) != 1:
            raise LibraryError(f"bank {bank!r}: its experts name different backbones {sorted(map(str, parents))}; restore library.json")
        if verify:
            for m in members:
                self._check_member(m.name)
        parent = self.load(str(members[0].parent), verify=verify)
        if not isinstance(parent, ExpertModel):
            raise LibraryError(f"bank {bank!r}: its backbone {members[0].parent!r} is not an ExpertModel; re-create the adapter experts")
        cfg = self._read_json(self.path / _bank_config_path(path))
        nodes = [str(m.extra.get("node")) for m in members]
        model = AdapterBank(parent, nodes, int(cfg.get("reduction", 2)))
        keys = {f"{expert_key(n)}." for n in nodes}
        state = {k: v for k, v in self._load_tensors(self.path / path, bank).items() if k[:k.find(".") + 1] in keys}
        try:
            model.adapters.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()
            raise LibraryError(f"bank {bank!r}: adapters do not match its config ({' '.join(first[:3])}); re-create the adapter experts") from None
        return model.eval()

    def label_prior(self, name: str) -> torch.Tensor | None:
        """float64 [num_label_nodes], or None when the member has no label prior. Always verified."""
        info = self.info(name)
        if PRIOR not in info.files:
            return None
        f = self.member_dir(name) / PRIOR
        if not f.is_file() or sha256_file(f) != info.files[PRIOR]:
            raise LibraryError(f"member {name!r}: {f} was modified since it was written or is missing; re-create it or restore it")
        tensors = self._load_tensors(f, name)
        if "prior" not in tensors:
            raise LibraryError(f"member {name!r}: {f} holds no 'prior' tensor; re-create the member")
        return tensors["prior"].to(torch.float64)

    @staticmethod
    def _read_config(f: Path) -> dict[str, Any]:
        try:
            cfg = json.loads(f.read_text())
        except FileNotFoundError:
            raise LibraryError(f"{f} is missing; re-create the member or restore it") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LibraryError(f"{f} cannot be read ({e}); re-create the member or restore it") from None
        if not isinstance(cfg, dict) or "class" not in cfg:
            raise LibraryError(f"{f} is not a member config (needs a 'class' key); re-create the member")
        return cfg

    @staticmethod
    def _read_json(f: Path) -> dict[str, Any]:
        try:
            data = json.loads(f.read_text())
        except FileNotFoundError:
            raise LibraryError(f"{f} is missing; re-create the adapter experts or restore it") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LibraryError(f"{f} cannot be read ({e}); re-create the adapter experts or restore it") from None
        if not isinstance(data, dict):
            raise LibraryError(f"{f} is not a JSON object; re-create the adapter experts or restore it")
        return data

    @staticmethod
    def _load_tensors(f: Path, name: str, prefix: str | None = None) -> dict[str, torch.Tensor]:
        """Every tensor of a safetensors file, or (``prefix``) only those whose name starts with it,
        read without touching the rest: one expert's slice of a bank."""
        try:
            if prefix is not None:
                with safe_open(str(f), framework="pt") as fh:
                    return {k: fh.get_tensor(k) for k in fh.keys() if k.startswith(prefix)}
            return load_file(str(f))
        except FileNotFoundError:
            raise LibraryError(f"member {name!r}: {f} is missing; re-create the member or restore it") from None
        except (SafetensorError, OSError, ValueError) as e:
            raise LibraryError(f"member {name!r}: {f} is not a readable safetensors file ({e}); re-create the member") from None

    def verify(self) -> list[str]:
        """Every problem found, one line each; [] when the library is intact. Checks each member's
        files against the manifest hashes, that each config.json parses, and reports member folders
        the manifest does not name and leftovers of interrupted writes."""
        problems: list[str] = []
        if (self.path / HIERARCHY).exists():
            try:
                Hierarchy.load(self.path / HIERARCHY)
            except ExpertiseError as e:
                problems.append(f"{self.path / HIERARCHY} cannot be read: {e}")
        for name in self.names():
            member_problems = self._file_problems(name)
            problems += member_problems
            folder, listed = self.member_dir(name), self._members[name].files
            if folder.is_dir():
                problems += [f"member {name!r}: {f} is not listed in the manifest; delete it or re-add the member"
                             for f in sorted(folder.iterdir()) if f.name not in listed]
            cfg = self.member_dir(name) / CONFIG
            if cfg.is_file() and not any(CONFIG in p for p in member_problems):
                try:
                    self._read_config(cfg)
                except LibraryError as e:
                    problems.append(f"member {name!r}: unreadable config: {e}")
        problems += [f"{f} is left over from an interrupted write (or one in progress); delete it when no writer holds the library" for f in sorted(self.path.glob(".*.tmp"))]
        members_dir = self.path / MEMBERS
        if members_dir.is_dir():
            for d in sorted(members_dir.iterdir()):
                if d.name.startswith((_STAGING, _RETIRED)):
                    problems.append(f"{d} is left over from an interrupted write (or one in progress); delete it when no writer holds the library")
                elif d.name not in self._members:
                    problems.append(f"{d} is not a member named in {MANIFEST}; delete it or re-add the member")
        adapters_dir = self.path / ADAPTERS
        if adapters_dir.is_dir():
            referenced = self._referenced_bank_files()
            for f in sorted(adapters_dir.iterdir()):
                if f.name.startswith((_STAGING, _RETIRED)):
                    problems.append(f"{f} is left over from an interrupted write (or one in progress); delete it when no writer holds the library")
                elif f"{ADAPTERS}/{f.name}" not in referenced and not f.name.startswith("."):
                    problems.append(f"{f} is not part of any adapter expert in {MANIFEST}; delete it or re-add the adapter experts")
        return problems

    def _referenced_bank_files(self) -> set[str]:
        return {f for m in self._members.values() for f in m.files if _BANK_FILE.match(f)}

    # -- writing ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive writer lock: ``.lock`` created with O_CREAT|O_EXCL, holding pid and host. A lock
        left by a dead process on this host is taken over; a live one is an error."""
        lock = self.path / LOCK
        with _directory_mutex(self.path):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._lock_is_stale(lock):
                    pid, host = _lock_holder(lock)
                    raise LibraryError(
                        f"the library at {self.path} is locked by another writer (pid {pid} on {host}); wait for it to "
                        f"finish, or delete {lock} if no such process is running"
                    ) from None
                lock.unlink(missing_ok=True)  # stale: its writer died; safe under the directory mutex
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(f"{os.getpid()}\n{socket.gethostname()}\n")
            except BaseException:
                lock.unlink(missing_ok=True)
                raise
        try:
            # Under the lock nobody else can be writing, so re-read: never clobber another writer's members.
            if (self.path / MANIFEST).exists():
                self.refresh()
            self._clean_leftovers()
            yield
        finally:
            lock.unlink(missing_ok=True)

    @staticmethod
    def _lock_is_stale(lock: Path) -> bool:
        pid, host = _lock_holder(lock)
        if pid is None:
            try:
                return time.time() - lock.stat().st_mtime > _UNREADABLE_LOCK_GRACE_S
            except FileNotFoundError:
                return True
        if host is not None and host != socket.gethostname():
            return False  # another machine's process: we cannot tell whether it lives
        return not _pid_alive(pid)

    def _clean_leftovers(self) -> None:
        """Staging folders of writers that died mid-write (only ever called while holding the lock)."""
        for folder in (self.path / MEMBERS, self.path / ADAPTERS):
            if folder.is_dir():
                for d in folder.iterdir():
                    if d.name.startswith((_STAGING, _RETIRED)):
                        shutil.rmtree(d, ignore_errors=True)

    def _prune_banks(self) -> None:
        """Delete bank files no manifest entry names any more (after the manifest commit, under the
        lock): the last adapter expert of a bank takes the bank with it."""
        adapters_dir = self.path / ADAPTERS
        if not adapters_dir.is_dir():
            return
        referenced = self._referenced_bank_files()
        for f in adapters_dir.iterdir():
            if f.is_file() and _BANK_FILE.match(f"{ADAPTERS}/{f.name}") and f"{ADAPTERS}/{f.name}" not in referenced:
                f.unlink(missing_ok=True)

    def _write_manifest(self, members: dict[str, MemberInfo] | None = None) -> None:
        members = self._members if members is None else members
        atomic_write_json(self.path / MANIFEST, {"format": FORMAT, "members": {n: m.to_json() for n, m in members.items()}})
        self._members = dict(members)

    def add(self, info: MemberInfo, model: nn.Module, label_prior: torch.Tensor | None = None,
            overwrite: bool = False) -> MemberInfo:
        """Write ``model`` (and its optional label prior, float [num_label_nodes]) as member
        ``info.name`` and return the stored MemberInfo, with ``files`` (sha256 per file) and any
        zero ``parameters``/``embedding_dim`` filled from the model.

        The member is assembled in a hidden staging folder, swapped into ``members/<name>`` and
        committed by an atomic rewrite of the manifest; on any error the library is left as it was.
        """
        name = _check_name(info.name)
        if _bank_of(info) is not None:  # e.g. info copied from a bank's expert: this member is stored whole
            info = replace(info, extra={k: v for k, v in info.extra.items() if k not in ("bank", "bank_config", "parent_hash")})
        info = self._complete_info(info, model)
        # Everything that can fail on the model's side happens before the disk is touched.
        config = model.member_config()  # type: ignore[operator]
        state = _shareless_state_dict(model)
        self._check_config_matches(name, config, state)
        prior = self._check_prior(name, label_prior)
        with self._locked():
            if name in self._members and not overwrite:
                raise LibraryError(f"the library already has a member {name!r}; pass overwrite=True to replace it, or pick another name")
            members_dir = self.path / MEMBERS
            members_dir.mkdir(exist_ok=True)
            staging = members_dir / f"{_STAGING}{name}-{uuid.uuid4().hex[:8]}"
            try:
                staging.mkdir()
                atomic_write_json(staging / CONFIG, config)
                atomic_save_safetensors(staging / WEIGHTS, state, metadata={"format": "pt", "member": name})
                if prior is not None:
                    atomic_save_safetensors(staging / PRIOR, {"prior": prior}, metadata={"member": name})
                files = {f.name: sha256_file(f) for f in sorted(staging.iterdir())}
                info = replace(info, files=files)
                self._commit(name, info, staging)
            finally:
                shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful commit
            self._prune_banks()  # the member replaced may have been a bank's last adapter expert
        return info

    def add_adapter_bank(self, bank: AdapterBank, parent: str, members: Mapping[str, MemberInfo],
                         label_priors: Mapping[str, torch.Tensor] | None = None, bank_name: str = "bank",
                         overwrite: bool = False) -> list[MemberInfo]:
        """Store a trained :class:`AdapterBank` once, as ``adapters/<bank_name>.safetensors`` and
        ``.json``, and one ``adapter_expert`` member per entry of ``members`` (bank expert -> its
        MemberInfo; its ``parent`` is set to ``parent``). Returns the stored MemberInfos.

        ``parent`` must be a stored ExpertModel whose weights are exactly ``bank.base``'s: the bank
        is stored beside it and refers to it, never copying it. With ``overwrite`` an existing bank
        of that name is replaced together with all its members. Like :meth:`add`, the new files are
        staged and swapped in, and the manifest rewrite commits; on error nothing changes.
        """
        _check_name(bank_name)
        if not members:
            raise LibraryError("add_adapter_bank needs at least one member; pass {expert: MemberInfo}")
        unknown = [e for e in members if e not in bank.experts]
        if unknown:
            raise LibraryError(f"adapter experts {unknown} are not in the bank, which holds {bank.experts}")
        bank_path = f"{ADAPTERS}/{bank_name}.safetensors"
        config_path = _bank_config_path(bank_path)
        priors = dict(label_priors or {})
        adapter_state = {k: v.detach().to("cpu").clone().contiguous() for k, v in bank.adapter_state_dict().items()}
        bank_state = {k: v.detach().to("cpu") for k, v in bank.base.state_dict().items()}
        prepared: dict[str, tuple[MemberInfo, dict[str, Any], torch.Tensor | None]] = {}
        for expert, info in members.items():
            name = _check_name(info.name)
            if info.kind != "adapter_expert":
                raise LibraryError(f"member {name!r}: an expert of an adapter bank has kind 'adapter_expert', got {info.kind!r}")
            if info.parent not in (None, parent):
                raise LibraryError(f"member {name!r}: its parent is the bank's backbone {parent!r}, not {info.parent!r}")
            model = bank.expert(expert)
            config = model.member_config()
            shapes = {**bank_state, **{f"adapters.{k}": v for k, v in model.adapters.state_dict().items()}}
            self._check_config_matches(name, config, shapes)
            info = replace(self._complete_info(info, model), parent=parent, extra={**info.extra, "node": expert})
            prepared[name] = (info, config, self._check_prior(name, priors.get(expert)))
        if len(prepared) != len(members):
            raise LibraryError(f"adapter experts must have distinct names, got {[i.name for i in members.values()]}")
        with self._locked():
            pinfo = self.info(parent)
            if _bank_of(pinfo) is not None:
                raise LibraryError(f"the backbone {parent!r} of a bank must be a member stored whole, not an adapter expert")
            self._check_member(parent)
            stored = self._load_tensors(self.member_dir(parent) / WEIGHTS, parent)
            if stored.keys() != bank_state.keys() or any(not torch.equal(stored[k], bank_state[k]) for k in stored):
                raise LibraryError(
                    f"the bank's backbone is not the stored {parent!r}: train the bank on library.load({parent!r}) "
                    "(the backbone and head stay frozen while adapters train)"
                )
            old = [n for n, m in self._members.items() if _bank_of(m) == bank_path]
            if (old or (self.path / bank_path).exists()) and not overwrite:
                raise LibraryError(f"the library already has an adapter bank {bank_name!r}; pass overwrite=True to replace it and its experts")
            taken = [n for n in prepared if n in self._members and n not in old]
            if taken and not overwrite:
                raise LibraryError(f"the library already has members {taken}; pass overwrite=True to replace them, or pick other names")
            if parent in prepared:
                raise LibraryError(f"an adapter expert cannot replace its own backbone {parent!r}; pick another name")
            parent_hash = _files_digest(pinfo.files)
            adapters_dir, members_dir = self.path / ADAPTERS, self.path / MEMBERS
            adapters_dir.mkdir(exist_ok=True)
            members_dir.mkdir(exist_ok=True)
            tag = uuid.uuid4().hex[:8]
            staged_bank = adapters_dir / f"{_STAGING}{bank_name}-{tag}"
            staged = {n: members_dir / f"{_STAGING}{n}-{tag}" for n in prepared}
            try:
                staged_bank.mkdir()
                atomic_save_safetensors(staged_bank / f"{bank_name}.safetensors", adapter_state,
                                        metadata={"format": "pt", "bank": bank_name, "parent": parent})
                atomic_write_json(staged_bank / f"{bank_name}.json",
                                  {**bank.bank_config(), "parent": parent, "parent_hash": parent_hash})
                bank_files = {f"{ADAPTERS}/{f.name}": sha256_file(f) for f in sorted(staged_bank.iterdir())}
                infos: dict[str, MemberInfo] = {}
                for name, (info, config, prior) in prepared.items():
                    staged[name].mkdir()
                    atomic_write_json(staged[name] / CONFIG, config)
                    if prior is not None:
                        atomic_save_safetensors(staged[name] / PRIOR, {"prior": prior}, metadata={"member": name})
                    files = {f.name: sha256_file(f) for f in sorted(staged[name].iterdir())}
                    extra = {**info.extra, "bank": bank_path, "bank_config": config_path, "parent_hash": parent_hash}
                    infos[name] = replace(info, files={**files, **bank_files}, extra=extra)
                manifest: dict[str, MemberInfo] = {}
                for n, m in self._members.items():
                    if n in infos:
                        manifest[n] = infos[n]  # a replaced member keeps its place
                    elif n not in old:
                        manifest[n] = m
                manifest.update({n: i for n, i in infos.items() if n not in manifest})
                self._commit_bank(staged_bank, adapters_dir, staged, old, manifest)
            finally:
                shutil.rmtree(staged_bank, ignore_errors=True)
                for d in staged.values():
                    shutil.rmtree(d, ignore_errors=True)
            self._prune_banks()
        return [infos[n] for n in prepared]

    def _commit_bank(self, staged_bank: Path, adapters_dir: Path, staged: dict[str, Path], old: list[str],
                     manifest: dict[str, MemberInfo]) -> None:
        """Swap a staged bank and its staged member folders into place, retiring what they replace,
        then rewrite the manifest; on failure every move is undone in reverse order."""
        tag = uuid.uuid4().hex[:8]
        moves: list[tuple[Path, Path]] = []
        retired = [adapters_dir / f"{_RETIRED}bank-{tag}"]

        def move(src: Path, dst: Path) -> None:
            os.replace(src, dst)
            moves.append((src, dst))

        try:
            bank_files = sorted(staged_bank.iterdir())
            for f in bank_files:
                if (adapters_dir / f.name).exists():
                    retired[0].mkdir(exist_ok=True)
                    move(adapters_dir / f.name, retired[0] / f.name)
            for n in sorted(set(old) | set(staged)):
                final = self.path / MEMBERS / n
                if final.exists():
                    retired.append(final.with_name(f"{_RETIRED}{n}-{tag}"))
                    move(final, retired[-1])
            for f in bank_files:
                move(f, adapters_dir / f.name)
            for n, d in staged.items():
                move(d, self.path / MEMBERS / n)
            self._write_manifest(manifest)
        except BaseException:
            for src, dst in reversed(moves):
                os.replace(dst, src)
            raise
        finally:
            for d in retired:
                shutil.rmtree(d, ignore_errors=True)

    def _commit(self, name: str, info: MemberInfo, staging: Path) -> None:
        """Swap the staged folder into place and rewrite the manifest; undo the swap on failure."""
        final = self.path / MEMBERS / name
        retired = None
        if final.exists():
            retired = final.with_name(f"{_RETIRED}{name}-{uuid.uuid4().hex[:8]}")
            os.replace(final, retired)
        try:
            os.replace(staging, final)
            self._write_manifest({**self._members, name: info})
        except BaseException:
            if final.exists() and not staging.exists():
                os.replace(final, staging)  # the finally in add() deletes it
            if retired is not None:
                os.replace(retired, final)
            raise
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)

    def _complete_info(self, info: MemberInfo, model: nn.Module) -> MemberInfo:
        if info.kind not in KINDS:
            raise LibraryError(f"member {info.name!r}: kind must be one of {KINDS}, got {info.kind!r}")
        if not callable(getattr(model, "member_config", None)):
            raise LibraryError(f"member {info.name!r}: the model has no member_config(); only pool members can be stored")
        if info.domain is not None and self.hierarchy is not None and info.domain not in self.hierarchy.parents:
            raise LibraryError(f"member {info.name!r}: domain {info.domain!r} is not a node of the library's hierarchy")
        # numpy scalars (np.float32 accuracies, np.int64 counts) are not JSON: store plain Python numbers.
        changes: dict[str, Any] = {
            "upstream_images": int(info.upstream_images), "parameters": int(info.parameters),
            "embedding_dim": int(info.embedding_dim),
            "upstream_accuracy": None if info.upstream_accuracy is None else float(info.upstream_accuracy),
        }
        if info.parameters == 0:
            changes["parameters"] = count_parameters(model)
        if info.embedding_dim == 0:
            dim = getattr(model, "num_features", None)
            if not isinstance(dim, int) or dim <= 0:
                raise LibraryError(f"member {info.name!r}: give embedding_dim, the model has no num_features")
            changes["embedding_dim"] = dim
        prep = getattr(model, "preprocessing", None)
        if prep is not None and hasattr(prep, "to_json"):
            if not info.preprocessing:
                changes["preprocessing"] = prep.to_json()
            elif info.preprocessing != prep.to_json():
                raise LibraryError(f"member {info.name!r}: preprocessing {info.preprocessing} differs from the model's {prep.to_json()}")
        if not info.architecture and hasattr(model, "backbone_config"):
            changes["architecture"] = model.backbone_config.name
        info = replace(info, **changes)
        try:
            json.dumps(info.to_json())
        except (TypeError, ValueError) as e:
            raise LibraryError(f"member {info.name!r}: its info is not JSON-serialisable ({e}); keep 'extra' to plain JSON values") from None
        return info

    @staticmethod
    def _check_config_matches(name: str, config: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
        """Refuse to store weights that the config would not load strictly (caught now, not at load)."""
        try:
            json.dumps(config)
            with torch.device("meta"):  # shapes only: no memory, no weight initialisation
                expected = {k: tuple(v.shape) for k, v in model_from_config(config).state_dict().items()}
        except (ExpertiseError, KeyError, TypeError, ValueError) as e:
            raise LibraryError(f"member {name!r}: member_config() does not rebuild the model ({e})") from None
        got = {k: tuple(v.shape) for k, v in state.items()}
        if expected != got:
            diff = sorted(set(expected.items()) ^ set(got.items()))[:3]
            raise LibraryError(f"member {name!r}: its weights do not match what member_config() builds (e.g. {diff})")

    def _check_prior(self, name: str, prior: torch.Tensor | None) -> torch.Tensor | None:
        if prior is None:
            return None
        prior = torch.as_tensor(prior).detach().to("cpu", torch.float64).clone()
        if prior.ndim != 1 or not bool(torch.isfinite(prior).all()) or bool((prior < 0).any()):
            raise LibraryError(f"member {name!r}: a label prior must be a finite, non-negative vector [num_label_nodes]")
        if self.hierarchy is not None and prior.numel() != len(self.hierarchy.label_nodes):
            raise LibraryError(
                f"member {name!r}: label prior has {prior.numel()} entries, the hierarchy {len(self.hierarchy.label_nodes)} label nodes"
            )
        return prior

    def remove(self, name: str) -> None:
        """Drop a member: the manifest first (so it never names a missing folder), then its folder.

        Removing an adapter expert leaves its bank to the bank's other experts, and deletes the bank
        files with the last one. A backbone that adapter experts are built on cannot be removed
        before them: they hold no copy of its weights."""
        with self._locked():
            self.info(name)
            dependents = [n for n, m in self._members.items() if n != name and _bank_of(m) is not None and m.parent == name]
            if dependents:
                raise LibraryError(
                    f"member {name!r} is the backbone of adapter experts {dependents}, which hold no copy of its weights; "
                    "remove them first"
                )
            self._write_manifest({n: m for n, m in self._members.items() if n != name})
            folder = self.member_dir(name)
            if folder.exists():
                retired = folder.with_name(f"{_RETIRED}{name}-{uuid.uuid4().hex[:8]}")
                os.replace(folder, retired)
                shutil.rmtree(retired, ignore_errors=True)
            self._prune_banks()
