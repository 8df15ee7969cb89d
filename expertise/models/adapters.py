"""Residual adapter experts (paper 000, section 4.1 and figure 3).

An adapter is a small bottleneck with its own skip connection, ``a(x) = x + A2(A1(x))``, where each
component ``Ai`` is GroupNorm -> ReLU -> 1x1 convolution; ``A1`` maps the ``c`` input channels to
``k = c / reduction`` and ``A2`` maps them back. With the default ``reduction = 2`` the two
convolutions hold ``c * c`` weights, as many as a single linear (1x1, c -> c) adapter, which is the
paper's sizing. The last convolution starts at zero, so a new adapter is exactly the identity and an
untrained adapter expert computes exactly what the baseline B computes: training starts from B.

One adapter sits before each of the backbone's stages (figure 3a): ``x_i = F_i(a_i(x_{i-1}))``. The
stem is shared by every expert, so several experts can embed one batch while computing the stem
once, which is what "apply the specific expert and ignore the remaining ones" costs in practice.

``scaled`` adapters compute ``x + rms(x) A2(A1(x))``, rms(x) the root mean square of each image's
input (over channels and positions). A pre-activation ResNet's residual stream grows from stage to
stage, while ``A2(A1(x))`` starts from GroupNormed activations whatever x's scale, so a plain
adapter's weights must grow with the stream it joins and learn that much more slowly: in the
``cpu`` preset's bank the plain adapters after the first stage add 0.3-5% of the stream (the first
9-25%), and the experts' upstream accuracy on their own slices stays within a point of B's on 7 of
8 nodes (perf/world_study.md, ``v3-adapters``). Scaling the output by the stream's size makes the
adapter equivariant to it (``a(cx) = c a(x)``) and gives every stage's adapter the same effective
learning rate (same training: 11-38% at every stage, ``v3-adapters-scaled``). The last convolution
still starts at zero, so a scaled adapter also starts as the identity. The plain form is the
default, and what every library built before has.

Two modules use the adapters:

* :class:`AdapterBank` holds one shared :class:`ExpertModel` (backbone and upstream head, frozen
  during upstream training) and the adapters of many experts, keyed by hierarchy node. It is what
  trains (all experts in one job) and what is stored once in a library.
* :class:`AdapterExpert` is one expert materialised as an ordinary pool member: backbone, that
  expert's adapters and a head. It is what selection embeds with and what fine-tuning tunes (the
  whole network, adapters included, paper section 5.1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from expertise import schema
from expertise.errors import ConfigError
from expertise.models.backbones import (
    BackboneConfig, ExpertModel, HeadMixin, Preprocessing, count_parameters, create_backbone, head_fields, register_member_class,
)
from expertise.models.forward import run_batches

DEFAULT_REDUCTION = 2
MAX_GROUPS = 32


def group_count(channels: int, max_groups: int = MAX_GROUPS) -> int:
    """The largest divisor of ``channels`` that is at most ``max_groups``: GroupNorm needs the
    groups to divide the channels, and 32 is GroupNorm's usual choice where it does."""
    if channels < 1:
        raise ConfigError(f"an adapter needs at least one channel, got {channels}")
    return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


def bottleneck_width(channels: int, reduction: int = DEFAULT_REDUCTION) -> int:
    """k, the channels between the adapter's two components."""
    if reduction < 1:
        raise ConfigError(f"adapter reduction must be >= 1, got {reduction}")
    return max(1, channels // reduction)


def adapter_channels(cfg: BackboneConfig) -> tuple[int, ...]:
    """Input channels of each stage, i.e. where the adapters go: the stem's width, then the output
    width of every stage but the last (timm's ResNetV2 stage i outputs ``channels[i]``)."""
    return (cfg.stem_width, *cfg.channels[:-1])


class Adapter(nn.Module):
    """``x + A2(A1(x))`` with ``Ai`` = GroupNorm -> ReLU -> 1x1 conv (figure 3b).

    The first convolution has no bias (GroupNorm follows it and has its own shift); the last has
    one, and both its weight and bias start at zero so the adapter starts as the identity.
    ``scaled``: ``x + rms(x) A2(A1(x))`` instead (see the module docstring); same parameters.
    """

    def __init__(self, channels: int, reduction: int = DEFAULT_REDUCTION, scaled: bool = False) -> None:
        super().__init__()
        k = bottleneck_width(channels, reduction)
        self.channels = channels
        self.scaled = bool(scaled)
        self.branch = nn.Sequential(
            nn.GroupNorm(group_count(channels), channels), nn.ReLU(), nn.Conv2d(channels, k, 1, bias=False),
            nn.GroupNorm(group_count(k), k), nn.ReLU(), nn.Conv2d(k, channels, 1, bias=True),
        )
        last = self.branch[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scaled:
            return x + x.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt() * self.branch(x)
        return x + self.branch(x)


class AdapterStack(nn.ModuleList):
    """One expert's adapters, one per backbone stage, in stage order."""

    def __init__(self, channels: Sequence[int], reduction: int = DEFAULT_REDUCTION, scaled: bool = False) -> None:
        super().__init__([Adapter(c, reduction, scaled) for c in channels])

    @property
    def scaled(self) -> bool:
        return all(a.scaled for a in self)  # type: ignore[attr-defined]


def adapter_parameter_count(channels: int, reduction: int = DEFAULT_REDUCTION) -> int:
    """Parameters of one :class:`Adapter`, by hand: two GroupNorms (scale and shift per channel),
    a c -> k convolution without bias and a k -> c convolution with bias."""
    c, k = channels, bottleneck_width(channels, reduction)
    return 2 * c + c * k + 2 * k + k * c + c


def expert_adapter_parameters(cfg: BackboneConfig, reduction: int = DEFAULT_REDUCTION) -> int:
    """Parameters one adapter expert adds to the backbone (one adapter before each stage)."""
    return sum(adapter_parameter_count(c, reduction) for c in adapter_channels(cfg))


def backbone_parameters(cfg: BackboneConfig) -> int:
    """Parameters of the backbone alone (no head), counted on the meta device: no memory, no init."""
    with torch.device("meta"):
        return count_parameters(create_backbone(cfg))


def adapter_overhead(cfg: BackboneConfig, reduction: int = DEFAULT_REDUCTION) -> float:
    """Per-expert parameter overhead: adapter parameters / backbone parameters.

    The paper reports about 6% for R50; ``bit_r50x1`` gives 0.0591 (1,387,776 adapter parameters
    over a 23,500,352-parameter backbone), ``bit_s`` 0.0693 (23,552 over 340,048). Adapters sit on stage *inputs*, so the widest
    stage output (2048 on R50) carries none, which is why the overhead stays small.
    """
    return expert_adapter_parameters(cfg, reduction) / backbone_parameters(cfg)


def expert_key(expert: str) -> str:
    """The ModuleDict / tensor-name key of an expert. Module names cannot contain '.', so '%' and
    '.' are percent-escaped; the mapping is one-to-one, and hierarchy nodes like 'glyph/latin'
    keep their readable form."""
    if not isinstance(expert, str) or not expert:
        raise ConfigError(f"an adapter expert needs a non-empty string name, got {expert!r}")
    return expert.replace("%", "%25").replace(".", "%2E")


def _adapted_from_stem(backbone: nn.Module, stack: AdapterStack, x: torch.Tensor) -> torch.Tensor:
    """Pre-logits features given the stem's output: each stage sees its adapted input."""
    for adapter, stage in zip(stack, backbone.stages):
        x = stage(adapter(x))
    return backbone.forward_head(backbone.norm(x), pre_logits=True)


def _check_stack(backbone: nn.Module, stack: AdapterStack) -> None:
    if len(stack) != len(backbone.stages):
        raise ConfigError(f"{len(stack)} adapters for a backbone with {len(backbone.stages)} stages; rebuild the expert")


class AdapterExpert(HeadMixin, nn.Module):
    """One adapter expert as a pool member: ResNet-v2 backbone, that expert's adapters, a head.

    Obeys the same contract as :class:`ExpertModel` (``embed``, ``upstream_logits``, ``forward``,
    ``reset_head``, ``member_config``...), so selection, fine-tuning and the library treat it like
    any other member. ``node`` is the hierarchy node the adapters were trained on (informative).
    """

    def __init__(self, backbone: BackboneConfig, num_outputs: int = 0, preprocessing: Preprocessing | None = None,
                 head_kind: str = "upstream", node: str | None = None, reduction: int = DEFAULT_REDUCTION,
                 scaled: bool = False) -> None:
        super().__init__()
        self.backbone_config = backbone
        self.preprocessing = preprocessing or Preprocessing(backbone.resolution)
        self.backbone = create_backbone(backbone)
        self.adapters = AdapterStack(adapter_channels(backbone), reduction, scaled)
        self.num_features = int(self.backbone.num_features)
        self.head_kind = head_kind
        self.head: nn.Linear | None = nn.Linear(self.num_features, num_outputs) if num_outputs else None
        self.node = node
        self.reduction = reduction

    @classmethod
    def from_parts(cls, base: ExpertModel, stack: AdapterStack, node: str | None, reduction: int) -> AdapterExpert:
        """An expert whose backbone, adapters and head *are* the given modules (shared, not copied):
        cheap to make, so a bank can hand out experts for evaluation. ``copy.deepcopy`` it (as
        fine-tuning does) before changing it, or the bank changes too."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.backbone_config = base.backbone_config
        self.preprocessing = base.preprocessing
        self.backbone = base.backbone
        _check_stack(self.backbone, stack)
        self.adapters = stack
        self.num_features = base.num_features
        self.head_kind = base.head_kind
        self.head = base.head
        self.node = node
        self.reduction = reduction
        return self

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return _adapted_from_stem(self.backbone, self.adapters, self.backbone.stem(x))

    def member_config(self) -> dict[str, Any]:
        return {
            "class": "AdapterExpert",
            "backbone": self.backbone_config.to_json(),
            "num_outputs": 0 if self.head is None else self.head.out_features,
            "head_kind": self.head_kind,
            "preprocessing": self.preprocessing.to_json(),
            "node": self.node,
            "reduction": self.reduction,
            **({"scaled": True} if self.adapters.scaled else {}),  # plain experts' configs as before it existed
        }


@register_member_class("AdapterExpert")
def _build_adapter_expert(cfg: dict[str, Any]) -> AdapterExpert:
    where = "AdapterExpert config"
    schema.keys(cfg, where, ("class", "backbone", "num_outputs", "preprocessing"), ("head_kind", "node", "reduction", "scaled"))
    num_outputs, head_kind, prep = head_fields(cfg, where)
    node = cfg.get("node")
    return AdapterExpert(
        BackboneConfig.from_json(cfg["backbone"], f"{where}.backbone"), num_outputs, prep, head_kind,
        None if node is None else schema.string(node, f"{where}.node"),
        schema.integer(cfg.get("reduction", DEFAULT_REDUCTION), f"{where}.reduction", 1, 256),
        schema.boolean(cfg.get("scaled", False), f"{where}.scaled"),  # configs written before it: plain
    )


class AdapterBank(nn.Module):
    """A shared baseline (backbone and upstream head) plus the adapters of many experts.

    ``adapters[expert_key(e)]`` is expert ``e``'s :class:`AdapterStack`; experts are usually
    hierarchy nodes. Routing is explicit: every call names the expert to apply, and only that
    expert's adapters touch the computation, so experts never interfere with one another.
    """

    def __init__(self, base: ExpertModel, experts: Sequence[str], reduction: int = DEFAULT_REDUCTION,
                 scaled: bool = False) -> None:
        super().__init__()
        if not isinstance(base, ExpertModel):
            raise ConfigError(f"an adapter bank is built on an ExpertModel baseline, got {type(base).__name__}")
        experts = list(experts)
        if not experts:
            raise ConfigError("an adapter bank needs at least one expert; pass the hierarchy nodes to specialise on")
        keys = [expert_key(e) for e in experts]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"adapter experts must be distinct, got {experts}")
        self.base = base
        self.reduction = int(reduction)
        self.scaled = bool(scaled)
        self._experts = experts
        channels = adapter_channels(base.backbone_config)
        self.adapters = nn.ModuleDict({k: AdapterStack(channels, self.reduction, self.scaled) for k in keys})

    # -- what it holds -------------------------------------------------------------------------
    @property
    def experts(self) -> list[str]:
        return list(self._experts)

    @property
    def preprocessing(self) -> Preprocessing:
        return self.base.preprocessing

    @property
    def backbone_config(self) -> BackboneConfig:
        return self.base.backbone_config

    @property
    def num_features(self) -> int:
        return self.base.num_features

    def stack(self, expert: str) -> AdapterStack:
        key = expert_key(expert)
        if key not in self.adapters:
            raise ConfigError(f"the adapter bank has no expert {expert!r}; it holds {self._experts}")
        return self.adapters[key]  # type: ignore[return-value]

    def expert(self, expert: str) -> AdapterExpert:
        """Expert ``expert`` as a pool member sharing this bank's modules (see :meth:`AdapterExpert.from_parts`)."""
        return AdapterExpert.from_parts(self.base, self.stack(expert), expert, self.reduction)

    # -- computing -----------------------------------------------------------------------------
    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """The computation every expert shares."""
        return self.base.backbone.stem(x)

    def embed_from_stem(self, s: torch.Tensor, expert: str) -> torch.Tensor:
        return _adapted_from_stem(self.base.backbone, self.stack(expert), s)

    def embed(self, x: torch.Tensor, expert: str) -> torch.Tensor:
        return self.embed_from_stem(self.stem(x), expert)

    def upstream_logits(self, x: torch.Tensor, expert: str) -> torch.Tensor:
        if not self.base.has_upstream_head:
            raise ConfigError("the bank's baseline has no upstream head")
        return self.base.head(self.embed(x, expert))  # type: ignore[misc]

    def forward(self, x: torch.Tensor, expert: str) -> torch.Tensor:
        return self.upstream_logits(x, expert)

    def upstream_logits_of_chunks(self, x: torch.Tensor, sizes: Sequence[int], experts: Sequence[str]) -> torch.Tensor:
        """Upstream logits of consecutive chunks of ``x`` (``sizes[i]`` rows under ``experts[i]``),
        computing the shared stem once on all of them: how the bank trains, one batch per expert."""
        if not self.base.has_upstream_head:
            raise ConfigError("the bank's baseline has no upstream head")
        stems = self.stem(x).split(list(sizes))
        return torch.cat([self.base.head(self.embed_from_stem(s, e)) for s, e in zip(stems, experts)])  # type: ignore[misc]

    def embed_experts(self, x: torch.Tensor, experts: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Pre-logits features of ``x`` under each expert, computing the shared stem once."""
        s = self.stem(x)
        return {e: self.embed_from_stem(s, e) for e in (self._experts if experts is None else experts)}

    # -- storage -------------------------------------------------------------------------------
    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Every expert's adapter tensors, named ``<expert key>.<adapter index>.<parameter>``."""
        return {k: v for k, v in self.adapters.state_dict().items()}

    def bank_config(self) -> dict[str, Any]:
        """JSON that, with the baseline, rebuilds the bank's structure."""
        return {
            "format": 1,
            "experts": self.experts,
            "keys": {e: expert_key(e) for e in self._experts},
            "reduction": self.reduction,
            **({"scaled": True} if self.scaled else {}),  # plain banks' configs as before it existed
            "channels": list(adapter_channels(self.backbone_config)),
            "backbone": self.backbone_config.to_json(),
            "preprocessing": self.preprocessing.to_json(),
        }


def embed_images_with_experts(bank: AdapterBank, images: torch.Tensor, experts: Sequence[str] | None = None,
                              batch_size: int = 500, device: torch.device = torch.device("cpu")) -> dict[str, torch.Tensor]:
    """uint8 [N, 3, H, W] -> {expert: float32 [N, D]}: several adapter experts embed the same images,
    each batch prepared once and its stem computed once, then every expert applies its own
    adapters and ignores the others' (paper section 5). Features equal each expert's own
    ``embed`` (up to floating-point summation order on accelerators)."""
    names = bank.experts if experts is None else list(experts)
    for e in names:
        bank.stack(e)  # unknown experts fail before any work
    return run_batches(bank, images, lambda x: bank.embed_experts(x, names), batch_size, device)
