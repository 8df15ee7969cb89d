"""BiT-style ResNet-v2 backbones (pre-activation, GroupNorm, weight-standardised convolutions),
built with timm, and the pool-member contract every model in a library obeys.

A pool member is an ``nn.Module`` with

* ``embed(x) -> [N, D]``: the pre-logits representation (what selection and kNN use),
* ``upstream_logits(x) -> [N, L]`` where it has an upstream head (label matching, LEEP),
* ``preprocessing``: input size, mean and std, kept with the weights,
* ``member_config() -> dict``: JSON that rebuilds the module (``model_from_config``).

``x`` is always a float tensor [N, 3, S, S] already prepared with :func:`prepare`
(:mod:`expertise.models.preprocess`, re-exported here).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import torch
from timm.layers import GroupNormAct, StdConv2d
from timm.models.resnetv2 import ResNetV2
from torch import nn

from expertise import schema
from expertise.errors import ConfigError
from expertise.registry import Registry
from expertise.models.preprocess import MAX_INPUT_SIZE, Preprocessing, prepare

__all__ = ["MAX_INPUT_SIZE", "Preprocessing", "prepare"]  # re-exported: the member contract's preprocessing

# Bounds on what a member config may ask for, checked before anything is allocated (a library may
# come from someone else): BiT-L R152x4 has 8,192 channels and ImageNet-21k about 23k label nodes.
MAX_WIDTH, MAX_OUTPUTS = 8192, 1 << 20
HEAD_KINDS = ("upstream", "task")


@dataclass(frozen=True)
class BackboneConfig:
    """A ResNet-v2 shape. ``stem='small'`` is a single 3x3 convolution for low-resolution inputs;
    ``stem='bit'`` is BiT's 7x7 stride-2 convolution with max pooling (for 128 px and up)."""

    name: str = "bit_s"
    channels: tuple[int, ...] = (32, 64, 128, 256)
    layers: tuple[int, ...] = (1, 1, 1, 1)
    basic: bool = True
    stem: str = "small"
    stem_stride: int = 2
    stem_channels: int | None = None
    groups: int = 8
    resolution: int = 32

    def __post_init__(self) -> None:
        if len(self.channels) != len(self.layers):
            raise ConfigError(f"backbone {self.name}: {len(self.channels)} channel widths but {len(self.layers)} stage depths")
        if self.stem not in ("small", "bit"):
            raise ConfigError(f"backbone {self.name}: stem must be 'small' or 'bit', got {self.stem!r}")
        for c in (*self.channels, self.stem_width):
            if c % self.groups:
                raise ConfigError(f"backbone {self.name}: width {c} is not divisible by {self.groups} GroupNorm groups")

    @property
    def stem_width(self) -> int:
        return self.stem_channels or self.channels[0]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str = "backbone") -> BackboneConfig:
        """Checked against bounds before anything is built: widths up to 8,192 channels, up to 8
        stages of up to 64 blocks, resolution in [8, 2048]."""
        d = schema.obj(d, where)
        schema.keys(d, where, ("name", "channels", "layers"),
                    ("basic", "stem", "stem_stride", "stem_channels", "groups", "resolution"))
        stem_channels = d.get("stem_channels")
        return cls(
            name=schema.token(d["name"], f"{where}.name"),
            channels=schema.int_list(d["channels"], f"{where}.channels", 1, MAX_WIDTH, 1, 8),
            layers=schema.int_list(d["layers"], f"{where}.layers", 1, 64, 1, 8),
            basic=schema.boolean(d.get("basic", True), f"{where}.basic"),
            stem=schema.string(d.get("stem", "small"), f"{where}.stem", choices=("small", "bit")),
            stem_stride=schema.integer(d.get("stem_stride", 2), f"{where}.stem_stride", 1, 4),
            stem_channels=None if stem_channels is None else schema.integer(stem_channels, f"{where}.stem_channels", 1, MAX_WIDTH),
            groups=schema.integer(d.get("groups", 8), f"{where}.groups", 1, 512),
            resolution=schema.integer(d.get("resolution", 32), f"{where}.resolution", 8, MAX_INPUT_SIZE),
        )


# Named backbone shapes, like timm's registry: tests use bit_xs, the cpu demo bit_s, a GPU bit_r50x1.
BACKBONES: Registry[BackboneConfig] = Registry("backbone")
for _shape in (
    BackboneConfig("bit_xs", channels=(16, 32, 64, 128), groups=8, resolution=16, stem_stride=1),
    BackboneConfig("bit_s", channels=(32, 64, 128, 256), groups=8, resolution=32, stem_stride=2),
    BackboneConfig("bit_m", channels=(48, 96, 192, 384), layers=(1, 2, 2, 1), groups=8, resolution=32),
    BackboneConfig("bit_r50x1", channels=(256, 512, 1024, 2048), layers=(3, 4, 6, 3), basic=False,
                   stem="bit", stem_channels=64, groups=32, resolution=128),
):
    BACKBONES.register(_shape.name, _shape)


def create_backbone(cfg: BackboneConfig) -> ResNetV2:
    """A timm ResNetV2 without classifier (``num_classes=0``); ``forward_head(pre_logits=True)``
    after ``forward_features`` gives the pooled, normalised pre-logits representation."""
    norm = partial(GroupNormAct, num_groups=cfg.groups)
    net = ResNetV2(
        layers=list(cfg.layers), channels=cfg.channels, num_classes=0, stem_chs=cfg.stem_width,
        stem_type="fixed" if cfg.stem == "bit" else "", basic=cfg.basic,
        norm_layer=norm, conv_layer=StdConv2d, zero_init_last=True,
    )
    if cfg.stem == "small":
        net.stem = nn.Sequential(StdConv2d(3, cfg.stem_width, 3, stride=cfg.stem_stride, padding=1))
    return net


class HeadMixin:
    """The head half of the pool-member contract, shared by every member class that embeds with
    ``embed(x)`` and keeps ``head``, ``head_kind`` and ``num_features``: the upstream head until
    :meth:`reset_head` swaps in a new task head."""

    head: nn.Linear | None
    head_kind: str
    num_features: int

    def embed(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - every member defines it
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            raise ConfigError("this model has no head; call reset_head(num_classes) before training it")
        return self.head(self.embed(x))

    def upstream_logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.head is None or self.head_kind != "upstream":
            raise ConfigError("this model has no upstream head")
        return self.head(self.embed(x))

    @property
    def has_upstream_head(self) -> bool:
        return self.head is not None and self.head_kind == "upstream"

    def reset_head(self, num_classes: int) -> None:
        """Replace the head by a new, zero-initialised one for a downstream task (BiT's recipe)."""
        self.head = nn.Linear(self.num_features, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.head_kind = "task"


class ExpertModel(HeadMixin, nn.Module):
    """The project's own pool member: a ResNet-v2 backbone plus an optional linear head.

    The head is the upstream head (one logit per hierarchy label node) on upstream models, and a
    new, zero-initialised task head after :meth:`reset_head` for fine-tuning.
    """

    def __init__(self, backbone: BackboneConfig, num_outputs: int = 0, preprocessing: Preprocessing | None = None,
                 head_kind: str = "upstream") -> None:
        super().__init__()
        self.backbone_config = backbone
        self.preprocessing = preprocessing or Preprocessing(backbone.resolution)
        self.backbone = create_backbone(backbone)
        self.num_features = int(self.backbone.num_features)
        self.head_kind = head_kind
        self.head: nn.Linear | None = nn.Linear(self.num_features, num_outputs) if num_outputs else None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)

    def member_config(self) -> dict[str, Any]:
        return {
            "class": "ExpertModel",
            "backbone": self.backbone_config.to_json(),
            "num_outputs": 0 if self.head is None else self.head.out_features,
            "head_kind": self.head_kind,
            "preprocessing": self.preprocessing.to_json(),
        }


def _builtin_member_classes() -> None:
    """The member classes of this package beyond ExpertModel register themselves when imported."""
    from expertise.models import adapters, external, hf_transformers  # noqa: F401


# Builders ``config dict -> nn.Module`` by member class, so a library rebuilds every kind it stores.
MEMBER_CLASSES: Registry[Callable[[dict[str, Any]], nn.Module]] = Registry("member class", loader=_builtin_member_classes)


def register_member_class(name: str):
    """Register a builder ``config dict -> nn.Module`` so libraries can rebuild other member kinds
    (a decorator; a name taken by another builder is refused)."""
    return MEMBER_CLASSES(name)


def head_fields(cfg: dict[str, Any], where: str) -> tuple[int, str, Preprocessing]:
    """The checked ``num_outputs``, ``head_kind`` and ``preprocessing`` every member config has."""
    return (schema.integer(cfg["num_outputs"], f"{where}.num_outputs", 0, MAX_OUTPUTS),
            schema.string(cfg.get("head_kind", "upstream"), f"{where}.head_kind", choices=HEAD_KINDS),
            Preprocessing.from_json(cfg["preprocessing"], f"{where}.preprocessing"))


@register_member_class("ExpertModel")
def _build_expert_model(cfg: dict[str, Any]) -> ExpertModel:
    where = "ExpertModel config"
    schema.keys(cfg, where, ("class", "backbone", "num_outputs", "preprocessing"), ("head_kind",))
    num_outputs, head_kind, prep = head_fields(cfg, where)
    return ExpertModel(BackboneConfig.from_json(cfg["backbone"], f"{where}.backbone"), num_outputs, prep, head_kind)


def model_from_config(cfg: dict[str, Any]) -> nn.Module:
    """Rebuild an (untrained) member from its ``member_config()``; load weights separately."""
    schema.obj(cfg, "member config")
    return MEMBER_CLASSES.get(cfg.get("class"))(cfg)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
