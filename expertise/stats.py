"""Small float64 statistics for reported numbers: the binomial confidence interval of an accuracy."""

from __future__ import annotations

import math
from statistics import NormalDist

from expertise.errors import ConfigError


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval (no continuity correction) of a binomial proportion, in float64:
    ``successes`` correct out of ``trials`` (e.g. test images), two-sided at ``confidence``.

    Unlike the normal approximation p +- z sqrt(p(1-p)/n) it stays inside [0, 1] and is not empty at
    p = 0 or 1, which matters for the few hundred test images of a small task."""
    if isinstance(successes, bool) or isinstance(trials, bool) or int(successes) != successes or int(trials) != trials:
        raise ConfigError(f"a binomial interval needs integer counts, got {successes!r} of {trials!r}")
    k, n = int(successes), int(trials)
    if n < 1 or not 0 <= k <= n:
        raise ConfigError(f"a binomial interval needs 0 <= successes <= trials and trials >= 1, got {k} of {n}")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    p = k / n
    z2n = z * z / n
    centre = (p + z2n / 2.0) / (1.0 + z2n)
    half = z * math.sqrt(p * (1.0 - p) / n + z2n / (4.0 * n)) / (1.0 + z2n)
    lo, hi = centre - half, centre + half
    # exact at the edges (rounding can leave 1e-17 below 0 or above 1)
    return (0.0 if k == 0 else max(0.0, lo), 1.0 if k == n else min(1.0, hi))
