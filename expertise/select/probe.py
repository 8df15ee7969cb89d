"""The linear probe's fits: scikit-learn's lbfgs logistic regression, called without scikit-learn.

``LogisticRegression(solver="lbfgs", tol=1e-4, max_iter=1000)`` is scipy's L-BFGS-B on the mean
cross-entropy plus ``||W||^2 / (2 C n)`` (its "IMPORTANT NOTE": ``C * sum(loss) + ||W||^2 / 2``
divided by ``C n``), the intercept unpenalised, with fixed options (``gtol=tol``, ``ftol=64 eps``,
``maxls=50``), a zero start or, with ``warm_start``, the previous fit, and its coefficients laid
out class-fastest, ``[(features + 1) x classes]`` (two classes: one sigmoid weight vector). This
module hands scipy the same objective, options, start and layout, so the iterates and the stopping
step are scikit-learn's up to the rounding of the objective's arithmetic (measured on 60 random
tasks x 4 C: the same iteration counts, weights within 1e-10 relative, none of 26,400 validation
predictions different; tests/test_probe.py checks them against scikit-learn). What it saves is
scikit-learn's overhead: its import (1.7 s of CPU once per process, against 0.5 s for
scipy.optimize) and per call and per evaluation (input checks, label encoding, array-API dispatch):
CPU seconds per member of a 1,000-image, 10-class task, 0.068 to 0.045 at 256-d and 0.215 to 0.186
at 2,048-d, where the two BLAS products per evaluation are most of the work (one thread, median of
3 interleaved runs on a busy machine).

Why not a converged solver (measured by ``python -m perf.probe_exactness``): scikit-learn's
``tol=1e-4`` stops L-BFGS well before the minimiser at C >= 1. On 256- and 2,048-d synthetic
members the probe's fits at C = 1 and 10 take 1 to 19 steps (on 2,048-d features, from the
previous C's fit, 1), where reaching the minimiser (gtol 1e-10) takes 56 to 167, and up to 13 of
200 validation predictions differ between the two (at C = 0.01, at most 1). A solver that converges (torch,
batched over C, or in the training rows' span when D > n_train, which costs a Gram product of
about as many flops as the whole probe at D = 2,048) would therefore do several times more work
on the CPU and change the scores; a better start (a ridge fit) or fewer steps would change them
too, since the stopping point depends on the start. The probe keeps scikit-learn's procedure, and
its scores, and spends less on it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# scikit-learn's LogisticRegression defaults, which the probe has always used.
PROBE_MAX_ITER = 1000
PROBE_TOL = 1e-4
_LBFGS_OPTIONS = {"maxiter": PROBE_MAX_ITER, "maxls": 50, "gtol": PROBE_TOL, "ftol": 64 * float(np.finfo(float).eps)}


@functools.cache
def threadpools() -> Any:
    """One threadpoolctl controller for the process, made after the libraries the scorers call
    are loaded: a controller only limits the BLAS and OpenMP libraries it found when it was made,
    and scipy's own OpenBLAS (which L-BFGS-B calls) loads with ``scipy.optimize``. (A controller
    made before that, as ``score_pool(workers=2)`` used to make it before the first probe had
    imported scikit-learn, left scikit-learn's OpenMP pool at one thread per core in every
    worker: the 2-worker slowdown in BENCHMARKS.md.) Cached: threadpoolctl's plain
    ``threadpool_limits`` rescans the loaded libraries on every entry (~20 ms, measured)."""
    import scipy.optimize  # noqa: F401  (loads scipy's OpenBLAS before the scan)
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def standardise(train: np.ndarray, val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both parts scaled by the train part's per-dimension mean and (population) standard
    deviation; constant dimensions keep scale 1 (as scikit-learn's StandardScaler)."""
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return (train - mean) / std, (val - mean) / std


class _Objective:
    """``mean_i -log softmax(x_i W + b)[y_i] + l2 / 2 ||W||^2`` and its gradient, in
    scikit-learn's parameter layout: ``w`` [(D + 1) * K], row j of the [(D + 1), K] view the
    classes' weights of feature j, the last row the intercepts. Two classes: scikit-learn's
    binomial model, ``w`` [D + 1] (weights, intercept) of the logit of the second class."""

    def __init__(self, x: np.ndarray, codes: np.ndarray, classes: int) -> None:
        self.x, self.codes, self.n = x, codes, x.shape[0]
        self.binary = classes == 2
        self.classes = classes
        self.rows = np.arange(self.n)
        self.target = (codes == 1).astype(np.float64)

    def size(self) -> int:
        d = self.x.shape[1] + 1
        return d if self.binary else d * self.classes

    def __call__(self, w: np.ndarray, l2: float) -> tuple[float, np.ndarray]:
        if self.binary:
            return self._binomial(w, l2)
        x, n, d = self.x, self.n, self.x.shape[1]
        weights = w.reshape(d + 1, self.classes)
        coef = weights[:d]
        raw = x @ coef
        raw += weights[d]
        top = raw.max(axis=1)
        e = np.exp(raw - top[:, None])
        total = e.sum(axis=1)
        loss = float((np.log(total) + top - raw[self.rows, self.codes]).sum() / n + 0.5 * l2 * np.vdot(coef, coef))
        e /= total[:, None]  # softmax
        e[self.rows, self.codes] -= 1.0
        e /= n
        grad = np.empty((d + 1, self.classes))
        grad[:d] = (e.T @ x).T  # G^T X: the faster product for a C-ordered X
        grad[:d] += l2 * coef
        grad[d] = e.sum(axis=0)
        return loss, grad.ravel()

    def _binomial(self, w: np.ndarray, l2: float) -> tuple[float, np.ndarray]:
        x, n, d = self.x, self.n, self.x.shape[1]
        coef = w[:d]
        raw = x @ coef + w[d]
        loss = float((np.logaddexp(0.0, raw) - self.target * raw).sum() / n + 0.5 * l2 * (coef @ coef))
        g = (_expit(raw) - self.target) / n
        grad = np.empty(d + 1)
        grad[:d] = x.T @ g + l2 * coef
        grad[d] = g.sum()
        return loss, grad


def _expit(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)) without overflow."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@dataclass(frozen=True)
class ProbeFit:
    """One C's fit: ``weights`` in scikit-learn's layout (see :class:`_Objective`), the L-BFGS
    steps it took (scikit-learn's ``n_iter_``) and the objective at the end."""

    C: float
    weights: np.ndarray
    iterations: int
    loss: float


def fit_path(train: np.ndarray, codes: np.ndarray, classes: int, grid: Sequence[float]) -> list[ProbeFit]:
    """One fit for each C of ``grid`` in its order, each started from the previous one (the
    first from zero): scikit-learn's ``LogisticRegression(warm_start=True)`` refitted along the
    grid. ``train`` float64 [n, D] (standardised), ``codes`` int64 [n] in [0, classes)."""
    from scipy.optimize import minimize

    objective = _Objective(np.ascontiguousarray(train, dtype=np.float64), codes, classes)
    w = np.zeros(objective.size())
    out = []
    for c in grid:
        l2 = 1.0 / (c * train.shape[0])
        res = minimize(objective, w, args=(l2,), method="L-BFGS-B", jac=True, options=_LBFGS_OPTIONS)
        w = res.x
        out.append(ProbeFit(float(c), w, int(res.nit), float(res.fun)))
    return out


def predict(weights: np.ndarray, x: np.ndarray, classes: int) -> np.ndarray:
    """Class codes int64 [N] that the fit ``weights`` gives rows ``x``: scikit-learn's rule
    (multinomial: the first largest score; binomial: the second class where its logit is > 0)."""
    d = x.shape[1]
    if classes == 2:
        return (x @ weights[:d] + weights[d] > 0).astype(np.int64)
    w = weights.reshape(d + 1, classes)
    return np.argmax(x @ w[:d] + w[d], axis=1)
