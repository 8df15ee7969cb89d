"""Upstream training of adapter experts (paper 000, sections 4.1 and 4.3).

All adapter experts of a bank train in one job through the one training loop,
:func:`expertise.train.fit`. The baseline B's backbone and upstream head are frozen; only adapters
learn. Routing is hard-coded from the hierarchy: each step draws one batch from every expert's
slice (the images under its node), that batch passes through that expert's adapters only, and the
loss is the sum over experts of each expert's multi-label loss on its own batch. Experts share no
trainable parameter, gradients are clipped per expert and SGD's momentum is per parameter, so the
joint job trains each expert exactly as if it trained alone ("all experts independently in
parallel"), and every expert gets the same number of steps regardless of its slice size.

The stem is frozen and shared, so it runs once on the concatenated batch of all experts.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from expertise.checkpoint import differences
from expertise.data.upstream_data import UpstreamData
from expertise.errors import ConfigError, DataError, LibraryError
from expertise.library import Library, MemberInfo
from expertise.models.adapters import DEFAULT_REDUCTION, AdapterBank, adapter_overhead, expert_adapter_parameters
from expertise.models.backbones import ExpertModel, Preprocessing, count_parameters, prepare
from expertise.runtime import RunContext, derive_seed
from expertise.train import EpochSampler, TrainConfig, TrainStats, fit, multilabel_loss
from expertise.upstream.baseline import leaf_accuracy

if TYPE_CHECKING:
    from expertise.checkpoint import Checkpoint
    from expertise.upstream.baseline import Holdout, Upstream


def adapter_expert_name(backbone: str, node: str) -> str:
    """timm-style names: ``bit_s.adapter_glyph-latin`` for node ``glyph/latin``."""
    return f"{backbone}.adapter_{node.replace('/', '-')}"


class AdapterBatches:
    """Each step, one batch per expert from that expert's slice, concatenated in expert order:
    prepared images [E * B, 3, S, S] and multi-hot targets [E * B, L]. Each expert has its own
    seeded :class:`EpochSampler`, so its batches do not depend on which other experts train."""

    def __init__(self, data: UpstreamData, nodes: Sequence[str], batch_size: int, prep: Preprocessing, seed: int) -> None:
        self.data = data
        self.prep = prep
        self.samplers = [EpochSampler(data.slice(n), batch_size, derive_seed(seed, "adapter", n)) for n in nodes]

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.concatenate([s.batch(step) for s in self.samplers])
        return prepare(self.data.images(idx), self.prep), self.data.targets(idx)


@dataclass
class AdapterTrainStats(TrainStats):
    """:class:`TrainStats` of the joint job (its loss is the sum over experts) plus each expert's
    own loss per step."""

    expert_losses: dict[str, list[float]] = field(default_factory=dict)

    def to_json(self) -> dict:
        tail = {n: float(np.mean(v[-max(1, len(v) // 10):])) if v else float("nan") for n, v in self.expert_losses.items()}
        return {**super().to_json(), "expert_final_loss": tail}


def train_adapter_bank(baseline: ExpertModel, train: Upstream, nodes: Sequence[str], cfg: TrainConfig, seed: int,
                       device: torch.device = torch.device("cpu"), progress: bool = True,
                       reduction: int = DEFAULT_REDUCTION, checkpoint: Checkpoint | None = None,
                       scaled: bool = False) -> tuple[AdapterBank, AdapterTrainStats]:
    """An :class:`AdapterBank` on a copy of ``baseline`` with one adapter expert per node, trained for
    ``cfg.steps`` steps of ``cfg.batch_size`` images *per expert*; ``baseline`` itself is untouched.

    ``scaled``: adapters whose output is scaled by the stream's RMS (:class:`AdapterBank`).
    ``cfg.grad_clip`` applies to each expert's own gradient (not to the joint one, which would
    couple the experts), so the job equals E separate trainings. On a dataset on disk an
    unreadable image leaves its expert's batch one shorter. A run resumed from ``checkpoint``
    reports each expert's losses from the resumed step on.
    """
    nodes = list(nodes)
    if not nodes:
        raise ConfigError("adapter experts need at least one hierarchy node; pass the expert domains")
    if not baseline.has_upstream_head:
        raise ConfigError("adapter experts train against the baseline's upstream head, and this baseline has none; "
                          "pass the upstream baseline B")
    for node in nodes:
        if node not in train.hierarchy.parents:
            raise DataError(f"adapter expert domain {node!r} is not a node of the upstream hierarchy")
        if len(train.slice(node)) == 0:
            raise DataError(f"adapter expert domain {node!r} has no upstream images; choose another node")
    torch.manual_seed(derive_seed(seed, "adapters", "init"))
    bank = AdapterBank(copy.deepcopy(baseline).cpu(), nodes, reduction, scaled)
    bank.base.requires_grad_(False)
    params = list(bank.adapters.parameters())
    b, e = cfg.batch_size, len(nodes)
    joint = replace(cfg, grad_clip=None)  # clipped per expert by the hooks below instead
    if isinstance(train, UpstreamData):
        source = contextlib.nullcontext(AdapterBatches(train, nodes, b, bank.preprocessing, seed))
    else:
        source = train.adapter_batches(nodes, b, bank.preprocessing, seed, cfg.steps)
    losses: dict[str, list[torch.Tensor]] = {n: [] for n in nodes}

    hooks, reset_clipping = _clip_each_expert(bank, nodes, cfg.grad_clip) if cfg.grad_clip else ([], lambda: None)
    with source as batches:
        def sizes() -> list[int]:  # each expert's images in the step's batch (all b, unless some were unreadable)
            return getattr(batches, "sizes", [b] * e)

        def forward(model: AdapterBank, x: torch.Tensor) -> torch.Tensor:
            reset_clipping()  # a fresh count each step, even after an interrupted backward
            return model.upstream_logits_of_chunks(x, sizes(), nodes)  # the frozen stem once for every expert's batch

        def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            per_expert = [multilabel_loss(lg, t) for lg, t in zip(logits.split(sizes()), targets.split(sizes()))]
            for n, loss in zip(nodes, per_expert):
                losses[n].append(loss.detach())
            return torch.stack(per_expert).sum()

        try:
            fitted = fit(bank, batches, joint, loss_fn, params=params, forward=forward, device=device,
                         desc=f"adapter experts ({e})", show_progress=progress, checkpoint=checkpoint)
        finally:
            for h in hooks:
                h.remove()
    stats = AdapterTrainStats(fitted.steps, fitted.images, fitted.seconds, fitted.losses,
                              {n: torch.stack(v).float().cpu().tolist() if v else [] for n, v in losses.items()})
    return bank, stats


def _clip_each_expert(bank: AdapterBank, nodes: Sequence[str], max_norm: float) -> tuple[list, Callable[[], None]]:
    """Hooks that clip each expert's gradient norm to ``max_norm`` as soon as backward has filled
    the gradient of every one of its parameters (they all take part in every step), and a function
    that restarts the counts."""
    handles = []
    counters: list[tuple[list[int], int]] = []
    for node in nodes:
        ps = list(bank.stack(node).parameters())
        pending = [len(ps)]
        counters.append((pending, len(ps)))

        def hook(_: torch.Tensor, ps: list[nn.Parameter] = ps, pending: list[int] = pending) -> None:
            pending[0] -= 1
            if pending[0] == 0:
                pending[0] = len(ps)
                nn.utils.clip_grad_norm_(ps, max_norm)

        handles += [p.register_post_accumulate_grad_hook(hook) for p in ps]

    def reset() -> None:
        for pending, n in counters:
            pending[0] = n

    return handles, reset


def bank_identity(scaled: bool) -> dict[str, bool]:
    """What a bank's checkpoint and manifest entries record of its adapters' form beyond the
    training settings: nothing for plain adapters (as before ``scaled`` existed), else scaled."""
    return {"scaled": True} if scaled else {}


def _as_json(x: object) -> Any:
    """``x`` as JSON reads it back (tuples become lists), so that settings in memory and from the
    manifest compare equal."""
    return json.loads(json.dumps(x))


def bank_reusable(library: Library, names: dict[str, str], baseline_name: str, bank_name: str, cfg: TrainConfig,
                  log: Callable[[str], None], quiet: bool = False, scaled: bool = False) -> bool:
    """Whether every expert of ``names`` (node -> member name) is stored, intact, in bank ``bank_name``
    on ``baseline_name`` with the settings ``cfg`` and adapters of the form ``scaled`` (one line
    when some were trained otherwise)."""
    bank_path = f"adapters/{bank_name}.safetensors"
    stored = [n for n in names.values() if n in library and library.info(n).kind == "adapter_expert"
              and library.info(n).parent == baseline_name and library.info(n).extra.get("bank") == bank_path]
    other = [n for n in stored if _as_json(library.info(n).extra.get("train")) != _as_json(cfg.to_json())
             or bool(library.info(n).extra.get("scaled", False)) != scaled]
    if other:
        raise LibraryError(f"adapter experts {other[:3]} in the library at {library.path} were trained with other settings "
                           f"({_stored_settings(library.info(other[0]).extra, cfg, scaled)}); to train them again with "
                           "these, build into a new folder (--out or --library), start over (`expertise demo --fresh`), "
                           "or remove them (Library.remove)")
    if len(stored) != len(names):
        return False
    stale = [p for n in stored for p in library.problems(n)]
    if stale and not quiet:
        log(f"adapter experts of {baseline_name} are stored but unusable ({stale[0]}): training them again")
    return not stale


def _stored_settings(extra: dict, cfg: TrainConfig, scaled: bool) -> str:
    """The ``--set`` overrides that would reuse a stored bank's experts (``extra``: one expert's
    manifest entry), e.g. "to reuse them: --set adapter.steps=300 --set adapter_scaled=false"."""
    stored = _as_json(extra["train"]) if isinstance(extra.get("train"), dict) else {}
    ours = _as_json(cfg.to_json())
    differ = differences(stored, ours)
    settable = [k for k in differ if isinstance(stored.get(k), (int, float, str)) and ours.get(k) is not None]
    sets = [f"--set adapter.{k}={str(stored[k]).lower() if isinstance(stored[k], bool) else stored[k]}" for k in settable]
    if bool(extra.get("scaled", False)) != scaled:
        sets.append(f"--set adapter_scaled={str(bool(extra.get('scaled', False))).lower()}")
    rest = [k for k in differ if k not in settable]
    said = "to reuse them: " + " ".join(sets) if sets else ""
    return said + (f"{'; ' if said else ''}they also differ in adapter.{', adapter.'.join(rest)}" if rest else "")


def bank_members(baseline: ExpertModel, train: Upstream, holdout: Holdout, baseline_name: str, nodes: list[str],
                 names: dict[str, str], backbone: str, cfg: TrainConfig, ctx: RunContext,
                 checkpoint: Checkpoint | None = None, scaled: bool = False,
                 ) -> tuple[AdapterBank, dict[str, MemberInfo], dict[str, torch.Tensor]]:
    """The adapter bank on ``baseline`` (the stored member ``baseline_name``) trained (with ``ctx``'s
    seed, device, progress and log), each expert measured on the holdout: the bank, each node's
    manifest entry and label prior, ready to store."""
    if not isinstance(baseline, ExpertModel):
        raise LibraryError(f"{baseline_name!r} is a {type(baseline).__name__}; adapter experts need an ExpertModel baseline")
    seed, device, log = ctx.seed, ctx.device, ctx.log
    t0 = time.perf_counter()
    bank, stats = train_adapter_bank(baseline, train, nodes, cfg, seed, device, ctx.progress, checkpoint=checkpoint,
                                     scaled=scaled)
    log(f"adapter bank: {len(nodes)} experts trained in {stats.seconds:.0f}s, "
        f"{adapter_overhead(bank.backbone_config, bank.reduction):.1%} parameters per expert")
    infos: dict[str, MemberInfo] = {}
    priors: dict[str, torch.Tensor] = {}
    for node in nodes:
        expert = bank.expert(node)
        acc = leaf_accuracy(expert, holdout, device=device)  # type: ignore[arg-type]
        own = leaf_accuracy(expert, holdout, holdout.slice(node), device=device)  # type: ignore[arg-type]
        log(f"adapter expert {names[node]}: holdout leaf accuracy {acc:.3f}, on its own slice {own:.3f}")
        idx = train.slice(node)
        infos[node] = MemberInfo(
            name=names[node], kind="adapter_expert", parent=baseline_name, domain=node, upstream_images=len(idx),
            parameters=count_parameters(expert), embedding_dim=expert.num_features, upstream_accuracy=acc,
            preprocessing=expert.preprocessing.to_json(), files={}, architecture=backbone,
            extra={"train": cfg.to_json(), **bank_identity(scaled), "stats": stats.to_json(), "seed": seed, "slice_accuracy": own,
                   "adapter_parameters": expert_adapter_parameters(bank.backbone_config, bank.reduction),
                   "wall_seconds": round(time.perf_counter() - t0, 3)},
        )
        priors[node] = torch.from_numpy(train.label_distribution(idx))
    return bank, infos, priors
