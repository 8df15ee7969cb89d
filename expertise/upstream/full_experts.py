"""Full experts (paper 000, section 4.3): B fine-tuned on one hierarchy node's slice, the same
number of steps for every expert, and :func:`build_upstream`, which trains B and the top-K full
experts into a library. Each model is a unit of work stored as soon as it is done and claimed
while it trains, so a killed run resumes by skipping the members already there and a second
builder waits instead of training the same member."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from expertise.data.upstream_data import UpstreamData
from expertise.errors import LibraryError
from expertise.library import Library, MemberInfo
from expertise.models.backbones import ExpertModel
from expertise.runtime import RunContext, derive_seed
from expertise.train import TrainConfig, TrainStats, fit, multilabel_loss
from expertise.upstream.baseline import batch_source, baseline_name, expert_name, leaf_accuracy, member_info, train_baseline
from expertise.upstream.resume import UpstreamCheckpoints, finished, unit_checkpoint

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


def build_upstream(library: Library, train: Upstream, holdout: Holdout, backbone: str,
                   baseline_cfg: TrainConfig, expert_cfg: TrainConfig, num_experts: int,
                   ctx: RunContext = RunContext(), checkpoints: UpstreamCheckpoints | None = None) -> list[str]:
    """Train B and the top-``num_experts`` full experts into ``library``; members already present
    are kept (resumption), and with ``checkpoints`` the one being trained checkpoints as it goes.
    Returns the member names, baseline first."""
    seed, device, progress, log = ctx.seed, ctx.device, ctx.progress, ctx.log
    bname = baseline_name(backbone)
    baseline: ExpertModel | None = None
    with library.claim(bname, log) as build:  # a second builder waits here instead of training B again
        if build:
            t0 = time.perf_counter()
            ckpt = unit_checkpoint(checkpoints, bname, train=baseline_cfg.to_json(), seed=seed)
            baseline, stats = train_baseline(train, backbone, baseline_cfg, seed, device, progress, ckpt)
            acc = leaf_accuracy(baseline, holdout, device=device)
            log(f"baseline {bname}: upstream holdout leaf accuracy {acc:.3f} ({time.perf_counter() - t0:.0f}s)")
            library.add(
                member_info(bname, "baseline", baseline, backbone, None, "root", len(train), acc,
                      {"train": baseline_cfg.to_json(), "stats": stats.to_json(), "seed": seed}),
                baseline, label_prior=torch.from_numpy(train.label_distribution()),
            )
            finished(ckpt)
    if baseline is None:
        log(f"baseline {bname} already in the library: reusing it")
        baseline = library.load(bname)  # type: ignore[assignment]
    names = [bname]
    # No full experts asked for (`expertise upstream`, `expertise experts --kind adapter`): B alone.
    for node in expert_domains(train, num_experts):
        name = expert_name(backbone, node)
        names.append(name)
        with library.claim(name, log) as build:
            if not build:
                log(f"expert {name} already in the library: reusing it")
                continue
            ckpt = unit_checkpoint(checkpoints, name, train=expert_cfg.to_json(), seed=seed, node=node)
            info, expert, prior = full_expert_member(baseline, train, holdout, node, backbone, expert_cfg, ctx, ckpt)
            library.add(info, expert, label_prior=prior)
            finished(ckpt)
    return names


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
