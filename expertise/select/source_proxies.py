"""Proxies of a member's upstream predictions on the task's images rather than its features:
LEEP (expected empirical predictor) and NCE (negative conditional entropy)."""

from __future__ import annotations

from typing import Any

import numpy as np

from expertise.errors import DataError
from expertise.select.validation import _as_numpy, _one_hot, validate_features

# Rows of source probabilities must sum to 1 within this: float32 softmax outputs stay within
# ~1e-6, while logits or unnormalised scores passed by mistake miss it by far.
PROB_SUM_TOL = 1e-4


def _validate_probs(source_probs: Any, name: str) -> np.ndarray:
    """Source probabilities as float64 [N, Z]: finite, non-negative rows that sum to 1 within
    PROB_SUM_TOL, renormalised to sum to 1 exactly (float32 softmax rounding)."""
    p = _as_numpy(source_probs)
    if p.dtype.kind not in "biuf":
        raise DataError(f"{name}: source_probs must be numeric, got dtype {p.dtype}")
    if p.ndim != 2 or p.shape[1] < 1:
        raise DataError(f"{name}: source_probs must be 2-D [N, Z], got shape {tuple(p.shape)}")
    p = p.astype(np.float64, copy=False)
    if not np.isfinite(p).all():
        raise DataError(f"{name}: source_probs contain NaN or inf; the member's upstream head diverged")
    if (p < 0).any():
        raise DataError(f"{name}: source_probs contain negative values; pass softmax probabilities, not logits")
    sums = p.sum(axis=1)
    bad = np.abs(sums - 1.0) > PROB_SUM_TOL
    if bad.any():
        raise DataError(
            f"{name}: {int(bad.sum())} source_probs rows do not sum to 1 (row {int(np.argmax(bad))} sums to "
            f"{sums[np.argmax(bad)]:.6g}); pass softmax probabilities over the source labels"
        )
    return p / sums[:, None]


def _check_same_length(n: int, labels: Any, what: str, name: str) -> None:
    """DataError unless the (1-D) target labels number ``n``, like the source side."""
    y = _as_numpy(labels)
    if y.ndim == 1 and y.shape[0] != n:
        raise DataError(f"{name}: {n} {what} but {y.shape[0]} target labels; score the same images")


def hard_source_labels(source_probs: Any, name: str = "source_probs") -> np.ndarray:
    """The member's hard source label per sample, int64 [N]: the argmax of each row of
    ``source_probs`` float [N, Z] (the lowest index among equal probabilities)."""
    return _validate_probs(source_probs, name).argmax(axis=1)


def leep(source_probs: Any, labels: Any, name: str = "source_probs") -> float:
    """LEEP (Nguyen et al., 2020), <= 0: the log-likelihood of the empirical expected predictor.

    ``source_probs`` theta float [N, Z] (rows: the member's upstream predictive distribution
    p(z | x_i)), ``labels`` y int [N]. With the empirical joint
    ``P(y, z) = 1/N sum_i [y_i = y] theta_iz`` and ``P(y | z) = P(y, z) / P(z)``,
    ``LEEP = 1/N sum_i log sum_z P(y_i | z) theta_iz``. Source labels z with P(z) = 0 get no
    weight from any sample, so their (undefined) conditional is taken as 0.
    """
    return float(np.mean(leep_terms(source_probs, labels, name)))


def leep_terms(source_probs: Any, labels: Any, name: str = "source_probs") -> np.ndarray:
    """float64 [N]: LEEP's per-image terms ``log sum_z P(y_i | z) theta_iz`` (the empirical
    conditional of the whole task held fixed); :func:`leep` is their mean."""
    p = _validate_probs(source_probs, name)
    _check_same_length(p.shape[0], labels, "rows of source_probs", name)
    _, y = validate_features(p, labels, name)
    codes, onehot = _one_hot(y)
    joint = onehot.T @ p / p.shape[0]  # [C, Z]
    marginal = joint.sum(axis=0)  # P(z) [Z]
    conditional = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)  # P(y | z)
    # For each i, some z with theta_iz > 0 has P(y_i, z) >= theta_iz / N > 0: the log is finite.
    expected = (conditional[codes] * p).sum(axis=1)
    return np.log(expected)


def nce(source_labels: Any, labels: Any, name: str = "source_labels") -> float:
    """NCE (Tran et al., 2019), <= 0: the negative conditional entropy ``-H(Y | Z)`` in nats.

    ``source_labels`` z int [N] (the member's hard source label per sample, e.g.
    :func:`hard_source_labels`), ``labels`` y int [N]. With the empirical joint
    ``P(y, z) = #{i: y_i = y, z_i = z} / N``, ``NCE = sum_{y, z} P(y, z) log (P(y, z) / P(z))``;
    0 when z determines y.
    """
    z = _as_numpy(source_labels)
    if z.ndim != 1:
        raise DataError(f"{name}: source labels must be 1-D [N], got shape {tuple(z.shape)}")
    if z.dtype.kind not in "biuf" or (z.dtype.kind == "f" and not np.all(np.isfinite(z) & (z == np.round(z)))):
        raise DataError(f"{name}: source labels must be integers, got dtype {z.dtype}")
    _check_same_length(z.shape[0], labels, "source labels", name)
    _, y = validate_features(z.astype(np.float64)[:, None], labels, name)  # checks the target labels
    _, y_codes = np.unique(y, return_inverse=True)
    _, z_codes = np.unique(z.astype(np.int64), return_inverse=True)
    n_y, n_z = int(y_codes.max()) + 1, int(z_codes.max()) + 1
    counts = np.bincount(y_codes.reshape(-1) * n_z + z_codes.reshape(-1), minlength=n_y * n_z)
    joint = counts.reshape(n_y, n_z) / y.size  # P(y, z) [C, Z]
    conditional = joint / joint.sum(axis=0)  # P(y | z); every z occurs, so P(z) > 0
    present = joint > 0  # 0 log 0 = 0
    return float((joint[present] * np.log(conditional[present])).sum())


def nce_terms(source_probs: Any, labels: Any, name: str = "source_probs") -> np.ndarray:
    """float64 [N]: NCE's per-image terms ``log P(y_i | z_i)`` of the hard source labels of
    ``source_probs`` (the empirical joint of the whole task held fixed): their mean is
    :func:`nce_from_probs`, up to rounding (NCE sums over the joint's cells instead)."""
    z = hard_source_labels(source_probs, name)
    _check_same_length(z.shape[0], labels, "rows of source_probs", name)
    _, y = validate_features(z.astype(np.float64)[:, None], labels, name)
    _, y_codes = np.unique(y, return_inverse=True)
    _, z_codes = np.unique(z, return_inverse=True)
    y_codes, z_codes = y_codes.reshape(-1), z_codes.reshape(-1)
    n_y, n_z = int(y_codes.max()) + 1, int(z_codes.max()) + 1
    joint = np.bincount(y_codes * n_z + z_codes, minlength=n_y * n_z).reshape(n_y, n_z).astype(np.float64)
    return np.log(joint[y_codes, z_codes] / joint.sum(axis=0)[z_codes])


def nce_from_probs(source_probs: Any, labels: Any, name: str = "source_probs") -> float:
    """:func:`nce` of the hard (argmax) source labels of ``source_probs`` float [N, Z]."""
    return nce(hard_source_labels(source_probs, name), labels, name)
