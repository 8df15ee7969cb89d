"""The registry of transferability proxies: one :class:`ProxySpec` per proxy carries everything
the tool does with it, so a new proxy is one entry here:

- ``fn``: the reference function (features or upstream probabilities, labels) -> score;
- ``pooled``: how :func:`expertise.select.scoring.score_pool` scores it from the work it shares
  among a member's proxies (:class:`Shared`: validated features, one spectrum, the kNN duplicates),
  with the per-image terms the score is the mean of, when it has them (None: scored per member);
- ``shares``: which of that shared work it needs;
- ``measure``: ``accuracy`` (its chance level is the majority class), ``log_likelihood`` or
  ``evidence``; and ``no_interval``: why the bootstrap of :mod:`expertise.select.uncertainty` gives
  it no interval (None: it has per-image terms).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from expertise.registry import Registry
from expertise.select import proxies as P
from expertise.select.spectral import Spectrum
from expertise.select.spectral_proxies import hscore_value, regularized_hscore_value


@dataclass(frozen=True)
class Shared:
    """What score_pool computes once per member and hands every proxy: the member's name (for
    messages), its validated float64 features ``x`` [N, D], label ``codes`` [N] and ``onehot``
    [N, C], the ``spectrum`` (when a proxy shares it), the kNN ``rep`` (exact duplicates), and the
    800/200 split point ``n_train``."""

    name: str
    x: torch.Tensor
    codes: torch.Tensor
    onehot: torch.Tensor
    spectrum: Spectrum | None
    rep: torch.Tensor | None
    n_train: int

    @property
    def gram(self) -> torch.Tensor | None:
        return self.spectrum.gram if self.spectrum is not None else None


# (score, per-image terms [settings, M] or None, the first row the terms are of)
Pooled = Callable[[Shared], tuple[float, "torch.Tensor | np.ndarray | None", int]]


@dataclass(frozen=True)
class ProxySpec:
    """One proxy (see the module docstring): ``fn(x, labels, name=...) -> float`` (higher is better),
    where x is the member's ``features`` [N, D] or its upstream ``source_probs`` [N, Z] as ``input``
    says; ``needs_split`` proxies also take ``n_train`` (rows [:n_train] train, the rest validate)."""

    name: str
    fn: Callable[..., float]
    input: Literal["features", "source_probs"]
    needs_split: bool
    summary: str
    measure: Literal["accuracy", "log_likelihood", "evidence"]
    pooled: Pooled | None = None
    shares: frozenset[str] = frozenset()  # "spectrum", "duplicates"
    no_interval: str | None = None


def _knn_loo(s: Shared) -> tuple[float, Any, int]:
    correct = P._knn_loo_correct(s.x, s.codes, s.onehot.shape[1], 1, "euclidean", s.gram, s.rep)
    return float(correct.mean()), correct[None], 0


def _knn_val(s: Shared) -> tuple[float, Any, int]:
    n_tr = P._check_n_train(s.n_train, s.x.shape[0], s.name)
    correct = P._knn_val_correct(s.x, s.codes, s.onehot.shape[1], n_tr, 1, "euclidean", s.gram, s.rep)
    return float(correct.mean()), correct[None], n_tr


def _linear_probe(s: Shared) -> tuple[float, Any, int]:
    per_c = P.linear_probe_correct(s.x.cpu().numpy(), s.codes.cpu().numpy(), s.n_train, P.DEFAULT_C_GRID, s.name)
    score = max(float(np.mean(v)) for v in per_c.values())  # linear_probe's best over C
    return score, np.stack(list(per_c.values())), s.n_train


def _ridge_loo(s: Shared) -> tuple[float, Any, int]:
    assert s.spectrum is not None
    correct = P._ridge_loo_correct(s.spectrum, s.codes, s.onehot, P.DEFAULT_ALPHAS)
    return P._ridge_loo_score(correct), correct, 0


def _logme(s: Shared) -> tuple[float, Any, int]:
    assert s.spectrum is not None
    return float(P._logme_result(s.spectrum, s.onehot, 1e-10, 1000, False, s.name)), None, 0


def _hscore(s: Shared) -> tuple[float, Any, int]:
    assert s.spectrum is not None
    return float(hscore_value(s.spectrum, s.onehot)), None, 0


def _regularized_hscore(s: Shared) -> tuple[float, Any, int]:
    assert s.spectrum is not None
    return float(regularized_hscore_value(s.x, s.spectrum, s.onehot)), None, 0


_REFIT = ("a bootstrap would recompute each member's eigendecomposition per resample (measured on one core: "
          "0.3 s per resample at 1,000 images x 512 dims, 5 minutes per member for 1,000 resamples); use knn_loo, "
          "ridge_loo or linear_probe for an interval")
KNN, SPECTRUM = frozenset({"duplicates"}), frozenset({"spectrum"})

PROXIES: Registry[ProxySpec] = Registry("proxy")
for _spec in (
    ProxySpec("knn_loo", P.knn_loo, "features", False, "leave-one-out 1-NN accuracy (paper 000)", "accuracy",
              _knn_loo, KNN),
    ProxySpec("knn_val", P.knn_val, "features", True, "1-NN validation accuracy on the 800/200 split (paper 002)",
              "accuracy", _knn_val, KNN),
    ProxySpec("linear_probe", P.linear_probe, "features", True, "logistic-regression validation accuracy, best over C",
              "accuracy", _linear_probe),
    ProxySpec("ridge_loo", P.ridge_loo, "features", False, "exact leave-one-out ridge accuracy, best over alpha",
              "accuracy", _ridge_loo, SPECTRUM),
    ProxySpec("logme", P.logme, "features", False, "LogME: maximised Bayesian linear evidence per sample", "evidence",
              _logme, SPECTRUM, "LogME is not a mean of per-image terms; " + _REFIT),
    ProxySpec("hscore", P.hscore, "features", False, "H-score: tr(pinv(cov f) cov E[f|y])", "evidence", _hscore,
              SPECTRUM, "H-score is not a mean of per-image terms; " + _REFIT),
    ProxySpec("regularized_hscore", P.regularized_hscore, "features", False, "H-score with Ledoit-Wolf shrinkage",
              "evidence", _regularized_hscore, SPECTRUM,
              "the shrinkage H-score is not a mean of per-image terms; " + _REFIT),
    ProxySpec("leep", P.leep, "source_probs", False, "LEEP: log-likelihood of the expected empirical predictor",
              "log_likelihood"),
    ProxySpec("nce", P.nce_from_probs, "source_probs", False, "NCE: -H(Y | argmax source label)", "log_likelihood"),
):
    PROXIES.register(_spec.name, _spec)


def get_proxy(name: str) -> ProxySpec:
    """The registered :class:`ProxySpec` called ``name``; one line naming the closest and all names if none."""
    return PROXIES.get(name)


def pooled_proxies() -> list[str]:
    """The proxies :func:`~expertise.select.scoring.score_pool` scores (those with a ``pooled`` scorer)."""
    return [n for n, s in PROXIES.items() if s.pooled is not None]
