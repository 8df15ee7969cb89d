"""Full experts (paper 000, section 4.3): B fine-tuned on one hierarchy node's slice, the same
number of steps for every expert, and the top-K expert domains. Each expert is a unit of
:mod:`expertise.upstream.units`, stored as soon as it is done and claimed while it trains, so a
killed run resumes by skipping the members already there and a second builder waits instead of
training the same member."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from expertise.data.upstream_data import UpstreamData
from expertise.errors import LibraryError
from expertise.library import MemberInfo
from expertise.models.backbones import ExpertModel
from expertise.runtime import RunContext, derive_seed
from expertise.train import TrainConfig, TrainStats, fit, multilabel_loss
from expertise.upstream.baseline import batch_source, baseline_name, expert_name, leaf_accuracy, member_info

if TYPE_CHECKING:
    from expertise.checkpoint import Checkpoint
    from expertise.upstream.baseline import Holdout, Upstream


def expert_domains(train: Upstream, k: int) -> list[str]:
    """The top-``k`` hierarchy nodes by images in their subtree (none for ``k`` = 0): from the
    world's leaf counts, or from a dataset's labels alone."""
    if k <= 0:
        return []
    if isinstance(train, UpstreamData):
        return train.hierarchy.choose_expert_domains(train.leaf_counts(), k)
    return train.choose_expert_domains(k)


def train_full_expert(baseline: ExpertModel, train: Upstream, node: str, cfg: TrainConfig, seed: int,
                      device: torch.device = torch.device("cpu"), progress: bool = True,
                      checkpoint: Checkpoint | None = None) -> tuple[ExpertModel, TrainStats]:
    """A full expert: every weight of B, upstream head included, tuned on the images under ``node``."""
    idx = train.slice(node)
    if len(idx) == 0:
        raise LibraryError(f"expert domain {node!r} has no upstream images; choose another node")
    model = ExpertModel(baseline.backbone_config, len(train.hierarchy.label_nodes), baseline.preprocessing)
    model.load_state_dict(baseline.state_dict())
    with batch_source(train, idx, cfg.batch_size, model.preprocessing, derive_seed(seed, "expert", node), cfg.steps) as batches:
        stats = fit(model, batches, cfg, multilabel_loss, device=device, desc=f"expert {node}", show_progress=progress,
                    checkpoint=checkpoint)
    return model, stats


def full_expert_member(baseline: ExpertModel, train: Upstream, holdout: Holdout, node: str, backbone: str,
                       cfg: TrainConfig, ctx: RunContext, checkpoint: Checkpoint | None = None,
                       ) -> tuple[MemberInfo, ExpertModel, torch.Tensor]:
    """The full expert of ``node`` trained (with ``ctx``'s seed, device, progress and log) and
    measured on the holdout: its manifest entry, the model and its label prior, ready to store."""
    t0 = time.perf_counter()
    name = expert_name(backbone, node)
    expert, stats = train_full_expert(baseline, train, node, cfg, ctx.seed, ctx.device, ctx.progress, checkpoint)
    acc = leaf_accuracy(expert, holdout, device=ctx.device)
    own = leaf_accuracy(expert, holdout, holdout.slice(node), device=ctx.device)
    ctx.log(f"expert {name}: holdout leaf accuracy {acc:.3f}, on its own slice {own:.3f} ({time.perf_counter() - t0:.0f}s)")
    idx = train.slice(node)
    info = member_info(name, "full_expert", expert, backbone, baseline_name(backbone), node, len(idx), acc,
                       {"train": cfg.to_json(), "stats": stats.to_json(), "seed": ctx.seed, "slice_accuracy": own})
    return info, expert, torch.from_numpy(train.label_distribution(idx))
