"""The linear probe's fits (expertise/select/probe.py) against scikit-learn's LogisticRegression,
whose lbfgs procedure they reproduce without it, and against the objective written out by hand;
the thread limits of pool scoring in worker threads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from expertise.select import probe
from expertise.select.proxies import linear_probe, linear_probe_correct

ROOT = Path(__file__).resolve().parents[1]
GRID = (0.01, 0.1, 1.0, 10.0)


@pytest.fixture(autouse=True)
def _one_blas_thread() -> Iterator[None]:
    with threadpool_limits(1):
        yield


def _task(seed: int, n: int, d: int, classes: int, signal: float, relu: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, d)) + signal * rng.normal(size=(classes, d))[y]
    return (np.maximum(x, 0) if relu else x), y


def _sklearn_weights(model: LogisticRegression) -> np.ndarray:
    """A fitted model's coefficients in the probe's layout."""
    if model.coef_.shape[0] == 1:
        return np.append(model.coef_[0], model.intercept_[0])
    return np.concatenate([model.coef_.T, model.intercept_[None]], axis=0).ravel()


# binary, multinomial, D > n_train (the weights in the training rows' span), ReLU features with
# constant (all-zero) columns, many classes, labels that are not 0..K-1.
CASES = [(300, 20, 2, 0.5, False), (300, 20, 5, 0.3, False), (150, 400, 4, 0.3, True), (400, 64, 10, 0.4, True),
         (250, 12, 3, 1.5, False)]


@pytest.mark.parametrize("n, d, classes, signal, relu", CASES)
def test_fits_are_sklearns_warm_started_fits(n: int, d: int, classes: int, signal: float, relu: bool) -> None:
    """The same iterates as LogisticRegression(warm_start=True) refitted along the grid: the same
    number of steps, weights equal to rounding, the same predictions."""
    x, y = _task(n + d, n, d, classes, signal, relu)
    if relu:
        x[:, :3] = 0.0  # constant columns: standardised with scale 1, as StandardScaler
    n_train = n * 4 // 5
    train, val = probe.standardise(x[:n_train], x[n_train:])
    labels, codes = np.unique(y[:n_train], return_inverse=True)
    fits = probe.fit_path(train, codes, labels.size, GRID)
    model = LogisticRegression(max_iter=1000, tol=1e-4, warm_start=True)
    for fit in fits:
        model.set_params(C=fit.C)
        model.fit(train, y[:n_train])
        want = _sklearn_weights(model)
        assert fit.iterations == model.n_iter_[0]
        np.testing.assert_allclose(fit.weights, want, rtol=0, atol=1e-8 * np.abs(want).max())
        np.testing.assert_array_equal(labels[probe.predict(fit.weights, val, labels.size)], model.predict(val))
    assert fits[-1].iterations >= 1 and fits[0].iterations > 1  # the grid's fits did work


def test_probe_on_labels_of_any_values_equals_sklearn() -> None:
    """Labels 3, 7, 9 (not codes), a validation class the train part lacks: never predicted."""
    x, y = _task(11, 200, 16, 3, 0.6)
    labels = np.array([3, 7, 9])[y]
    labels[-5:] = 42  # only in the validation part
    correct = linear_probe_correct(x, labels, n_train=160)
    train, val = probe.standardise(x[:160], x[160:])
    model = LogisticRegression(max_iter=1000, tol=1e-4, warm_start=True)
    for c in GRID:
        model.set_params(C=c)
        model.fit(train, labels[:160])
        np.testing.assert_array_equal(correct[c], model.predict(val) == labels[160:])
    assert not any(correct[c][-5:].any() for c in GRID)


@pytest.mark.parametrize("classes", [2, 4])
def test_objective_is_the_documented_one(classes: int) -> None:
    """Loss and gradient against the objective written out (mean cross-entropy, L2 on the
    weights only; the binomial model for 2 classes) and central differences."""
    rng = np.random.default_rng(classes)
    x, codes = rng.normal(size=(40, 6)), rng.integers(0, classes, 40)
    codes[:classes] = np.arange(classes)
    obj = probe._Objective(x, codes, classes)
    w = rng.normal(size=obj.size())
    l2 = 0.3
    if classes == 2:
        logit = x @ w[:6] + w[6]
        want = np.mean(np.log1p(np.exp(logit)) - (codes == 1) * logit) + l2 / 2 * np.sum(w[:6] ** 2)
    else:
        weights = w.reshape(7, classes)
        logits = x @ weights[:6] + weights[6]
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        want = -np.mean(log_p[np.arange(40), codes]) + l2 / 2 * np.sum(weights[:6] ** 2)
    loss, grad = obj(w, l2)
    assert loss == pytest.approx(want, rel=1e-13)
    step = 1e-6
    numeric = np.array([(obj(w + step * e, l2)[0] - obj(w - step * e, l2)[0]) / (2 * step) for e in np.eye(w.size)])
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)


def test_linear_probe_scores_are_unchanged_on_a_wide_task() -> None:
    """A 2,048-wide task whose fits stop early at C >= 1 (scikit-learn's tolerance): the probe
    keeps scikit-learn's accuracies per C, not those of the minimiser."""
    x, y = _task(5, 250, 2048, 5, 0.15, relu=True)
    details = linear_probe(x, y, n_train=200, return_details=True)
    train, val = probe.standardise(x[:200], x[200:])
    model = LogisticRegression(max_iter=1000, tol=1e-4, warm_start=True)
    for c in GRID:
        model.set_params(C=c)
        model.fit(train, y[:200])
        assert details.accuracies[c] == model.score(val, y[200:])


_WORKER_LIMITS = """
import json, sys
import numpy as np
from expertise.select import probe, scoring
from threadpoolctl import ThreadpoolController

seen = []
fit_path = probe.fit_path
def recording(*args, **kwargs):
    fits = fit_path(*args, **kwargs)  # first, so that everything it loads is loaded
    seen.append([(lib.internal_api, lib.num_threads) for lib in ThreadpoolController().lib_controllers])
    return fits
probe.fit_path = recording
assert "scipy" not in sys.modules  # the controller is made first, as score_pool(workers=2) makes it
rng = np.random.default_rng(0)
y = rng.integers(0, 3, 60)
pool = {f"m{i}": rng.normal(size=(60, 8)) for i in range(3)}
scoring.score_pool(pool, y, ["linear_probe"], n_train=45, workers=2)
print(json.dumps(seen))
"""


@pytest.mark.slow
def test_worker_threads_score_with_one_blas_thread() -> None:
    """score_pool(workers=2) in a fresh interpreter whose BLAS would take 2 threads: in every
    worker, every BLAS and OpenMP library the probe runs on (scipy's OpenBLAS included, though
    it loads after the thread limits are first entered) has 1 thread."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", _WORKER_LIMITS], check=True, capture_output=True, text=True, env=env, cwd=ROOT)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(seen) == 3
    for libs in seen:
        assert sum(api == "openblas" for api, _ in libs) >= 2  # numpy's and scipy's
        assert all(threads == 1 for _, threads in libs), libs
