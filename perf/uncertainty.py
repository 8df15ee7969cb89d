"""What the selection's bootstrap costs (expertise/select/uncertainty.py): the paired bootstrap of a
pool's scores from their per-image terms, against a bootstrap by recomputation, which LogME and
H-score would need (one eigendecomposition per resample). The numbers behind the choice to give
those proxies no interval. Run from the repository root: ``python -m perf.uncertainty``.

Random features (timings do not depend on the values), one thread for torch and for BLAS, best of
3 after a warm-up (perf/timing.py).
"""

from __future__ import annotations

import numpy as np
import torch

from expertise.select.proxies import _threadpools
from expertise.select.scoring import score_pool
from expertise.select.uncertainty import DEFAULT_RESAMPLES, PerImage, paired_bootstrap
from perf.timing import best_of

MEMBERS = 10
SHAPES = ((162, 512), (1000, 128), (1000, 512), (1000, 2048))


def main() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    with _threadpools().limit(limits=1):
        for n in (162, 1000):
            y = rng.integers(0, 10, n)
            for settings, proxy in ((1, "knn_loo"), (7, "ridge_loo")):
                terms = {f"m{i}": PerImage((rng.random((settings, n)) < 0.6).astype(float), np.arange(n))
                         for i in range(MEMBERS)}
                scores = {k: t.score for k, t in terms.items()}
                s = best_of(lambda p=proxy, s=scores, t=terms, y=y: paired_bootstrap(p, s, t, y, DEFAULT_RESAMPLES, 0))
                print(f"paired bootstrap, {proxy} terms ({settings} setting(s)), {MEMBERS} members x {n} images, "
                      f"{DEFAULT_RESAMPLES:,} resamples: {s * 1000:.0f} ms for the pool")
        for n, d in SHAPES:
            x, y = rng.standard_normal((n, d)), rng.integers(0, 10, n)
            idx = rng.integers(0, n, n)
            s = best_of(lambda x=x[idx], y=y[idx]: score_pool({"m": x}, y, ["logme"]))
            print(f"LogME refit on one resample, {n} x {d}: {s * 1000:.0f} ms -> {DEFAULT_RESAMPLES:,} resamples "
                  f"{s * DEFAULT_RESAMPLES:.0f} s per member, 200 resamples {s * 200:.0f} s per member")


if __name__ == "__main__":
    main()
