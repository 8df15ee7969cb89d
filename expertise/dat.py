"""Domain Adaptive Transfer (DAT; Ngiam et al. 2018, paper 003 sections 3.3, 4.1, 4.3, Table 6):
a specialist pre-trained on upstream data re-sampled to look like the target task, then
fine-tuned on the task. It is the expensive competitor to expert selection: every new task pays
for a fresh upstream pre-training.

The recipe
----------
1. **Importance weights** (section 3.3). Under the assumption ``P_s(x|y) ~ P_t(x|y)`` the target
   loss is the source loss re-weighted by ``w(y) = p_t(y) / p_s(y)``. ``p_s`` is the upstream
   label frequency; ``p_t`` is unknown (the target task has other labels), so the generic
   upstream model B predicts upstream labels on the target's images (their target labels are never
   used) and ``p_t`` is the mean prediction. The softmax is tempered (logits divided by 2.0, the
   paper's "smooth prior"), which flattens ``p_t`` so that labels B finds only weakly still count.
2. **Sampling** (sections 4.1, 4.3). Rather than weighting the loss (batches of mostly tiny weights,
   wasted compute), a pre-training set of a chosen size is drawn from upstream: the *same
   distribution matcher* samples with replacement at a rate proportional to each example's weight;
   the *elastic distribution matcher* samples without replacement (see :func:`elastic_sample`).
3. **Specialist pre-training** from scratch (the paper) or, cheaper, from B, through the one
   training loop :func:`expertise.train.fit` with B's loss (sigmoid over every hierarchy node),
   then the standard downstream fine-tune (:func:`expertise.transfer.finetune_and_test`).

Which label gives a multi-label upstream image its weight
----------------------------------------------------------
Our upstream images are multi-label, but every image has exactly one leaf and its other labels are
that leaf's ancestors: the label *set* of an image is a function of its leaf. So the paper's ``y``
(the image's label) is the leaf, and an image is weighted by its leaf: ``w(image) = w(leaf)``.
This keeps the paper's identity exact: the sampled leaf distribution is ``p_s(leaf) w(leaf) =
p_t(leaf)``, and every ancestor's share follows (a node's sampled share is the sum of ``p_t`` over
its descendant leaves), so coarse labels are matched as well, without being counted twice.
Weighting by ancestors instead would need a rule to combine several weights per image (mean, max,
product), each of which breaks that identity, and an ancestor's weight is only an average of its
leaves' weights, so it would blur exactly the fine-grained preference DAT is after. For the same
reason ``p_t`` is a softmax over B's *leaf* logits (leaves are mutually exclusive, so a categorical
distribution is the right model), not over all label nodes.

Leaves without an upstream image (possible on small upstream sets) cannot be sampled; the driver
leaves them out of the softmax, so ``p_t`` is a distribution over the leaves one can sample.

Everything about the weights is float64 numpy; the samplers are deterministic given their seed.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from expertise.data.hierarchy import ROOT, Hierarchy
from expertise.data.tasks import Task
from expertise.data.upstream import UpstreamData
from expertise.errors import ConfigError, DataError
from expertise.models.backbones import BACKBONES, ExpertModel
from expertise.models.forward import forward_batches
from expertise.records import make_record
from expertise.runtime import derive_seed
from expertise.train import TrainConfig, fit, multilabel_loss
from expertise.transfer import finetune_and_test
from expertise.upstream import UpstreamBatches

Sampler = Literal["elastic", "same"]
Weighting = Literal["adaptive", "uniform", "reversed"]
Init = Literal["scratch", "baseline"]
SAMPLERS: tuple[str, ...] = ("same", "elastic")
WEIGHTINGS: tuple[str, ...] = ("adaptive", "uniform", "reversed")
INITS: tuple[str, ...] = ("scratch", "baseline")
DEFAULT_TEMPERATURE = 2.0  # the paper's value (section 4, "a temperature of 2.0")
_SUM_TOLERANCE = 1e-6

# =============================================================================================
# Importance weights
# =============================================================================================


def _as_float64(x: np.ndarray | torch.Tensor, name: str, ndim: int) -> np.ndarray:
    arr = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    if arr.ndim != ndim:
        raise DataError(f"{name} must be a {ndim}-D array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{name} contains NaN or infinite values; check the model's outputs or the counts")
    return arr


def _check_distribution(p: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """A float64 probability vector: 1-D, non-empty, finite, non-negative, summing to 1."""
    arr = _as_float64(p, name, 1)
    if arr.size == 0:
        raise DataError(f"{name} is empty; it needs one probability per label")
    if arr.min() < 0:
        raise DataError(f"{name} has negative entries (min {arr.min():.3g}); probabilities must be >= 0")
    if abs(arr.sum() - 1.0) > _SUM_TOLERANCE:
        raise DataError(f"{name} sums to {arr.sum():.6g}, not 1; normalise it (divide by its sum) first")
    return arr


def target_label_distribution(leaf_logits: np.ndarray | torch.Tensor,
                              temperature: float = DEFAULT_TEMPERATURE) -> np.ndarray:
    """``p_t``: float64 [L], the mean over target images of ``softmax(leaf_logits / temperature)``.

    ``leaf_logits`` is [N, L]: the upstream model's logits for the L mutually exclusive upstream
    leaves on N target images. A temperature above 1 flattens each image's prediction (the paper's
    smoothing prior, 2.0); the softmax runs in float64 with the row maximum subtracted, so large
    logits cannot overflow.
    """
    z = _as_float64(leaf_logits, "leaf_logits", 2)
    if z.shape[0] == 0 or z.shape[1] == 0:
        raise DataError(f"leaf_logits has shape {z.shape}; it needs at least one target image and one label")
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        t = float("nan")
    if not (np.isfinite(t) and t > 0):
        raise ConfigError(f"the softmax temperature must be a positive number, got {temperature!r}")
    z = z / t
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    p = (e / e.sum(axis=1, keepdims=True)).mean(axis=0)
    return p / p.sum()  # exact normalisation against rounding


def source_label_distribution(data: UpstreamData) -> np.ndarray:
    """``p_s``: float64 [num_leaves], each leaf's frequency among the upstream images (leaf order of
    ``data.hierarchy.leaves``). An image counts once, for its leaf (see the module docstring)."""
    if len(data) == 0:
        raise DataError(f"{data.name} has no images; DAT needs upstream data to sample from")
    counts = np.bincount(data.leaf_ids, minlength=len(data.hierarchy.leaves)).astype(np.float64)
    return counts / counts.sum()


def importance_weights(p_t: np.ndarray | torch.Tensor, p_s: np.ndarray | torch.Tensor,
                       missing: Literal["error", "drop"] = "error") -> np.ndarray:
    """``w(y) = p_t(y) / p_s(y)``, float64 [L]; 0 where ``p_t`` is 0.

    A label with target mass but no source example (``p_s = 0 < p_t``) has no finite weight and no
    example to sample: ``missing="error"`` (default) refuses it, ``"drop"`` gives it weight 0
    (its target mass is then simply not matched). Both inputs must be probability vectors.
    """
    pt = _check_distribution(p_t, "p_t (target label distribution)")
    ps = _check_distribution(p_s, "p_s (source label distribution)")
    if pt.shape != ps.shape:
        raise DataError(f"p_t has {pt.size} labels but p_s has {ps.size}; both must index the same labels")
    if missing not in ("error", "drop"):
        raise ConfigError(f"missing must be 'error' or 'drop', got {missing!r}")
    unseen = (ps == 0) & (pt > 0)
    if unseen.any() and missing == "error":
        raise DataError(
            f"{int(unseen.sum())} labels (e.g. index {int(np.flatnonzero(unseen)[0])}) have target mass but no "
            "source example (p_s = 0); restrict p_t to labels present upstream, or pass missing='drop'"
        )
    w = np.zeros_like(pt)
    ok = ps > 0
    w[ok] = pt[ok] / ps[ok]
    return w


# =============================================================================================
# The weighting ablation (Table 6)
# =============================================================================================


def selected_labels(p_t: np.ndarray, p_s: np.ndarray, top_labels: int | None = None) -> np.ndarray:
    """The labels DAT selects, int64 indices ranked by target mass ``p_t`` (ties: lower index first).

    Selected means: the adaptive weight is non-zero (``p_t > 0`` and ``p_s > 0``, i.e. the adaptive
    sampler can draw the label at all), optionally only the ``top_labels`` with most target mass.
    The paper's Table 6 works on "the top 4k selected/matched labels": the labels that make up most
    of the adaptive pre-training set, whose label shares are ``p_t``; hence the ranking by ``p_t``.
    """
    pt = _check_distribution(p_t, "p_t (target label distribution)")
    ps = _check_distribution(p_s, "p_s (source label distribution)")
    if pt.shape != ps.shape:
        raise DataError(f"p_t has {pt.size} labels but p_s has {ps.size}; both must index the same labels")
    cand = np.flatnonzero((pt > 0) & (ps > 0))
    if cand.size == 0:
        raise DataError("no label has both target mass and a source example; the upstream data cannot match this task")
    order = cand[np.lexsort((cand, -pt[cand]))]
    if top_labels is not None:
        if int(top_labels) < 1:
            raise ConfigError(f"top_labels must be at least 1 (or None for all), got {top_labels}")
        order = order[: int(top_labels)]
    return order.astype(np.int64)


def weights_for(mode: Weighting | str, p_t: np.ndarray, p_s: np.ndarray, top_labels: int | None = None) -> np.ndarray:
    """Importance weights float64 [L] for a weighting scheme of the paper's Table 6.

    Each scheme fixes a pre-training label distribution ``q`` over the selected labels
    (:func:`selected_labels`, 0 elsewhere) and returns ``w = q / p_s``, the per-label rate the
    samplers take, so that a same-distribution sample has label shares ``p_s * w = q``:

    * ``adaptive``: ``q = p_t`` restricted to the selected labels and renormalised (with
      ``top_labels=None`` this is exactly :func:`importance_weights`);
    * ``uniform``: ``q = 1/K`` on each of the K selected labels -- the caption's "uniform
      distribution on all selected labels": the same labels, no emphasis among them;
    * ``reversed``: the adaptive ``q`` values reassigned in reverse rank order -- the label with
      the most target mass gets the least and vice versa ("swapping the weights between the
      highest and the lowest weighted labels from the Adaptive Transfer distribution"). Ranks are
      those of :func:`selected_labels`, so ties are broken by label index and the result is
      deterministic. Reversal is done on the label distribution (as the caption says), so the
      set keeps the same multiset of label shares and only the emphasis is inverted.
    """
    if mode not in WEIGHTINGS:
        raise ConfigError(f"unknown weighting {mode!r}; choose one of {WEIGHTINGS}")
    sel = selected_labels(p_t, p_s, top_labels)
    pt = np.asarray(p_t, dtype=np.float64)
    ps = np.asarray(p_s, dtype=np.float64)
    q = np.zeros_like(pt)
    adaptive = pt[sel] / pt[sel].sum()  # descending, since sel is ranked by p_t
    if mode == "adaptive":
        q[sel] = adaptive
    elif mode == "uniform":
        q[sel] = 1.0 / sel.size
    else:
        q[sel] = adaptive[::-1]
    w = np.zeros_like(pt)
    w[sel] = q[sel] / ps[sel]
    return w


# =============================================================================================
# Samplers
# =============================================================================================


def _check_sampling(example_labels: np.ndarray, label_weights: np.ndarray,
                    size: int) -> tuple[np.ndarray, np.ndarray, int]:
    labels = np.asarray(example_labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"example_labels must be a non-empty 1-D integer array, got {labels.dtype} {labels.shape}")
    w = _as_float64(label_weights, "label_weights", 1)
    if w.size == 0:
        raise DataError("label_weights is empty; it needs one weight per label")
    if int(labels.min()) < 0 or int(labels.max()) >= w.size:
        raise DataError(f"example labels must index label_weights, i.e. lie in [0, {w.size}); "
                        f"got range [{labels.min()}, {labels.max()}]")
    if w.min() < 0:
        raise DataError(f"label_weights has negative entries (min {w.min():.3g}); weights must be >= 0")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ConfigError(f"the sampled dataset size must be a positive integer, got {size!r}")
    if not (w[labels] > 0).any():
        raise DataError("every example has weight 0: no upstream example carries a label the weights select")
    return labels.astype(np.int64), w, int(size)


def same_distribution_sample(example_labels: np.ndarray, label_weights: np.ndarray, size: int,
                             seed: int) -> np.ndarray:
    """The *same distribution matcher*: ``size`` draws WITH replacement, example i with probability
    proportional to ``label_weights[example_labels[i]]``. Sorted int64 indices into the examples.

    A label's share of the draws is then proportional to ``count(y) * w(y)``, i.e. ``p_s(y) w(y)``,
    which is ``p_t(y)`` for the adaptive weights: the paper's target distribution, bought with
    repeated examples wherever ``p_t`` asks for more than upstream holds.
    """
    labels, w, size = _check_sampling(example_labels, label_weights, size)
    rate = w[labels]
    rng = np.random.default_rng(derive_seed(seed, "dat", "same"))
    return np.sort(rng.choice(labels.size, size=size, replace=True, p=rate / rate.sum())).astype(np.int64)


def elastic_allocation(label_counts: np.ndarray, label_weights: np.ndarray, size: int) -> np.ndarray:
    """int64 [L]: how many examples of each label the elastic matcher takes (never more than it has).

    The paper (section 4.3): "we start with the class with the highest importance weight and select
    all the samples available. Next, we recursively consider sampling a dataset of the remaining
    desired examples (original desired dataset size minus the number of examples just selected)
    from the rest of the classes." Interpreted as water-filling: with ``n`` examples still to take
    and ``R`` the labels not yet used, label y's desired count is ``n * c(y) w(y) / sum_R c w``
    (the same-distribution target). If the highest-weighted label in R desires at least what it
    has, all of it is taken and the recursion continues on the rest with ``n - c(y)``. Otherwise no
    label in R can saturate (its desired/available ratio ``n w(y) / sum_R c w`` is largest for the
    highest weight), so the recursion ends by giving every label of R its desired count, rounded
    by largest remainder (ties to the lower label index) so the counts sum to ``n`` exactly.

    This reading matches the paper's observations: at small sizes no label saturates and elastic
    equals the same-distribution target (up to rounding); as the size grows the top labels are
    exhausted and their excess mass spreads over the others, so the distribution drifts from the
    importance weights while the count of unique examples grows. Literally taking *all* examples
    of each label in turn until ``size`` is reached would instead give, at small sizes, a single
    label, contradicting "at the low end ... both methods will generate similar datasets".
    """
    counts = np.asarray(label_counts, dtype=np.int64)
    w = _as_float64(label_weights, "label_weights", 1)
    if counts.shape != w.shape:
        raise DataError(f"label_counts has {counts.size} labels but label_weights has {w.size}")
    if counts.size and counts.min() < 0:
        raise DataError("label_counts must be non-negative")
    if w.size and w.min() < 0:
        raise DataError(f"label_weights has negative entries (min {w.min():.3g}); weights must be >= 0")
    usable = np.flatnonzero((counts > 0) & (w > 0))
    available = int(counts[usable].sum())
    if size > available:
        raise DataError(
            f"the elastic matcher samples without replacement, but size {size} exceeds the {available} upstream "
            "examples with positive weight; lower size, or use the same-distribution matcher (with replacement)"
        )
    take = np.zeros(counts.size, dtype=np.int64)
    order = list(usable[np.lexsort((usable, -w[usable]))])  # highest weight first, ties to lower index
    remaining = size
    mass = float((counts[order] * w[order]).sum())
    while order and remaining > 0:
        y = order[0]
        desired = remaining * counts[y] * w[y] / mass
        if desired < counts[y]:
            break
        take[y] = counts[y]
        remaining -= int(counts[y])
        mass -= float(counts[y] * w[y])
        order.pop(0)
    if order and remaining > 0:
        rest = np.array(sorted(order), dtype=np.int64)
        mass = (counts[rest] * w[rest]).astype(np.float64)
        desired = remaining * mass / mass.sum()
        base = np.minimum(np.floor(desired).astype(np.int64), counts[rest])
        short = remaining - int(base.sum())
        if short > 0:
            frac = desired - base
            frac[base >= counts[rest]] = -1.0  # a full label cannot take one more
            bonus = np.lexsort((rest, -frac))[:short]
            base[bonus] += 1
        take[rest] = base
    return take


def elastic_sample(example_labels: np.ndarray, label_weights: np.ndarray, size: int, seed: int) -> np.ndarray:
    """The *elastic distribution matcher*: ``size`` examples WITHOUT replacement, label counts from
    :func:`elastic_allocation` (highest-weighted labels exhausted first), the examples within a
    label chosen uniformly at random. Sorted int64 indices, each at most once."""
    labels, w, size = _check_sampling(example_labels, label_weights, size)
    counts = np.bincount(labels, minlength=w.size)
    take = elastic_allocation(counts, w, size)
    rng = np.random.default_rng(derive_seed(seed, "dat", "elastic"))
    by_label = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    picked = []
    for y in np.flatnonzero(take):
        members = by_label[starts[y]:starts[y + 1]]
        picked.append(members if take[y] == counts[y] else rng.choice(members, size=int(take[y]), replace=False))
    return np.sort(np.concatenate(picked)).astype(np.int64)


SAMPLER_FUNCTIONS: dict[str, Callable[[np.ndarray, np.ndarray, int, int], np.ndarray]] = {
    "same": same_distribution_sample, "elastic": elastic_sample,
}


def unique_examples(indices: np.ndarray) -> int:
    """How many distinct upstream examples a sampled dataset holds (the paper's Figure 3, bottom)."""
    return int(np.unique(np.asarray(indices)).size)


def sampled_label_distribution(indices: np.ndarray, example_labels: np.ndarray, num_labels: int) -> np.ndarray:
    """float64 [num_labels]: each label's share of a sampled dataset (repeats counted)."""
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size == 0:
        return np.zeros(num_labels, dtype=np.float64)
    return np.bincount(np.asarray(example_labels)[idx], minlength=num_labels).astype(np.float64) / idx.size


# =============================================================================================
# Driver
# =============================================================================================


@dataclass
class DATResult:
    """One DAT run on one task. ``seconds`` and ``images`` are per stage (weights: B's forward
    passes over the target images; sample: the sampler, images = sampled dataset size; pretrain
    and finetune: the training loops). ``model`` is the pre-trained specialist (before the
    fine-tune); it, ``label_weights`` (float64 [num_leaves]) and the sampled ``indices``
    (int64 into the upstream data, sorted) are not part of the JSON."""

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


def _label_summary(hierarchy: Hierarchy, p_t: np.ndarray, p_s: np.ndarray, w: np.ndarray,
                   sampled: np.ndarray, top: int = 10) -> dict[str, Any]:
    """Per-label and per-domain shares: target p_t, the sampler's aim q = p_s w, source p_s, sampled."""
    q = p_s * w
    q = q / q.sum()
    leaves = hierarchy.leaves
    ranked = np.lexsort((np.arange(len(leaves)), -sampled))[:top]
    domains = {}
    for dom in hierarchy.children(ROOT):
        on = hierarchy.leaf_label_matrix[:, hierarchy.label_index[dom]]
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


def run_dat(baseline: ExpertModel, upstream_train: UpstreamData, task: Task, *, size: int,
            pretrain_cfg: TrainConfig, finetune_cfg: TrainConfig, sampler: Sampler = "elastic",
            temperature: float = DEFAULT_TEMPERATURE, weighting: Weighting = "adaptive", init: Init = "scratch",
            top_labels: int | None = None, backbone: str | None = None, seed: int = 0,
            device: torch.device = torch.device("cpu"), progress: bool = True) -> DATResult:
    """Domain adaptive transfer for one task: weights from B on the task's 1,000 train+val images
    (labels unused), a sampled upstream set of ``size`` examples, a specialist pre-trained on it
    (``init="scratch"``: new weights as the paper; ``"baseline"``: B's weights, cheaper), then the
    standard fine-tune and test. ``backbone`` names the specialist's shape (``BACKBONES``; default:
    B's); with ``init="baseline"`` it must be B's. ``top_labels`` restricts the weighting to the
    labels with most target mass (Table 6 used the top 4k); None keeps every selectable label.
    """
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
    seconds: dict[str, float] = {}
    images: dict[str, int] = {}

    # 1. importance weights: B on the target images, a tempered softmax over the present leaves
    t0 = time.perf_counter()
    target_images = task.trainval.images
    logits = leaf_logits(baseline, hierarchy, target_images, device).double().numpy()
    p_s = source_label_distribution(upstream_train)
    present = p_s > 0
    p_t = np.zeros_like(p_s)
    p_t[present] = target_label_distribution(logits[:, present], temperature)
    w = weights_for(weighting, p_t, p_s, top_labels)
    seconds["weights"] = time.perf_counter() - t0
    images["weights"] = int(target_images.shape[0])

    # 2. the pre-training set
    t0 = time.perf_counter()
    indices = SAMPLER_FUNCTIONS[sampler](upstream_train.leaf_ids, w, size, derive_seed(seed, "dat", "sample"))
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
    batches = UpstreamBatches(upstream_train, indices, pretrain_cfg.batch_size, model.preprocessing,
                              derive_seed(seed, "dat", "data"))
    pre = fit(model, batches, pretrain_cfg, multilabel_loss, device=device, desc=f"DAT pre-train {task.name}",
              show_progress=progress)
    seconds["pretrain"] = time.perf_counter() - t0
    images["pretrain"] = pre.images

    # 4. the standard downstream protocol
    ft = finetune_and_test(model, task, finetune_cfg, seed, device, progress, desc=f"fine-tune DAT {task.name}")
    seconds["finetune"] = ft.train_seconds
    images["finetune"] = ft.images

    sampled = sampled_label_distribution(indices, upstream_train.leaf_ids, len(hierarchy.leaves))
    config = {
        "task": task.name, "sampler": sampler, "size": int(size), "temperature": float(temperature),
        "weighting": weighting, "init": init, "top_labels": top_labels,
        "backbone": backbone or baseline.backbone_config.name, "seed": seed, "upstream": upstream_train.name,
        "upstream_images": len(upstream_train), "pretrain": pretrain_cfg.to_json(), "finetune": finetune_cfg.to_json(),
    }
    return DATResult(
        task=task.name, test_accuracy=ft.test_accuracy, config=config, sampled_size=int(indices.size),
        unique_examples=unique_examples(indices), labels_selected=int((w > 0).sum()),
        labels_sampled=int((sampled > 0).sum()), label_summary=_label_summary(hierarchy, p_t, p_s, w, sampled),
        seconds=seconds, images=images, pretrain=pre.to_json(), finetune=ft.to_json(), label_weights=w, indices=indices,
        model=model,
    )


def dat_record(result: DATResult, extra_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run as a project record (``expertise.records``), kind ``"dat"``."""
    metrics = {k: v for k, v in result.to_json().items() if k not in ("config", "seconds", "images")}
    return make_record("dat", {**result.config, **(extra_config or {})}, metrics, result.seconds, result.images)
