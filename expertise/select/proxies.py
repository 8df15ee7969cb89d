"""Transferability proxies: cheap scores that stand in for fine-tuning a member on a task.

Each proxy is a pure function ``(features [N, D], labels [N]) -> float``, higher is better, where
``features`` are one member's embeddings of the task's images (a numpy array or a torch tensor)
and ``labels`` the task's integer labels. Inputs go through :func:`validate_features`, which
turns them into float64 / int64 numpy arrays and raises an error naming the member when they are
unusable, so a bad embedding never becomes a silently meaningless score.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from expertise.errors import ConfigError, DataError

METRICS = ("euclidean", "cosine")
# Rows of the [rows, N] distance block computed at once: bounds memory at ~256 MiB of float64
# whatever N is, while one block still covers a whole VTAB-1k task (N = 1,000) in one go.
_BLOCK_ELEMENTS = 1 << 25


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch here
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def validate_features(features: Any, labels: Any, name: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """Check one member's embeddings of a task and return them as (float64 [N, D], int64 [N]).

    Raises DataError, naming ``name``, when the features are not a finite 2-D numeric array, the
    labels are not N integers, or there are fewer than 2 samples or fewer than 2 classes.
    """
    x = _as_numpy(features)
    if x.dtype.kind not in "biuf":
        raise DataError(f"{name}: features must be numeric, got dtype {x.dtype}")
    if x.ndim != 2:
        raise DataError(f"{name}: features must be 2-D [N, D], got shape {tuple(x.shape)}")
    x = x.astype(np.float64, copy=False)
    y = _as_numpy(labels)
    if y.ndim != 1:
        raise DataError(f"{name}: labels must be 1-D [N], got shape {tuple(y.shape)}")
    if y.shape[0] != x.shape[0]:
        raise DataError(f"{name}: {x.shape[0]} feature rows but {y.shape[0]} labels; embed exactly the labelled images")
    if y.dtype.kind not in "biuf" or (y.dtype.kind == "f" and not np.all(np.isfinite(y) & (y == np.round(y)))):
        raise DataError(f"{name}: labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if x.shape[0] < 2:
        raise DataError(f"{name}: need at least 2 samples to score, got {x.shape[0]}")
    if x.shape[1] < 1:
        raise DataError(f"{name}: features have 0 dimensions")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise DataError(
            f"{name}: {int(bad.sum())} of {x.shape[0]} feature rows contain NaN or inf (first at row {int(np.argmax(bad))}); "
            "the model's embedding diverged or overflowed: re-create the member or embed in float32"
        )
    if np.unique(y).size < 2:
        raise DataError(f"{name}: labels hold a single class ({int(y[0])}); a task needs at least 2 classes to score")
    return x, y


def _distance_block(rows: np.ndarray, points: np.ndarray, sq_norms: np.ndarray | None) -> np.ndarray:
    """Distances float64 [R, M] between ``rows`` [R, D] and ``points`` [M, D] from one matrix
    product: squared Euclidean ``|a|^2 + |b|^2 - 2ab`` when ``sq_norms`` (of ``points``) is
    given, else cosine ``1 - ab`` of rows already scaled to unit length. Clamped at 0, where
    rounding can push a near-duplicate slightly below (squared distance ranks like distance)."""
    d = rows @ points.T
    if sq_norms is None:
        d = 1.0 - d
    else:
        d *= -2.0
        d += (rows * rows).sum(axis=1)[:, None]
        d += sq_norms[None, :]
    return np.maximum(d, 0.0, out=d)


def nearest_neighbours_loo(x: np.ndarray, k: int, metric: str = "euclidean") -> np.ndarray:
    """Indices int64 [N, k] of each point's k nearest other points, nearest first.

    Equidistant neighbours come in index order (lowest first). Distances are computed once per
    distinct row and gathered, so exact duplicates of a row are bit-for-bit equidistant from
    every point and at distance exactly 0 from each other: a duplicate of ``i`` at ``j != i`` is
    a legitimate (nearest) neighbour; only ``i`` itself is excluded. Rows that are all zero have
    no direction: under ``cosine`` they are at distance 1 from every other row but their own
    duplicates (the convention of scikit-learn's cosine distance).
    """
    n = x.shape[0]
    unique, group = np.unique(x, axis=0, return_inverse=True)
    group = group.reshape(-1)
    if metric == "cosine":
        norms = np.linalg.norm(unique, axis=1, keepdims=True)
        unique, sq_norms = unique / np.where(norms > 0, norms, 1.0), None
    else:
        sq_norms = (unique * unique).sum(axis=1)
    out = np.empty((n, k), dtype=np.int64)
    block = max(1, _BLOCK_ELEMENTS // n)
    for start in range(0, n, block):  # one block covers N <= 33k; the loop only bounds memory
        idx = np.arange(start, min(n, start + block))
        d = _distance_block(unique[group[idx]], unique, sq_norms)[:, group]  # [R, N]
        d[group[idx][:, None] == group[None, :]] = 0.0  # exact duplicates: exactly 0, not rounding noise
        d[np.arange(idx.size), idx] = np.inf  # leave one out: the point itself only
        # argmin and a stable sort both return the lowest index among equal distances.
        out[idx] = d.argmin(axis=1)[:, None] if k == 1 else np.argsort(d, axis=1, kind="stable")[:, :k]
    return out


def _majority_vote(neighbour_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 [N] from neighbour labels [N, k] (nearest first): the most frequent label; a tie in
    votes goes to the tied label held by the nearest neighbour."""
    k = neighbour_labels.shape[1]
    if k == 1:
        return neighbour_labels[:, 0]
    hits = neighbour_labels[:, :, None] == np.arange(num_classes)  # [N, k, C]
    votes = hits.sum(axis=1)
    first = np.where(hits.any(axis=1), hits.argmax(axis=1), k)  # rank of each class's nearest neighbour
    return np.argmax(votes * (k + 1) - first, axis=1)  # votes dominate; nearer breaks a tie


def knn_loo(features: Any, labels: Any, k: int = 1, metric: str = "euclidean", name: str = "features") -> float:
    """Leave-one-out k-nearest-neighbour accuracy in [0, 1] (the paper's proxy: k=1, Euclidean).

    ``features`` float [N, D], ``labels`` int [N]; ``name`` (the member) goes into error messages.
    Each point is classified by its ``k`` nearest other points under ``metric`` ("euclidean" or
    "cosine"), from one float64 distance matrix with the diagonal masked. Deterministic ties:
    among equidistant neighbours the lowest index is nearer; for k > 1 the majority label wins
    and a tie in votes goes to the tied label of the nearest neighbour (scikit-learn instead
    takes the smallest label). Exact duplicates of a point count as its neighbours.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ConfigError(f"{name}: k must be an integer, got {k!r}")
    if metric not in METRICS:
        raise ConfigError(f"{name}: metric must be one of {METRICS}, got {metric!r}")
    x, y = validate_features(features, labels, name)
    if not 1 <= k <= x.shape[0] - 1:
        raise ConfigError(f"{name}: k must be between 1 and N - 1 = {x.shape[0] - 1} for leave-one-out, got {k}")
    classes, codes = np.unique(y, return_inverse=True)
    neighbours = nearest_neighbours_loo(x, int(k), metric)
    predicted = _majority_vote(codes[neighbours], classes.size)
    return float(np.mean(predicted == codes))
