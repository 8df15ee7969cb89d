"""How far the linear probe's fits are from the minimiser, and what converging would cost:
`python -m perf.probe_exactness [--members M]` prints a markdown table (not spliced anywhere).

For members of perf.proxies_scale's synthetic pools (1,000 images, 10 classes, 800 train / 200
validation) and scikit-learn's digits, per C of the probe's grid: the L-BFGS steps the probe takes
(scikit-learn's procedure: tol 1e-4, each C from the previous fit), the steps a fit to gtol 1e-10
from zero takes (the minimiser, which a solver that does not depend on its start would have to
reach), and how many of the 200 validation predictions differ between the two. This is why
expertise/select/probe.py keeps scikit-learn's procedure rather than a converged solver.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import numpy as np
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

from expertise.select import probe
from perf.proxies_scale import SyntheticPool

GRID = (0.01, 0.1, 1.0, 10.0)


def tasks(members: int) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits

    for d in (64, 256, 2048):
        pool = SyntheticPool(members, 1000, d)
        for name in pool:
            yield f"synthetic {d}-d {name}", pool[name].astype(np.float64), pool.labels
    x, y = load_digits(return_X_y=True)
    yield "digits (64-d pixels)", x[:1000].astype(np.float64), y[:1000]


def minimiser(train: np.ndarray, codes: np.ndarray, classes: int, c: float) -> tuple[np.ndarray, int]:
    objective = probe._Objective(train, codes, classes)
    res = minimize(objective, np.zeros(objective.size()), args=(1.0 / (c * train.shape[0]),), method="L-BFGS-B",
                   jac=True, options={"maxiter": 20000, "maxls": 50, "gtol": 1e-10, "ftol": 0.0})
    return res.x, int(res.nit)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--members", type=int, default=3)
    args = ap.parse_args()
    lines = ["| task | probe steps per C | steps to gtol 1e-10 per C | validation predictions that differ, per C |",
             "|---|---|---|---|"]
    with threadpool_limits(1):
        for label, x, y in tasks(args.members):
            train, val = probe.standardise(x[:800], x[800:])
            classes, codes = np.unique(y[:800], return_inverse=True)
            fits = probe.fit_path(train, codes, classes.size, GRID)
            exact = [minimiser(train, codes, classes.size, c) for c in GRID]
            differ = [int((probe.predict(f.weights, val, classes.size) != probe.predict(w, val, classes.size)).sum())
                      for f, (w, _) in zip(fits, exact)]
            lines.append(f"| {label} | {', '.join(str(f.iterations) for f in fits)} | {', '.join(str(n) for _, n in exact)} "
                         f"| {', '.join(map(str, differ))} |")
            print(lines[-1], flush=True)
    print("\n".join(["", f"C = {', '.join(map(str, GRID))}; 200 validation images per task.", "", *lines]))


if __name__ == "__main__":
    main()
