"""Validation of JSON read from disk, before anything is built from it.

A library, a Hugging Face folder or a pool file may come from someone else: every value read from
one is checked here for its type and its bounds before a tensor is allocated or a constructor
runs. Each check raises :class:`~expertise.errors.ConfigError` with the file (``where``), the key and
what was expected, so the user gets one line that names what to fix.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from expertise.errors import ConfigError

# A plain token: architecture names, tags, layer names. Never a path, a URL or a module reference.
_TOKEN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}$")


def obj(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def keys(d: Mapping[str, Any], where: str, required: Iterable[str] = (), optional: Iterable[str] = ()) -> None:
    """Every required key present, nothing unknown."""
    required, optional = set(required), set(optional)
    missing = sorted(required - set(d))
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    unknown = sorted(set(d) - required - optional)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; expected {sorted(required | optional)}")


def integer(value: Any, where: str, lo: int, hi: int) -> int:
    """An int (a JSON integer, not 1e9 nor true) in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: expected an integer in [{lo}, {hi}], got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"{where}: {value} is outside [{lo}, {hi}]")
    return int(value)


def number(value: Any, where: str, lo: float, hi: float, lo_open: bool = False) -> float:
    """A finite int or float in [lo, hi] (or (lo, hi] with ``lo_open``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number in {'(' if lo_open else '['}{lo}, {hi}], got {value!r}")
    if not (lo < value if lo_open else lo <= value) or value > hi:
        raise ConfigError(f"{where}: {value} is outside {'(' if lo_open else '['}{lo}, {hi}]")
    return float(value)


def boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    return value


def string(value: Any, where: str, max_len: int = 256, choices: Iterable[str] | None = None) -> str:
    if not isinstance(value, str) or len(value) > max_len:
        raise ConfigError(f"{where}: expected a string of at most {max_len} characters, got {str(value)[:60]!r}")
    if choices is not None:
        options = tuple(choices)
        if value not in options:
            raise ConfigError(f"{where}: expected one of {', '.join(options)}, got {value!r}")
    return value


def token(value: Any, where: str) -> str:
    """A name such as an architecture, a tag or a layer: letters, digits and ``_ . + -`` only, so
    never a path, a URL or anything a loader could open."""
    if not isinstance(value, str) or not _TOKEN.fullmatch(value) or ".." in value:
        raise ConfigError(f"{where}: expected a plain name (letters, digits, '_', '.', '+', '-'), got {str(value)[:60]!r}")
    return value


def int_list(value: Any, where: str, lo: int, hi: int, min_len: int = 1, max_len: int = 16) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not min_len <= len(value) <= max_len:
        raise ConfigError(f"{where}: expected a list of {min_len}-{max_len} integers, got {str(value)[:60]!r}")
    return tuple(integer(v, f"{where}[{i}]", lo, hi) for i, v in enumerate(value))


def number_list(value: Any, where: str, lo: float, hi: float, length: int, lo_open: bool = False) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or len(value) != length:
        raise ConfigError(f"{where}: expected a list of {length} numbers, got {str(value)[:60]!r}")
    return tuple(number(v, f"{where}[{i}]", lo, hi, lo_open) for i, v in enumerate(value))


def plain_value(value: Any, where: str, depth: int = 0) -> Any:
    """A JSON scalar (strings plain tokens), or a short list of such: the only values accepted as
    keyword arguments of a model constructor."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return integer(value, where, -(1 << 31), 1 << 31)
    if isinstance(value, float):
        return number(value, where, -1e9, 1e9)
    if isinstance(value, str):
        return token(value, where)
    if isinstance(value, (list, tuple)) and depth < 2 and len(value) <= 64:
        return [plain_value(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    raise ConfigError(f"{where}: expected a number, a boolean, a plain name or a short list of them, got {str(value)[:60]!r}")
