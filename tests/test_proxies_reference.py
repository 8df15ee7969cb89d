"""The transferability proxies beyond kNN-LOO, each against an independent reference: naive
numpy / scipy formulas, brute-force refits, scikit-learn, and plain Python loops."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.stats import multivariate_normal
from sklearn.covariance import ledoit_wolf
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from expertise.data.tasks import TRAIN_SIZE
from expertise.errors import ConfigError, DataError, ExpertiseError
from expertise.select.proxy_registry import PROXIES, ProxySpec, get_proxy
from expertise.select.proxies import (
    DEFAULT_N_TRAIN,
    LinearProbeResult,
    hard_source_labels,
    hscore,
    knn_val,
    leep,
    linear_probe,
    logme,
    nce,
    regularized_hscore,
    ridge_loo,
)


@pytest.fixture(autouse=True)
def _one_blas_thread() -> Iterator[None]:
    """The references make thousands of small LAPACK calls; on a busy 2-core machine two
    OpenBLAS threads make each ~100x slower than one."""
    with threadpool_limits(1):
        yield


def _task(seed: int, n: int, d: int, classes: int, signal: float) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian features with a class-dependent mean shift of size ``signal``."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, d)) + signal * np.eye(classes)[y] @ rng.normal(size=(classes, d))
    return x, y


# ------------------------------------------------------------------------------------- LogME


def _naive_evidence(log_params: np.ndarray, f: np.ndarray, y: np.ndarray) -> float:
    """LogME's evidence per sample written out with explicit D x D matrices."""
    alpha, beta = np.exp(log_params)
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    _, log_det = np.linalg.slogdet(a)
    value = (
        d / 2 * np.log(alpha) + n / 2 * np.log(beta) - alpha / 2 * m @ m
        - beta / 2 * np.sum((f @ m - y) ** 2) - log_det / 2 - n / 2 * np.log(2 * np.pi)
    )
    return float(value / n)


def _naive_logme(f: np.ndarray, labels: np.ndarray) -> float:
    """Per class, maximise the naive evidence over (log alpha, log beta) with scipy from several
    starts; the mean over classes."""
    best_per_class = []
    for c in np.unique(labels):
        y = (labels == c).astype(np.float64)
        best = -np.inf
        for start in ((0.0, 0.0), (6.0, 2.0), (-3.0, 4.0)):
            result = minimize(lambda p: -_naive_evidence(p, f, y), np.array(start), method="L-BFGS-B",
                              bounds=[(-20.0, 30.0)] * 2, options={"ftol": 1e-15, "gtol": 1e-11, "maxiter": 500})
            best = max(best, -float(result.fun))
        best_per_class.append(best)
    return float(np.mean(best_per_class))


def _published_logme(f: np.ndarray, labels: np.ndarray) -> float:
    """LogME as published (You et al.'s code, without its 1e-5 epsilons and run to convergence):
    eigenvalues from the thin SVD, so for N < D the log-determinant sums only N of the D terms."""
    n, d = f.shape
    _, s, vh = np.linalg.svd(f, full_matrices=False)
    sigma, v = s**2, vh.T
    scores = []
    for c in np.unique(labels):
        y = (labels == c).astype(np.float64)
        proj = vh @ (f.T @ y)
        alpha, beta = 1.0, 1.0
        for _ in range(5000):
            gamma = (beta * sigma / (alpha + beta * sigma)).sum()
            m = v @ (proj * beta / (alpha + beta * sigma))
            alpha_new, beta_new = gamma / (m @ m), (n - gamma) / np.sum((y - f @ m) ** 2)
            done = abs(alpha_new - alpha) <= 1e-12 * alpha and abs(beta_new - beta) <= 1e-12 * beta
            alpha, beta = alpha_new, beta_new
            if done:
                break
        m = v @ (proj * beta / (alpha + beta * sigma))
        evidence = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * np.sum(np.log(alpha + beta * sigma))
                    - beta / 2 * np.sum((y - f @ m) ** 2) - alpha / 2 * m @ m - n / 2 * np.log(2 * np.pi))
        scores.append(evidence / n)
    return float(np.mean(scores))


# (N, D, signal): N > D, and N < D with a weak signal so that no class's optimal beta is infinite
# (the naive reference cannot follow beta to infinity; that case is tested below). Some classes
# have alpha -> infinity (no signal at all), which the reference reaches to ~1e-11 at its bound.
LOGME_CASES = [(200, 20, 0.3), (60, 150, 0.1)]


@pytest.mark.parametrize("n, d, signal", LOGME_CASES)
@pytest.mark.parametrize("classes", [2, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_logme_equals_naive_maximised_evidence(n: int, d: int, signal: float, classes: int, seed: int) -> None:
    x, y = _task(seed, n, d, classes, signal)
    details = logme(x, y, return_details=True)
    assert np.all(details.beta < 1e6)  # finite noise: the naive D x D reference stays well conditioned
    assert details.score == pytest.approx(_naive_logme(x, y), rel=1e-6)
    assert isinstance(logme(x, y), float) and logme(x, y) == details.score


@pytest.mark.parametrize("n, d, signal", LOGME_CASES)
def test_logme_evidence_is_the_gaussian_marginal_likelihood(n: int, d: int, signal: float) -> None:
    """At the returned alpha, beta each class's evidence is log N(y; 0, F F^T / alpha + I / beta),
    an N x N formula that involves no D x D determinant at all."""
    x, y = _task(3, n, d, 3, signal)
    details = logme(x, y, return_details=True)
    for k, c in enumerate(np.unique(y)):
        cov = x @ x.T / details.alpha[k] + np.eye(n) / details.beta[k]
        want = multivariate_normal(np.zeros(n), cov).logpdf((y == c).astype(np.float64)) / n
        assert details.evidence[k] == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_logme_dropped_determinant_term_would_be_caught(seed: int) -> None:
    """The published rank-r formula agrees for N > D but not for N < D, where it adds
    (D - N)/(2N) log alpha per class: the reference test above would fail on it."""
    x, y = _task(seed, 200, 20, 3, 0.3)
    assert _published_logme(x, y) == pytest.approx(logme(x, y), rel=1e-8)
    x, y = _task(seed, 60, 150, 3, 0.1)
    exact, published = logme(x, y, return_details=True), _published_logme(x, y)
    assert abs(published - exact.score) > 0.1 * abs(exact.score)
    bias = (150 - 60) / (2 * 60) * np.mean(np.log(exact.alpha))
    assert published - exact.score == pytest.approx(bias, rel=1e-6)
    assert exact.score == pytest.approx(_naive_logme(x, y), rel=1e-6)


def test_logme_noise_free_limit_for_n_below_d() -> None:
    """With N < D and strong class signal the evidence rises towards beta = inf, where it is
    log N(y; 0, F F^T / alpha) maximised in closed form: alpha = N / sum(z^2 / s^2) with
    F = U S V^T, z = U^T y; LogME must return that limit."""
    x, y = _task(0, 40, 120, 2, 1.0)
    details = logme(x, y, return_details=True)
    assert np.all(details.beta > 1e12)  # the fixed point ran off to the boundary
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    for k, c in enumerate(np.unique(y)):
        z = u.T @ (y == c).astype(np.float64)
        alpha = 40 / np.sum(z**2 / s**2)
        want = (-40 / 2 * (1 + np.log(2 * np.pi)) - 0.5 * np.sum(np.log(s**2 / alpha))) / 40
        assert details.evidence[k] == pytest.approx(want, rel=1e-8)
        assert details.alpha[k] == pytest.approx(alpha, rel=1e-6)


def test_logme_of_all_zero_features_is_finite() -> None:
    y = np.array([0, 1] * 10)
    score = logme(np.zeros((20, 5)), y)
    # F = 0: y ~ N(0, I / beta), beta = N / ||y||^2 = 2 per class
    assert score == pytest.approx(-0.5 * (np.log(2 * np.pi) - np.log(2.0) + 1), rel=1e-12)


# ------------------------------------------------------------------------- H-score and variant


def _naive_covariances(f: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cov(f) and cov(g) (1/N), g built row by row from class means."""
    g = np.empty_like(f)
    for c in np.unique(labels):
        g[labels == c] = f[labels == c].mean(axis=0)
    return np.cov(f, rowvar=False, bias=True), np.cov(g, rowvar=False, bias=True)


@pytest.mark.parametrize("n, d, classes", [(300, 10, 3), (200, 40, 5), (500, 2, 2)])
@pytest.mark.parametrize("seed", [0, 1])
def test_hscore_equals_trace_formula(n: int, d: int, classes: int, seed: int) -> None:
    x, y = _task(seed, n, d, classes, 0.4)
    cov_f, cov_g = _naive_covariances(x, y)
    assert hscore(x, y) == pytest.approx(np.trace(np.linalg.pinv(cov_f) @ cov_g), rel=1e-9)


def test_hscore_rank_deficient_features() -> None:
    """Features of rank 6 in 12 dims: pinv drops the null space (numpy's default cutoff finds it
    here; a robust cutoff gives the same), and N <= D + 1 leaves every class split perfectly:
    H-score = C - 1."""
    rng = np.random.default_rng(0)
    x, y = _task(1, 150, 6, 4, 0.4)
    wide = x @ rng.normal(size=(6, 12))
    cov_f, cov_g = _naive_covariances(wide, y)
    assert hscore(wide, y) == pytest.approx(np.trace(np.linalg.pinv(cov_f, rcond=1e-10) @ cov_g), rel=1e-8)
    assert hscore(wide, y) == pytest.approx(hscore(x, y), rel=1e-9)
    small, labels = _task(2, 30, 50, 3, 0.0)
    assert hscore(small, labels) == pytest.approx(2.0, rel=1e-10)


@pytest.mark.parametrize("n, d, classes", [(300, 10, 3), (200, 40, 5), (60, 100, 3)])
@pytest.mark.parametrize("seed", [0, 1])
def test_regularized_hscore_equals_ledoit_wolf_plug_in(n: int, d: int, classes: int, seed: int) -> None:
    """Ibrahim et al.'s tr(cov_LW(f)^-1 (1 - a) cov(g)) with scikit-learn's ledoit_wolf matrix
    plugged in and explicitly inverted (N < D included: the shrunk estimate is invertible)."""
    x, y = _task(seed, n, d, classes, 0.4)
    cov_lw, shrinkage = ledoit_wolf(x)
    _, cov_g = _naive_covariances(x, y)
    want = np.trace(np.linalg.inv(cov_lw) @ ((1 - shrinkage) * cov_g))
    assert 0 < shrinkage < 1
    assert regularized_hscore(x, y) == pytest.approx(want, rel=1e-9)
    assert regularized_hscore(x, y) <= classes - 1 + 1e-9


# ----------------------------------------------------------------------------- linear probe


@pytest.mark.parametrize("d, classes, seed", [(32, 5, 0), (8, 3, 1)])
def test_linear_probe_equals_sklearn_pipeline(d: int, classes: int, seed: int) -> None:
    x, y = _task(seed, 1000, d, classes, 0.25)
    grid = (0.01, 0.1, 1.0, 10.0)
    want = {c: make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000))
            .fit(x[:800], y[:800]).score(x[800:], y[800:]) for c in grid}
    details = linear_probe(x, y, return_details=True)
    assert isinstance(details, LinearProbeResult)
    assert details.accuracies == pytest.approx(want, abs=1e-12)
    assert details.accuracy == max(want.values()) == linear_probe(x, y)
    assert details.best_C == next(c for c in grid if want[c] == max(want.values()))
    assert 1 / classes + 0.05 < details.accuracy < 1.0  # a grid where the choice of C matters


def test_linear_probe_optimises_the_documented_objective() -> None:
    """Independent of scikit-learn: minimise C * sum(cross-entropy) + ||W||^2 / 2 (intercept
    unpenalised) with scipy on standardised features; the validation accuracy per C agrees."""
    x, y = _task(4, 150, 4, 3, 0.5)
    n_train, classes = 100, 3
    mean, std = x[:n_train].mean(axis=0), x[:n_train].std(axis=0)
    train, val = (x[:n_train] - mean) / std, (x[n_train:] - mean) / std
    onehot = np.eye(classes)[y[:n_train]]

    def objective(params: np.ndarray, c: float) -> tuple[float, np.ndarray]:
        w, b = params[: 4 * classes].reshape(4, classes), params[4 * classes:]
        logits = train @ w + b
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        loss = -np.sum(onehot * np.log(p)) * c + 0.5 * np.sum(w * w)
        grad_logits = (p - onehot) * c
        return loss, np.concatenate([(train.T @ grad_logits + w).ravel(), grad_logits.sum(axis=0)])

    details = linear_probe(x, y, n_train=n_train, C_grid=(0.05, 1.0), return_details=True)
    for c in (0.05, 1.0):
        fit = minimize(objective, np.zeros(5 * classes), args=(c,), jac=True, method="L-BFGS-B",
                       options={"ftol": 1e-14, "gtol": 1e-10, "maxiter": 5000})
        w, b = fit.x[: 4 * classes].reshape(4, classes), fit.x[4 * classes:]
        assert details.accuracies[c] == np.mean((val @ w + b).argmax(axis=1) == y[n_train:])


# -------------------------------------------------------------------------------- ridge LOO


def _brute_ridge_loo(x: np.ndarray, y: np.ndarray, alpha: float) -> float:
    """Refit ridge N times, each without one sample: one-hot targets, features and targets
    centred on the remaining samples (an unpenalised intercept), solve the normal equations."""
    classes = np.unique(y)
    targets = (y[:, None] == classes[None, :]).astype(np.float64)
    correct = 0
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        xm, tm = x[keep].mean(axis=0), targets[keep].mean(axis=0)
        xc, tc = x[keep] - xm, targets[keep] - tm
        w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ tc)
        correct += classes[np.argmax(tm + (x[i] - xm) @ w)] == y[i]
    return correct / len(y)


@pytest.mark.parametrize("n, d", [(60, 5), (40, 70)])
@pytest.mark.parametrize("alpha", [1e-3, 1e-1, 10.0, 1e3])
def test_ridge_loo_equals_brute_force_refits(n: int, d: int, alpha: float) -> None:
    x, y = _task(int(alpha * 1000) % 7, n, d, 3, 0.5)
    x = x * 3 + 2  # an offset the intercept must absorb
    assert ridge_loo(x, y, alphas=(alpha,)) == pytest.approx(_brute_ridge_loo(x, y, alpha), abs=1e-12)


def test_ridge_loo_is_the_best_over_alphas_and_not_in_sample() -> None:
    x, y = _task(5, 40, 70, 3, 0.3)
    alphas = (1e-3, 1.0, 1e3)
    assert ridge_loo(x, y, alphas=alphas) == max(_brute_ridge_loo(x, y, a) for a in alphas)
    assert ridge_loo(x, y, alphas=(1e-3,)) < 1.0  # in-sample, N < D interpolates every label


# ------------------------------------------------------------------------------ kNN on a split


def _reference_knn_val(x: np.ndarray, y: np.ndarray, n_train: int, k: int) -> float:
    """Each validation row: training rows sorted by (squared distance, index); majority label of
    the first k, a vote tie going to the tied label seen first."""
    correct = 0
    for i in range(n_train, len(y)):
        ranked = sorted((float(np.sum((x[i] - x[j]) ** 2)), j) for j in range(n_train))
        neighbour_labels = [int(y[j]) for _, j in ranked[:k]]
        votes = Counter(neighbour_labels)
        best = max(votes.values())
        correct += next(lbl for lbl in neighbour_labels if votes[lbl] == best) == y[i]
    return correct / (len(y) - n_train)


@pytest.mark.parametrize("d", [2, 16, 64])
@pytest.mark.parametrize("seed", [0, 1])
def test_knn_val_equals_sklearn_on_the_800_200_split(d: int, seed: int) -> None:
    x, y = _task(seed, 1000, d, 5, 0.5)
    want = KNeighborsClassifier(n_neighbors=1).fit(x[:800], y[:800]).score(x[800:], y[800:])
    assert knn_val(x, y) == pytest.approx(want, abs=1e-12)
    want3 = KNeighborsClassifier(n_neighbors=3).fit(x[:800], y[:800] % 2).score(x[800:], y[800:] % 2)
    assert knn_val(x, y % 2, k=3) == pytest.approx(want3, abs=1e-12)  # 2 classes, odd k: no vote ties


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_knn_val_tie_rules_match_brute_force(k: int, seed: int) -> None:
    """Integer grid points: duplicates across the split and equidistant training rows."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, size=(50, 2)).astype(np.float64)
    y = rng.integers(0, 3, size=50)
    assert knn_val(x, y, n_train=35, k=k) == _reference_knn_val(x, y, 35, k)


def test_knn_val_uses_only_training_rows_as_neighbours() -> None:
    x = np.array([[0.0], [10.0], [0.1], [0.2]])
    # validation rows 2 and 3 are nearest to each other, but only train rows 0 and 1 count
    assert knn_val(x, np.array([0, 1, 0, 1]), n_train=2) == 0.5


# --------------------------------------------------------------------------------- LEEP, NCE


def _loop_leep(probs: np.ndarray, labels: np.ndarray) -> float:
    n, z_count = probs.shape
    classes = sorted(set(labels.tolist()))
    joint = {(c, z): sum(probs[i, z] for i in range(n) if labels[i] == c) / n for c in classes for z in range(z_count)}
    marginal = [sum(joint[c, z] for c in classes) for z in range(z_count)]
    total = 0.0
    for i in range(n):
        total += math.log(sum(joint[labels[i], z] / marginal[z] * probs[i, z] for z in range(z_count) if marginal[z] > 0))
    return total / n


def _loop_nce(source: list[int], labels: list[int]) -> float:
    n = len(labels)
    pairs, sources = Counter(zip(labels, source)), Counter(source)
    return sum(count / n * math.log(count / sources[z]) for (_, z), count in pairs.items())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_leep_and_nce_equal_python_loops(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, 120)
    probs = rng.dirichlet(np.full(7, 0.5), size=120)
    probs[:, 6] = 0.0  # a source label no sample ever predicts
    probs /= probs.sum(axis=1, keepdims=True)
    assert leep(probs, labels) == pytest.approx(_loop_leep(probs, labels), rel=1e-12)
    source = hard_source_labels(probs)
    assert source.tolist() == [int(np.argmax(row)) for row in probs]
    assert nce(source, labels) == pytest.approx(_loop_nce(source.tolist(), labels.tolist()), rel=1e-12)
    assert get_proxy("nce").fn(probs, labels) == nce(source, labels)
    assert leep(probs, labels) < 0 and nce(source, labels) < 0


def test_perfectly_informative_source_scores_zero() -> None:
    labels = np.array([0, 1, 2, 1, 0, 2, 2])
    assert leep(np.eye(3)[labels], labels) == 0.0
    assert leep(np.eye(5)[(labels * 2 + 1) % 5], labels) == 0.0  # any relabelling of the targets
    assert nce(labels, labels) == 0.0
    assert nce(labels * 10 + 3, labels) == 0.0
    assert nce(np.zeros(7, dtype=int), labels) == pytest.approx(-_entropy(labels))  # uninformative: -H(Y)


def _entropy(labels: np.ndarray) -> float:
    p = np.bincount(labels) / labels.size
    return float(-np.sum(p * np.log(p)))


# ---------------------------------------------------------------------------------- sanity


@pytest.mark.parametrize("proxy", [name for name, spec in PROXIES.items() if spec.input == "features"])
def test_separating_features_outrank_random_ones(proxy: str) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    separating = 3.0 * np.eye(4)[y] @ rng.normal(size=(4, 16)) + rng.normal(size=(400, 16))
    noise = rng.normal(size=(400, 16))
    spec = get_proxy(proxy)
    kwargs = {"n_train": 300} if spec.needs_split else {}
    assert spec.fn(separating, y, **kwargs) > spec.fn(noise, y, **kwargs) + 0.1


def test_registry_describes_every_proxy() -> None:
    x, y = _task(0, 120, 6, 3, 0.5)
    probs = np.random.default_rng(0).dirichlet(np.ones(5), size=120)
    for name, spec in PROXIES.items():
        assert isinstance(spec, ProxySpec) and spec.name == name and get_proxy(name) is spec
        kwargs = {"n_train": 90} if spec.needs_split else {}
        value = spec.fn(probs if spec.input == "source_probs" else x, y, name="m", **kwargs)
        assert isinstance(value, float) and math.isfinite(value)
    assert {n for n, s in PROXIES.items() if s.needs_split} == {"knn_val", "linear_probe"}
    assert DEFAULT_N_TRAIN == TRAIN_SIZE  # the split proxies default to a task's trainval layout
    assert {n for n, s in PROXIES.items() if s.input == "source_probs"} == {"leep", "nce"}
    with pytest.raises(ConfigError, match="unknown proxy 'lgome'.*logme"):
        get_proxy("lgome")


def test_torch_inputs_give_the_same_scores() -> None:
    x, y = _task(1, 100, 5, 3, 0.5)
    for name in ("logme", "hscore", "regularized_hscore", "ridge_loo"):
        fn = get_proxy(name).fn
        assert fn(torch.from_numpy(x), torch.from_numpy(y)) == fn(x, y)
    assert knn_val(torch.from_numpy(x), y, n_train=80) == knn_val(x, y, n_train=80)


# ------------------------------------------------------------------------------ validation

FEATURE_PROXIES = [name for name, spec in PROXIES.items() if spec.input == "features"]
BAD_FEATURES = [
    (np.array([[0.0, np.nan]] * 3 + [[1.0, 1.0]] * 3), [0, 1] * 3, "NaN or inf"),
    (np.array([[0.0, np.inf]] * 3 + [[1.0, 1.0]] * 3), [0, 1] * 3, "NaN or inf"),
    (np.zeros(6), [0, 1] * 3, "2-D"),
    (np.zeros((6, 2)), [0, 1, 0, 1, 0], "6 feature rows but 5 labels"),
    (np.random.default_rng(0).normal(size=(6, 2)), [1] * 6, "single class"),
]


@pytest.mark.parametrize("proxy", FEATURE_PROXIES)
@pytest.mark.parametrize("features, labels, message", BAD_FEATURES)
def test_feature_proxies_reject_bad_inputs_naming_the_member(proxy, features, labels, message) -> None:
    spec = get_proxy(proxy)
    kwargs = {"n_train": 4} if spec.needs_split else {}
    with pytest.raises(DataError, match=message) as e:
        spec.fn(features, labels, name="bit_s.expert_animal", **kwargs)
    assert "bit_s.expert_animal" in str(e.value)


@pytest.mark.parametrize("proxy", ["knn_val", "linear_probe"])
@pytest.mark.parametrize("n_train, message", [(0, "between 1 and N - 1 = 9"), (10, "between 1 and N - 1 = 9"),
                                              (True, "integer"), (5.0, "integer")])
def test_bad_n_train(proxy: str, n_train, message: str) -> None:
    x, y = _task(0, 10, 3, 2, 0.5)
    with pytest.raises(ConfigError, match=message) as e:
        get_proxy(proxy).fn(x, y, n_train=n_train, name="m1")
    assert "m1" in str(e.value)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda x, y: knn_val(x, y, n_train=5, k=6, name="m1"), ConfigError, "between 1 and n_train = 5"),
        (lambda x, y: knn_val(x, y, n_train=5, metric="l1", name="m1"), ConfigError, "metric"),
        (lambda x, y: linear_probe(x, y, n_train=5, C_grid=(), name="m1"), ConfigError, "C_grid"),
        (lambda x, y: linear_probe(x, y, n_train=5, C_grid=(1.0, -1.0), name="m1"), ConfigError, "C_grid"),
        (lambda x, y: linear_probe(x, np.array([0] * 5 + [1] * 5), n_train=5, name="m1"), DataError, "single class"),
        (lambda x, y: ridge_loo(x, y, alphas=(0.0,), name="m1"), ConfigError, "alphas"),
        (lambda x, y: ridge_loo(x, y, alphas="ab", name="m1"), ConfigError, "alphas"),
        (lambda x, y: logme(x, y, max_iter=0, name="m1"), ConfigError, "max_iter"),
    ],
)
def test_bad_settings(call, error, message) -> None:
    x, y = _task(0, 10, 3, 2, 0.5)
    y[:2] = [0, 1]
    with pytest.raises(error, match=message) as e:
        call(x, y)
    assert "m1" in str(e.value) and isinstance(e.value, ExpertiseError)


PROBS = np.full((4, 2), 0.5)
LABELS = [0, 1, 0, 1]


@pytest.mark.parametrize(
    "probs, labels, message",
    [
        (np.array([[0.5, 0.5], [1.2, -0.2], [0.5, 0.5], [0.5, 0.5]]), LABELS, "negative"),
        (np.full((4, 2), 0.6), LABELS, "do not sum to 1"),
        (np.array([[np.nan, 1.0]] + [[0.5, 0.5]] * 3), LABELS, "NaN or inf"),
        (np.full(4, 0.5), LABELS, "2-D"),
        (PROBS, [0, 1, 0], "4 (rows of source_probs|source labels) but 3 target labels"),
        (PROBS, [1, 1, 1, 1], "single class"),
    ],
)
def test_leep_rejects_bad_probabilities(probs, labels, message) -> None:
    for fn in (leep, get_proxy("nce").fn):
        with pytest.raises(DataError, match=message) as e:
            fn(probs, labels, name="m2")
        assert "m2" in str(e.value)


@pytest.mark.parametrize(
    "source, labels, message",
    [
        (np.zeros((4, 1), dtype=int), LABELS, "1-D"),
        (np.array([0.5, 1, 0, 1]), LABELS, "integers"),
        (np.array([0, 1, 0]), LABELS, "3 source labels but 4 target labels"),
        (np.array([0, 1, 0, 1]), [2, 2, 2, 2], "single class"),
    ],
)
def test_nce_rejects_bad_labels(source, labels, message) -> None:
    with pytest.raises(DataError, match=message) as e:
        nce(source, labels, name="m3")
    assert "m3" in str(e.value)


def test_probabilities_within_tolerance_are_accepted() -> None:
    probs = np.array([[0.3, 0.7 + 5e-5], [0.5, 0.5], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    assert math.isfinite(leep(probs, LABELS))
