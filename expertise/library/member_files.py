"""A member's files as :class:`~expertise.library.core.Library` reads them: what is wrong with them
(missing, modified, outside the library), whether the config builds exactly the tensors stored
(from the safetensors headers alone), the tensors themselves and the label prior."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from expertise.errors import LibraryError
from expertise.io import atomic_save_safetensors, atomic_write_json, sha256_file
from expertise.library import banks, checks
from expertise.library.manifest import CONFIG, PRIOR, WEIGHTS, bank_config_path, bank_of

if TYPE_CHECKING:
    from expertise.library.core import Library


def problems(lib: Library, name: str) -> list[str]:
    """What is wrong with one member's files (missing, modified, leading outside the library, or
    for an adapter expert a backbone that changed since its adapters were trained); [] when intact."""
    info, folder = lib.info(name), lib.member_dir(name)
    if not folder.is_dir():
        return [f"member {name!r}: folder {folder} is missing"]
    bank = bank_of(info)
    required = (CONFIG, WEIGHTS) if bank is None else (CONFIG, bank, bank_config_path(bank))
    found = [f"member {name!r}: manifest lists no {f}" for f in required if f not in info.files]
    for fname, digest in info.files.items():
        f = lib.file_path(name, fname)
        if f is None:
            found.append(f"member {name!r}: manifest lists a file {fname!r} outside the library; restore library.json")
        elif checks.outside(f, lib.path):
            found.append(f"member {name!r}: {f} leads outside the library (a symbolic link); copy the file into it")
        elif not f.is_file():
            found.append(f"member {name!r}: file {f} is missing")
        elif sha256_file(f) != digest:
            found.append(f"member {name!r}: {f} was modified since it was written (sha256 mismatch)")
    if bank is not None:
        found += banks.member_problems(lib, name, info, bank)
    return found


def check_intact(lib: Library, name: str) -> None:
    """Raise one LibraryError listing :func:`problems`, if any."""
    found = problems(lib, name)
    if found:
        raise LibraryError(f"member {name!r} was modified since it was written; re-create it or restore it ({'; '.join(found)})")


def check_loadable(lib: Library, name: str) -> dict[str, Any]:
    """The member's config, after checking, on the meta device and from the safetensors headers
    alone, that it builds exactly the tensors stored: nothing is allocated."""
    info, cfg = lib.info(name), lib.config(name)
    expected, dtypes = checks.expected_signature(cfg, lib.member_dir(name) / CONFIG)
    bank = bank_of(info)
    if bank is None:
        stored = checks.header_shapes(lib.member_dir(name) / WEIGHTS, name)
        stored_dtypes = checks.header_dtypes(lib.member_dir(name) / WEIGHTS, name)
    else:
        stored = banks.expert_header_shapes(lib, name, info, bank)
        stored_dtypes = banks.expert_header_shapes(lib, name, info, bank, dtypes=True)
    checks.match_shapes(name, expected, stored)
    checks.match_dtypes(name, dtypes, stored_dtypes)
    if PRIOR in info.files:
        prior = checks.header_shapes(lib.member_dir(name) / PRIOR, name)
        n = None if lib.hierarchy is None else len(lib.hierarchy.label_nodes)
        if set(prior) != {"prior"} or len(prior["prior"]) != 1 or (n is not None and prior["prior"] != (n,)):
            raise LibraryError(f"member {name!r}: {PRIOR} must hold one 'prior' vector [{n or 'label nodes'}], "
                               f"holds {prior}; re-create the member")
    return cfg


def load_tensors(f: Path, name: str, prefix: str | None = None) -> dict[str, torch.Tensor]:
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


def label_prior(lib: Library, name: str) -> torch.Tensor | None:
    """float64 [num_label_nodes], or None when the member has no label prior. Always verified."""
    info = lib.info(name)
    if PRIOR not in info.files:
        return None
    f = lib.member_dir(name) / PRIOR
    if checks.outside(f, lib.path) or not f.is_file() or sha256_file(f) != info.files[PRIOR]:
        raise LibraryError(f"member {name!r}: {f} was modified since it was written or is missing; re-create it or restore it")
    tensors = load_tensors(f, name)
    if set(tensors) != {"prior"} or tensors["prior"].ndim != 1:
        raise LibraryError(f"member {name!r}: {f} must hold one 'prior' vector; re-create the member")
    return tensors["prior"].to(torch.float64)


def write_member(folder: Path, name: str, config: dict[str, Any], state: dict[str, torch.Tensor],
                 prior: torch.Tensor | None) -> dict[str, str]:
    """A member's files (config, weights, optional label prior) written into the new folder
    ``folder``; returns each file's sha256 (the manifest entry's ``files``)."""
    folder.mkdir(parents=True)
    atomic_write_json(folder / CONFIG, config)
    atomic_save_safetensors(folder / WEIGHTS, state, metadata={"format": "pt", "member": name})
    if prior is not None:
        atomic_save_safetensors(folder / PRIOR, {"prior": prior}, metadata={"member": name})
    return {f.name: sha256_file(f) for f in sorted(folder.iterdir())}
