"""Importance weights of Domain Adaptive Transfer (paper 003, section 3.3): the target label
distribution ``p_t`` predicted by B on the task's images (tempered softmax over leaf logits), the
upstream label distribution ``p_s``, and ``w(y) = p_t(y) / p_s(y)`` with the weighting ablation of
Table 6. Why an image is weighted by its leaf is in :mod:`expertise.dat`. Float64 throughout."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from expertise.data.upstream_data import UpstreamData
from expertise.errors import ConfigError, DataError

Weighting = Literal["adaptive", "uniform", "reversed"]
WEIGHTINGS: tuple[str, ...] = ("adaptive", "uniform", "reversed")
DEFAULT_TEMPERATURE = 2.0  # the paper's value (section 4, "a temperature of 2.0")
_SUM_TOLERANCE = 1e-6


def as_float64(x: np.ndarray | torch.Tensor, name: str, ndim: int) -> np.ndarray:
    arr = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    if arr.ndim != ndim:
        raise DataError(f"{name} must be a {ndim}-D array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{name} contains NaN or infinite values; check the model's outputs or the counts")
    return arr


def _check_distribution(p: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """A float64 probability vector: 1-D, non-empty, finite, non-negative, summing to 1."""
    arr = as_float64(p, name, 1)
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
    z = as_float64(leaf_logits, "leaf_logits", 2)
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

