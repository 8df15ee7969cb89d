"""Issue 17: the shared spectral decomposition, the torch path and pool scoring against the NumPy
proxies as they were before (tests/numpy_reference_proxies.py, a frozen copy), kNN duplicates,
LogME's convergence report, and batched against per-member scoring."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

import numpy_reference_proxies as ref
from expertise.errors import ConfigError
from expertise.select import knn
from expertise.select.proxies import (
    LogMEConvergenceWarning, hscore, knn_loo, knn_val, logme, regularized_hscore, ridge_loo,
)
from expertise.select.proxy_registry import PROXIES
from expertise.select.scoring import FEATURE_PROXIES, score_pool
from expertise.select.spectral import compute_spectrum, spectra_batched


@pytest.fixture(autouse=True)
def _one_blas_thread() -> Iterator[None]:
    with threadpool_limits(1):
        yield


def _features(seed: int, n: int, d: int, classes: int, signal: float, relu: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Embedding-like float32 features: class-shifted Gaussians, optionally through a ReLU (a
    non-zero mean, as pre-logits have)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, d)) + signal * np.eye(classes)[y] @ rng.normal(size=(classes, d))
    return (np.maximum(x, 0) if relu else x).astype(np.float32), y


# N < D (Gram side) and N > D (covariance side), centred-ish and ReLU features, weak and strong signal.
SHAPES = [(120, 300, 4, 0.3, False), (120, 300, 5, 0.15, True), (400, 64, 3, 0.4, False), (400, 64, 6, 0.3, True),
          (200, 200, 3, 0.2, True), (150, 32, 2, 0.5, False)]


@pytest.mark.parametrize("n, d, classes, signal, relu", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_spectral_proxies_equal_the_numpy_svd_reference(n, d, classes, signal, relu, seed) -> None:
    x, y = _features(seed, n, d, classes, signal, relu)
    assert ridge_loo(x, y) == ref.ridge_loo(x, y)
    for alpha in ref.DEFAULT_ALPHAS:
        assert ridge_loo(x, y, alphas=(alpha,)) == ref.ridge_loo(x, y, alphas=(alpha,))
    assert hscore(x, y) == pytest.approx(ref.hscore(x, y), rel=1e-9)
    assert regularized_hscore(x, y) == pytest.approx(ref.regularized_hscore(x, y), rel=1e-9)
    old = ref.logme(x, y, return_details=True)
    new = logme(x, y, return_details=True)
    if old.iterations < 1000:  # the old fixed point converged: the same maximum
        assert new.score == pytest.approx(old.score, rel=1e-9)
        np.testing.assert_allclose(new.evidence, old.evidence, rtol=1e-9)
    assert new.converged


@pytest.mark.parametrize("n, d, classes, signal, relu", SHAPES[:4])
def test_knn_proxies_equal_the_numpy_reference(n, d, classes, signal, relu) -> None:
    x, y = _features(3, n, d, classes, signal, relu)
    for k in (1, 3):
        for metric in ("euclidean", "cosine"):
            assert knn_loo(x, y, k=k, metric=metric) == ref.knn_loo(x, y, k=k, metric=metric)
    assert knn_val(x, y, n_train=n * 3 // 4) == ref.knn_val(x, y, n_train=n * 3 // 4)


def test_torch_tensors_score_like_numpy_arrays() -> None:
    """The torch path (tensors kept as they are) against the numpy inputs and the old reference;
    on an accelerator when one is present."""
    x, y = _features(4, 150, 260, 4, 0.3, relu=True)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        for name, spec in PROXIES.items():
            if spec.input != "features" or name == "linear_probe":
                continue
            kwargs = {"n_train": 110} if spec.needs_split else {}
            want = ref.PROXIES[name].fn(x, y, **kwargs)
            assert spec.fn(xt, yt, **kwargs) == pytest.approx(want, rel=1e-9, abs=1e-12), (device, name)


def test_spectrum_sides_agree() -> None:
    """Gram side (N <= D) and covariance side (N > D) give the same non-zero spectrum."""
    x, _ = _features(5, 60, 59, 3, 0.3)
    f = torch.from_numpy(x.astype(np.float64))
    wide = compute_spectrum(torch.cat([f, torch.zeros(60, 2, dtype=torch.float64)], dim=1))  # N <= D
    tall = compute_spectrum(f)  # N > D
    assert wide.complete and wide.gram is not None and not tall.complete and tall.gram is None
    assert tall.s2.numel() == 59 and float(wide.s2[59]) < 1e-12 * float(wide.s2[0])  # F F^T has rank 59
    np.testing.assert_allclose(wide.s2[:59].numpy(), tall.s2.numpy(), rtol=1e-9)
    np.testing.assert_allclose((tall.u.T @ tall.u).numpy(), np.eye(59), atol=1e-10)
    np.testing.assert_allclose(np.abs((tall.u.T @ wide.u[:, :59]).numpy()), np.eye(59), atol=1e-8)


# ------------------------------------------------------------------------------------- LogME


def test_logme_converges_where_the_fixed_point_stopped() -> None:
    """A separable N < D task: the old fixed point spends its 1,000 steps crawling towards
    beta = inf and stops short; the profile maximisation reaches the maximum, which is higher."""
    x, y = _features(1, 200, 400, 10, 1.0, relu=True)
    old = ref.logme(x, y, return_details=True)
    assert old.iterations == 1000  # the case of the issue
    with warnings.catch_warnings():
        warnings.simplefilter("error", LogMEConvergenceWarning)
        new = logme(x, y, return_details=True)
    assert new.converged and new.iterations < 100
    assert np.all(new.evidence >= old.evidence - 1e-12)
    assert new.score > old.score
    assert new.score == pytest.approx(old.score, rel=1e-4)  # short by little, as the issue measured


def test_logme_reports_non_convergence() -> None:
    x, y = _features(1, 80, 30, 3, 0.3)
    with pytest.warns(LogMEConvergenceWarning, match="member7.*max_iter=3"):
        details = logme(x, y, return_details=True, max_iter=3, name="member7")
    assert not details.converged and details.iterations == 3
    assert logme(x, y, return_details=True).converged


@pytest.mark.parametrize("tol", [0.0, -1.0, float("nan"), True])
def test_logme_rejects_bad_tol(tol) -> None:
    x, y = _features(1, 20, 3, 2, 0.3)
    with pytest.raises(ConfigError, match="tol"):
        logme(x, y, tol=tol, name="m")


# ------------------------------------------------------------------------------ kNN duplicates


def _reference_groups(x: np.ndarray) -> np.ndarray:
    """Lowest index of an equal row, by value (so -0.0 == 0.0), by brute force."""
    return np.array([next(j for j in range(len(x)) if np.array_equal(x[j], x[i])) for i in range(len(x))])


def test_duplicate_representatives_are_exact() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(20, 9))
    x = np.concatenate([base, base[[3, 3, 7]], base[:5] * 1.0000000000000002])
    x[5, 2], x[-1, 0] = 0.0, 0.0
    x = np.concatenate([x, x[[5]]])
    x[-1, 2] = -0.0  # -0.0 equals 0.0
    for find in (knn.duplicate_representatives, knn.representatives_by_bytes, knn.representatives_by_hash):
        got = find(torch.from_numpy(x)).numpy()
        np.testing.assert_array_equal(got, _reference_groups(x))
        assert got[-1] == 5 and got[20] == got[21] == 3 and got[22] == 7


def test_bytes_and_hash_representatives_agree_on_embedding_like_rows() -> None:
    """The CPU's dict of row bytes and the accelerator's hash: the same groups on sparse (ReLU)
    float32-valued rows with many copies, some of them copies of copies."""
    x, _ = _features(3, 300, 64, 4, 0.3, relu=True)
    x = np.concatenate([x, x[::4], x[1::9], x[::4][::2]])[np.random.default_rng(1).permutation(300 + 75 + 34 + 38)]
    t = torch.from_numpy(x.astype(np.float64))  # the proxies' dtype
    by_bytes = knn.representatives_by_bytes(t).numpy()
    np.testing.assert_array_equal(by_bytes, knn.representatives_by_hash(t).numpy())
    np.testing.assert_array_equal(by_bytes, _reference_groups(x))
    assert (by_bytes != np.arange(len(x))).sum() == 75 + 34 + 38


def test_hash_collisions_never_merge_different_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """With every multiplier 1 the hash is the sum of the bit halves, so permuted rows collide:
    they must still come out as different rows, and kNN as the brute-force reference."""
    monkeypatch.setattr(knn, "_MULT_BITS", 1)
    x = np.array([[1.0, 2.0], [2.0, 1.0], [1.0, 2.0], [2.0, 1.0], [3.0, 0.5], [0.5, 3.0]])
    np.testing.assert_array_equal(knn.representatives_by_hash(torch.from_numpy(x)).numpy(), [0, 1, 0, 1, 4, 5])
    y = np.array([0, 1, 1, 0, 1, 0])
    assert knn_loo(x, y) == ref.knn_loo(x, y)


def test_duplicates_of_float32_embeddings_are_tied_exactly() -> None:
    """Many copies among realistic rows: each copy is at distance exactly 0 and equidistant from
    every query, whatever the rounding of the Gram matrix; same result as the old unique-rows code."""
    x, y = _features(6, 200, 300, 4, 0.3, relu=True)
    x = np.concatenate([x, x[::3], x[1::7]])
    y = np.concatenate([y, (y[::3] + 1) % 4, y[1::7]])
    for k in (1, 3):
        assert knn_loo(x, y, k=k) == ref.knn_loo(x, y, k=k)
    assert knn_val(x, y, n_train=250) == ref.knn_val(x, y, n_train=250)
    scores = score_pool({"m": x}, y, ["knn_loo", "knn_val"], n_train=250)
    assert scores["knn_loo"]["m"] == ref.knn_loo(x, y) and scores["knn_val"]["m"] == ref.knn_val(x, y, n_train=250)


# -------------------------------------------------------------------------------- pool scoring


def _pool(members: int, n: int, d: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    _, y = _features(0, n, d, 5, 0.3)
    pool = {f"m{i}": _features(10 + i, n, d, 5, 0.1 + 0.1 * i, relu=i % 2 == 1)[0] for i in range(members)}
    return pool, y


@pytest.mark.parametrize("n, d", [(120, 200), (160, 40)])
def test_score_pool_equals_the_proxy_functions(n: int, d: int) -> None:
    pool, y = _pool(3, n, d)
    y = np.random.default_rng(1).integers(0, 5, n)
    scores = score_pool(pool, y, n_train=90)
    assert set(scores) == set(FEATURE_PROXIES)
    for name, per_member in scores.items():
        spec = PROXIES[name]
        for member, value in per_member.items():
            kwargs = {"n_train": 90} if spec.needs_split else {}
            assert value == pytest.approx(spec.fn(pool[member], y, **kwargs), rel=1e-12, abs=1e-15), (name, member)


def test_batched_members_equal_per_member() -> None:
    pool, y = _pool(5, 100, 150)
    y = np.random.default_rng(2).integers(0, 5, 100)
    proxies = [p for p in FEATURE_PROXIES if p != "linear_probe"]
    one = score_pool(pool, y, proxies, n_train=75, batch=1)
    batched = score_pool(pool, y, proxies, n_train=75, batch=3)  # batches of 3 and 2
    for p in proxies:
        for m in pool:
            assert batched[p][m] == pytest.approx(one[p][m], rel=1e-9, abs=1e-12), (p, m)
    stacked = torch.from_numpy(np.stack([pool[m] for m in pool]).astype(np.float64))
    for single, spec in zip([compute_spectrum(f) for f in stacked], spectra_batched(stacked)):
        np.testing.assert_allclose(spec.s2.numpy(), single.s2.numpy(), rtol=1e-9, atol=1e-9 * float(single.s2[0]))


def test_parallel_workers_equal_one_worker() -> None:
    pool, y = _pool(5, 120, 90)
    y = np.random.default_rng(4).integers(0, 5, 120)
    threads = torch.get_num_threads()
    seconds: dict[str, float] = {}
    parallel = score_pool(pool, y, n_train=90, workers=2, seconds=seconds)
    assert parallel == score_pool(pool, y, n_train=90)  # bit for bit: each member is scored alone either way
    assert list(parallel["logme"]) == list(pool)  # pool order kept
    assert torch.get_num_threads() == threads and {"spectrum", "validate", "logme"} <= set(seconds)
    with pytest.raises(ConfigError, match="workers"):
        score_pool(pool, y, workers=0)


def test_score_pool_reads_members_one_at_a_time() -> None:
    """A lazy mapping (features made on access) works: memory stays per member."""
    _, y = _pool(1, 80, 30)
    y = np.random.default_rng(3).integers(0, 5, 80)
    seen: list[str] = []

    class Lazy(dict):
        def __getitem__(self, key: str) -> np.ndarray:
            seen.append(key)
            return _features(int(key[1:]), 80, 30, 5, 0.3)[0]

    lazy = Lazy({f"m{i}": None for i in range(3)})
    scores = score_pool(lazy, y, ["logme", "knn_loo"])
    assert seen == ["m0", "m1", "m2"] and list(scores["logme"]) == ["m0", "m1", "m2"]


def test_score_pool_rejects_source_proxies_and_unknown_names() -> None:
    pool, y = _pool(1, 30, 5)
    with pytest.raises(ConfigError, match="upstream predictions"):
        score_pool(pool, y, ["leep"])
    with pytest.raises(ConfigError, match="unknown proxy"):
        score_pool(pool, y, ["lgome"])


# ------------------------------------------------------------------- the accelerator's checks

DEVICE_BAD_INPUTS = [
    (torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), [0, 1], "NaN or inf"),
    (torch.zeros(4), [0, 1, 0, 1], "2-D"),
    (torch.zeros((4, 2)), [0, 1, 0], "4 feature rows but 3 labels"),
    (torch.zeros((1, 2)), [0], "at least 2 samples"),
    (torch.zeros((4, 2)), [1, 1, 1, 1], "single class"),
    (torch.zeros((4, 2)), torch.tensor([0.5, 1, 0, 1]), "integers"),
    (torch.zeros((4, 2), dtype=torch.complex64), [0, 1, 0, 1], "numeric"),
]


@pytest.mark.parametrize("features, labels, message", DEVICE_BAD_INPUTS)
def test_device_validation_matches_the_numpy_checks(features, labels, message) -> None:
    """Tensors on an accelerator are checked in torch (no copy to the host) with the same errors;
    run here on CPU tensors, the same code."""
    from expertise.errors import DataError
    from expertise.select.validation import _validate_on_device

    with pytest.raises(DataError, match=message) as e:
        _validate_on_device(features, labels, "bit_s.expert_x")
    assert "bit_s.expert_x" in str(e.value)


def test_device_validation_returns_what_numpy_validation_does() -> None:
    from expertise.select.validation import _validate_on_device, validate_features

    x, y = _features(7, 30, 4, 3, 0.3)
    xt, yt = _validate_on_device(torch.from_numpy(x), y.astype(np.float64), "m")
    xn, yn = validate_features(x, y.astype(np.float64), "m")
    assert xt.dtype == torch.float64 and yt.dtype == torch.int64
    np.testing.assert_array_equal(xt.numpy(), xn)
    np.testing.assert_array_equal(yt.numpy(), yn)
