"""``upstream.json``: which preset, world config and world version built a library, checked against
its schema before a world is rendered from it (a world of 10^9 test images is refused, not built),
and what every stage reads from it: the world a library was built on (:func:`world_of_library`).

``{"preset": name, "world": WorldConfig fields, "settings": {"world": ..., "world_version": int,
"backbone": name, "baseline": {...}, "expert": {...}, "seed": int}}``

A library built from a dataset on disk (``expertise upstream --data``) has ``"data"`` in place of
``"world"``: where the dataset is (``spec``, and the ``hierarchy`` and ``classes`` files it was read
with), its ``layout``, the ``fingerprint`` of its label index, its ``images`` and the ``holdout``
size (see :mod:`expertise.upstream.data_spec`); ``settings.data`` holds the fingerprint and holdout.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expertise import schema
from expertise.data.world import DOMAINS, WORLD_VERSION, World, WorldConfig
from expertise.data.world.catalogue import ALL_DOMAINS
from expertise.errors import ConfigError, LibraryError
from expertise.library.manifest import UPSTREAM as UPSTREAM_FILE

if TYPE_CHECKING:
    from expertise.library.core import Library

# Bounds on a stored world config (WorldConfig itself checks the lower ones).
_WORLD_INTS = {"seed": (0, 1 << 62), "resolution": (8, 256), "upstream_size": (1, 20_000_000),
               "holdout_size": (0, 2_000_000), "test_size": (1, 1_000_000)}


def check_world(d: Any, where: str) -> dict[str, Any]:
    """A WorldConfig as JSON: known fields only, integers where integers belong, within bounds."""
    d = schema.obj(d, where)
    schema.keys(d, where, optional=[f.name for f in fields(WorldConfig)])
    out: dict[str, Any] = {}
    for k, v in d.items():
        if k in _WORLD_INTS:
            out[k] = schema.integer(v, f"{where}.{k}", *_WORLD_INTS[k])
        elif k == "imbalance":
            out[k] = schema.number(v, f"{where}.{k}", 0.0, 100.0)
        elif k == "domains":
            if not isinstance(v, list) or not 1 <= len(v) <= len(ALL_DOMAINS):
                raise ConfigError(f"{where}.{k}: expected a list of 1 to {len(ALL_DOMAINS)} domain names")
            out[k] = [schema.string(x, f"{where}.{k}", choices=ALL_DOMAINS) for x in v]
    if "domain_weights" in d:  # one weight per domain (the default domains when none are named)
        n = len(out.get("domains", DOMAINS))
        out["domain_weights"] = list(schema.number_list(d["domain_weights"], f"{where}.domain_weights", 0.0, 1e6, n,
                                                        lo_open=True))
    return out


def world_config(d: Any, where: str) -> WorldConfig:
    try:
        return WorldConfig(**check_world(d, where))
    except (TypeError, ValueError) as e:  # pragma: no cover - check_world leaves nothing for these
        raise ConfigError(f"{where}: {e}") from None


LAYOUTS = ("folders", "manifest", "shards")
_PATH_LEN = 4096
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


def check_data(d: Any, where: str) -> dict[str, Any]:
    """The ``data`` block of a library built from a dataset on disk."""
    d = schema.obj(d, where)
    schema.keys(d, where, ("spec", "layout", "fingerprint", "images", "holdout"), ("hierarchy", "classes"))
    schema.string(d["spec"], f"{where}.spec", _PATH_LEN)
    schema.string(d["layout"], f"{where}.layout", choices=LAYOUTS)
    if not isinstance(d["fingerprint"], str) or not _FINGERPRINT.fullmatch(d["fingerprint"]):
        raise ConfigError(f"{where}.fingerprint: expected 64 hexadecimal digits")
    images = schema.integer(d["images"], f"{where}.images", 2, 1 << 40)
    schema.integer(d["holdout"], f"{where}.holdout", 1, images - 1)
    for k in ("hierarchy", "classes"):
        if d.get(k) is not None:
            schema.string(d[k], f"{where}.{k}", _PATH_LEN)
    return dict(d)


def check_upstream(meta: Any, where: str) -> dict[str, Any]:
    """The whole file, checked; returns it unchanged."""
    meta = schema.obj(meta, where)
    schema.keys(meta, where, ("preset", "settings"), ("world", "data"))
    schema.token(meta["preset"], f"{where}.preset")
    if meta.get("world"):
        check_world(meta["world"], f"{where}.world")
    if meta.get("data") is not None:
        if meta.get("world"):
            raise ConfigError(f"{where}: a library is built on the embedded world or on data from disk, not both")
        check_data(meta["data"], f"{where}.data")
    settings = schema.obj(meta["settings"], f"{where}.settings")
    if "world_version" in settings:
        schema.integer(settings["world_version"], f"{where}.settings.world_version", 1, 1_000_000)
    if "seed" in settings:
        schema.integer(settings["seed"], f"{where}.settings.seed", 0, 1 << 62)
    if settings.get("world"):
        check_world(settings["world"], f"{where}.settings.world")
    return dict(meta)


def config_digest(obj: Any) -> str:
    """A short digest of a JSON object (a build's settings), independent of key order."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def upstream_meta(library: Library) -> dict[str, Any] | None:
    """``upstream.json`` of a library, checked against its recorded hash and its schema (None for a
    library of external models)."""
    meta = library.read_meta(UPSTREAM_FILE)
    if meta is None:
        return None
    try:
        return check_upstream(meta, str(library.path / UPSTREAM_FILE))
    except ConfigError as e:
        raise LibraryError(f"{e}; restore it from a backup or rebuild the library") from None


def world_of_library(library: Library) -> World | None:
    """The embedded world a library was trained on, when it was (``upstream.json`` says so)."""
    meta = upstream_meta(library)
    if meta is None or not meta.get("world"):
        return None
    version = meta["settings"].get("world_version", 1)
    if version != WORLD_VERSION:
        raise LibraryError(f"the library at {library.path} was trained on version {version} of the embedded world; "
                           f"this expertise renders version {WORLD_VERSION}: build a new library (expertise upstream --library NEW, "
                           "or expertise demo --fresh)")
    return World(world_config(meta["world"], str(library.path / UPSTREAM_FILE)))


def upstream_meta_at(path: Path) -> dict[str, Any] | None:
    """``upstream.json`` of the library at ``path``, checked; None when there is no library yet."""
    from expertise.library.core import Library
    from expertise.library.manifest import MANIFEST

    return upstream_meta(Library.open(path)) if (Path(path) / MANIFEST).exists() else None
