"""Regret, relative delta, budget curves, zero-regret fractions and bootstrap summaries
(expertise.bench.metrics; paper 002 eq. 1-2 and Figure 7, paper 000 Tables 1-2)."""

import numpy as np
import pytest

from expertise.bench.metrics import (
    CI,
    bootstrap_ci,
    budget_curve,
    group_means,
    oracle_accuracy,
    regret,
    regret_curve,
    relative_delta,
    relative_regret,
    zero_regret_fraction,
)
from expertise.errors import ConfigError, DataError


def test_regret_and_relative_regret_hand_computed():
    assert regret(0.8, 0.9) == pytest.approx(0.1)
    # r(m) = (ORACLE - s) / (1 - min(ORACLE, s)) = 0.1 / 0.2
    assert relative_regret(0.8, 0.9) == pytest.approx(0.5)
    assert relative_regret(0.9, 0.9) == 0.0
    assert relative_regret(1.0, 1.0) == 0.0
    assert relative_regret(0.0, 0.5) == pytest.approx(0.5)
    # a strategy above the oracle estimate: negative, divided by the oracle's error
    assert relative_regret(0.95, 0.9) == pytest.approx(-0.5)
    assert isinstance(relative_regret(0.8, 0.9), float)


def test_relative_delta_eq2_is_antisymmetric_and_bounded():
    assert relative_delta(0.9, 0.8) == pytest.approx(0.5)
    assert relative_delta(0.8, 0.9) == pytest.approx(-0.5)
    assert relative_delta(0.5, 0.25) == pytest.approx(0.25 / 0.75)
    assert relative_delta(1.0, 0.0) == 1.0 and relative_delta(0.0, 1.0) == -1.0
    a = np.array([0.1, 0.5, 0.99, 1.0])
    b = np.array([0.2, 0.5, 0.5, 0.3])
    d = relative_delta(a, b)
    assert d.dtype == np.float64 and d.shape == (4,)
    np.testing.assert_allclose(d, -relative_delta(b, a))
    assert np.all(np.abs(d) <= 1)


def test_accuracies_must_be_fractions():
    with pytest.raises(DataError, match="fractions"):
        relative_regret(80.0, 90.0)
    with pytest.raises(DataError, match="finite"):
        regret(float("nan"), 0.9)


def test_budget_curve_and_regret_curve():
    acc = {"a": 0.7, "b": 0.9, "c": 0.8, "d": 0.6}
    np.testing.assert_allclose(budget_curve(["a", "b", "c"], acc), [0.7, 0.9, 0.9])
    np.testing.assert_allclose(budget_curve([("c", 3.0), ("a", 2.0), ("b", 1.0)], acc, [1, 3]), [0.8, 0.9])
    np.testing.assert_allclose(budget_curve(["d", "c"], acc, 2), [0.8])
    # oracle over every member with an accuracy: 0.9
    np.testing.assert_allclose(regret_curve(["a", "c", "b"], acc), [0.2 / 0.3, 0.1 / 0.2, 0.0])
    np.testing.assert_allclose(regret_curve(["a", "c", "b"], acc, relative=False), [0.2, 0.1, 0.0])
    assert oracle_accuracy(acc) == 0.9 and oracle_accuracy(acc, ["a", "d"]) == 0.7
    with pytest.raises(ConfigError, match="budget"):
        budget_curve(["a", "b"], acc, [3])
    with pytest.raises(ConfigError, match="distinct"):
        budget_curve(["a", "a"], acc)
    with pytest.raises(DataError, match="no fine-tuned accuracy"):
        budget_curve(["a", "zz"], acc)
    with pytest.raises(DataError, match="no fine-tuned accuracy"):
        oracle_accuracy(acc, ["zz"])


def test_zero_regret_fraction_figure7():
    per_task = {"t1": [0.1, 0.0, 0.0], "t2": [0.0, 0.0, 0.0], "t3": [0.2, 0.1, 0.0]}
    np.testing.assert_allclose(zero_regret_fraction(per_task), [1 / 3, 2 / 3, 1.0])
    np.testing.assert_allclose(zero_regret_fraction(per_task, [3, 1]), [1.0, 1 / 3])
    np.testing.assert_allclose(zero_regret_fraction(np.array([[0.0, 0.0], [0.3, 0.0]])), [0.5, 1.0])
    with pytest.raises(ConfigError):
        zero_regret_fraction(per_task, [4])
    with pytest.raises(DataError):
        zero_regret_fraction({})


def test_bootstrap_ci_on_normal_samples():
    rng = np.random.default_rng(123)
    sigma, n = 2.0, 400
    x = rng.normal(5.0, sigma, size=n)
    ci = bootstrap_ci(x, seed=7)
    assert isinstance(ci, CI)
    mean, lo, hi = ci
    assert mean == pytest.approx(x.mean())
    assert lo < 5.0 < hi
    expected = 2 * 1.96 * sigma / np.sqrt(n)
    assert (hi - lo) == pytest.approx(expected, rel=0.12)
    assert bootstrap_ci(x, seed=7) == ci  # deterministic under seed
    assert bootstrap_ci(x, seed=8) != ci
    # a narrower level gives a narrower interval
    lo90, hi90 = bootstrap_ci(x, level=0.9, seed=7)[1:]
    assert lo < lo90 < hi90 < hi


def test_bootstrap_ci_coverage_close_to_nominal():
    rng = np.random.default_rng(0)
    hits = 0
    reps = 200
    for r in range(reps):
        x = rng.normal(0.0, 1.0, size=40)
        _, lo, hi = bootstrap_ci(x, n_resamples=1000, seed=r)
        hits += lo <= 0.0 <= hi
    assert 0.88 <= hits / reps <= 0.99


def test_bootstrap_ci_other_statistics_and_errors():
    x = np.arange(11, dtype=np.float64)
    med = bootstrap_ci(x, stat=np.median, n_resamples=500, seed=1)
    assert med.estimate == 5.0 and med.lo <= 5.0 <= med.hi
    # a statistic without axis= falls back to a loop and agrees with the vectorised one
    loop = bootstrap_ci(x, stat=lambda v: float(np.mean(v)), n_resamples=300, seed=1)
    vec = bootstrap_ci(x, stat=np.mean, n_resamples=300, seed=1)
    assert loop == pytest.approx(vec)
    assert bootstrap_ci([0.7], n_resamples=50) == (0.7, 0.7, 0.7)
    with pytest.raises(DataError):
        bootstrap_ci([])
    with pytest.raises(DataError):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ConfigError):
        bootstrap_ci(x, level=95)
    with pytest.raises(ConfigError):
        bootstrap_ci(x, n_resamples=0)


GROUPS = {"a": "natural", "b": "natural", "c": "specialized", "d": "structured"}


def test_group_means_all_is_mean_over_tasks():
    per_task = {"a": 0.8, "b": 0.6, "c": 0.9, "d": 0.3}
    out = group_means(per_task, GROUPS, n_resamples=2000, seed=0)
    assert set(out) == {"natural", "specialized", "structured", "all"}
    assert out["natural"].estimate == pytest.approx(0.7)
    assert out["specialized"] == (0.9, 0.9, 0.9)
    assert out["all"].estimate == pytest.approx(0.65)  # not the mean of group means (0.633)
    assert out["all"].lo <= 0.65 <= out["all"].hi
    assert group_means(dict(reversed(per_task.items())), GROUPS, n_resamples=2000, seed=0) == out
    only_natural = group_means({"a": 0.8}, GROUPS, n_resamples=100)
    assert np.isnan(only_natural["structured"].estimate)


def test_group_means_resamples_runs_with_median_per_task():
    rng = np.random.default_rng(1)
    runs = {t: list(rng.uniform(0.5, 0.9, size=30)) for t in GROUPS}
    out = group_means(runs, GROUPS, n_resamples=1000, seed=3)
    medians = {t: np.median(v) for t, v in runs.items()}
    assert out["all"].estimate == pytest.approx(np.mean(list(medians.values())))
    assert out["natural"].estimate == pytest.approx((medians["a"] + medians["b"]) / 2)
    for key in ("natural", "all"):
        assert out[key].lo < out[key].estimate < out[key].hi
    by_tasks = group_means(runs, GROUPS, n_resamples=1000, seed=3, resample="tasks")
    assert by_tasks["all"].estimate == pytest.approx(out["all"].estimate)


def test_group_means_errors():
    with pytest.raises(DataError, match="no group"):
        group_means({"zz": 0.5}, GROUPS)
    with pytest.raises(DataError, match="unknown task groups"):
        group_means({"a": 0.5}, {"a": "weird"})
    with pytest.raises(DataError):
        group_means({}, GROUPS)
    with pytest.raises(ConfigError, match="resample"):
        group_means({"a": 0.5}, GROUPS, resample="bogus")
