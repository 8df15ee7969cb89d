"""Full experts (paper 000, section 4.3): B fine-tuned on one hierarchy node's slice, the same
number of steps for every expert, and :func:`build_upstream`, which trains B and the top-K full
experts into a library. Each model is a unit of work stored as soon as it is done and claimed
while it trains, so a killed run resumes by skipping the members already there and a second
builder waits instead of training the same member."""

from __future__ import annotations

import time

import torch

from expertise.data.upstream_data import UpstreamData
from expertise.errors import LibraryError
from expertise.library import Library
from expertise.models.backbones import ExpertModel
from expertise.runtime import RunContext, derive_seed
from expertise.train import TrainConfig, TrainStats, fit, multilabel_loss
from expertise.upstream.baseline import (UpstreamBatches, baseline_name, expert_name, leaf_accuracy, member_info,
                                         train_baseline)


def train_full_expert(baseline: ExpertModel, train: UpstreamData, node: str, cfg: TrainConfig, seed: int,
                      device: torch.device = torch.device("cpu"), progress: bool = True) -> tuple[ExpertModel, TrainStats]:
    """A full expert: every weight of B, upstream head included, tuned on the images under ``node``."""
    idx = train.slice(node)
    if len(idx) == 0:
        raise LibraryError(f"expert domain {node!r} has no upstream images; choose another node")
    model = ExpertModel(baseline.backbone_config, len(train.hierarchy.label_nodes), baseline.preprocessing)
    model.load_state_dict(baseline.state_dict())
    batches = UpstreamBatches(train, idx, cfg.batch_size, model.preprocessing, derive_seed(seed, "expert", node))
    stats = fit(model, batches, cfg, multilabel_loss, device=device, desc=f"expert {node}", show_progress=progress)
    return model, stats


def build_upstream(library: Library, train: UpstreamData, holdout: UpstreamData, backbone: str,
                   baseline_cfg: TrainConfig, expert_cfg: TrainConfig, num_experts: int,
                   ctx: RunContext = RunContext()) -> list[str]:
    """Train B and the top-``num_experts`` full experts into ``library``; members already present
    are kept (resumption). Returns the member names, baseline first."""
    seed, device, progress, log = ctx.seed, ctx.device, ctx.progress, ctx.log
    bname = baseline_name(backbone)
    baseline: ExpertModel | None = None
    with library.claim(bname, log) as build:  # a second builder waits here instead of training B again
        if build:
            t0 = time.perf_counter()
            baseline, stats = train_baseline(train, backbone, baseline_cfg, seed, device, progress)
            acc = leaf_accuracy(baseline, holdout, device=device)
            log(f"baseline {bname}: upstream holdout leaf accuracy {acc:.3f} ({time.perf_counter() - t0:.0f}s)")
            library.add(
                member_info(bname, "baseline", baseline, backbone, None, "root", len(train), acc,
                      {"train": baseline_cfg.to_json(), "stats": stats.to_json(), "seed": seed}),
                baseline, label_prior=torch.from_numpy(train.label_distribution()),
            )
    if baseline is None:
        log(f"baseline {bname} already in the library: reusing it")
        baseline = library.load(bname)  # type: ignore[assignment]
    names = [bname]
    # No full experts asked for (`expertise upstream`, `expertise experts --kind adapter`): B alone.
    nodes = train.hierarchy.choose_expert_domains(train.leaf_counts(), num_experts) if num_experts > 0 else []
    for node in nodes:
        name = expert_name(backbone, node)
        names.append(name)
        with library.claim(name, log) as build:
            if not build:
                log(f"expert {name} already in the library: reusing it")
                continue
            t0 = time.perf_counter()
            expert, stats = train_full_expert(baseline, train, node, expert_cfg, seed, device, progress)
            acc = leaf_accuracy(expert, holdout, device=device)
            own = leaf_accuracy(expert, holdout, holdout.slice(node), device=device)
            log(f"expert {name}: holdout leaf accuracy {acc:.3f}, on its own slice {own:.3f} ({time.perf_counter() - t0:.0f}s)")
            idx = train.slice(node)
            library.add(
                member_info(name, "full_expert", expert, backbone, bname, node, len(idx), acc,
                      {"train": expert_cfg.to_json(), "stats": stats.to_json(), "seed": seed, "slice_accuracy": own}),
                expert, label_prior=torch.from_numpy(train.label_distribution(idx)),
            )
    return names
