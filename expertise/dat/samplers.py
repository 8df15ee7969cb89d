"""Samplers of Domain Adaptive Transfer (paper 003, sections 4.1 and 4.3): a pre-training set of a
chosen size drawn from upstream so that its label distribution follows the importance weights, with
replacement (*same distribution matcher*) or without (*elastic distribution matcher*).
Deterministic given their seed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np

from expertise.dat.weights import as_float64
from expertise.errors import ConfigError, DataError
from expertise.runtime import derive_seed

Sampler = Literal["elastic", "same"]
SAMPLERS: tuple[str, ...] = ("same", "elastic")


def _check_sampling(example_labels: np.ndarray, label_weights: np.ndarray,
                    size: int) -> tuple[np.ndarray, np.ndarray, int]:
    labels = np.asarray(example_labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"example_labels must be a non-empty 1-D integer array, got {labels.dtype} {labels.shape}")
    w = as_float64(label_weights, "label_weights", 1)
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
    w = as_float64(label_weights, "label_weights", 1)
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

