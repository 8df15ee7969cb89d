"""``upstream.json``: which preset, world config and world version built a library, checked against
its schema before a world is rendered from it (a world of 10^9 test images is refused, not built).

``{"preset": name, "world": WorldConfig fields, "settings": {"world": ..., "world_version": int,
"backbone": name, "baseline": {...}, "expert": {...}, "seed": int}}``
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from expertise import schema
from expertise.data.world import DOMAINS, WorldConfig
from expertise.errors import ConfigError

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
        elif k == "domain_weights":
            out[k] = list(schema.number_list(v, f"{where}.{k}", 0.0, 1e6, len(DOMAINS), lo_open=True))
    return out


def world_config(d: Any, where: str) -> WorldConfig:
    try:
        return WorldConfig(**check_world(d, where))
    except (TypeError, ValueError) as e:  # pragma: no cover - check_world leaves nothing for these
        raise ConfigError(f"{where}: {e}") from None


def check_upstream(meta: Any, where: str) -> dict[str, Any]:
    """The whole file, checked; returns it unchanged."""
    meta = schema.obj(meta, where)
    schema.keys(meta, where, ("preset", "settings"), ("world",))
    schema.token(meta["preset"], f"{where}.preset")
    if meta.get("world"):
        check_world(meta["world"], f"{where}.world")
    settings = schema.obj(meta["settings"], f"{where}.settings")
    if "world_version" in settings:
        schema.integer(settings["world_version"], f"{where}.settings.world_version", 1, 1_000_000)
    if "seed" in settings:
        schema.integer(settings["seed"], f"{where}.settings.seed", 0, 1 << 62)
    if settings.get("world"):
        check_world(settings["world"], f"{where}.settings.world")
    return dict(meta)
