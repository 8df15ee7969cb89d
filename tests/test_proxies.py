"""Proxies against independent references: scikit-learn and brute-force Python loops."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits, load_iris
from sklearn.neighbors import KNeighborsClassifier

from expertise.errors import ConfigError, DataError, ExpertiseError
from expertise.select.proxies import knn_loo, validate_features


def _reference_knn_loo(x: list[list[float]], y: list[int], k: int, metric: str = "euclidean") -> float:
    """O(N^2) leave-one-out kNN with the documented tie rules, written independently: sort the
    other points by (distance, index); the majority label wins, a vote tie goes to the tied label
    seen first among the sorted neighbours."""

    def dist(a: list[float], b: list[float]) -> float:
        if metric == "euclidean":
            return sum((p - q) ** 2 for p, q in zip(a, b))
        na, nb = math.sqrt(sum(p * p for p in a)), math.sqrt(sum(q * q for q in b))
        return 1.0 - sum(p * q for p, q in zip(a, b)) / (na * nb)

    correct = 0
    for i in range(len(x)):
        ranked = sorted((dist(x[i], x[j]), j) for j in range(len(x)) if j != i)
        neighbour_labels = [y[j] for _, j in ranked[:k]]
        votes = Counter(neighbour_labels)
        best = max(votes.values())
        predicted = next(label for label in neighbour_labels if votes[label] == best)
        correct += predicted == y[i]
    return correct / len(x)


def _random_task(seed: int, n: int, d: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, d)) + y[:, None] * 0.7  # some class signal so accuracies vary
    return x, y


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("d", [1, 3, 16, 64])
def test_1nn_matches_sklearn_on_random_data(seed: int, d: int) -> None:
    x, y = _random_task(seed, 150, d, 4)
    want = KNeighborsClassifier(n_neighbors=1).fit(x, y).score(None, y)
    assert knn_loo(x, y) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_3nn_two_classes_matches_sklearn(seed: int) -> None:
    """With 2 classes and odd k there are no vote ties, so scikit-learn's rule agrees."""
    x, y = _random_task(seed, 120, 5, 2)
    want = KNeighborsClassifier(n_neighbors=3).fit(x, y).score(None, y)
    assert knn_loo(x, y, k=3) == pytest.approx(want, abs=1e-12)


def test_1nn_matches_sklearn_on_digits() -> None:
    x, y = load_digits(return_X_y=True)
    want = KNeighborsClassifier(n_neighbors=1).fit(x, y).score(None, y)
    got = knn_loo(x, y)
    assert got == pytest.approx(want, abs=1e-12)
    assert 0.98 < got < 1.0


def test_iris_raw_features_1nn_is_096() -> None:
    """Iris holds one exact duplicate pair (rows 101 and 142, same class); the result is the known 0.96."""
    x, y = load_iris(return_X_y=True)
    assert knn_loo(x, y) == 0.96
    assert isinstance(knn_loo(x, y), float)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_brute_force_with_duplicates_and_ties(k: int, seed: int) -> None:
    """Integer points on a 3x3 grid: many exact duplicates (with conflicting labels) and many
    equidistant neighbours, where only the tie rules decide."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, size=(40, 2))
    y = rng.integers(0, 3, size=40)
    assert len(np.unique(x, axis=0)) < len(x)  # duplicates present
    want = _reference_knn_loo(x.tolist(), y.tolist(), k)
    assert knn_loo(x, y, k=k) == want


@pytest.mark.parametrize("k", [1, 3])
def test_float_duplicates_are_tied_exactly(k: int) -> None:
    """Copies of real-valued rows carry other labels: copies must be exactly equidistant from
    every point (lowest index wins), whatever the rounding of the matrix product."""
    rng = np.random.default_rng(5)
    base = rng.normal(size=(30, 7)) * 10
    x = np.concatenate([base, base[:15], base[5:20]])
    y = rng.integers(0, 3, size=len(x))
    assert knn_loo(x, y, k=k) == _reference_knn_loo(x.tolist(), y.tolist(), k)


def test_duplicate_is_a_neighbour_only_self_is_masked() -> None:
    x = np.array([[0.0], [0.0], [5.0], [5.0]])
    assert knn_loo(x, np.array([0, 0, 1, 1])) == 1.0  # each point's twin classifies it
    assert knn_loo(x, np.array([0, 1, 0, 1])) == 0.0


def test_equidistant_neighbours_prefer_the_lowest_index() -> None:
    x = np.array([[0.0], [-1.0], [1.0]])
    # point 0 has neighbours 1 and 2 at distance 1 and takes index 1's label; points 1 and 2 take 0's
    assert knn_loo(x, np.array([0, 0, 1])) == pytest.approx(2 / 3)  # 1/3 if index 2 won
    assert knn_loo(x, np.array([0, 1, 0])) == pytest.approx(1 / 3)  # 2/3 if index 2 won


def test_vote_tie_goes_to_the_nearest_neighbours_label() -> None:
    # point 0's neighbours by distance: 1 (label 2), 2 (label 1), 3 (label 1), 4 (label 2)
    x = np.array([[0.0], [1.0], [2.0], [3.0], [4.0]])
    y = np.array([2, 2, 1, 1, 2])
    # k=4 for point 0: votes 2:2 (labels 2 and 1); nearest is label 2 -> correct
    ref = _reference_knn_loo(x.tolist(), y.tolist(), 4)
    assert knn_loo(x, y, k=4) == ref
    assert knn_loo(x, y, k=2) == _reference_knn_loo(x.tolist(), y.tolist(), 2)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_cosine_matches_brute_force(k: int, seed: int) -> None:
    x, y = _random_task(seed, 60, 6, 3)
    assert knn_loo(x, y, k=k, metric="cosine") == _reference_knn_loo(x.tolist(), y.tolist(), k, "cosine")


def test_cosine_ignores_scale() -> None:
    x, y = _random_task(3, 80, 5, 3)
    scales = np.random.default_rng(0).uniform(0.1, 10, size=(80, 1))
    assert knn_loo(x * scales, y, metric="cosine") == knn_loo(x, y, metric="cosine")


def test_accepts_torch_tensors_and_any_label_values() -> None:
    x, y = _random_task(0, 50, 4, 3)
    want = knn_loo(x, y)
    assert knn_loo(torch.from_numpy(x), torch.from_numpy(y)) == want
    assert knn_loo(x, y * 10 - 7) == want  # labels need not be 0..C-1
    assert knn_loo(x.astype(np.float32), y.astype(np.float64)) == knn_loo(x.astype(np.float32).astype(np.float64), y)
    assert isinstance(knn_loo(torch.from_numpy(x).to(torch.bfloat16), y), float)


def test_validate_features_returns_float64_and_int64() -> None:
    x, y = validate_features(np.ones((3, 2), dtype=np.float32), [0, 1, 1], "m")
    assert x.dtype == np.float64 and y.dtype == np.int64 and x.shape == (3, 2)


@pytest.mark.parametrize(
    "features, labels, kwargs, error, message",
    [
        (np.array([[0.0, np.nan], [1.0, 1.0]]), [0, 1], {}, DataError, "NaN or inf"),
        (np.array([[0.0, np.inf], [1.0, 1.0]]), [0, 1], {}, DataError, "NaN or inf"),
        (np.zeros(4), [0, 1, 0, 1], {}, DataError, "2-D"),
        (np.zeros((4, 2, 2)), [0, 1, 0, 1], {}, DataError, "2-D"),
        (np.zeros((4, 2)), [0, 1, 0], {}, DataError, "4 feature rows but 3 labels"),
        (np.zeros((1, 2)), [0], {}, DataError, "at least 2 samples"),
        (np.zeros((4, 2)), [1, 1, 1, 1], {}, DataError, "single class"),
        (np.zeros((4, 2)), [0.5, 1, 0, 1], {}, DataError, "integers"),
        (np.zeros((4, 2)), [[0, 1, 0, 1]], {}, DataError, "1-D"),
        (np.array([["a", "b"], ["c", "d"]]), [0, 1], {}, DataError, "numeric"),
        (np.random.rand(4, 2), [0, 1, 0, 1], {"k": 0}, ConfigError, "between 1 and N - 1 = 3"),
        (np.random.rand(4, 2), [0, 1, 0, 1], {"k": 4}, ConfigError, "between 1 and N - 1 = 3"),
        (np.random.rand(4, 2), [0, 1, 0, 1], {"k": True}, ConfigError, "integer"),
        (np.random.rand(4, 2), [0, 1, 0, 1], {"k": 1.0}, ConfigError, "integer"),
        (np.random.rand(4, 2), [0, 1, 0, 1], {"metric": "manhattan"}, ConfigError, "metric"),
    ],
)
def test_validation_errors_name_the_member(features, labels, kwargs, error, message) -> None:
    with pytest.raises(error, match=message) as e:
        knn_loo(features, labels, name="bit_s.expert_animal", **kwargs)
    assert "bit_s.expert_animal" in str(e.value)
    assert isinstance(e.value, ExpertiseError)


def test_large_inputs_are_processed_in_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    import expertise.select.proxies as proxies

    x, y = _random_task(4, 90, 3, 3)
    want = knn_loo(x, y, k=3)
    monkeypatch.setattr(proxies, "_BLOCK_ELEMENTS", 90 * 7)  # 7 rows per block, last block ragged
    assert knn_loo(x, y, k=3) == want
    assert knn_loo(x, y) == KNeighborsClassifier(n_neighbors=1).fit(x, y).score(None, y)
