"""How sure a selection's scores are: a paired bootstrap over the task's images.

Most proxies are a mean over the task's images of a per-image term: knn_loo, knn_val, ridge_loo
and linear_probe of 1 (the image is classified right) or 0, ridge_loo and linear_probe maximised
over a setting they choose (alpha, C); LEEP and NCE of a log-likelihood. :class:`PerImage` holds
those terms (``score_pool(..., per_image=...)`` and the source-proxy ``*_terms`` functions give
them), so a bootstrap only resamples them: each resample draws M of the M scored images with
replacement, counted as ``W`` [B, M], and a member's score on it is ``max_s (W @ terms[s]) / M``
(the setting re-chosen on each resample, as the proxy chooses it). Every member is scored on
**the same resamples** (paired), so the difference between two members is judged image by image:
two members that differ on one image of 162 differ by 0, 1/162 or 2/162 on most resamples, so
they are tied, whatever the spread of each score. The fitted classifiers (a kNN's neighbours, ridge's leave-one-out
predictions, the probe's fit, LEEP's empirical conditional) are held fixed: the interval says how
much the score depends on which images the task happens to hold as test points. (Refitting on a
resample would make an image's duplicate its own nearest neighbour.)

LogME, H-score and the shrinkage H-score are not means of per-image terms; a bootstrap would
recompute a member's eigendecomposition per resample (``python -m perf.uncertainty``, one thread:
a LogME refit takes 0.30 s at 1,000 images x 512 dims and 0.84 s at x 2,048, so 5 to 14 minutes
per member at 1,000 resamples and still 1 to 3 minutes at 200; 23 ms at 162 x 512, still 23 s per
member), against 25-100 ms for a whole pool of 10 from per-image terms. They get no interval, and
the result says so (:data:`NO_INTERVAL`).

The marks, at the 95% level (``RULES`` states them for the JSON):

- **interval**: the percentile interval of the member's score over the resamples;
- **tied with the best**: the interval of (member - best) over the same resamples contains 0;
  the best is the member with the highest score (the earlier one among equals);
- **at chance** (accuracy proxies only): the interval's lower bound is not above the accuracy of
  the best constant guess, the majority-class rate of the scored images (>= 1 / classes). (The
  fixed rate, not the rate of each resample: the largest of several class frequencies on a
  resample is biased upwards, which would call members at chance that are not.) A member with
  random features has kNN accuracy ``sum_c p_c^2``, below that rate. LEEP and NCE get no mark:
  an uninformative member scores -H(Y) in expectation, but their plug-in estimates are biased
  upwards (NCE + H(Y) is an empirical mutual information, never below 0), so the test would miss;
- **too small to separate**: more than half of the members with an interval (the best included)
  are tied with the best, so the task's images cannot tell the pool apart.

Pure functions of numpy arrays, float64; the resamples come from one seed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from expertise.errors import ConfigError
from expertise.select.proxies import _threadpools
from expertise.select.proxy_registry import PROXIES, get_proxy

DEFAULT_RESAMPLES = 1000
LEVEL = 0.95
# Why a proxy gets no interval, from the registry (its spec's ``no_interval``); an accuracy proxy's
# chance level is the best constant guess (its spec's ``measure``).
NO_INTERVAL = {n: s.no_interval for n, s in PROXIES.items() if s.no_interval is not None}
METHOD = "paired percentile bootstrap over the scored images (the same resamples for every member)"
RULES = {
    "interval": "percentile interval of the member's score over the resamples of the scored images; "
                "the fitted classifiers are held fixed, the setting (alpha, C) re-chosen per resample",
    "tied_with_best": "the interval of (member - best) over the same resamples contains 0",
    "at_chance": "accuracy proxies: the interval's lower bound is not above the majority-class rate of the "
                 "scored images (chance); null for other proxies",
    "too_small_to_separate": "more than half of the members with an interval (the best included) are tied with "
                             "the best",
}
# Elements of one [resamples, M] block of indices: bounds memory (~32 MiB) whatever M is.
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class PerImage:
    """A member's per-image terms: ``terms`` float64 [S, M], one row per setting the proxy
    chooses among (one row for kNN), one column per scored image; ``images`` int64 [M], the
    scored images' rows in the task's train+val split (all of them, or the validation part).
    The score is ``max_s terms[s].mean()``."""

    terms: np.ndarray
    images: np.ndarray

    def __post_init__(self) -> None:
        t, i = np.asarray(self.terms), np.asarray(self.images)
        if t.ndim != 2 or t.shape[0] < 1 or t.shape[1] < 1 or i.shape != (t.shape[1],):
            raise ValueError(f"PerImage: terms must be [settings, M] and images [M], got {t.shape} and {i.shape}")
        if not np.isfinite(t).all():
            raise ValueError("PerImage: terms must be finite")
        object.__setattr__(self, "terms", t.astype(np.float64, copy=False))
        object.__setattr__(self, "images", i.astype(np.int64, copy=False))

    @property
    def score(self) -> float:
        return float(self.terms.mean(axis=1).max())


@dataclass(frozen=True)
class MemberUncertainty:
    """One member's score, its interval, the interval of its difference from the best (paired),
    and the marks."""

    score: float
    interval: tuple[float, float]
    difference: tuple[float, float]
    tied_with_best: bool
    at_chance: bool | None

    def to_json(self) -> dict[str, Any]:
        return {"score": self.score, "interval": list(self.interval), "difference_from_best": list(self.difference),
                "tied_with_best": self.tied_with_best, "at_chance": self.at_chance}


@dataclass(frozen=True)
class Uncertainty:
    """The bootstrap of one selection's scores (see the module's documentation): per member its
    interval and marks, the best member, the chance level, whether the task is too small to
    separate the pool. ``reason`` says why there is no interval (then ``members`` is empty)."""

    proxy: str
    resamples: int
    level: float = LEVEL
    seed: int = 0
    images: int = 0
    best: str | None = None
    chance: float | None = None
    members: dict[str, MemberUncertainty] = field(default_factory=dict)
    too_small: bool = False
    reason: str | None = None
    seconds: float = 0.0

    @property
    def available(self) -> bool:
        return self.reason is None

    @property
    def tied(self) -> list[str]:
        """The members tied with the best (the best first)."""
        return [n for n, m in self.members.items() if m.tied_with_best]

    @property
    def at_chance(self) -> list[str]:
        return [n for n, m in self.members.items() if m.at_chance]

    def to_json(self) -> dict[str, Any]:
        return {"proxy": self.proxy, "method": METHOD if self.available else None, "reason": self.reason,
                "resamples": self.resamples, "level": self.level, "seed": self.seed, "scored_images": self.images,
                "best": self.best, "chance": self.chance, "too_small_to_separate": self.too_small,
                "seconds": self.seconds, "rules": RULES, "members": {n: m.to_json() for n, m in self.members.items()}}

    def notes(self) -> list[str]:
        """Lines for under a table of the scores: the method, then what the marks found."""
        if not self.available:
            return [f"no interval for {self.proxy}: {self.reason}"]
        pct = f"{self.level:.0%}"
        lines = [(f"{pct} CI: over {self.resamples:,} bootstrap resamples of the {self.images:,} scored images, the same "
                  f"for every member; ≈: the {pct} interval of (member - {self.best}) contains 0")]
        if self.too_small:
            lines.append(f"too small to separate: {len(self.tied)} of {len(self.members)} members are tied with the "
                         f"best; these {self.images:,} images cannot tell them apart (more images or another proxy may)")
        if self.at_chance:
            lines.append(f"at chance: {', '.join(self.at_chance)} (the {pct} interval reaches {self.chance:.3g}, the "
                         "accuracy of always guessing the most frequent class)")
        return lines


def check_resamples(resamples: Any) -> int:
    """``resamples`` as a non-negative int (0: no bootstrap); ConfigError otherwise."""
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < 0:
        raise ConfigError(f"resamples must be a non-negative integer (0 turns the bootstrap off), got {resamples!r}")
    return int(resamples)


def _index_chunks(m: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """int64 [b, m] blocks of :func:`resample_indices`, in order (block size depends on m only)."""
    rng = np.random.default_rng(seed)
    block = max(1, _CHUNK_ELEMENTS // m)
    for start in range(0, resamples, block):
        yield rng.integers(0, m, size=(min(block, resamples - start), m))


def resample_indices(m: int, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """int64 [resamples, m]: the scored images (positions 0..m-1) drawn, with replacement, by each
    resample; every member is scored on these same rows. The same (m, resamples, seed) gives the
    same indices."""
    if m < 1 or resamples < 1:
        raise ValueError(f"resample_indices needs m >= 1 and resamples >= 1, got {m} and {resamples}")
    return np.concatenate(list(_index_chunks(m, resamples, seed)))


def resample_counts(indices: np.ndarray, m: int) -> np.ndarray:
    """float64 [B, m]: how often each of the m scored images is drawn by each resample of
    ``indices`` [B, m] (each row sums to m)."""
    b = indices.shape[0]
    flat = (indices + np.arange(b)[:, None] * m).ravel()
    return np.bincount(flat, minlength=b * m).reshape(b, m).astype(np.float64)


def resampled_scores(per_image: PerImage, counts: np.ndarray) -> np.ndarray:
    """float64 [B]: the member's score on each resample of ``counts`` [B, M] (from
    :func:`resample_counts`), the setting re-chosen on each: ``max_s (counts @ terms[s]) / M``
    (exact for 0/1 terms: sums of integers)."""
    m = per_image.terms.shape[1]
    if counts.ndim != 2 or counts.shape[1] != m:
        raise ValueError(f"counts must be [resamples, {m}] (the terms' images), got {counts.shape}")
    return (counts @ per_image.terms.T).max(axis=1) / m


def percentile_interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` percentile interval of ``samples``."""
    lo, hi = np.quantile(np.asarray(samples, dtype=np.float64), [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def chance_level(labels: np.ndarray) -> float:
    """The accuracy of always guessing the most frequent label (>= 1 / classes)."""
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    return float(counts.max() / counts.sum())


def unavailable(proxy: str, resamples: int, reason: str) -> Uncertainty:
    return Uncertainty(proxy, resamples, reason=reason)


def paired_bootstrap(proxy: str, scores: Mapping[str, float], per_image: Mapping[str, PerImage], labels: Any,
                     resamples: int = DEFAULT_RESAMPLES, seed: int = 0, level: float = LEVEL) -> Uncertainty:
    """Intervals and marks for the members of ``scores`` (name -> score, in pool order: the
    earlier of equal scores is the best) that have finite scores and ``per_image`` terms, all over
    the same images, from ``resamples`` paired resamples drawn with ``seed``; ``labels`` int [N]:
    the task's train+val labels (for the chance level of accuracy proxies).
    A proxy of :data:`NO_INTERVAL`, or no member with terms, gives an :class:`Uncertainty` that
    says why there is no interval."""
    t0 = time.perf_counter()
    resamples = check_resamples(resamples)
    if resamples < 1:
        raise ConfigError("paired_bootstrap needs at least 1 resample")
    if not 0 < level < 1:
        raise ConfigError(f"level must be in (0, 1), got {level!r}")
    spec = get_proxy(proxy)
    if spec.no_interval is not None:
        return unavailable(proxy, resamples, spec.no_interval)
    names = [n for n, s in scores.items() if math.isfinite(s) and n in per_image]
    if not names:
        return unavailable(proxy, resamples, "no member has per-image terms for this proxy")
    images = per_image[names[0]].images
    for n in names[1:]:
        if not np.array_equal(per_image[n].images, images):
            raise ValueError(f"{n!r} is scored on other images than {names[0]!r}; a paired bootstrap needs the same")
    best = max(names, key=lambda n: (scores[n], -names.index(n)))
    m = images.size
    y = np.asarray(labels)[images]
    chance = chance_level(y) if spec.measure == "accuracy" else None
    stats: dict[str, list[np.ndarray]] = {n: [] for n in names}
    # One counts matrix per block of resamples, shared by every member; single-threaded BLAS: a
    # [1000, 1000] x [1000, S] product takes ~0.2 ms on one thread and ~16 ms on two contended
    # ones (measured on the two-core machine).
    with _threadpools().limit(limits=1):
        for indices in _index_chunks(m, resamples, seed):
            counts = resample_counts(indices, m)
            for n in names:
                stats[n].append(resampled_scores(per_image[n], counts))
    samples = {n: np.concatenate(v) for n, v in stats.items()}
    members = {}
    for n in names:
        interval = percentile_interval(samples[n], level)
        diff = percentile_interval(samples[n] - samples[best], level)
        members[n] = MemberUncertainty(float(scores[n]), interval, diff, diff[0] <= 0.0 <= diff[1],
                                       None if chance is None else interval[0] <= chance)
    tied = sum(u.tied_with_best for u in members.values())
    return Uncertainty(proxy, resamples, level, seed, m, best, chance, members,
                       len(members) >= 2 and tied > len(members) / 2, seconds=time.perf_counter() - t0)
