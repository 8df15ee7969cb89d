"""Upstream training, once: the baseline B on all upstream data, then one full expert per chosen
hierarchy node (B fine-tuned on that node's slice, the same number of steps for every expert,
paper 000 section 4.3). Everything trains through :func:`expertise.train.fit`.

Each model is a unit of work stored in the library as soon as it is done, so a killed run resumes
by skipping the members already there.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from expertise.data.upstream import UpstreamData
from expertise.errors import LibraryError
from expertise.library import Library, MemberInfo
from expertise.models.backbones import BACKBONES, ExpertModel, Preprocessing, count_parameters, prepare
from expertise.models.forward import forward_batches
from expertise.runtime import derive_seed
from expertise.train import EpochSampler, TrainConfig, TrainStats, fit, multilabel_loss


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


def leaf_accuracy(model: ExpertModel, data: UpstreamData, indices: np.ndarray | None = None,
                  device: torch.device = torch.device("cpu"), batch_size: int = 1000) -> float:
    """Top-1 accuracy over leaves: the highest-scoring leaf logit must be the image's leaf."""
    idx = np.arange(len(data)) if indices is None else np.asarray(indices)
    if len(idx) == 0:
        return float("nan")
    correct = 0
    for i in range(0, len(idx), batch_size):  # rendered a chunk at a time, not all at once
        chunk = idx[i:i + batch_size]
        logits = forward_batches(model, data.images(chunk), ("upstream_logits",), batch_size, device)["upstream_logits"]
        pred = data.hierarchy.leaf_logits(logits).argmax(1).numpy()
        correct += int((pred == data.leaf_ids[chunk]).sum())
    return correct / len(idx)


def train_baseline(train: UpstreamData, backbone: str, cfg: TrainConfig, seed: int,
                   device: torch.device = torch.device("cpu"), progress: bool = True) -> tuple[ExpertModel, TrainStats]:
    """B: a ResNet-v2 trained from scratch with a sigmoid loss over every hierarchy label node."""
    torch.manual_seed(derive_seed(seed, "baseline", "init"))
    model = ExpertModel(BACKBONES[backbone], num_outputs=len(train.hierarchy.label_nodes))
    batches = UpstreamBatches(train, np.arange(len(train)), cfg.batch_size, model.preprocessing,
                              derive_seed(seed, "baseline", "data"))
    stats = fit(model, batches, cfg, multilabel_loss, device=device, desc="baseline B", show_progress=progress)
    return model, stats


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


def _info(name: str, kind: str, model: ExpertModel, backbone: str, parent: str | None, domain: str | None,
          images: int, accuracy: float, extra: dict) -> MemberInfo:
    return MemberInfo(
        name=name, kind=kind, parent=parent, domain=domain, upstream_images=images,
        parameters=count_parameters(model), embedding_dim=model.num_features, upstream_accuracy=accuracy,
        preprocessing=model.preprocessing.to_json(), files={}, architecture=backbone, extra=extra,
    )


def build_upstream(library: Library, train: UpstreamData, holdout: UpstreamData, backbone: str,
                   baseline_cfg: TrainConfig, expert_cfg: TrainConfig, num_experts: int, seed: int,
                   device: torch.device = torch.device("cpu"), progress: bool = True,
                   log=print) -> list[str]:
    """Train B and the top-``num_experts`` full experts into ``library``; members already present
    are kept (resumption). Returns the member names, baseline first."""
    bname = baseline_name(backbone)
    baseline: ExpertModel | None = None
    with library.claim(bname, log) as build:  # a second builder waits here instead of training B again
        if build:
            t0 = time.perf_counter()
            baseline, stats = train_baseline(train, backbone, baseline_cfg, seed, device, progress)
            acc = leaf_accuracy(baseline, holdout, device=device)
            log(f"baseline {bname}: upstream holdout leaf accuracy {acc:.3f} ({time.perf_counter() - t0:.0f}s)")
            library.add(
                _info(bname, "baseline", baseline, backbone, None, "root", len(train), acc,
                      {"train": baseline_cfg.to_json(), "stats": stats.to_json(), "seed": seed}),
                baseline, label_prior=torch.from_numpy(train.label_distribution()),
            )
    if baseline is None:
        log(f"baseline {bname} already in the library: reusing it")
        baseline = library.load(bname)  # type: ignore[assignment]
    names = [bname]
    nodes = train.hierarchy.choose_expert_domains(train.leaf_counts(), num_experts)
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
                _info(name, "full_expert", expert, backbone, bname, node, len(idx), acc,
                      {"train": expert_cfg.to_json(), "stats": stats.to_json(), "seed": seed, "slice_accuracy": own}),
                expert, label_prior=torch.from_numpy(train.label_distribution(idx)),
            )
    return names
