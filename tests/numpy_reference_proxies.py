"""Frozen copy of the NumPy proxies as they were before the shared spectral decomposition (issue 17):
the reference the torch implementation is checked against in tests/test_proxies_spectral.py. Not
imported by the library.

Original module docstring: transferability proxies: cheap scores that stand in for fine-tuning a member on a task.

Each proxy is a pure function ``(features [N, D], labels [N]) -> float``, higher is better, where
``features`` are one member's embeddings of the task's images (a numpy array or a torch tensor)
and ``labels`` the task's integer labels. Inputs go through :func:`validate_features`, which
turns them into float64 / int64 numpy arrays and raises an error naming the member when they are
unusable, so a bad embedding never becomes a silently meaningless score.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import numpy as np

from expertise.errors import ConfigError, DataError

METRICS = ("euclidean", "cosine")
# A task's trainval is train (800) followed by val (200): the split of the task-aware proxies of
# paper 002 (Renggli et al.). Equal to expertise.data.tasks.TRAIN_SIZE, restated so that this
# module stays free of torch.
DEFAULT_N_TRAIN = 800
DEFAULT_C_GRID = (0.01, 0.1, 1.0, 10.0)
DEFAULT_ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3)
# Rows of source probabilities must sum to 1 within this: float32 softmax outputs stay within
# ~1e-6, while logits or unnormalised scores passed by mistake miss it by far.
PROB_SUM_TOL = 1e-4
# numpy.linalg.pinv's default cutoff: covariance eigenvalues <= this times the largest count as 0.
_PINV_RCOND = 1e-15
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


def _prepare_rows(x: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Distinct rows of ``x`` (unit length under cosine), each row's group int64 [N] and the
    distinct rows' squared norms (None under cosine), for :func:`_distance_block`."""
    unique, group = np.unique(x, axis=0, return_inverse=True)
    group = group.reshape(-1)
    if metric == "cosine":
        norms = np.linalg.norm(unique, axis=1, keepdims=True)
        return unique / np.where(norms > 0, norms, 1.0), group, None
    return unique, group, (unique * unique).sum(axis=1)


def _nearest(x: np.ndarray, queries: np.ndarray, n_candidates: int, k: int, metric: str, leave_one_out: bool) -> np.ndarray:
    """Indices int64 [Q, k] into the first ``n_candidates`` rows of ``x`` of each query row's k
    nearest, nearest first, lowest index first among equidistant ones; with ``leave_one_out`` a
    query is never its own neighbour (its exact duplicates still are)."""
    unique, group, sq_norms = _prepare_rows(x, metric)
    cand = group[:n_candidates]
    out = np.empty((queries.size, k), dtype=np.int64)
    block = max(1, _BLOCK_ELEMENTS // n_candidates)
    for start in range(0, queries.size, block):  # one block covers N <= 33k; the loop only bounds memory
        rows = np.arange(start, min(queries.size, start + block))
        q = queries[rows]
        d = _distance_block(unique[group[q]], unique, sq_norms)[:, cand]  # [R, n_candidates]
        d[group[q][:, None] == cand[None, :]] = 0.0  # exact duplicates: exactly 0, not rounding noise
        if leave_one_out:
            d[np.arange(q.size), q] = np.inf  # the point itself only
        # argmin and a stable sort both return the lowest index among equal distances.
        out[rows] = d.argmin(axis=1)[:, None] if k == 1 else np.argsort(d, axis=1, kind="stable")[:, :k]
    return out


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
    return _nearest(x, np.arange(n), n, k, metric, leave_one_out=True)


def nearest_neighbours_split(x: np.ndarray, n_train: int, k: int, metric: str = "euclidean") -> np.ndarray:
    """Indices int64 [N - n_train, k] into the first ``n_train`` rows (the training part) of the
    k nearest training rows of each later row (the validation part), nearest first; same tie
    and duplicate rules as :func:`nearest_neighbours_loo`."""
    return _nearest(x, np.arange(n_train, x.shape[0]), n_train, k, metric, leave_one_out=False)


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


# ----------------------------------------------------------------------------- argument checks


def _check_n_train(n_train: Any, n: int, name: str) -> int:
    """``n_train`` as an int that leaves both the training part [:n_train] and the validation
    part [n_train:] of N rows non-empty."""
    if isinstance(n_train, bool) or not isinstance(n_train, (int, np.integer)):
        raise ConfigError(f"{name}: n_train must be an integer, got {n_train!r}")
    if not 1 <= n_train <= n - 1:
        raise ConfigError(
            f"{name}: n_train must be between 1 and N - 1 = {n - 1} (the first n_train rows train, "
            f"the rest validate; a task's trainval is 800 + 200), got {n_train}"
        )
    return int(n_train)


def _check_grid(values: Any, what: str, name: str) -> tuple[float, ...]:
    """A non-empty tuple of positive finite floats (a regularisation grid)."""
    try:
        grid = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: {what} must be a sequence of positive numbers, got {values!r}") from None
    if not grid or not all(math.isfinite(v) and v > 0 for v in grid):
        raise ConfigError(f"{name}: {what} must be a non-empty sequence of positive finite numbers, got {values!r}")
    return grid


def _check_k(k: Any, name: str) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ConfigError(f"{name}: k must be an integer, got {k!r}")
    return int(k)


def _one_hot(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes int64 [N] in [0, C), one-hot float64 [N, C]) of labels of any integer values."""
    classes, codes = np.unique(labels, return_inverse=True)
    codes = codes.reshape(-1)
    return codes, np.eye(classes.size)[codes]


# ------------------------------------------------------------------ task-aware: train / val split


def knn_val(
    features: Any, labels: Any, n_train: int = DEFAULT_N_TRAIN, k: int = 1, metric: str = "euclidean",
    name: str = "features",
) -> float:
    """Validation accuracy in [0, 1] of a kNN classifier on the train part (paper 002's kNN proxy).

    ``features`` float [N, D], ``labels`` int [N]: rows [:n_train] are the training set, rows
    [n_train:] the validation set (a task's trainval: 800 train + 200 val). Each validation row
    takes the label of its nearest training row (k=1, Euclidean, as in the paper); for k > 1 the
    majority of its k nearest wins. Same deterministic tie rules as :func:`knn_loo`: equidistant
    training rows rank by index (lowest first), a vote tie goes to the nearest neighbour's label.
    """
    k = _check_k(k, name)
    if metric not in METRICS:
        raise ConfigError(f"{name}: metric must be one of {METRICS}, got {metric!r}")
    x, y = validate_features(features, labels, name)
    n_train = _check_n_train(n_train, x.shape[0], name)
    if not 1 <= k <= n_train:
        raise ConfigError(f"{name}: k must be between 1 and n_train = {n_train}, got {k}")
    classes, codes = np.unique(y, return_inverse=True)
    neighbours = nearest_neighbours_split(x, n_train, k, metric)  # [N - n_train, k] into train
    predicted = _majority_vote(codes[:n_train][neighbours], classes.size)
    return float(np.mean(predicted == codes[n_train:]))


@dataclass(frozen=True)
class LinearProbeResult:
    """The linear probe's best validation accuracy, the C that reached it (the first in grid order
    among equals) and the validation accuracy of every C."""

    accuracy: float
    best_C: float
    accuracies: dict[float, float]


def _standardise(train: np.ndarray, val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both parts scaled by the train part's per-dimension mean and (population) standard
    deviation; constant dimensions keep scale 1 (as scikit-learn's StandardScaler)."""
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return (train - mean) / std, (val - mean) / std


# lbfgs at scikit-learn's tolerance; enough steps for 800 standardised rows of a few thousand dims.
_PROBE_MAX_ITER = 1000
_PROBE_TOL = 1e-4


@overload
def linear_probe(features: Any, labels: Any, n_train: int = ..., C_grid: Sequence[float] = ...,
                 return_details: Literal[False] = ..., name: str = ...) -> float: ...
@overload
def linear_probe(features: Any, labels: Any, n_train: int = ..., C_grid: Sequence[float] = ...,
                 *, return_details: Literal[True], name: str = ...) -> LinearProbeResult: ...
def linear_probe(
    features: Any, labels: Any, n_train: int = DEFAULT_N_TRAIN, C_grid: Sequence[float] = DEFAULT_C_GRID,
    return_details: bool = False, name: str = "features",
) -> float | LinearProbeResult:
    """Best validation accuracy in [0, 1] of a linear probe over a small regularisation sweep.

    ``features`` float [N, D], ``labels`` int [N]; rows [:n_train] train, rows [n_train:]
    validate. Features are standardised with the train part's statistics; for each C in
    ``C_grid`` a multinomial logistic regression with intercept minimises
    ``C * sum_i -log softmax(W x_i + b)[y_i] + ||W||^2 / 2`` (scikit-learn, lbfgs: deterministic;
    with 2 classes scikit-learn fits the equivalent sigmoid model, one weight vector) on the train
    part. Returns the best validation accuracy (or a :class:`LinearProbeResult`).
    Paper 002 trains the same head by SGD over two learning rates; a converged, regularised fit
    is its deterministic counterpart.
    """
    from sklearn.exceptions import ConvergenceWarning  # sklearn is slow to import: only when used
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    x, y = validate_features(features, labels, name)
    n_train = _check_n_train(n_train, x.shape[0], name)
    grid = _check_grid(C_grid, "C_grid", name)
    if np.unique(y[:n_train]).size < 2:
        raise DataError(f"{name}: the first n_train = {n_train} rows hold a single class; the probe needs 2 to train")
    train, val = _standardise(x[:n_train], x[n_train:])
    accuracies: dict[float, float] = {}
    # One model refitted along the grid from the previous solution (ascending C: each fit starts
    # from a more regularised optimum nearby), so the weakly regularised fits, which take lbfgs
    # hundreds of steps from zero, take tens. Each fit still converges to the same tolerance.
    # Single-threaded BLAS/OpenMP: on these small problems thread start-up and contention with
    # torch's threads cost ten times the arithmetic (measured: 0.14 s against 1.5 s per member).
    model = LogisticRegression(max_iter=_PROBE_MAX_ITER, tol=_PROBE_TOL, warm_start=True)
    for c in sorted(grid):
        model.set_params(C=c)
        with warnings.catch_warnings(), threadpool_limits(1):
            # lbfgs stops at scikit-learn's tolerance within tens of steps on standardised features;
            # should a C hit max_iter, the nearly converged fit is still a fair probe, and one
            # warning per member and C would flood a selection run.
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(train, y[:n_train])
        accuracies[c] = float(np.mean(model.predict(val) == y[n_train:]))
    best = max(grid, key=lambda c: accuracies[c])  # max keeps the first of equals: grid order
    result = LinearProbeResult(accuracies[best], best, accuracies)
    return result if return_details else result.accuracy


# ------------------------------------------------------------------- task-aware: leave-one-out


def ridge_loo(features: Any, labels: Any, alphas: Sequence[float] = DEFAULT_ALPHAS, name: str = "features") -> float:
    """Best exact leave-one-out accuracy in [0, 1] of a one-vs-all ridge classifier over ``alphas``.

    ``features`` float [N, D] (as given: not standardised), ``labels`` int [N] -> one-hot
    targets Y [N, C]. For each alpha the ridge fit with an unpenalised intercept is
    ``Y_hat = H Y`` with hat matrix ``H = 11^T / N + Xc (Xc^T Xc + alpha I)^-1 Xc^T`` (Xc the
    centred features). Ridge is a linear smoother, so dropping sample i and refitting predicts
    ``Y_i - (Y_i - (H Y)_i) / (1 - H_ii)`` exactly; the predicted class is the argmax (lowest
    class among ties). One thin SVD ``Xc = U S V^T`` serves every alpha, as in big_vision's
    few-shot evaluator: ``H = 11^T / N + U diag(s^2 / (s^2 + alpha)) U^T``, valid for N < D too.
    Cost O(N D min(N, D)) once, then O(N min(N, D) C) per alpha. One-hot and +-1 targets give
    the same argmax once centred, so the choice does not matter.
    """
    x, y = validate_features(features, labels, name)
    grid = _check_grid(alphas, "alphas", name)
    codes, targets = _one_hot(y)
    n = x.shape[0]
    u, s, _ = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)  # u [N, r], r = min(N, D)
    s2 = s * s
    target_mean = targets.mean(axis=0)
    projected = u.T @ (targets - target_mean)  # [r, C]
    u2 = u * u
    best = 0.0
    for alpha in grid:
        shrink = s2 / (s2 + alpha)  # [r]; the null direction of centring has s ~ 0 -> contributes 0
        fitted = target_mean + u @ (shrink[:, None] * projected)  # H Y [N, C]
        leverage = 1.0 / n + u2 @ shrink  # diag H [N], < 1 for alpha > 0
        loo = targets - (targets - fitted) / (1.0 - leverage)[:, None]
        best = max(best, float(np.mean(loo.argmax(axis=1) == codes)))
    return best


# ------------------------------------------------------------------------------------- LogME


@dataclass(frozen=True)
class LogMEResult:
    """LogME's score and, per class (one-hot column), the maximising prior precision ``alpha``,
    noise precision ``beta``, the log evidence per sample at them, and the iterations used."""

    score: float
    alpha: np.ndarray
    beta: np.ndarray
    evidence: np.ndarray
    iterations: int


def _logme_terms(alpha: np.ndarray, beta: np.ndarray, s2: np.ndarray, z: np.ndarray, perp2: np.ndarray, n: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(gamma, N - gamma, ||m||^2, ||F m - y||^2) per class [C] from the r eigenvalues s2 of
    F^T F that can be non-zero, z = U^T Y [r, C] and the energy of Y outside span(U) [C]."""
    denom = alpha + beta * s2[:, None]  # [r, C]
    gamma = (beta * s2[:, None] / denom).sum(axis=0)
    # N - gamma without the cancellation of N - sum(~1) when N <= D and beta grows large.
    n_minus_gamma = (n - s2.size) + (alpha / denom).sum(axis=0)
    m2 = ((beta * np.sqrt(s2)[:, None] * z / denom) ** 2).sum(axis=0)  # m = V diag(beta s / denom) z
    res2 = ((alpha * z / denom) ** 2).sum(axis=0) + perp2  # y - F m = U diag(alpha / denom) z + y_perp
    return gamma, n_minus_gamma, m2, res2


def _logme_fixed_point(s2: np.ndarray, z: np.ndarray, perp2: np.ndarray, y2: np.ndarray, n: int, tol: float,
                       max_iter: int) -> tuple[np.ndarray, np.ndarray, int]:
    """MacKay's fixed point ``alpha = gamma / ||m||^2``, ``beta = (N - gamma) / ||F m - y||^2``
    from alpha = beta = 1, for all classes at once, until both move by <= tol (relative).

    The evidence can keep rising towards a finite limit as beta -> inf (N <= D: F F^T is
    invertible and y can be fitted without noise) or alpha -> inf (y orthogonal to F). Neither
    variance can be told from 0 in float64 once below eps times the targets' mean square
    ``y2 / N`` (noise) or that over s_max^2 (signal), so they are capped there; the score is then
    the limit to float64 precision and the iteration stops when the capped value stops moving.
    """
    eps = np.finfo(np.float64).eps
    beta_max = n / (eps * y2)  # [C]
    alpha_max = max(float(s2.max(initial=0.0)), 1.0) * n / (eps * y2)
    alpha = np.ones(z.shape[1])
    beta = np.ones(z.shape[1])
    for it in range(1, max_iter + 1):
        gamma, n_minus_gamma, m2, res2 = _logme_terms(alpha, beta, s2, z, perp2, n)
        # gamma = 0 only for all-zero features, where the evidence does not depend on alpha: keep it.
        new_alpha = np.divide(gamma, np.maximum(m2, gamma / alpha_max), out=alpha.copy(), where=gamma > 0)
        new_beta = np.divide(n_minus_gamma, np.maximum(res2, n_minus_gamma / beta_max), out=beta.copy(),
                             where=n_minus_gamma > 0)
        new_alpha, new_beta = np.minimum(new_alpha, alpha_max), np.minimum(new_beta, beta_max)
        done = np.all(np.abs(new_alpha - alpha) <= tol * alpha) and np.all(np.abs(new_beta - beta) <= tol * beta)
        alpha, beta = new_alpha, new_beta
        if done:
            return alpha, beta, it
    return alpha, beta, max_iter


@overload
def logme(features: Any, labels: Any, return_details: Literal[False] = ..., tol: float = ...,
          max_iter: int = ..., name: str = ...) -> float: ...
@overload
def logme(features: Any, labels: Any, return_details: Literal[True], tol: float = ...,
          max_iter: int = ..., name: str = ...) -> LogMEResult: ...
def logme(
    features: Any, labels: Any, return_details: bool = False, tol: float = 1e-10, max_iter: int = 1000,
    name: str = "features",
) -> float | LogMEResult:
    """LogME (You et al., 2021): the maximised log evidence of a Bayesian linear head, per sample.

    ``features`` F float [N, D] (as given), ``labels`` int [N] -> one-hot columns y_k [N]. For
    each class, ``y = F w + eps``, ``w ~ N(0, I / alpha)``, ``eps ~ N(0, I / beta)``; with
    ``A = alpha I + beta F^T F`` and posterior mean ``m = beta A^-1 F^T y`` the log evidence is

        L = D/2 log alpha + N/2 log beta - alpha/2 ||m||^2 - beta/2 ||F m - y||^2
            - 1/2 log|A| - N/2 log 2 pi,

    maximised over (alpha, beta) by the paper's fixed point; the score is mean_k L_k / N.

    Exact for N < D. With the thin SVD F = U S V^T (r = min(N, D) singular values), F^T F has
    the D eigenvalues s_1^2..s_r^2 and D - r exact zeros, so
    ``log|A| = sum_{i<=r} log(alpha + beta s_i^2) + (D - r) log alpha``, and the evidence's
    alpha terms become ``r/2 log alpha - 1/2 sum_{i<=r} log(alpha + beta s_i^2)``: the D - r
    directions F cannot see cancel out. (Then L is exactly log N(y; 0, F F^T / alpha + I / beta).)
    Published code sums the log-determinant over the r values only and so adds
    ``(D - r)/2 log alpha`` when N < D, a bias that grows with the width D. The zero eigenvalues
    add ``beta 0 / (alpha + beta 0) = 0`` to ``gamma = sum_i beta s_i^2 / (alpha + beta s_i^2)``
    (the effective number of parameters), so the fixed-point updates need no correction.
    ``m`` and ``F m - y`` come from ``z = U^T y``: ``||m||^2 = sum (beta s_i z_i / (alpha +
    beta s_i^2))^2`` and ``||F m - y||^2 = sum (alpha z_i / (alpha + beta s_i^2))^2 + ||y - U z||^2``.
    Iterates until alpha and beta move by <= ``tol`` (relative) or ``max_iter`` steps. Where the
    maximum lies at beta = inf (possible for N <= D) or alpha = inf, the iteration is capped at
    float64 resolution and returns the limit (see :func:`_logme_fixed_point`).
    """
    x, y = validate_features(features, labels, name)
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ConfigError(f"{name}: max_iter must be a positive integer, got {max_iter!r}")
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
        raise ConfigError(f"{name}: tol must be a positive number, got {tol!r}")
    n = x.shape[0]
    _, targets = _one_hot(y)
    u, s, _ = np.linalg.svd(x, full_matrices=False)  # u [N, r]
    s2 = s * s
    z = u.T @ targets  # [r, C]
    # Energy of y outside F's column space; exactly 0 when U is square (N <= D), where computing it
    # would leave rounding noise for beta to fit.
    perp2 = ((targets - u @ z) ** 2).sum(axis=0) if u.shape[1] < n else np.zeros(z.shape[1])
    y2 = (targets * targets).sum(axis=0)  # ||y_k||^2 = class counts
    alpha, beta, iterations = _logme_fixed_point(s2, z, perp2, y2, n, float(tol), int(max_iter))
    _, _, m2, res2 = _logme_terms(alpha, beta, s2, z, perp2, n)
    log_det = np.log(alpha + beta * s2[:, None]).sum(axis=0)  # over the r eigenvalues that can be non-zero
    evidence = (
        s2.size / 2 * np.log(alpha) - 0.5 * log_det  # = D/2 log alpha - 1/2 log|A|: the D - r zeros cancel
        + n / 2 * np.log(beta) - alpha / 2 * m2 - beta / 2 * res2 - n / 2 * math.log(2 * math.pi)
    ) / n
    score = float(evidence.mean())
    return LogMEResult(score, alpha, beta, evidence, iterations) if return_details else score


# ------------------------------------------------------------------------- H-score and variant


def _centred_svd(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(U [N, r], squared singular values [r]) of the centred features, r = min(N, D)."""
    u, s, _ = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
    return u, s * s


def _class_energy(u: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``u_j^T P u_j`` float64 [r] for each column of u [N, r], where P [N, N] replaces a row by
    its class mean (P = sum_c 1_c 1_c^T / n_c): ``sum_c (sum_{i in c} u_ij)^2 / n_c``."""
    codes, onehot = _one_hot(labels)
    sums = onehot.T @ u  # [C, r]
    return (sums * sums / onehot.sum(axis=0)[:, None]).sum(axis=0)


def hscore(features: Any, labels: Any, name: str = "features") -> float:
    """H-score (Bao et al., 2019): ``tr(pinv(cov(f)) cov(g))``, in [0, C - 1].

    ``features`` f float [N, D], ``labels`` int [N]; g [N, D] replaces each row of f by its
    class mean; both covariances of centred data with the same normalisation (it cancels). With
    the thin SVD of the centred features ``fc = U S V^T`` and the class-mean projector P
    (g - mean = P fc), ``cov(g) = fc^T P fc / N``, so the trace is ``sum_j u_j^T P u_j`` over the
    directions pinv keeps: s_j^2 > 1e-15 max s^2, numpy.linalg.pinv's default cutoff applied to
    the covariance's eigenvalues s_j^2 / N. Working from fc instead of forming cov(f) keeps the
    rank-deficient case N <= D stable, where pinv of the formed D x D matrix amplifies rounding.
    When N <= D + 1 the kept directions span every centred vector and the score is exactly C - 1
    whatever the features: the estimation problem :func:`regularized_hscore` addresses.
    """
    x, y = validate_features(features, labels, name)
    u, s2 = _centred_svd(x)
    if s2.size == 0 or s2[0] <= 0:
        return 0.0  # constant features: no direction carries class information
    keep = s2 > _PINV_RCOND * s2[0]  # singular values come sorted, largest first
    return float(_class_energy(u[:, keep], y).sum())


def regularized_hscore(features: Any, labels: Any, name: str = "features") -> float:
    """Shrinkage H-score (Ibrahim et al., 2022): ``tr(cov_a(f)^-1 (1 - a) cov(g))``, in [0, C - 1].

    ``features`` f float [N, D], ``labels`` int [N], g as in :func:`hscore`.
    ``cov_a(f) = (1 - a) cov(f) + a mu I`` is the Ledoit-Wolf estimate (mu = tr(cov(f)) / D,
    shrinkage a from scikit-learn's ``ledoit_wolf_shrinkage`` on the centred features); both
    covariances are normalised by 1/N (scikit-learn's; the paper's code mixes in N - 1 for g).
    The (1 - a) factor on cov(g) is the paper's definition, kept deliberately: it is the
    between-class part of the same shrunk estimate (cov(f) = cov(g) + within-class, and the
    isotropic target counts as within-class), which keeps the score in [0, C - 1] like H-score;
    without it a heavily shrunk member would score up to 1 / (1 - a) times higher.
    From the thin SVD ``fc = U S V^T``: ``cov_a(f)`` has eigenvalues
    ``lam_j = (1 - a) s_j^2 / N + a mu`` on V's columns and cov(g) lives in their span, so the
    score is ``(1 - a) sum_j (s_j^2 / N) / lam_j u_j^T P u_j``, no D x D inverse needed.
    """
    from sklearn.covariance import ledoit_wolf_shrinkage  # sklearn is slow to import: only when used

    x, y = validate_features(features, labels, name)
    n, d = x.shape
    centred = x - x.mean(axis=0)
    shrinkage = float(ledoit_wolf_shrinkage(centred, assume_centered=True))
    u, s2 = _centred_svd(x)
    eig = s2 / n
    lam = (1.0 - shrinkage) * eig + shrinkage * eig.sum() / d
    ratio = np.divide(eig, lam, out=np.zeros_like(eig), where=lam > 0)  # lam = 0 only where s = 0
    return float((1.0 - shrinkage) * (ratio * _class_energy(u, y)).sum())


# ------------------------------------------------------------------- source-label based proxies


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
    p = _validate_probs(source_probs, name)
    _check_same_length(p.shape[0], labels, "rows of source_probs", name)
    _, y = validate_features(p, labels, name)
    codes, onehot = _one_hot(y)
    joint = onehot.T @ p / p.shape[0]  # [C, Z]
    marginal = joint.sum(axis=0)  # P(z) [Z]
    conditional = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)  # P(y | z)
    # For each i, some z with theta_iz > 0 has P(y_i, z) >= theta_iz / N > 0: the log is finite.
    expected = (conditional[codes] * p).sum(axis=1)
    return float(np.mean(np.log(expected)))


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


def nce_from_probs(source_probs: Any, labels: Any, name: str = "source_probs") -> float:
    """:func:`nce` of the hard (argmax) source labels of ``source_probs`` float [N, Z]."""
    return nce(hard_source_labels(source_probs, name), labels, name)


# ---------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ProxySpec:
    """One proxy: ``fn(x, labels, name=...) -> float`` (higher is better), where x is the
    member's ``features`` [N, D] or its upstream ``source_probs`` [N, Z] as ``input`` says;
    ``needs_split`` proxies also take ``n_train`` (rows [:n_train] train, the rest validate)."""

    name: str
    fn: Callable[..., float]
    input: Literal["features", "source_probs"]
    needs_split: bool
    summary: str


PROXIES: dict[str, ProxySpec] = {
    spec.name: spec
    for spec in (
        ProxySpec("knn_loo", knn_loo, "features", False, "leave-one-out 1-NN accuracy (paper 000)"),
        ProxySpec("knn_val", knn_val, "features", True, "1-NN validation accuracy on the 800/200 split (paper 002)"),
        ProxySpec("linear_probe", linear_probe, "features", True, "logistic-regression validation accuracy, best over C"),
        ProxySpec("ridge_loo", ridge_loo, "features", False, "exact leave-one-out ridge accuracy, best over alpha"),
        ProxySpec("logme", logme, "features", False, "LogME: maximised Bayesian linear evidence per sample"),
        ProxySpec("hscore", hscore, "features", False, "H-score: tr(pinv(cov f) cov E[f|y])"),
        ProxySpec("regularized_hscore", regularized_hscore, "features", False, "H-score with Ledoit-Wolf shrinkage"),
        ProxySpec("leep", leep, "source_probs", False, "LEEP: log-likelihood of the expected empirical predictor"),
        ProxySpec("nce", nce_from_probs, "source_probs", False, "NCE: -H(Y | argmax source label)"),
    )
}


def get_proxy(name: str) -> ProxySpec:
    """The registered :class:`ProxySpec` called ``name``; ConfigError listing the names if none."""
    try:
        return PROXIES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown proxy {name!r}; choose one of: {', '.join(PROXIES)}") from None
