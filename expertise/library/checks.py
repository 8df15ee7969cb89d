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

from expertise.errors import ExpertiseError, LibraryError
from expertise.io import TMP_SUFFIX
from expertise.library.manifest import ADAPTERS, MEMBERS, RETIRED, STAGING
from expertise.models.backbones import model_from_config

Shapes = dict[str, tuple[int, ...]]


def read_json(f: Path, what: str, fix: str) -> dict[str, Any]:
    """A JSON object from ``f``; every failure is one LibraryError naming the file and ``fix``."""
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LibraryError(f"{f} is missing; {fix}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LibraryError(f"{f} cannot be read ({e}); {fix}") from None
    if not isinstance(data, dict):
        raise LibraryError(f"{f} is not {what} (a JSON object); {fix}")
    return data


def read_config(f: Path) -> dict[str, Any]:
    cfg = read_json(f, "a member config", "re-create the member or restore it")
    if "class" not in cfg:
        raise LibraryError(f"{f} is not a member config (needs a 'class' key); re-create the member")
    return cfg


def expected_shapes(config: dict[str, Any], where: Path) -> Shapes:
    """The state-dict shapes the config builds, on the meta device (no memory, no initialisation);
    the config's schema is checked first, so a hostile config never reaches a constructor."""
    try:
        json.dumps(config)
        with torch.device("meta"):
            model = model_from_config(config)
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}
    except (ExpertiseError, KeyError, TypeError, ValueError, RuntimeError) as e:
        raise LibraryError(f"{where} does not rebuild a model ({e}); re-create the member") from None


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
