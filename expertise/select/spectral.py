"""One spectral decomposition per (member, task), shared by ridge_loo, logme, hscore and
regularized_hscore; torch float64 on whatever device the features are on.

The decomposition is of the uncentred features F [N, D]: ``F F^T = U diag(s2) U^T``, taken from the
N x N Gram matrix when N <= D and from the D x D matrix F^T F (then ``U = F V / s``) when N > D, so
it costs O(N D min(N, D)) for the product plus O(min(N, D)^3) for one symmetric eigendecomposition,
against O(N D min(N, D)) with a larger constant for each thin SVD the proxies used to take. LogME is
defined on F as given; the proxies with an intercept or a covariance (ridge_loo, hscore,
regularized_hscore) need the centred features, which they get exactly from the same decomposition
through the intercept-projected resolvent (:func:`centred_residual_operator`), not from a second one.
On the Gram side the Gram matrix itself is kept, so kNN reuses the same product.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

EPS = float(torch.finfo(torch.float64).eps)


@dataclass(frozen=True)
class Spectrum:
    """``F F^T = U diag(s2) U^T`` restricted to the directions it can resolve.

    ``u`` float64 [N, r] (orthonormal columns), ``s2`` float64 [r] (>= 0, descending). On the Gram
    side (``complete``) r = N and U is square, so nothing of R^N lies outside its columns; on the
    covariance side only the directions with s2 above rounding (:data:`rank_rtol`) are kept, and
    the rest of R^N (the null space of F F^T) is implicit. ``gram`` is F F^T [N, N] on the Gram
    side (for kNN), else None. ``rank_rtol``: eigenvalues <= rank_rtol * s2[0] are rounding noise
    of a formed Gram matrix (about max(N, D) ulps of the largest), which the rank-revealing proxies
    (hscore) treat as 0."""

    u: torch.Tensor
    s2: torch.Tensor
    n: int
    d: int
    complete: bool
    gram: torch.Tensor | None
    rank_rtol: float

    def kept(self) -> torch.Tensor:
        """bool [r]: the eigenvalues above rounding noise."""
        top = self.s2[:1].clamp_min(0.0)
        return self.s2 > self.rank_rtol * top if self.s2.numel() else self.s2 > 0


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for 2-D float64 tensors. On the CPU through numpy's OpenBLAS, which on the
    machine measured (AMD EPYC, x86_64) runs these products 1.6 to 2x faster than torch's (MKL):
    [1,000 x 1,000] @ [1,000 x 70] 5.1 against 8.4 ms, [1,000 x 2,048] @ its transpose 0.06
    against 0.11 s, one thread; numpy also
    recognises ``a @ a.T`` as a symmetric rank-k update, half the arithmetic. Elsewhere torch's."""
    if a.device.type == "cpu":
        return torch.from_numpy(a.numpy() @ b.numpy())
    return a @ b


def gram_matrix(f: torch.Tensor) -> torch.Tensor:
    """F F^T [N, N] float64 (on the CPU a symmetric rank-k update, see :func:`matmul`)."""
    return matmul(f, f.T)


def _eigh(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) and eigenvectors of symmetric ``a``. On the CPU numpy's LAPACK
    (divide and conquer, syevd), elsewhere torch's. Measured for N = 1,000, one thread, best of 3:
    scipy's ``eigh`` with driver evd takes the same time, evr 1.35x, ev 6.9x and torch's (MKL)
    1.3x; eigenvalues alone would take 0.4x, but ridge_loo needs every eigenvector."""
    if a.device.type == "cpu":
        lam, u = np.linalg.eigh(a.numpy())
        return torch.from_numpy(lam), torch.from_numpy(u)
    lam, u = torch.linalg.eigh(a)
    return lam, u


def compute_spectrum(f: torch.Tensor, gram: torch.Tensor | None = None) -> Spectrum:
    """The :class:`Spectrum` of features ``f`` float64 [N, D] (any device); ``gram`` = F F^T when
    the caller already has it. Gram side when N <= D, covariance side otherwise."""
    n, d = f.shape
    rtol = max(n, d) * EPS
    if n <= d:
        g = gram_matrix(f) if gram is None else gram
        lam, u = _eigh(g)
        return Spectrum(u.flip(1), lam.flip(0).clamp_min(0.0), n, d, True, g, rtol)
    lam, v = _eigh(matmul(f.T, f))
    lam, v = lam.flip(0), v.flip(1)
    keep = lam > rtol * lam[:1].clamp_min(0.0)
    if not bool(keep.any()):
        return Spectrum(f.new_zeros((n, 0)), f.new_zeros(0), n, d, False, None, rtol)
    s2 = lam[keep]
    u = matmul(f, v[:, keep]) / s2.sqrt()
    return Spectrum(u, s2, n, d, False, None, rtol)


def spectra_batched(f: torch.Tensor) -> list[Spectrum]:
    """:func:`compute_spectrum` of each member of ``f`` float64 [M, N, D] (members of one shape),
    with one batched product and one batched eigendecomposition: on an accelerator the members'
    work runs together. Equal to the per-member results up to rounding of the batched kernels."""
    m, n, d = f.shape
    if n > d:
        return [compute_spectrum(f[i]) for i in range(m)]
    g = torch.bmm(f, f.transpose(1, 2))
    lam, u = torch.linalg.eigh(g)
    rtol = max(n, d) * EPS
    return [Spectrum(u[i].flip(1), lam[i].flip(0).clamp_min(0.0), n, d, True, g[i], rtol) for i in range(m)]


def project(spec: Spectrum, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(U^T v [r, K], the part of v [N, K] outside span(U) [N, K]; exactly 0 when complete)."""
    p = matmul(spec.u.T, v)
    perp = torch.zeros_like(v) if spec.complete else v - matmul(spec.u, p)
    return p, perp


def centred_residual_operator(
    spec: Spectrum, psi: torch.Tensor, targets: torch.Tensor, perp: torch.Tensor, p: torch.Tensor,
    ones_p: torch.Tensor, ones_perp: torch.Tensor, null_tol: float = 1e-15,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residuals (I - H) Y [A, N, C] and diag(I - H) [A, N] of ridge with an unpenalised intercept,
    for each of A regularisations at once, from the uncentred spectrum.

    For ``min ||Y - F W - 1 b^T||^2 + alpha ||W||^2`` the hat matrix is
    ``H = 11^T / N + Xc (Xc^T Xc + alpha I)^-1 Xc^T`` (Xc centred). With the uncentred
    ``A = alpha (F F^T + alpha I)^-1 = U diag(psi) U^T + (I - U U^T)``, psi = alpha / (s2 + alpha),
    projecting the intercept out gives exactly ``I - H = A - (A 1)(A 1)^T / (1^T A 1)``: the
    resolvent of the GP view ``y = F w + b 1 + eps`` with a flat prior on b. ``psi`` [A, r] may be
    any such weights (psi = 0 on the kept directions is the alpha -> 0 limit, where I - H is the
    projector off the centred features' span); when ``1^T A 1 <= null_tol * N`` (1 lies in the
    span that A removes) the intercept term vanishes in that limit and is dropped.
    ``targets`` Y [N, C]; ``p``, ``perp``: :func:`project` of Y; ``ones_p``, ``ones_perp``: of 1.
    """
    u = spec.u
    (n, r), a, c = u.shape, psi.shape[0], targets.shape[1]
    # U diag(psi_a) U^T Y for every a as one product U [N, r] @ [r, A C] (one wide product runs
    # 2x faster than A narrow ones), then A 1 the same way.
    scaled = (psi.T[:, :, None] * p[:, None, :]).reshape(r, a * c)
    ay = perp[None] + matmul(u, scaled).reshape(n, a, c).permute(1, 0, 2)  # A Y [A, N, C]
    a1 = ones_perp[None, :, 0] + matmul(u, psi.T * ones_p).T  # A 1 [A, N]
    diag_a = matmul(u * u, psi.T)  # [N, A]
    if not spec.complete:
        diag_a = diag_a + (1.0 - (u * u).sum(dim=1))[:, None]  # diag(I - U U^T)
    diag_a = diag_a.T
    ones_a_ones = a1.sum(dim=1)  # [A]
    use = ones_a_ones > null_tol * spec.n
    safe = torch.where(use, ones_a_ones, torch.ones_like(ones_a_ones))
    coef = torch.where(use, 1.0 / safe, torch.zeros_like(safe))  # [A]
    residual = ay - coef[:, None, None] * a1[:, :, None] * (a1 @ targets)[:, None, :]
    diag = diag_a - coef[:, None] * a1 * a1
    return residual, diag


def class_quadratic_form(spec: Spectrum, psi: torch.Tensor, onehot: torch.Tensor, null_tol: float = 1e-15) -> torch.Tensor:
    """``sum_c 1_c^T (I - H) 1_c / n_c`` [A] for I - H of :func:`centred_residual_operator`, from
    C x C quantities only: with W = (I - U U^T) [1_c] and P = U^T [1_c],
    ``1_c^T A 1_c' = (W^T W + P^T diag(psi) P)_{cc'}`` and 1 = sum_c 1_c."""
    p, w = project(spec, onehot)
    base = w.T @ w  # [C, C]
    q = base[None] + torch.matmul(p.T, psi[:, :, None] * p[None])  # [A, C, C]
    q1 = q.sum(dim=2)  # 1_c^T A 1 [A, C]
    ones_a_ones = q1.sum(dim=1)
    use = ones_a_ones > null_tol * spec.n
    coef = torch.where(use, 1.0 / torch.where(use, ones_a_ones, torch.ones_like(ones_a_ones)), torch.zeros_like(ones_a_ones))
    counts = onehot.sum(dim=0)
    diag = torch.diagonal(q, dim1=1, dim2=2) - coef[:, None] * q1 * q1
    return (diag / counts).sum(dim=1)
