"""ridge_loo, LogME, H-score and its shrinkage variant computed from one :class:`Spectrum`.

Torch float64 on the spectrum's device; each function takes the member's spectrum, its features
where it needs them, and the one-hot targets, and returns tensors (the public, validated entry
points and their documentation are in :mod:`expertise.select.proxies`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from expertise.select.spectral import EPS, Spectrum, centred_residual_operator, class_quadratic_form, matmul, project

# Spacing in log t of LogME's global search grid (73 points over float64's range).
_GRID_STEP = 1.0


def ridge_loo_correct(spec: Spectrum, codes: torch.Tensor, onehot: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """float64 [A, N]: 1 where the exact leave-one-out prediction of one-vs-all ridge with an
    unpenalised intercept is right, per alpha: the LOO prediction of sample i is
    ``Y_i - ((I - H) Y)_i / (I - H)_ii``, argmax (lowest class among ties)."""
    psi = alphas[:, None] / (spec.s2[None, :] + alphas[:, None])  # [A, r], computed without 1 - shrink
    p, perp = project(spec, onehot)
    ones = torch.ones_like(onehot[:, :1])
    ones_p, ones_perp = project(spec, ones)
    residual, diag = centred_residual_operator(spec, psi, onehot, perp, p, ones_p, ones_perp)
    loo = onehot[None] - residual / diag[:, :, None]
    return (loo.argmax(dim=2) == codes[None]).double()


def hscore_value(spec: Spectrum, onehot: torch.Tensor) -> torch.Tensor:
    """``tr(pinv(cov f) cov g) = C - 1 - sum_c 1_c^T (I - H_0) 1_c / n_c``, H_0 the intercept ridge
    hat matrix in the limit alpha -> 0 over the directions above rounding (a scalar tensor)."""
    psi = torch.where(spec.kept(), 0.0, 1.0)[None, :]
    c = onehot.shape[1]
    return (c - 1) - class_quadratic_form(spec, psi, onehot)[0]


def ledoit_wolf_shrinkage(f: torch.Tensor, spec: Spectrum) -> tuple[float, float]:
    """(scikit-learn's ``ledoit_wolf_shrinkage`` of the centred features, mu = tr(cov) / D) from
    O(N D + min(N, D)^2) work: its sums ``||Xc^T Xc||_F^2`` and ``sum_i ||xc_i||^4`` equal the
    centred Gram's ``||Gc||_F^2`` and the squares of its diagonal, so no D x D product is formed."""
    n, d = f.shape
    mean = f.mean(dim=0)
    xc2 = (f - mean).square_().sum(dim=1)  # ||xc_i||^2 [N], one temporary
    if spec.gram is not None:
        g = spec.gram
        r = g.mean(dim=1)
        gc = g - r[:, None]
        gc -= r[None, :]
        gc += r.mean()
        frob2 = float(gc.square_().sum())
    else:
        cc = matmul(f.T, f) - n * torch.outer(mean, mean)
        frob2 = float((cc * cc).sum())
    mu = float(xc2.sum()) / (n * d)
    delta_ = frob2 / n**2
    beta = (float((xc2 * xc2).sum()) / n - delta_) / (d * n)
    delta = (delta_ - d * mu**2) / d
    beta = min(beta, delta)
    return (0.0 if beta == 0 else beta / delta), mu


def regularized_hscore_value(f: torch.Tensor, spec: Spectrum, onehot: torch.Tensor) -> torch.Tensor:
    """``(1 - a) tr(cov_a(f)^-1 cov(g))`` = ``tr(P Gc (Gc + kappa I)^-1)`` with
    kappa = a mu N / (1 - a): the intercept ridge hat matrix at alpha = kappa (a scalar tensor)."""
    shrinkage, mu = ledoit_wolf_shrinkage(f, spec)
    c = onehot.shape[1]
    if shrinkage >= 1.0:
        return f.new_zeros(())
    kappa = shrinkage * mu * spec.n / (1.0 - shrinkage)
    s2 = spec.s2
    psi = torch.where(s2 > 0, kappa / (s2 + kappa).clamp_min(torch.finfo(torch.float64).tiny), 1.0)[None, :]
    return (c - 1) - class_quadratic_form(spec, psi, onehot)[0]


@dataclass(frozen=True)
class LogMETensors:
    """Per class [C]: alpha, beta, the evidence per sample; the bisection steps and whether the
    bracket of the maximiser shrank to the tolerance within ``max_iter`` steps."""

    alpha: torch.Tensor
    beta: torch.Tensor
    evidence: torch.Tensor
    iterations: int
    converged: bool


def _profile_slope(log_t: torch.Tensor, s2: torch.Tensor, z2: torch.Tensor, perp2: torch.Tensor, n_null: int,
                   n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sign-carrying slope dL/dlog t up to a positive factor, N - gamma, t q(t)) per class [C] of
    the evidence maximised over alpha at fixed t = alpha / beta. Scale-free: a = t / (s2 + t) in (0, 1]."""
    t = log_t.exp()
    a = t[None, :] / (s2[:, None] + t[None, :])  # [r, C]
    n_minus_gamma = n_null + a.sum(dim=0)
    tq = (z2 * a).sum(dim=0) + perp2  # t q(t), q = y^T (F F^T + t I)^-1 y
    res = (z2 * a * a).sum(dim=0) + perp2  # t^2 y^T (F F^T + t I)^-2 y
    return n * res / tq - n_minus_gamma, n_minus_gamma, tq


def logme_maximise(spec: Spectrum, onehot: torch.Tensor, tol: float, max_iter: int) -> LogMETensors:
    """Maximise each class's evidence ``log N(y; 0, F F^T / alpha + I / beta)``.

    Maximising over alpha at fixed t = alpha / beta has the closed form ``alpha = N / q(t)``,
    ``q(t) = y^T (F F^T + t I)^-1 y``, which leaves a one-dimensional profile in log t whose
    stationary points are exactly those of MacKay's fixed point (``alpha = gamma / ||m||^2``,
    ``beta = (N - gamma) / ||F m - y||^2``). The profile's slope is found by bisection in log t
    over ``[log(eps s_max^2), log(s_max^2 / eps)]``, the range float64 can tell apart: a fixed
    number of steps (no data-dependent loop, so batches on an accelerator never synchronise)
    until the bracket is below ``tol`` (relative in t), at most ``max_iter``. Where the slope
    keeps one sign the maximum is the limit at that end (beta -> inf, the noise-free fit possible
    for N <= D; or alpha -> inf, no signal), returned at the end of the range.
    """
    n = spec.n
    s2 = spec.s2
    z, perp = project(spec, onehot)
    z2 = z * z
    perp2 = (perp * perp).sum(dim=0)
    n_null = n - s2.numel()  # directions of R^N where F F^T is 0 (besides zero eigenvalues in s2)
    c = onehot.shape[1]
    top = float(s2.max()) if s2.numel() else 0.0
    if top <= 0.0:  # all-zero features: the evidence depends on beta alone (any t)
        lo = hi = onehot.new_zeros(c)
        steps, converged = 0, True
    else:
        # Global search first: the profile on a grid one unit of log t apart (it can have a local
        # maximum besides the limit at either end), then bisection around the best grid point.
        grid = torch.arange(math.log(EPS * top), math.log(top / EPS) + _GRID_STEP, _GRID_STEP,
                            dtype=torch.float64, device=onehot.device)
        t = grid.exp()[:, None, None]  # [G, 1, 1]
        a = t / (s2[None, :, None] + t)  # [G, r, C]
        tq = (z2[None] * a).sum(dim=1) + perp2  # [G, C]
        profile = -(torch.log(s2[None, :, None] + t).sum(dim=1) + n_null * grid[:, None]
                    + n * (torch.log(tq) - grid[:, None]))
        best = profile.argmax(dim=0)  # [C], the first of equal values
        lo = grid[(best - 1).clamp_min(0)]
        hi = grid[(best + 1).clamp_max(grid.numel() - 1)]
        needed = math.ceil(math.log2(2 * _GRID_STEP / tol)) if tol < 2 * _GRID_STEP else 0
        steps = min(needed, max_iter)
        converged = steps >= needed
        # Rising slope at the midpoint moves the bracket up; never rising converges to its lower
        # end, always rising to its upper end: the limits beta -> inf and alpha -> inf.
        for _ in range(steps):
            mid = 0.5 * (lo + hi)
            rising = _profile_slope(mid, s2, z2, perp2, n_null, n)[0] > 0
            lo = torch.where(rising, mid, lo)
            hi = torch.where(rising, hi, mid)
    log_t = 0.5 * (lo + hi)
    _, _, tq = _profile_slope(log_t, s2, z2, perp2, n_null, n)
    t = log_t.exp()
    beta = n / tq
    alpha = beta * t
    # log N(y; 0, (F F^T + t I) / alpha) at alpha = N / q: -1/2 [N + log|F F^T + t I| - N log alpha + N log 2 pi]
    log_det = torch.log(s2[:, None] + t[None, :]).sum(dim=0) + n_null * log_t
    evidence = -0.5 * (n + log_det - n * torch.log(alpha) + n * math.log(2 * math.pi)) / n
    return LogMETensors(alpha, beta, evidence, steps, converged)
