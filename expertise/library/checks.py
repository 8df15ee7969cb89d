"""What makes a stored member loadable, checked without allocating its weights: files present,
inside the library and matching their sha256; a config that passes its schema and rebuilds a
model on the meta device; safetensors headers whose tensor names and shapes are exactly what that
model expects. :meth:`Library.verify` runs all of them; :meth:`Library.load` runs them before it
allocates anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from expertise import reading
from expertise.errors import ExpertiseError, LibraryError
from expertise.io import TMP_SUFFIX
from expertise.library.manifest import ADAPTERS, MEMBERS, RETIRED, STAGING
from expertise.models.backbones import model_from_config

Shapes = dict[str, tuple[int, ...]]


def read_json(f: Path, what: str, fix: str) -> dict[str, Any]:
    """A JSON object from ``f``; every failure is one LibraryError naming the file and ``fix``."""
    try:
        data = reading.read_json(f)
    except FileNotFoundError:
        raise LibraryError(f"{f} is missing; {fix}") from None
    except OSError as e:
        raise LibraryError(f"{f} cannot be read ({e}); {fix}") from None
    except reading.ReadError as e:
        raise LibraryError(f"{f} cannot be read ({e.reason}); {fix}") from None
    if not isinstance(data, dict):
        raise LibraryError(f"{f} is not {what} (a JSON object); {fix}")
    return data


def read_config(f: Path) -> dict[str, Any]:
    cfg = read_json(f, "a member config", "re-create the member or restore it")
    if "class" not in cfg:
        raise LibraryError(f"{f} is not a member config (needs a 'class' key); re-create the member")
    return cfg


# safetensors' names of the dtypes a member's state dict holds
_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}


def expected_signature(config: dict[str, Any], where: Path) -> tuple[Shapes, dict[str, str]]:
    """The state-dict shapes and dtypes (safetensors' names) the config builds, on the meta device
    (no memory, no initialisation); the config's schema is checked first, so a hostile config never
    reaches a constructor."""
    try:
        json.dumps(config)
        with torch.device("meta"):
            model = model_from_config(config)
        state = model.state_dict()
        return ({k: tuple(v.shape) for k, v in state.items()},
                {k: _DTYPES.get(v.dtype, str(v.dtype)) for k, v in state.items()})
    except (ExpertiseError, KeyError, TypeError, ValueError, RuntimeError) as e:
        raise LibraryError(f"{where} does not rebuild a model ({e}); re-create the member") from None


def expected_shapes(config: dict[str, Any], where: Path) -> Shapes:
    """The state-dict shapes the config builds (:func:`expected_signature`)."""
    return expected_signature(config, where)[0]


def header_dtypes(f: Path, owner: str, prefix: str | None = None) -> dict[str, str]:
    """Tensor names and dtypes (``F32``, ``I64``, ...) from a safetensors header, reading no tensor data."""
    try:
        with safe_open(str(f), framework="pt") as fh:
            return {k: fh.get_slice(k).get_dtype() for k in fh.keys() if prefix is None or k.startswith(prefix)}
    except (SafetensorError, OSError, ValueError) as e:
        raise LibraryError(f"member {owner!r}: {f} is not a readable safetensors file ({e}); re-create the member") from None


def match_dtypes(name: str, expected: dict[str, str], stored: dict[str, str]) -> None:
    """Each stored tensor has the dtype its config builds (a float tensor relabelled as integers is refused)."""
    wrong = sorted(k for k in expected.keys() & stored.keys() if expected[k] != stored[k])
    if wrong:
        raise LibraryError(f"member {name!r}: tensor {wrong[0]!r} is stored as {stored[wrong[0]]}, its config builds "
                           f"{expected[wrong[0]]}" + (f" ({len(wrong)} such tensors)" if len(wrong) > 1 else "")
                           + "; re-create the member")


def header_shapes(f: Path, owner: str, prefix: str | None = None) -> Shapes:
    """Tensor names and shapes from a safetensors header (only those starting with ``prefix``),
    reading no tensor data."""
    try:
        with safe_open(str(f), framework="pt") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys() if prefix is None or k.startswith(prefix)}
    except FileNotFoundError:
        raise LibraryError(f"member {owner!r}: {f} is missing; re-create the member or restore it") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise LibraryError(f"member {owner!r}: {f} is not a readable safetensors file ({e}); re-create the member") from None


def match_shapes(name: str, expected: Shapes, stored: Shapes) -> None:
    if expected != stored:
        diff = sorted(set(expected.items()) ^ set(stored.items()))[:3]
        raise LibraryError(f"member {name!r}: weights do not match its config (e.g. {diff}); re-create the member")


def outside(path: Path, root: Path) -> bool:
    """True when ``path`` (following links) leads outside ``root``."""
    try:
        return not path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a link loop
        return True


def leftovers(root: Path) -> list[Path]:
    """Temporary files and staging folders that interrupted writes leave behind."""
    found = [f for f in root.glob(f".*{TMP_SUFFIX}")]
    for folder in (root / MEMBERS, root / ADAPTERS):
        if folder.is_dir():
            for d in folder.iterdir():
                if d.name.startswith((STAGING, RETIRED)) or (d.name.startswith(".") and d.name.endswith(TMP_SUFFIX)):
                    found.append(d)
                elif d.is_dir() and folder.name == MEMBERS:
                    found += d.glob(f".*{TMP_SUFFIX}")
    return sorted(found)
