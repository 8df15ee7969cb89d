"""Atomic file writes and hashing: a write goes to a temporary name in the same folder and is
renamed into place, so a crash never leaves a half-written file under the real name.

Files get the permissions of an ordinary ``open`` (0666 less the umask), so a library in a
group-writable folder under ``umask 002`` is shared with the group. Safetensors files are
byte-identical for identical tensors and metadata (their header is written with sorted metadata
keys), so a rebuilt member has the same sha256. A failure of the disk (no space, read-only,
permission denied) is raised as one :class:`~expertise.errors.DiskError` naming the path.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from expertise.errors import disk_error

TMP_SUFFIX = ".tmp"  # temporary files are ".<name>.<random>.tmp" beside their target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        write(Path(tmp))
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise disk_error(e, path) from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def safetensors_bytes(tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The safetensors serialisation with its metadata keys sorted. safetensors writes metadata
    from a hash map, in an order that changes from process to process; rewriting the header (same
    length, keys sorted) makes the bytes a function of the tensors and metadata alone."""
    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    if not metadata or len(metadata) < 2:
        return data
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    if len(text) > n:  # cannot happen (same content, same length); keep safetensors' own bytes then
        return data
    return data[:8] + text + b" " * (n - len(text)) + data[8 + n:]


def atomic_save_safetensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
