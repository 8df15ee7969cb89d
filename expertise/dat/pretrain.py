"""The DAT driver: weights from B, a sampled pre-training set, a specialist pre-trained through the
one training loop and fine-tuned on the task, with per-stage seconds and images (:func:`run_dat`),
its record, and its cost against expert selection (:func:`cost_ratios`)."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from expertise.dat.classes import UpstreamClasses, upstream_classes
from expertise.dat.samplers import SAMPLER_FUNCTIONS, SAMPLERS, Sampler, sampled_label_distribution, unique_examples
from expertise.dat.weights import DEFAULT_TEMPERATURE, WEIGHTINGS, Weighting, target_label_distribution, weights_for
from expertise.data.hierarchy import ROOT, Hierarchy
from expertise.data.tasks import Task
from expertise.data.upstream_data import UpstreamData
from expertise.errors import ConfigError
from expertise.models.backbones import BACKBONES, ExpertModel
from expertise.models.forward import forward_batches
from expertise.records import make_record
from expertise.runtime import RunContext, derive_seed
from expertise.train import TrainConfig, fit, multilabel_loss
from expertise.transfer.finetune import finetune_and_test
from expertise.upstream.baseline import batch_source

if TYPE_CHECKING:
    from expertise.upstream.disk_data import DiskUpstream

Init = Literal["scratch", "baseline"]
INITS: tuple[str, ...] = ("scratch", "baseline")


@dataclass
class DATResult:
    """One DAT run on one task. ``seconds`` and ``images`` are per stage (weights: B's forward
    passes over the target images; sample: the sampler, images = sampled dataset size; pretrain
    and finetune: the training loops). ``model`` is the pre-trained specialist (before the
    fine-tune); it, ``label_weights`` (float64 [num classes]: the leaves of the embedded world,
    :mod:`expertise.dat.classes` on a dataset on disk) and the sampled ``indices`` (int64 into the
    upstream data, sorted) are not part of the JSON."""

    task: str
    test_accuracy: float
    config: dict[str, Any]
    sampled_size: int
    unique_examples: int
    labels_selected: int
    labels_sampled: int
    label_summary: dict[str, Any]
    seconds: dict[str, float]
    images: dict[str, int]
    pretrain: dict[str, Any]
    finetune: dict[str, Any]
    label_weights: np.ndarray = field(repr=False)
    indices: np.ndarray = field(repr=False)
    model: ExpertModel | None = field(default=None, repr=False)

    @property
    def total_seconds(self) -> float:
        return float(sum(self.seconds.values()))

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task, "test_accuracy": self.test_accuracy, "config": self.config,
            "sampled_size": self.sampled_size, "unique_examples": self.unique_examples,
            "labels_selected": self.labels_selected, "labels_sampled": self.labels_sampled,
            "label_summary": self.label_summary,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()}, "images": dict(self.images),
            "pretrain": self.pretrain, "finetune": self.finetune,
        }


def leaf_logits(model: ExpertModel, hierarchy: Hierarchy, images_uint8: torch.Tensor,
                device: torch.device = torch.device("cpu"), batch_size: int = 500) -> torch.Tensor:
    """float32 [N, num_leaves]: the upstream model's logits for the hierarchy's leaves on images."""
    if not getattr(model, "has_upstream_head", False):
        raise ConfigError("DAT needs the upstream model B with its upstream head (one logit per hierarchy label node)")
    outs = model.head.out_features  # type: ignore[union-attr]
    if outs != len(hierarchy.label_nodes):
        raise ConfigError(f"the upstream model has {outs} upstream outputs but the hierarchy has "
                          f"{len(hierarchy.label_nodes)} label nodes; use the B trained on this upstream data")
    logits = forward_batches(model, images_uint8, ("upstream_logits",), batch_size, device)["upstream_logits"]
    return hierarchy.leaf_logits(logits)


def class_logits(model: ExpertModel, classes: UpstreamClasses, images_uint8: torch.Tensor,
                 device: torch.device = torch.device("cpu"), batch_size: int = 500) -> torch.Tensor:
    """float32 [N, C]: the upstream model's logits for the upstream classes (the world's leaves:
    :func:`leaf_logits`) on images."""
    if not getattr(model, "has_upstream_head", False):
        raise ConfigError("DAT needs the upstream model B with its upstream head (one logit per hierarchy label node)")
    logits = forward_batches(model, images_uint8, ("upstream_logits",), batch_size, device)["upstream_logits"]
    return classes.logits(logits)


def _label_summary(classes: UpstreamClasses, p_t: np.ndarray, p_s: np.ndarray, w: np.ndarray,
                   sampled: np.ndarray, top: int = 10) -> dict[str, Any]:
    """Per-label and per-domain shares: target p_t, the sampler's aim q = p_s w, source p_s, sampled."""
    q = p_s * w
    q = q / q.sum()
    leaves = classes.names
    ranked = np.lexsort((np.arange(len(leaves)), -sampled))[:top]
    domains = {}
    for dom in classes.hierarchy.children(ROOT):
        on = classes.under(dom)
        domains[dom] = {"target": float(p_t[on].sum()), "aim": float(q[on].sum()),
                        "source": float(p_s[on].sum()), "sampled": float(sampled[on].sum())}
    return {
        "top": [{"label": leaves[i], "target": float(p_t[i]), "aim": float(q[i]), "source": float(p_s[i]),
                 "weight": float(w[i]), "sampled": float(sampled[i])} for i in ranked],
        "domains": domains,
        # total variation distances of the sampled shares from the aim (sampler fidelity) and from p_t
        "tv_to_aim": float(0.5 * np.abs(sampled - q).sum()),
        "tv_to_target": float(0.5 * np.abs(sampled - p_t).sum()),
    }


@dataclass(frozen=True)
class DATConfig:
    """One DAT run's settings: ``size`` upstream examples sampled by ``sampler`` with ``weighting``
    of B's predictions tempered by ``temperature``; the specialist starts from ``init``
    (``"scratch"``: new weights as the paper; ``"baseline"``: B's weights, cheaper) in the shape
    ``backbone`` (``BACKBONES``; default: B's; with ``init="baseline"`` it must be B's).
    ``top_labels`` restricts the weighting to the labels with most target mass (Table 6 used the
    top 4k); None keeps every selectable label."""

    size: int
    sampler: Sampler = "elastic"
    temperature: float = DEFAULT_TEMPERATURE
    weighting: Weighting = "adaptive"
    init: Init = "scratch"
    top_labels: int | None = None
    backbone: str | None = None


def run_dat(baseline: ExpertModel, upstream_train: UpstreamData | DiskUpstream, task: Task, cfg: DATConfig,
            pretrain_cfg: TrainConfig, finetune_cfg: TrainConfig, ctx: RunContext = RunContext()) -> DATResult:
    """Domain adaptive transfer for one task: weights from B on the task's 1,000 train+val images
    (labels unused), a sampled upstream set of ``cfg.size`` examples, a specialist pre-trained on
    it, then the standard fine-tune and test (see :class:`DATConfig`). ``ctx`` gives the seed every
    stream is derived from, the device and the progress flag.
    """
    size, sampler, temperature, weighting = cfg.size, cfg.sampler, cfg.temperature, cfg.weighting
    init, top_labels, backbone = cfg.init, cfg.top_labels, cfg.backbone
    seed, device, progress = ctx.seed, ctx.device, ctx.progress
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown DAT sampler {sampler!r}; choose one of {SAMPLERS}")
    if weighting not in WEIGHTINGS:
        raise ConfigError(f"unknown DAT weighting {weighting!r}; choose one of {WEIGHTINGS}")
    if init not in INITS:
        raise ConfigError(f"unknown DAT initialisation {init!r}; choose one of {INITS}")
    if backbone is not None and backbone not in BACKBONES:
        raise ConfigError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
    if init == "baseline" and backbone is not None and BACKBONES[backbone] != baseline.backbone_config:
        raise ConfigError(f"init='baseline' starts from B's weights, so the backbone must be B's "
                          f"({baseline.backbone_config.name}), not {backbone!r}; drop --backbone or use init='scratch'")
    hierarchy = upstream_train.hierarchy
    classes = upstream_classes(upstream_train)
    seconds: dict[str, float] = {}
    images: dict[str, int] = {}

    # 1. importance weights: B on the target images, a tempered softmax over the present leaves
    t0 = time.perf_counter()
    target_images = task.trainval.images
    logits = class_logits(baseline, classes, target_images, device).double().numpy()
    p_s = classes.distribution()
    present = p_s > 0
    p_t = np.zeros_like(p_s)
    p_t[present] = target_label_distribution(logits[:, present], temperature)
    w = weights_for(weighting, p_t, p_s, top_labels)
    seconds["weights"] = time.perf_counter() - t0
    images["weights"] = int(target_images.shape[0])

    # 2. the pre-training set
    t0 = time.perf_counter()
    indices = SAMPLER_FUNCTIONS[sampler](classes.of_image, w, size, derive_seed(seed, "dat", "sample"))
    seconds["sample"] = time.perf_counter() - t0
    images["sample"] = int(indices.size)

    # 3. specialist pre-training with B's objective
    t0 = time.perf_counter()
    if init == "baseline":
        model = copy.deepcopy(baseline)
    else:
        torch.manual_seed(derive_seed(seed, "dat", "init"))
        shape = BACKBONES[backbone] if backbone is not None else baseline.backbone_config
        model = ExpertModel(shape, num_outputs=len(hierarchy.label_nodes))
    for p in model.parameters():
        p.requires_grad_(True)
    with batch_source(upstream_train, indices, pretrain_cfg.batch_size, model.preprocessing,
                      derive_seed(seed, "dat", "data"), pretrain_cfg.steps) as batches:
        pre = fit(model, batches, pretrain_cfg, multilabel_loss, device=device, desc=f"DAT pre-train {task.name}",
                  show_progress=progress)
    seconds["pretrain"] = time.perf_counter() - t0
    images["pretrain"] = pre.images

    # 4. the standard downstream protocol
    ft = finetune_and_test(model, task, finetune_cfg, seed, device, progress, desc=f"fine-tune DAT {task.name}")
    seconds["finetune"] = ft.train_seconds
    images["finetune"] = ft.images

    sampled = sampled_label_distribution(indices, classes.of_image, len(classes))
    config = {
        "task": task.name, "sampler": sampler, "size": int(size), "temperature": float(temperature),
        "weighting": weighting, "init": init, "top_labels": top_labels,
        "backbone": backbone or baseline.backbone_config.name, "seed": seed, "upstream": upstream_train.name,
        "upstream_images": len(upstream_train), "pretrain": pretrain_cfg.to_json(), "finetune": finetune_cfg.to_json(),
    }
    return DATResult(
        task=task.name, test_accuracy=ft.test_accuracy, config=config, sampled_size=int(indices.size),
        unique_examples=unique_examples(indices), labels_selected=int((w > 0).sum()),
        labels_sampled=int((sampled > 0).sum()), label_summary=_label_summary(classes, p_t, p_s, w, sampled),
        seconds=seconds, images=images, pretrain=pre.to_json(), finetune=ft.to_json(), label_weights=w, indices=indices,
        model=model,
    )


def dat_record(result: DATResult, extra_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run as a project record (``expertise.records``), kind ``"dat"``."""
    metrics = {k: v for k, v in result.to_json().items() if k not in ("config", "seconds", "images")}
    return make_record("dat", {**result.config, **(extra_config or {})}, metrics, result.seconds, result.images)



def cost_ratios(result: DATResult, select_seconds: float, select_images: int) -> dict[str, float]:
    """What DAT costs before its fine-tune (weights, sampling, pre-training) against a selection
    that cost ``select_seconds`` and ``select_images`` (every image each embedded member saw):
    the two ratios the paper's argument rests on (a fresh pre-training per task against one cheap
    pass of the pool), with the absolute figures they come from."""
    seconds = sum(v for k, v in result.seconds.items() if k != "finetune")
    images = sum(v for k, v in result.images.items() if k in ("weights", "pretrain"))
    return {"dat_seconds": seconds, "dat_images": float(images),
            "time_ratio": seconds / max(select_seconds, 1e-9), "images_ratio": images / max(select_images, 1)}
