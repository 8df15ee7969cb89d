"""The baseline B (paper 000, section 4.2): a ResNet-v2 trained from scratch on all upstream data
with a sigmoid loss over every hierarchy node, through :func:`expertise.train.fit`; the upstream
batch source every upstream stage shares, member names, and leaf accuracy on the holdout.

Every upstream stage takes its data as an :class:`UpstreamData` (the embedded world, rendered) or
as the splits of a dataset on disk (:mod:`expertise.upstream.disk_data`: a streamed train split, a
decoded holdout); :func:`batch_source` and :func:`leaf_accuracy` tell them apart."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from expertise.data.upstream_data import UpstreamData
from expertise.library import MemberInfo
from expertise.models.backbones import BACKBONES, ExpertModel, Preprocessing, count_parameters, prepare
from expertise.models.forward import forward_batches
from expertise.runtime import derive_seed
from expertise.train import EpochSampler, TrainConfig, TrainStats, fit, multilabel_loss

if TYPE_CHECKING:
    from expertise.checkpoint import Checkpoint
    from expertise.runtime import RunContext
    from expertise.upstream.disk_data import DiskHoldout, DiskUpstream

    Upstream = UpstreamData | DiskUpstream
    Holdout = UpstreamData | DiskHoldout


def baseline_name(backbone: str) -> str:
    return f"{backbone}.baseline"


def expert_name(backbone: str, node: str) -> str:
    """timm-style names: ``bit_s.expert_glyph-latin`` for node ``glyph/latin``."""
    return f"{backbone}.expert_{node.replace('/', '-')}"


@dataclass(frozen=True)
class UpstreamBatches:
    """Batches of (prepared images, targets) drawn from ``indices`` of ``data``. Targets are the
    multi-hot hierarchy labels by default; ``targets(indices) -> float32 [B, T]`` swaps in another
    objective (the EPN's routing targets) without another batch source."""

    data: UpstreamData
    indices: np.ndarray
    batch_size: int
    prep: Preprocessing
    seed: int
    targets: Callable[[np.ndarray], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "_sampler", EpochSampler(self.indices, self.batch_size, self.seed))

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self._sampler.batch(step)  # type: ignore[attr-defined]
        targets = self.targets or self.data.targets
        return prepare(self.data.images(idx), self.prep), targets(idx)

    def shard(self, rank: int, world: int) -> UpstreamBatches:
        """This source for rank ``rank`` of ``world`` data-parallel processes: each step renders only
        the rank's share of the global batch (:meth:`EpochSampler.shard`)."""
        out = replace(self)
        object.__setattr__(out, "_sampler", self._sampler.shard(rank, world))  # type: ignore[attr-defined]
        return out


def batch_source(data: Upstream, indices: np.ndarray, batch_size: int, prep: Preprocessing, seed: int,
                 steps: int) -> contextlib.AbstractContextManager[Callable[[int], tuple[torch.Tensor, torch.Tensor]]]:
    """The batch source of a stage over ``indices`` of ``data`` (multi-hot targets), as a context:
    :class:`UpstreamBatches` for the embedded world, a :class:`~expertise.upstream.streaming.DiskBatches`
    for a dataset on disk (closing it stops its workers and reports unreadable images)."""
    if isinstance(data, UpstreamData):
        return contextlib.nullcontext(UpstreamBatches(data, indices, batch_size, prep, seed))
    return data.batches(indices, batch_size, prep, seed, steps)


def leaf_accuracy(model: ExpertModel, data: Holdout, indices: np.ndarray | None = None,
                  device: torch.device = torch.device("cpu"), batch_size: int = 1000) -> float:
    """Top-1 accuracy over leaves: the highest-scoring leaf logit must be the image's leaf. On a
    dataset on disk (multi-label), the highest-scoring class must be one of the image's own labels
    (:meth:`~expertise.upstream.disk_data.DiskHoldout.correct`)."""
    idx = np.arange(len(data)) if indices is None else np.asarray(indices)
    if len(idx) == 0:
        return float("nan")
    correct = 0
    for i in range(0, len(idx), batch_size):  # rendered a chunk at a time, not all at once
        chunk = idx[i:i + batch_size]
        logits = forward_batches(model, data.images(chunk), ("upstream_logits",), batch_size, device)["upstream_logits"]
        if isinstance(data, UpstreamData):
            pred = data.hierarchy.leaf_logits(logits).argmax(1).numpy()
            correct += int((pred == data.leaf_ids[chunk]).sum())
        else:
            correct += data.correct(chunk, logits)
    return correct / len(idx)


def train_baseline(train: Upstream, backbone: str, cfg: TrainConfig, seed: int,
                   device: torch.device = torch.device("cpu"), progress: bool = True,
                   checkpoint: Checkpoint | None = None) -> tuple[ExpertModel, TrainStats]:
    """B: a ResNet-v2 trained from scratch with a sigmoid loss over every hierarchy label node
    (resumed from ``checkpoint`` when it holds an earlier part of this run)."""
    torch.manual_seed(derive_seed(seed, "baseline", "init"))
    model = ExpertModel(BACKBONES[backbone], num_outputs=len(train.hierarchy.label_nodes))
    with batch_source(train, np.arange(len(train)), cfg.batch_size, model.preprocessing,
                      derive_seed(seed, "baseline", "data"), cfg.steps) as batches:
        stats = fit(model, batches, cfg, multilabel_loss, device=device, desc="baseline B", show_progress=progress,
                    checkpoint=checkpoint)
    return model, stats


def baseline_member(train: Upstream, holdout: Holdout, backbone: str, cfg: TrainConfig, ctx: RunContext,
                    checkpoint: Checkpoint | None = None) -> tuple[MemberInfo, ExpertModel, torch.Tensor]:
    """B trained (with ``ctx``'s seed, device, progress and log) and measured on the holdout: its
    manifest entry, the model and its label prior, ready to store."""
    t0 = time.perf_counter()
    name = baseline_name(backbone)
    model, stats = train_baseline(train, backbone, cfg, ctx.seed, ctx.device, ctx.progress, checkpoint)
    acc = leaf_accuracy(model, holdout, device=ctx.device)
    ctx.log(f"baseline {name}: upstream holdout leaf accuracy {acc:.3f} ({time.perf_counter() - t0:.0f}s)")
    info = member_info(name, "baseline", model, backbone, None, "root", len(train), acc,
                       {"train": cfg.to_json(), "stats": stats.to_json(), "seed": ctx.seed})
    return info, model, torch.from_numpy(train.label_distribution())


def member_info(name: str, kind: str, model: ExpertModel, backbone: str, parent: str | None, domain: str | None,
          images: int, accuracy: float, extra: dict) -> MemberInfo:
    return MemberInfo(
        name=name, kind=kind, parent=parent, domain=domain, upstream_images=images,
        parameters=count_parameters(model), embedding_dim=model.num_features, upstream_accuracy=accuracy,
        preprocessing=model.preprocessing.to_json(), files={}, architecture=backbone, extra=extra,
    )


