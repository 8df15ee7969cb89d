"""Scoring a whole pool: every feature proxy of every member from one decomposition per member.

:func:`score_pool` validates each member's features once, takes one :class:`Spectrum` per member
(one Gram or covariance product and one symmetric eigendecomposition, batched over members of one
shape on an accelerator), and derives from it every requested proxy: ridge_loo, logme, hscore and
regularized_hscore from the spectrum, knn_loo and knn_val from the same Gram matrix. Torch float64
on the features' device (or ``device``); the results equal the per-member functions of
:mod:`expertise.select.proxies`, which are the reference.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import torch

from expertise.errors import ConfigError
from expertise.select import knn
from expertise.select import proxies as P
from expertise.select.proxy_registry import PROXIES, Shared, get_proxy, pooled_proxies
from expertise.select.spectral import Spectrum, compute_spectrum, spectra_batched
from expertise.select.uncertainty import PerImage

T = TypeVar("T")
FEATURE_PROXIES = tuple(pooled_proxies())  # every proxy the registry gives a pooled scorer
# Working memory one member of a batch may take on an accelerator: features, Gram and eigenvectors.
_BATCH_BYTES = 1 << 30


def _check_proxies(proxies: Sequence[str]) -> list[str]:
    names = list(proxies)
    for p in names:
        if get_proxy(p).pooled is None:  # an unknown name: one line naming the choices
            raise ConfigError(f"score_pool scores feature proxies ({', '.join(FEATURE_PROXIES)}); {p!r} reads "
                              "upstream predictions: call its function per member")
    if not names:
        raise ConfigError("score_pool needs at least one proxy")
    return names


def default_batch(n: int, d: int, device: torch.device) -> int:
    """Members per batch: 1 on the CPU (its kernels gain nothing from batching and memory stays
    per member); on an accelerator as many as fit in ~1 GiB of float64 working memory."""
    if device.type == "cpu":
        return 1
    per_member = 8 * (n * d + 3 * n * min(n, d))
    return max(1, _BATCH_BYTES // per_member)


def _batches(names: list[str], features: Mapping[str, Any], labels: Any, device: torch.device | None,
             batch: int | None, clock: _Clock) -> Iterator[list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """Validated members in groups of up to ``batch`` consecutive members of equal shape."""
    group: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for name in names:
        f = features[name]
        if device is not None and isinstance(f, torch.Tensor):
            f = f.to(device)
        elif device is not None and device.type != "cpu":
            f = torch.as_tensor(np.asarray(f), device=device)
        x, codes, onehot = clock.run("validate", lambda: P._tensors(f, labels, name))
        size = batch or default_batch(x.shape[0], x.shape[1], x.device)
        if group and (group[0][1].shape != x.shape or group[0][1].device != x.device or len(group) >= size):
            yield group
            group = []
        group.append((name, x, codes, onehot))
    if group:
        yield group


def _spectra(group: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]) -> list[Spectrum]:
    if len(group) == 1:
        return [compute_spectrum(group[0][1])]
    return spectra_batched(torch.stack([x for _, x, _, _ in group]))


def score_pool(
    features: Mapping[str, Any], labels: Any, proxies: Sequence[str] = FEATURE_PROXIES,
    n_train: int = P.DEFAULT_N_TRAIN, device: torch.device | str | None = None, batch: int | None = None,
    seconds: dict[str, float] | None = None, workers: int = 1,
    per_image: dict[str, dict[str, PerImage]] | None = None,
) -> dict[str, dict[str, float]]:
    """``scores[proxy][member]`` for every member of ``features`` (name -> float [N, D]: numpy or
    torch, read one member at a time, so a lazy mapping keeps memory per member) and every proxy
    in ``proxies`` (feature proxies, default settings; the split ones use ``n_train``).

    One spectrum per member serves all spectral proxies and its Gram matrix the kNN ones.
    ``device``: where to compute (default: where each member's tensor is). ``batch``: members per
    batched decomposition (default :func:`default_batch`). linear_probe runs on the CPU
    (:mod:`expertise.select.probe`).
    ``workers`` > 1 (on the CPU): that many members at once in threads, each single-threaded (BLAS
    and torch limited to 1 thread for the call, OpenMP in each worker thread, every library the
    scorers load included): on a few cores, parallel members beat parallel BLAS, whose threads spin
    and contend on small matrices (measured: 2-thread eigendecompositions of 1,000 x 1,000 took 10x
    longer than 1-thread ones on a busy two-core machine). Same results.
    ``seconds``: when given, the wall time of each stage is added to it (``validate``, the shared
    ``spectrum``, ``duplicates`` for kNN, and each proxy; summed over workers), synchronising an
    accelerator per stage. ``per_image``: when given, ``per_image[proxy][member]`` receives the
    per-image terms the score is the mean of (:class:`~expertise.select.uncertainty.PerImage`) for
    the proxies that have them (the accuracies and their settings: knn_loo, knn_val, linear_probe,
    ridge_loo), for :mod:`expertise.select.uncertainty`'s bootstrap; the scores are the same.
    """
    wanted = _check_proxies(proxies)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")
    dev = torch.device(device) if device is not None else None
    clock = _Clock(seconds)
    names = list(features)

    want_terms = per_image is not None

    def score(group_names: list[str], size: int | None) -> list[tuple[str, dict[str, tuple[float, PerImage | None]]]]:
        out = []
        for group in _batches(group_names, features, labels, dev, size, clock):
            out += _score_group(group, wanted, n_train, clock, want_terms)
        return out

    if workers == 1:
        results = score(names, batch)
    else:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        def score_in_worker(name: str) -> list[tuple[str, dict[str, tuple[float, PerImage | None]]]]:
            # OpenMP's thread count is per thread: limit it in this worker too (BLAS's is global).
            with P._threadpools().limit(limits=1):
                return score([name], 1)

        try:
            with P._threadpools().limit(limits=1), ThreadPoolExecutor(workers) as pool:
                # Members one by one, at most 2 per worker in flight: memory stays per member.
                results, pending = [], []
                for name in names:
                    pending.append(pool.submit(score_in_worker, name))
                    if len(pending) >= 2 * workers:
                        results += pending.pop(0).result()
                for f in pending:
                    results += f.result()
        finally:
            torch.set_num_threads(threads)
    scores: dict[str, dict[str, float]] = {p: {} for p in wanted}
    for name, per_proxy in results:
        for p, (v, terms) in per_proxy.items():
            scores[p][name] = v
            if per_image is not None and terms is not None:
                per_image.setdefault(p, {})[name] = terms
    return scores


def _score_group(group: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]], wanted: list[str], n_train: int,
                 clock: _Clock, want_terms: bool) -> list[tuple[str, dict[str, tuple[float, PerImage | None]]]]:
    specs = [PROXIES[p] for p in wanted]
    need_spectrum = any("spectrum" in s.shares for s in specs)  # kNN alone computes its distances blockwise
    spectra = clock.run("spectrum", lambda: _spectra(group)) if need_spectrum else [None] * len(group)
    out = []
    for (name, x, codes, onehot), spec in zip(group, spectra):
        rep = None
        if any("duplicates" in s.shares for s in specs):
            rep = clock.run("duplicates", lambda: knn.duplicate_representatives(x))
        shared = Shared(name, x, codes, onehot, spec, rep, n_train)
        out.append((name, {s.name: clock.run(s.name, lambda: _score_one(s.pooled, shared, want_terms)) for s in specs}))
    return out


class _Clock:
    """Adds each stage's wall time to ``seconds`` (when given), synchronising CUDA first."""

    def __init__(self, seconds: dict[str, float] | None) -> None:
        self.seconds = seconds
        self.lock = threading.Lock()

    def run(self, stage: str, fn: Callable[[], T]) -> T:
        if self.seconds is None:
            return fn()
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        with self.lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0
        return out


def _score_one(pooled: Any, shared: Shared, want_terms: bool) -> tuple[float, PerImage | None]:
    """The score from the proxy's pooled scorer and, when ``want_terms`` and it has them, its per-image terms."""
    score, terms, first = pooled(shared)
    return score, None if terms is None else _per_image(terms, first, want_terms)


def _per_image(terms: torch.Tensor | np.ndarray, first: int, wanted: bool) -> PerImage | None:
    """Terms [settings, M] of the M rows from ``first`` on as a :class:`PerImage` (when wanted)."""
    if not wanted:
        return None
    t = terms.cpu().numpy() if isinstance(terms, torch.Tensor) else np.asarray(terms)
    t = t.astype(np.float64)
    return PerImage(t, np.arange(first, first + t.shape[1], dtype=np.int64))
