"""The one reader of JSON and TOML from disk: bounded before it parses.

A library, a pool file, a suite file, a kept model or a record may come from someone else, so its
text is checked before Python's parsers build anything from it: its size (``max_bytes``), its
nesting depth (``MAX_DEPTH``: the parsers recurse, and 100,000 nested arrays end in a
RecursionError), and, for JSON, no key twice in one object (Python keeps the last silently). Each
failure is one :class:`~expertise.errors.ConfigError` that names the file; callers that speak of a
library turn it into their own error. Counts (members of a manifest, nodes of a hierarchy) are
bounded by the readers of those files, right after parsing and before building anything.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from expertise.errors import ConfigError

class ReadError(ConfigError):
    """A file this reader refuses: ``where`` it is and the ``reason`` (the message is both)."""

    def __init__(self, where: str, reason: str, sep: str = ": ") -> None:
        super().__init__(f"{where}{sep}{reason}")
        self.where, self.reason = where, reason


MAX_DEPTH = 64                 # nesting of arrays and objects; the project's own files need under 10
MAX_BYTES = 64 << 20           # a JSON or TOML file; a library manifest of 20,000 members is about 40 MB
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
# TOML's four string forms, multi-line ones first; what is left holds the structure's brackets.
_TOML_STRING = re.compile(rb'"""(?:[^\\]|\\.)*?"""|\'\'\'.*?\'\'\'|"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'', re.S)
_TOML_COMMENT = re.compile(rb"#[^\n]*")


def nesting_depth(skeleton_bytes: bytes) -> int:
    """The deepest nesting of ``[``/``{`` in ``skeleton_bytes`` (a text with its strings and comments
    taken out), in linear time and without recursion."""
    skeleton = np.frombuffer(skeleton_bytes, dtype=np.uint8)
    if skeleton.size == 0:
        return 0
    step = np.isin(skeleton, (ord("["), ord("{"))).astype(np.int64) - np.isin(skeleton, (ord("]"), ord("}")))
    return int(np.cumsum(step).max(initial=0))


def _no_duplicates(where: str):
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise ReadError(where, f"the key {k!r} appears twice in one object; keep one")
            out[k] = v
        return out
    return hook


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (a number must be finite)")


def _bounded(data: bytes, where: str, max_bytes: int, max_depth: int, skeleton: Any) -> None:
    """``data`` within ``max_bytes``, and the structure ``skeleton(data)`` leaves within ``max_depth``."""
    if len(data) > max_bytes:
        raise ReadError(where, f"{len(data):,} bytes, more than the {max_bytes:,} this reader takes")
    depth = nesting_depth(skeleton(data))
    if depth > max_depth:
        raise ReadError(where, f"nested {depth} levels deep, more than the {max_depth} this reader takes")


def loads_json(text: str | bytes, where: str, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """JSON ``text`` parsed after its size and depth are checked, duplicate keys refused."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    _bounded(data, where, max_bytes, max_depth, lambda d: _JSON_STRING.sub(b"", d))
    try:
        return json.loads(data, object_pairs_hook=_no_duplicates(where), parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError, as is a NaN
        raise ReadError(where, f"not valid JSON ({e})") from None
    except RecursionError:  # unreachable below MAX_DEPTH; kept so no reader ever ends in a traceback
        raise ReadError(where, "nested too deep to read") from None


def loads_toml(text: str, where: str, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """TOML ``text`` parsed after its size and depth are checked (tomllib refuses duplicate keys itself)."""
    _bounded(text.encode("utf-8"), where, max_bytes, max_depth,
             lambda d: _TOML_COMMENT.sub(b"", _TOML_STRING.sub(b"", d)))
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ReadError(where, f"is not valid TOML: {e}", sep=" ") from None
    except RecursionError:
        raise ReadError(where, "nested too deep to read") from None


def read_json(path: Path, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON file at ``path``, bounded (:func:`loads_json`); its size is checked before it is read.
    A missing or unreadable file raises OSError, for the caller to say what to do."""
    size = path.stat().st_size
    if size > max_bytes:
        raise ReadError(str(path), f"{size:,} bytes, more than the {max_bytes:,} this reader takes")
    return loads_json(path.read_bytes(), str(path), max_bytes, max_depth)
