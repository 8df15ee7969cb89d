"""Selection scores with their uncertainty: the paired bootstrap over the task's images
(expertise/select/uncertainty.py), the per-image terms the proxies expose for it, and what
`run_selection`, its JSON and `expertise select` show."""

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from expertise.cli import app
from expertise.errors import ConfigError
from expertise.runtime import RunContext
from expertise.select.embed import EmbeddingCache
from expertise.select.proxies import knn_loo, knn_val, leep, linear_probe, nce_from_probs, ridge_loo
from expertise.select.run import ranking_table, run_selection
from expertise.select.scoring import score_pool
from expertise.select.source_proxies import leep_terms, nce_terms
from expertise.select.uncertainty import (
    NO_INTERVAL, RULES, PerImage, chance_level, paired_bootstrap, percentile_interval, resample_counts, resample_indices,
    resampled_scores,
)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


def _clusters(n: int, classes: int, d: int, seed: int, spread: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Well separated Gaussian clusters: a task any sensible member solves."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centres = rng.standard_normal((classes, d)) * 3.0
    return centres[y] + spread * rng.standard_normal((n, d)), y


def _bootstrap(features: dict, y: np.ndarray, proxy: str = "knn_loo", resamples: int = 1000, seed: int = 0):
    terms: dict = {}
    scores = score_pool(features, y, [proxy], n_train=len(y) * 4 // 5, per_image=terms)[proxy]
    return scores, terms.get(proxy, {}), paired_bootstrap(proxy, scores, terms.get(proxy, {}), y, resamples, seed)


def test_identical_members_are_tied_and_a_worse_one_is_not():
    x, y = _clusters(240, 4, 8, 0, spread=1.6)  # overlapping: knn_loo well below 1, so intervals are wide
    noisy = x + np.random.default_rng(1).standard_normal(x.shape) * 4.0
    scores, _, u = _bootstrap({"a": x, "twin": x.copy(), "noisy": noisy}, y)
    assert scores["a"] == scores["twin"] > scores["noisy"]
    assert u.best == "a"  # the earlier of equal scores
    assert u.members["twin"].tied_with_best and u.members["twin"].difference == (0.0, 0.0)
    assert not u.members["noisy"].tied_with_best and u.members["noisy"].difference[1] < 0
    assert u.tied == ["a", "twin"]
    assert u.too_small  # 2 of 3 tied with the best: more than half


def test_random_features_are_at_chance_and_a_good_member_is_not():
    x, y = _clusters(300, 3, 16, 2)
    rand = np.random.default_rng(3).standard_normal(x.shape)
    for proxy in ("knn_loo", "knn_val", "ridge_loo", "linear_probe"):
        scores, _, u = _bootstrap({"good": x, "random": rand}, y, proxy)
        assert scores["good"] > 0.9, proxy
        first = 240 if proxy in ("knn_val", "linear_probe") else 0  # the split proxies score the last fifth
        assert u.chance == pytest.approx(chance_level(y[first:])) and u.images == 300 - first
        assert u.members["random"].at_chance is True, (proxy, scores, u.members["random"])
        assert u.members["good"].at_chance is False, proxy
        assert not u.members["random"].tied_with_best and not u.too_small
        assert "at chance: random" in "\n".join(u.notes())


def test_chance_is_the_majority_class_rate():
    assert chance_level(np.array([0, 0, 0, 1, 2])) == pytest.approx(0.6)
    assert chance_level(np.array([0, 1, 2, 3])) == pytest.approx(0.25)  # balanced: 1 / classes
    n, y = 1000, np.arange(1000) % 4
    rng = np.random.default_rng(4)
    terms = {f"p{p}": PerImage((rng.random(n) < p).astype(float)[None], np.arange(n)) for p in (0.25, 0.3, 0.4)}
    u = paired_bootstrap("knn_loo", {k: t.score for k, t in terms.items()}, terms, y, 1000, 0)
    assert u.chance == 0.25
    assert [u.members[k].at_chance for k in terms] == [True, False, False]
    assert all(m.at_chance == (m.interval[0] <= 0.25) for m in u.members.values())


def test_intervals_contain_the_score_and_shrink_with_more_images():
    widths = {}
    for n in (100, 1000):
        rng = np.random.default_rng(n)
        terms = {f"m{i}": PerImage((rng.random(n) < p).astype(float)[None], np.arange(n))
                 for i, p in enumerate((0.55, 0.7, 0.85))}
        scores = {k: t.score for k, t in terms.items()}
        u = paired_bootstrap("knn_loo", scores, terms, rng.integers(0, 2, n), 1000, 0)
        for k, m in u.members.items():
            assert m.interval[0] <= scores[k] <= m.interval[1]
            assert m.interval[0] < m.interval[1]
        widths[n] = np.mean([m.interval[1] - m.interval[0] for m in u.members.values()])
    assert widths[1000] < 0.5 * widths[100]  # ~ 1 / sqrt(n): about a third


def test_resamples_are_paired_the_same_images_for_every_member():
    n = 200
    rng = np.random.default_rng(5)
    a = rng.standard_normal(n)
    terms = {"a": PerImage(a[None], np.arange(n)), "shifted": PerImage((a - 0.5)[None], np.arange(n)),
             "other": PerImage((rng.standard_normal(n) - 1.0)[None], np.arange(n))}
    scores = {k: t.score for k, t in terms.items()}
    u = paired_bootstrap("leep", scores, terms, np.zeros(n, dtype=int), 500, 7)
    assert u.best == "a"
    # Paired: on every resample `shifted` is exactly `a` - 0.5, so the difference's interval has no
    # width, while each score alone varies by far more (unpaired resamples would give a wide one).
    lo, hi = u.members["shifted"].difference
    assert lo == pytest.approx(-0.5, abs=1e-12) and hi == pytest.approx(-0.5, abs=1e-12)
    width = u.members["a"].interval[1] - u.members["a"].interval[0]
    assert width > 0.2
    other = u.members["other"].difference
    assert other[1] - other[0] > 0.2
    assert u.chance is None and u.members["a"].at_chance is None  # chance is for accuracy proxies
    # The resamples are the rows of resample_indices(n, 500, seed), the same for every member.
    idx = resample_indices(n, 500, 7)
    assert idx.shape == (500, n) and idx.min() >= 0 and idx.max() < n
    assert np.array_equal(idx, resample_indices(n, 500, 7)) and not np.array_equal(idx, resample_indices(n, 500, 8))
    for name, t in terms.items():
        assert percentile_interval(t.terms[0][idx].mean(axis=1)) == pytest.approx(u.members[name].interval, abs=1e-12)
        np.testing.assert_allclose(resampled_scores(t, resample_counts(idx, n)), t.terms[0][idx].mean(axis=1), atol=1e-12)
    counts = resample_counts(idx, n)
    assert (counts.sum(axis=1) == n).all() and counts[3, idx[3, 0]] >= 1


def test_members_scored_on_other_images_are_refused():
    t = np.ones((1, 4))
    with pytest.raises(ValueError, match="other images"):
        paired_bootstrap("knn_val", {"a": 1.0, "b": 1.0}, {"a": PerImage(t, np.arange(4)), "b": PerImage(t, np.arange(1, 5))},
                         np.zeros(5, dtype=int))
    with pytest.raises(ConfigError, match="resamples"):
        paired_bootstrap("knn_loo", {"a": 1.0}, {"a": PerImage(t, np.arange(4))}, np.zeros(4, dtype=int), -1)


def test_per_image_terms_give_the_proxies_scores_exactly():
    x, y = _clusters(150, 3, 6, 8, spread=2.0)
    features = {"a": x, "b": x[:, ::-1].copy() * 0.5}
    terms: dict = {}
    proxies = ["knn_loo", "knn_val", "ridge_loo", "linear_probe", "logme"]
    with_terms = score_pool(features, y, proxies, n_train=120, per_image=terms)
    assert with_terms == score_pool(features, y, proxies, n_train=120)
    reference = {"knn_loo": knn_loo, "ridge_loo": ridge_loo, "knn_val": lambda f, y: knn_val(f, y, n_train=120),
                 "linear_probe": lambda f, y: linear_probe(f, y, n_train=120)}
    for proxy, fn in reference.items():
        for name, f in features.items():
            t = terms[proxy][name]
            assert t.score == with_terms[proxy][name] == fn(f, y), (proxy, name)
            first = 120 if proxy in ("knn_val", "linear_probe") else 0
            assert np.array_equal(t.images, np.arange(first, 150))
    assert terms["ridge_loo"]["a"].terms.shape[0] == 7 and terms["linear_probe"]["a"].terms.shape[0] == 4
    assert "logme" not in terms  # not a mean of per-image terms


def test_leep_and_nce_terms_average_to_the_scores():
    rng = np.random.default_rng(9)
    probs = rng.dirichlet(np.ones(6), size=80)
    y = rng.integers(0, 3, 80)
    assert float(np.mean(leep_terms(probs, y))) == leep(probs, y)
    assert float(np.mean(nce_terms(probs, y))) == pytest.approx(nce_from_probs(probs, y), abs=1e-12)


def test_proxies_without_per_image_terms_say_why():
    u = paired_bootstrap("logme", {"a": 1.0}, {}, np.zeros(3, dtype=int))
    assert not u.available and u.reason == NO_INTERVAL["logme"] and not u.members
    assert u.to_json()["method"] is None and "per resample" in u.notes()[0]


# ------------------------------------------------------------------ on the tiny library, end to end


@pytest.fixture(scope="module")
def tiny(tiny_library, tmp_path_factory):
    cache = EmbeddingCache(tmp_path_factory.mktemp("uncertainty_cache"))
    return tiny_library.library, tiny_library.world.task("count"), cache


def test_run_selection_adds_the_bootstrap_without_changing_the_picks(tiny):
    lib, task, cache = tiny
    ctx = RunContext(progress=False, cache=cache)
    run = run_selection(lib, task, "proxy", 2, "knn_loo", ctx=ctx)
    plain = run_selection(lib, task, "proxy", 2, "knn_loo", ctx=ctx, resamples=0)
    assert plain.uncertainty is None and plain.to_json()["uncertainty"] is None
    assert run.selection.ranking == plain.selection.ranking and run.selection.picks == plain.selection.picks
    u = run.uncertainty
    assert u is not None and u.available and u.resamples == 1000 and u.images == len(task.trainval)
    assert u.best == run.selection.ranking[0][0] and set(u.members) == {n for n, _ in run.selection.ranking}
    again = run_selection(lib, task, "proxy", 2, "knn_loo", ctx=ctx)
    assert again.uncertainty.to_json() | {"seconds": 0} == u.to_json() | {"seconds": 0}  # seeded from the run's seed
    record = json.loads(json.dumps(run.to_json()))
    j = record["uncertainty"]
    assert j["resamples"] == 1000 and j["level"] == 0.95 and j["rules"] == RULES and j["best"] == u.best
    assert isinstance(j["too_small_to_separate"], bool) and 0 < j["chance"] <= 1
    for m in j["members"].values():
        assert len(m["interval"]) == 2 and isinstance(m["tied_with_best"], bool) and isinstance(m["at_chance"], bool)
    assert j["members"][u.best]["tied_with_best"] and j["members"][u.best]["difference_from_best"] == [0.0, 0.0]
    rows = ranking_table(run, lib)
    assert rows[0]["best"] and rows[0]["interval"] == tuple(j["members"][rows[0]["member"]]["interval"])
    assert run.seconds.keys() == plain.seconds.keys()  # the bootstrap's time is its own, not the selection's
    with pytest.raises(ConfigError, match="resamples"):
        run_selection(lib, task, "proxy", 1, "knn_loo", ctx=ctx, resamples=-5)


def test_run_selection_other_strategies_and_proxies(tiny):
    lib, task, cache = tiny
    ctx = RunContext(progress=False, cache=cache)
    assert run_selection(lib, task, "task_agnostic", 1, ctx=ctx).uncertainty is None  # reads no proxy
    hybrid = run_selection(lib, task, "hybrid", 2, "ridge_loo", ctx=ctx, resamples=200)
    assert hybrid.uncertainty.available and hybrid.uncertainty.resamples == 200
    aware = run_selection(lib, task, "proxy", 1, "ridge_loo", ctx=ctx, resamples=200)
    assert hybrid.uncertainty.best == aware.selection.best  # the best score, not the hybrid's first pick
    logme = run_selection(lib, task, "proxy", 1, "logme", ctx=ctx)
    assert not logme.uncertainty.available and logme.to_json()["uncertainty"]["reason"] == NO_INTERVAL["logme"]
    leep_run = run_selection(lib, task, "proxy", 1, "leep", ctx=ctx, resamples=100)
    scored = {n for n, s in leep_run.selection.ranking if math.isfinite(s)}
    assert set(leep_run.uncertainty.members) == scored and leep_run.uncertainty.chance is None


def test_cli_select_shows_the_interval_and_the_marks(tiny, tmp_path):
    lib, _, cache = tiny  # the module's cache: the members are embedded once for the whole file
    out = tmp_path / "sel"
    result = CliRunner().invoke(app, ["select", "--library", str(lib.path), "--task", "count",
                                      "--cache", str(cache.root), "--out", str(out), "--resamples", "300", "-q"])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "95% CI" in text and "≈best" in text and "best" in text
    assert "over 300 bootstrap resamples" in text and "the bootstrap" in text
    record = json.loads((out / "count.knn_loo.json").read_text())
    u = record["uncertainty"]
    assert u["resamples"] == 300 and u["method"].startswith("paired") and set(u["rules"]) == set(RULES)
    assert set(u["members"]) == {n for n, _ in record["ranking"]}
    assert (u["too_small_to_separate"] is True) == ("too small to separate" in text)
    assert any(m["at_chance"] for m in u["members"].values()) == ("at chance:" in text)
    off = CliRunner().invoke(app, ["select", "--library", str(lib.path), "--task", "count",
                                   "--cache", str(cache.root), "--out", str(out), "--resamples", "0", "-q"])
    assert off.exit_code == 0 and "95% CI" not in off.output
    assert json.loads((out / "count.knn_loo.json").read_text())["uncertainty"] is None
