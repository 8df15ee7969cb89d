"""Named scale presets. A preset is a config, not a code path: ``cpu`` for the demo on two cores
(minutes) is the base, and every other preset is a small diff of it (``VARIANTS``): ``tiny`` for
tests (seconds), ``gpu`` for an accelerator (BiT R50x1, whose input is 128 px, on 300,000
upstream images rendered at 64 px).

Every field can be overridden: ``get_preset("cpu", num_experts=4)`` or, from the command line,
``--set num_experts=4``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from expertise.data.world import WorldConfig
from expertise.data.world.catalogue import ALL_DOMAINS
from expertise.errors import ConfigError
from expertise.train import TrainConfig


@dataclass(frozen=True)
class Preset:
    name: str
    world: WorldConfig
    backbone: str                      # a key of expertise.models.backbones.BACKBONES
    baseline: TrainConfig              # baseline B on all upstream data
    expert: TrainConfig                # each full expert: B tuned on one node's slice, same steps for all
    num_experts: int                   # K: the top-K hierarchy nodes by subtree image count
    finetune: TrainConfig              # downstream: new zero-init head, whole network tuned
    epn: TrainConfig = TrainConfig(steps=60, batch_size=64, lr=0.1, warmup_steps=5, weight_decay=1e-4)
    epn_backbone: str = ""             # the expert prediction network's shape; "" = the preset's backbone
    adapter: TrainConfig = TrainConfig(steps=10, batch_size=32, lr=0.05, warmup_steps=2, weight_decay=1e-4)
    adapter_experts: bool = True       # also build adapter experts for the same K nodes (one bank on B)
    adapter_scaled: bool = False       # adapters' output scaled by the stream's RMS (models/adapters.py)
    tasks: tuple[str, ...] = ()        # the demo's tasks; empty means every built-in task
    embed_batch: int = 500
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


# World version 3: every domain, glyphs at 0.3 (docs/world.md); the cpu and gpu presets draw it.
SIX_DOMAINS: dict[str, Any] = {"domains": ALL_DOMAINS, "domain_weights": (0.3,) + (1.0,) * (len(ALL_DOMAINS) - 1)}

# The base preset, `cpu`: world version 3 (six domains) and the settings that make choosing pay,
# docs/world.md: experts trained until they forget the other domains (1,000 steps at 0.1), fine-tunes
# short enough (150 steps) for the initialisation to matter, B shorter (3,000) to pay for both.
# Scaled adapters (x + rms(x) A(x)) trained 600 steps at 0.1: plain ones add under 5% to the growing
# residual stream and stay B (docs/world.md, "Why adapter experts sit on B").
CPU = Preset(
    name="cpu",
    world=WorldConfig(seed=0, resolution=32, upstream_size=60_000, holdout_size=5_000, test_size=1_000, **SIX_DOMAINS),
    backbone="bit_s",
    baseline=TrainConfig(steps=3_000, batch_size=128, lr=0.1, warmup_steps=200, weight_decay=1e-4),
    expert=TrainConfig(steps=1_000, batch_size=128, lr=0.1, warmup_steps=50, weight_decay=1e-4),
    num_experts=8,
    finetune=TrainConfig(steps=150, batch_size=64, lr=0.01, warmup_steps=15),
    epn=TrainConfig(steps=500, batch_size=128, lr=0.1, warmup_steps=50, weight_decay=1e-4),
    adapter=TrainConfig(steps=600, batch_size=64, lr=0.1, warmup_steps=30, weight_decay=1e-4),
    adapter_scaled=True,
)

# Every other preset is the base with what differs (dotted fields, as --set takes them).
VARIANTS: dict[str, dict[str, Any]] = {
    # seconds, for tests and smoke runs: the three-domain world at 16 px, bit_xs, plain adapters
    "tiny": {
        "world.resolution": 16, "world.upstream_size": 3_000, "world.holdout_size": 500, "world.test_size": 300,
        "world.domains": WorldConfig().domains, "world.domain_weights": WorldConfig().domain_weights,
        "backbone": "bit_xs",
        "baseline.steps": 120, "baseline.batch_size": 64, "baseline.warmup_steps": 10,
        "expert.steps": 30, "expert.batch_size": 64, "expert.lr": 0.03, "expert.warmup_steps": 5,
        "num_experts": 3,
        "finetune.steps": 40, "finetune.batch_size": 32, "finetune.warmup_steps": 5,
        "epn.steps": 60, "epn.batch_size": 64, "epn.warmup_steps": 5,
        "adapter.steps": 10, "adapter.batch_size": 32, "adapter.lr": 0.05, "adapter.warmup_steps": 2,
        "adapter_scaled": False,
        "tasks": ("glyph_digits", "count", "sklearn_digits"), "embed_batch": 256,
    },
    # an accelerator: BiT R50x1 (128-px input) on 300,000 upstream images rendered at 64 px
    "gpu": {
        "world.resolution": 64, "world.upstream_size": 300_000, "world.holdout_size": 10_000, "world.test_size": 2_000,
        "backbone": "bit_r50x1",
        "baseline.steps": 10_000, "baseline.batch_size": 256, "baseline.warmup_steps": 500,
        "expert.steps": 2_000, "expert.batch_size": 256, "expert.lr": 0.03, "expert.warmup_steps": 100,
        "num_experts": 12,
        "finetune.steps": 500, "finetune.batch_size": 128, "finetune.warmup_steps": 50,
        "epn.steps": 3_000, "epn.batch_size": 256, "epn.warmup_steps": 200,
        "adapter.steps": 2_000, "adapter.batch_size": 128, "adapter.lr": 0.05, "adapter.warmup_steps": 100,
        "embed_batch": 256,
    },
}


def _coerce(current: Any, value: str) -> Any:
    if isinstance(current, bool):  # a typo is an error, not a silent false
        words = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
        if value.lower() not in words:
            raise ValueError(value)
        return words[value.lower()]
    if isinstance(current, int):
        return int(value)
    if isinstance(current, float):
        return float(value)
    if isinstance(current, tuple):
        return tuple(v for v in value.split(",") if v)
    return value


def get_preset(name: str, overrides: dict[str, Any] | None = None) -> Preset:
    """Look up a preset and apply overrides. Keys may be dotted (``baseline.steps``, ``world.seed``);
    string values are converted to the field's type, so command-line ``--set`` works."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    items = [(key.split("."), value, key) for key, value in (overrides or {}).items()]
    return _apply(PRESETS[name], items)


def _apply(obj: Any, items: list[tuple[list[str], Any, str]]) -> Any:
    """Every override of one dataclass applied in a single ``replace``, so settings that are checked
    together (``steps`` and ``warmup_steps``) can change together."""
    names = {f.name for f in dataclasses.fields(obj)}
    changes: dict[str, Any] = {}
    nested: dict[str, list[tuple[list[str], Any, str]]] = {}
    for path, value, full in items:
        if path[0] not in names:
            raise ConfigError(f"unknown setting {full!r}; {type(obj).__name__} has {sorted(names)}")
        current = getattr(obj, path[0])
        if len(path) > 1:
            if not dataclasses.is_dataclass(current):
                raise ConfigError(f"setting {full!r}: {path[0]} has no sub-settings")
            nested.setdefault(path[0], []).append((path[1:], value, full))
        else:
            try:
                changes[path[0]] = _coerce(current, value) if isinstance(value, str) else value
            except ValueError:
                raise ConfigError(f"setting {full!r} takes {type(current).__name__} values, got {value!r}") from None
    for field_name, sub in nested.items():
        changes[field_name] = _apply(getattr(obj, field_name), sub)
    try:
        return dataclasses.replace(obj, **changes)
    except (TypeError, ValueError) as e:
        what = ", ".join(full for _, _, full in items)
        raise ConfigError(f"setting {what}: {e}") from None
    except ConfigError as e:
        what = ", ".join(full for _, _, full in items)
        raise ConfigError(f"setting {what}: {e}") from None


def parse_overrides(items: list[str]) -> dict[str, str]:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": "1", "c": "x"}`` with a clear error for a malformed item."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. baseline.steps=100), got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _variant(name: str, changes: dict[str, Any]) -> Preset:
    return _apply(CPU, [(["name"], name, "name")] + [(key.split("."), value, key) for key, value in changes.items()])


PRESETS: dict[str, Preset] = {"tiny": _variant("tiny", VARIANTS["tiny"]), "cpu": CPU,
                              **{name: _variant(name, d) for name, d in VARIANTS.items() if name != "tiny"}}
