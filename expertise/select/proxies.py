"""Transferability proxies: cheap scores that stand in for fine-tuning a member on a task.

Each proxy is a pure function ``(features [N, D], labels [N]) -> float``, higher is better, where
``features`` are one member's embeddings of the task's images (a numpy array or a torch tensor)
and ``labels`` the task's integer labels. Inputs are validated (:func:`validate_features`, whose
errors name the member, so a bad embedding never becomes a silently meaningless score) and scored
in torch float64 on the features' device. ridge_loo, logme, hscore and regularized_hscore come from
one spectral decomposition of the member's features (:mod:`expertise.select.spectral`), kNN from
one matrix product (:mod:`expertise.select.knn`); :func:`expertise.select.scoring.score_pool`
computes that decomposition once per member for all of them. linear_probe is scikit-learn's
lbfgs logistic regression on the CPU (:mod:`expertise.select.probe`, which calls its optimiser
directly); LEEP and NCE read upstream predictions.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import numpy as np
import torch

from expertise.errors import ConfigError, DataError
from expertise.select import knn, probe
from expertise.select.source_proxies import PROB_SUM_TOL, hard_source_labels, leep, nce, nce_from_probs  # noqa: F401  (public here)
from expertise.select.validation import _tensors, validate_features
from expertise.select.spectral import Spectrum, compute_spectrum
from expertise.select.spectral_proxies import (
    hscore_value, logme_maximise, regularized_hscore_value, ridge_loo_correct,
)

METRICS = ("euclidean", "cosine")
# A task's trainval is train (800) followed by val (200): the split of the task-aware proxies of
# paper 002 (Renggli et al.). Equal to expertise.data.tasks.TRAIN_SIZE, restated so that this
# module does not import the data stack.
DEFAULT_N_TRAIN = 800
DEFAULT_C_GRID = (0.01, 0.1, 1.0, 10.0)
DEFAULT_ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3)
# Rows of the [rows, N] distance block computed at once: bounds memory at ~256 MiB of float64
# whatever N is, while one block still covers a whole VTAB-1k task (N = 1,000) in one go.
_BLOCK_ELEMENTS = knn.DEFAULT_BLOCK_ELEMENTS


class LogMEConvergenceWarning(RuntimeWarning):
    """LogME's maximiser was not bracketed to ``tol`` within ``max_iter`` steps."""


def nearest_neighbours_loo(x: Any, k: int, metric: str = "euclidean") -> np.ndarray:
    """Indices int64 [N, k] of each point's k nearest other points, nearest first.

    Equidistant neighbours come in index order (lowest first). Exact duplicates of a row (found from
    the rows' bits, compared in full: see :mod:`expertise.select.knn`) are bit-for-bit
    equidistant from every point and at distance exactly 0 from each other: a duplicate of ``i`` at
    ``j != i`` is a legitimate (nearest) neighbour; only ``i`` itself is excluded. Rows that are all
    zero have no direction: under ``cosine`` they are at distance 1 from every other row but their
    own duplicates (the convention of scikit-learn's cosine distance).
    """
    t = torch.as_tensor(np.asarray(x, dtype=np.float64)) if not isinstance(x, torch.Tensor) else x.to(torch.float64)
    n = t.shape[0]
    idx = knn.nearest(t, torch.arange(n, device=t.device), n, k, metric, True, _BLOCK_ELEMENTS)
    return idx.cpu().numpy()


def nearest_neighbours_split(x: Any, n_train: int, k: int, metric: str = "euclidean") -> np.ndarray:
    """Indices int64 [N - n_train, k] into the first ``n_train`` rows (the training part) of the
    k nearest training rows of each later row (the validation part), nearest first; same tie
    and duplicate rules as :func:`nearest_neighbours_loo`."""
    t = torch.as_tensor(np.asarray(x, dtype=np.float64)) if not isinstance(x, torch.Tensor) else x.to(torch.float64)
    queries = torch.arange(n_train, t.shape[0], device=t.device)
    return knn.nearest(t, queries, n_train, k, metric, False, _BLOCK_ELEMENTS).cpu().numpy()


def _check_knn_args(k: Any, metric: Any, name: str) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ConfigError(f"{name}: k must be an integer, got {k!r}")
    if metric not in METRICS:
        raise ConfigError(f"{name}: metric must be one of {METRICS}, got {metric!r}")
    return int(k)


def _knn_loo_correct(x: torch.Tensor, codes: torch.Tensor, num_classes: int, k: int, metric: str,
                     gram: torch.Tensor | None = None, rep: torch.Tensor | None = None) -> torch.Tensor:
    """float64 [N]: 1 where the leave-one-out vote of a row's k nearest other rows is its label
    (the per-image terms of :func:`knn_loo`, which is their mean)."""
    n = x.shape[0]
    neighbours = knn.nearest(x, torch.arange(n, device=x.device), n, k, metric, True, _BLOCK_ELEMENTS,
                             gram if metric == "euclidean" else None, rep)
    return (knn.majority_vote(codes[neighbours], num_classes) == codes).double()


def _knn_loo_accuracy(x: torch.Tensor, codes: torch.Tensor, num_classes: int, k: int, metric: str,
                      gram: torch.Tensor | None = None, rep: torch.Tensor | None = None) -> float:
    return float(_knn_loo_correct(x, codes, num_classes, k, metric, gram, rep).mean())


def knn_loo(features: Any, labels: Any, k: int = 1, metric: str = "euclidean", name: str = "features") -> float:
    """Leave-one-out k-nearest-neighbour accuracy in [0, 1] (the paper's proxy: k=1, Euclidean).

    ``features`` float [N, D], ``labels`` int [N]; ``name`` (the member) goes into error messages.
    Each point is classified by its ``k`` nearest other points under ``metric`` ("euclidean" or
    "cosine"), from one float64 matrix product with the diagonal masked (torch, on the features'
    device). Deterministic ties: among equidistant neighbours the lowest index is nearer; for
    k > 1 the majority label wins and a tie in votes goes to the tied label of the nearest
    neighbour (scikit-learn instead takes the smallest label). Exact duplicates of a point count
    as its neighbours.
    """
    k = _check_knn_args(k, metric, name)
    x, codes, onehot = _tensors(features, labels, name)
    if not 1 <= k <= x.shape[0] - 1:
        raise ConfigError(f"{name}: k must be between 1 and N - 1 = {x.shape[0] - 1} for leave-one-out, got {k}")
    return _knn_loo_accuracy(x, codes, onehot.shape[1], k, metric)


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
    k = _check_knn_args(k, metric, name)
    x, codes, onehot = _tensors(features, labels, name)
    n_train = _check_n_train(n_train, x.shape[0], name)
    if not 1 <= k <= n_train:
        raise ConfigError(f"{name}: k must be between 1 and n_train = {n_train}, got {k}")
    return _knn_val_accuracy(x, codes, onehot.shape[1], n_train, k, metric)


def _knn_val_correct(x: torch.Tensor, codes: torch.Tensor, num_classes: int, n_train: int, k: int, metric: str,
                     gram: torch.Tensor | None = None, rep: torch.Tensor | None = None) -> torch.Tensor:
    """float64 [N - n_train]: 1 where a validation row's k nearest training rows vote its label
    (the per-image terms of :func:`knn_val`, which is their mean)."""
    queries = torch.arange(n_train, x.shape[0], device=x.device)
    neighbours = knn.nearest(x, queries, n_train, k, metric, False, _BLOCK_ELEMENTS,
                             gram if metric == "euclidean" else None, rep)  # [N - n_train, k] into train
    predicted = knn.majority_vote(codes[:n_train][neighbours], num_classes)
    return (predicted == codes[n_train:]).double()


def _knn_val_accuracy(x: torch.Tensor, codes: torch.Tensor, num_classes: int, n_train: int, k: int, metric: str,
                      gram: torch.Tensor | None = None, rep: torch.Tensor | None = None) -> float:
    return float(_knn_val_correct(x, codes, num_classes, n_train, k, metric, gram, rep).mean())


@dataclass(frozen=True)
class LinearProbeResult:
    """The linear probe's best validation accuracy, the C that reached it (the first in grid order
    among equals) and the validation accuracy of every C."""

    accuracy: float
    best_C: float
    accuracies: dict[float, float]


# One threadpoolctl controller for the process (see :func:`expertise.select.probe.threadpools`).
_threadpools = probe.threadpools


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
    ``C * sum_i -log softmax(W x_i + b)[y_i] + ||W||^2 / 2`` on the train part, by scikit-learn's
    lbfgs procedure (deterministic): L-BFGS-B to scikit-learn's tolerance (1e-4 on the gradient of
    the objective divided by C n), each C started from the previous fit, as
    ``LogisticRegression(warm_start=True)`` refitted along the ascending grid; with 2 classes the
    equivalent sigmoid model, one weight vector. :mod:`expertise.select.probe` runs that procedure
    without scikit-learn's overhead, with the same iterates. At C >= 1 the tolerance stops short
    of the minimiser (from the previous C's fit often after one step), so those accuracies are of
    a nearly converged, early-stopped fit. Returns the best validation accuracy (or a
    :class:`LinearProbeResult`). Paper 002 trains the same head by SGD over two learning rates; a
    regularised fit is its deterministic counterpart.
    """
    correct = linear_probe_correct(features, labels, n_train, C_grid, name)
    grid = _check_grid(C_grid, "C_grid", name)
    accuracies = {c: float(np.mean(correct[c])) for c in sorted(grid)}
    best = max(grid, key=lambda c: accuracies[c])  # max keeps the first of equals: grid order
    result = LinearProbeResult(accuracies[best], best, accuracies)
    return result if return_details else result.accuracy


def linear_probe_correct(features: Any, labels: Any, n_train: int = DEFAULT_N_TRAIN,
                         C_grid: Sequence[float] = DEFAULT_C_GRID, name: str = "features") -> dict[float, np.ndarray]:
    """Per C of ``C_grid`` (ascending), bool [N - n_train]: whether the probe fitted at that C
    (see :func:`linear_probe`) classifies each validation row right. Its per-image terms: the
    probe's accuracy at C is the mean of ``correct[C]``, its score the best over C."""
    x, y = validate_features(features, labels, name)
    n_train = _check_n_train(n_train, x.shape[0], name)
    grid = _check_grid(C_grid, "C_grid", name)
    classes, codes = np.unique(y[:n_train], return_inverse=True)
    if classes.size < 2:
        raise DataError(f"{name}: the first n_train = {n_train} rows hold a single class; the probe needs 2 to train")
    train, val = probe.standardise(x[:n_train], x[n_train:])
    # One model refitted along the grid from the previous solution (ascending C: each fit starts
    # from a more regularised optimum nearby), as scikit-learn's warm_start does, so the weakly
    # regularised fits, which take lbfgs hundreds of steps from zero, take tens.
    # Single-threaded BLAS: on these small problems thread start-up and contention with torch's
    # threads cost ten times the arithmetic (measured: 0.14 s against 1.5 s per member). The
    # limit is entered once per probe through the one cached controller.
    correct: dict[float, np.ndarray] = {}
    with _threadpools().limit(limits=1):
        for fit in probe.fit_path(train, codes.reshape(-1), classes.size, sorted(grid)):
            correct[fit.C] = classes[probe.predict(fit.weights, val, classes.size)] == y[n_train:]
    return correct


# ------------------------------------------------------------------- task-aware: leave-one-out


def ridge_loo(features: Any, labels: Any, alphas: Sequence[float] = DEFAULT_ALPHAS, name: str = "features") -> float:
    """Best exact leave-one-out accuracy in [0, 1] of a one-vs-all ridge classifier over ``alphas``.

    ``features`` float [N, D] (as given: not standardised), ``labels`` int [N] -> one-hot
    targets Y [N, C]. For each alpha the ridge fit with an unpenalised intercept is
    ``Y_hat = H Y`` with hat matrix ``H = 11^T / N + Xc (Xc^T Xc + alpha I)^-1 Xc^T`` (Xc the
    centred features). Ridge is a linear smoother, so dropping sample i and refitting predicts
    ``Y_i - (Y_i - (H Y)_i) / (1 - H_ii)`` exactly; the predicted class is the argmax (lowest
    class among ties). One eigendecomposition serves every alpha, as in big_vision's few-shot
    evaluator, valid for N < D too.
    Cost O(N D min(N, D)) once, then O(N min(N, D) C) per alpha. One-hot and +-1 targets give
    the same argmax once centred, so the choice does not matter.

    Computed from the member's one uncentred spectrum (:mod:`expertise.select.spectral`, shared
    with logme and hscore): with ``A = alpha (F F^T + alpha I)^-1``, the intercept is projected out
    exactly as ``I - H = A - (A 1)(A 1)^T / (1^T A 1)``, and every alpha is one batched product.
    """
    x, codes, onehot = _tensors(features, labels, name)
    grid = _check_grid(alphas, "alphas", name)
    return _ridge_loo_best(compute_spectrum(x), codes, onehot, grid)


def _ridge_loo_best(spec: Spectrum, codes: torch.Tensor, onehot: torch.Tensor, grid: tuple[float, ...]) -> float:
    return _ridge_loo_score(_ridge_loo_correct(spec, codes, onehot, grid))


def _ridge_loo_correct(spec: Spectrum, codes: torch.Tensor, onehot: torch.Tensor, grid: tuple[float, ...]) -> torch.Tensor:
    """float64 [alphas, N]: 1 where the exact leave-one-out ridge prediction at each alpha is right."""
    alphas = torch.tensor(grid, dtype=torch.float64, device=onehot.device)
    return ridge_loo_correct(spec, codes, onehot, alphas)


def _ridge_loo_score(correct: torch.Tensor) -> float:
    """ridge_loo from its per-alpha, per-image terms: the best alpha's mean."""
    return max(0.0, float(correct.mean(dim=1).max()))


# ------------------------------------------------------------------------------------- LogME


@dataclass(frozen=True)
class LogMEResult:
    """LogME's score and, per class (one-hot column), the maximising prior precision ``alpha``,
    noise precision ``beta``, the log evidence per sample at them; the bisection steps used and
    whether the maximiser was bracketed to ``tol`` (False also raises a LogMEConvergenceWarning)."""

    score: float
    alpha: np.ndarray
    beta: np.ndarray
    evidence: np.ndarray
    iterations: int
    converged: bool = True


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

    maximised over (alpha, beta); the score is mean_k L_k / N.

    Exact for N < D. F^T F has the eigenvalues s_1^2..s_r^2 of F F^T and D - r exact zeros, so
    ``log|A| = sum_{i<=r} log(alpha + beta s_i^2) + (D - r) log alpha``, and the evidence's alpha
    terms become ``r/2 log alpha - 1/2 sum_{i<=r} log(alpha + beta s_i^2)``: the D - r directions
    F cannot see cancel out, and L is exactly ``log N(y; 0, F F^T / alpha + I / beta)``.
    Published code sums the log-determinant over the r values only and so adds
    ``(D - r)/2 log alpha`` when N < D, a bias that grows with the width D.

    The maximum: for a fixed ratio t = alpha / beta the best alpha is ``N / y^T (F F^T + t I)^-1 y``
    in closed form, leaving a one-dimensional profile in log t whose stationary points are those
    of MacKay's fixed point (``alpha = gamma / ||m||^2``, ``beta = (N - gamma) / ||F m - y||^2``,
    which the published code iterates and which crawls, 1,000 steps and more, where the maximum
    lies near beta = inf). The profile's slope is bisected in log t over the range float64 can
    resolve, ``[eps s_max^2, s_max^2 / eps]``, until the bracket is below ``tol`` (relative in t;
    about 40 steps) or ``max_iter`` steps, which is reported (``converged``, and a warning). Where
    the maximum lies at beta = inf (possible for N <= D: y fitted without noise) or alpha = inf
    (y orthogonal to F), the limit is returned at the end of that range. Everything comes from
    the member's one spectrum ``F F^T = U diag(s^2) U^T`` (:mod:`expertise.select.spectral`),
    shared with ridge_loo and hscore: with ``z = U^T y``, ``y^T (F F^T + t I)^-1 y = sum z^2 /
    (s^2 + t) + ||y - U z||^2 / t``.
    """
    x, codes, onehot = _tensors(features, labels, name)
    tol, max_iter = _check_logme_args(tol, max_iter, name)
    return _logme_result(compute_spectrum(x), onehot, tol, max_iter, return_details, name)


def _check_logme_args(tol: Any, max_iter: Any, name: str) -> tuple[float, int]:
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ConfigError(f"{name}: max_iter must be a positive integer, got {max_iter!r}")
    if isinstance(tol, bool) or not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
        raise ConfigError(f"{name}: tol must be a positive number, got {tol!r}")
    return float(tol), int(max_iter)


def _logme_result(spec: Spectrum, onehot: torch.Tensor, tol: float, max_iter: int, return_details: bool,
                  name: str) -> float | LogMEResult:
    r = logme_maximise(spec, onehot, tol, max_iter)
    if not r.converged:
        warnings.warn(f"{name}: LogME's maximiser was not bracketed to tol={tol:g} within max_iter={max_iter} "
                      "steps; the score is that of the bracket's midpoint", LogMEConvergenceWarning, stacklevel=3)
    score = float(r.evidence.mean())
    if not return_details:
        return score
    return LogMEResult(score, r.alpha.cpu().numpy(), r.beta.cpu().numpy(), r.evidence.cpu().numpy(), r.iterations,
                       r.converged)


# ------------------------------------------------------------------------- H-score and variant


def hscore(features: Any, labels: Any, name: str = "features") -> float:
    """H-score (Bao et al., 2019): ``tr(pinv(cov(f)) cov(g))``, in [0, C - 1].

    ``features`` f float [N, D], ``labels`` int [N]; g [N, D] replaces each row of f by its
    class mean; both covariances of centred data with the same normalisation (it cancels). With
    the centred features ``fc = U S V^T`` and the class-mean projector P (g - mean = P fc),
    ``cov(g) = fc^T P fc / N``, so the trace is ``tr(P Pi)``, Pi the projector onto the centred
    features' span: the alpha -> 0 limit of the intercept ridge hat matrix ``H = 11^T / N + Pi``,
    taken from the member's one uncentred spectrum (shared with ridge_loo and logme; see
    :func:`expertise.select.spectral.centred_residual_operator`). pinv's cutoff: eigenvalues of the
    formed Gram or covariance matrix below max(N, D) ulps of the largest are rounding noise and
    count as 0. Working from the spectrum instead of inverting cov(f) keeps the rank-deficient case
    N <= D stable. When N <= D + 1 the kept directions span every centred vector and the score is
    exactly C - 1 whatever the features: the estimation problem :func:`regularized_hscore` addresses.
    """
    x, codes, onehot = _tensors(features, labels, name)
    return float(hscore_value(compute_spectrum(x), onehot))


def regularized_hscore(features: Any, labels: Any, name: str = "features") -> float:
    """Shrinkage H-score (Ibrahim et al., 2022): ``tr(cov_a(f)^-1 (1 - a) cov(g))``, in [0, C - 1].

    ``features`` f float [N, D], ``labels`` int [N], g as in :func:`hscore`.
    ``cov_a(f) = (1 - a) cov(f) + a mu I`` is the Ledoit-Wolf estimate (mu = tr(cov(f)) / D,
    shrinkage a by scikit-learn's ``ledoit_wolf_shrinkage`` formula on the centred features, whose
    sums come from the Gram matrix: no D x D product); both covariances are normalised by 1/N
    (scikit-learn's; the paper's code mixes in N - 1 for g).
    The (1 - a) factor on cov(g) is the paper's definition, kept deliberately: it is the
    between-class part of the same shrunk estimate (cov(f) = cov(g) + within-class, and the
    isotropic target counts as within-class), which keeps the score in [0, C - 1] like H-score;
    without it a heavily shrunk member would score up to 1 / (1 - a) times higher.
    With the centred features' eigenvalues s_j^2 (of N cov(f)) the score is
    ``sum_j s_j^2 / (s_j^2 + kappa) u_j^T P u_j``, kappa = a mu N / (1 - a): ``tr(P H) - 1`` for the
    intercept ridge hat matrix H at alpha = kappa, from the member's one uncentred spectrum.
    """
    x, codes, onehot = _tensors(features, labels, name)
    return float(regularized_hscore_value(x, compute_spectrum(x), onehot))
