"""Domain adaptive transfer: importance weights, the two samplers, the Table 6 weightings and a tiny
end-to-end run."""

import json

import numpy as np
import pytest
import torch

from expertise.runtime import RunContext
from expertise.dat import (
    DATConfig,
    DATResult,
    dat_record,
    elastic_allocation,
    elastic_sample,
    importance_weights,
    leaf_logits,
    run_dat,
    same_distribution_sample,
    sampled_label_distribution,
    selected_labels,
    source_label_distribution,
    target_label_distribution,
    unique_examples,
    weights_for,
)
from expertise.data.world import World, WorldConfig
from expertise.errors import ConfigError, DataError
from expertise.models.backbones import BACKBONES, ExpertModel
from expertise.train import TrainConfig

# A label shift: source frequencies p_s and a target that prefers the rarer labels.
P_S = np.array([0.4, 0.3, 0.2, 0.1, 0.0])
P_T = np.array([0.1, 0.2, 0.3, 0.4, 0.0])


def _examples(counts) -> np.ndarray:
    """Example labels, label y repeated counts[y] times, shuffled deterministically."""
    labels = np.repeat(np.arange(len(counts)), counts)
    return np.random.default_rng(123).permutation(labels)


def _binomial_band(q: np.ndarray, n: int) -> np.ndarray:
    """4 binomial standard deviations of a share estimated from n draws: a label's count is
    Binomial(n, q), so a correct sampler lands outside this band with probability ~6e-5 per label
    (under 1e-3 over the handful of labels here); any real bias of the size we test for is far larger."""
    return 4 * np.sqrt(q * (1 - q) / n) + 1e-12


# -- importance weights -------------------------------------------------------------------------

def test_tempered_softmax_recovers_a_known_distribution():
    T = 2.0
    rows = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    logits = T * np.log(rows) + np.array([[5.0], [-3.0]])  # a per-row shift leaves the softmax unchanged
    np.testing.assert_allclose(target_label_distribution(logits, T), rows.mean(0), rtol=1e-12)
    # a higher temperature flattens: at T=2, logits log(p) give p_t proportional to sqrt(p)
    single = np.log(rows[:1])
    np.testing.assert_allclose(target_label_distribution(torch.tensor(single), 2.0),
                               np.sqrt(rows[0]) / np.sqrt(rows[0]).sum(), rtol=1e-12)
    big = target_label_distribution(np.array([[1e4, 0.0, -1e4]]), 1.0)  # no overflow
    assert big.dtype == np.float64 and np.isfinite(big).all() and abs(big.sum() - 1) < 1e-12


def test_importance_weights_recover_the_true_ratio():
    p_s, p_t = P_S[:4], P_T[:4]
    w = importance_weights(p_t, p_s)
    assert w.dtype == np.float64
    np.testing.assert_allclose(w, [0.25, 2 / 3, 1.5, 4.0], rtol=1e-12)
    np.testing.assert_allclose(p_s * w, p_t, rtol=1e-12)  # re-weighted source = target
    # end to end: p_s from leaf counts, p_t from logits built so the tempered softmax gives P_T
    counts = (P_S[:4] * 1000).astype(int)
    ps = np.bincount(_examples(counts), minlength=4) / counts.sum()
    pt = target_label_distribution(2.0 * np.log(np.tile(p_t, (7, 1))), 2.0)
    np.testing.assert_allclose(importance_weights(pt, ps), w, rtol=1e-9)


def test_importance_weight_validation():
    with pytest.raises(DataError, match="no\\s+source example|p_s = 0"):
        importance_weights(np.array([0.5, 0.5]), np.array([1.0, 0.0]))
    w = importance_weights(np.array([0.5, 0.5]), np.array([1.0, 0.0]), missing="drop")
    np.testing.assert_array_equal(w, [0.5, 0.0])
    np.testing.assert_array_equal(importance_weights(P_T, P_S)[-1], 0.0)  # 0/0: weight 0
    for bad_pt, bad_ps, msg in [
        (np.array([1.2, -0.2]), np.array([0.5, 0.5]), "negative"),
        (np.array([np.nan, 1.0]), np.array([0.5, 0.5]), "NaN"),
        (np.array([0.5, 0.6]), np.array([0.5, 0.5]), "sums to"),
        (np.array([0.5, 0.5]), np.array([1.0]), "same labels"),
        (np.array([]), np.array([]), "empty"),
    ]:
        with pytest.raises(DataError, match=msg):
            importance_weights(bad_pt, bad_ps)
    with pytest.raises(ConfigError, match="temperature"):
        target_label_distribution(np.zeros((2, 3)), 0.0)
    with pytest.raises(DataError, match="shape"):
        target_label_distribution(np.zeros((0, 3)))
    with pytest.raises(DataError, match="NaN"):
        target_label_distribution(np.array([[0.0, np.inf]]))


# -- samplers -------------------------------------------------------------------------------------

def test_same_distribution_matcher_hits_the_target_shares():
    counts = np.array([4000, 3000, 2000, 1000, 500])
    labels = _examples(counts)
    ps = counts / counts.sum()
    pt = np.array([0.1, 0.2, 0.3, 0.4, 0.0])
    w = importance_weights(pt, ps)
    n = 20_000
    idx = same_distribution_sample(labels, w, n, seed=0)
    assert idx.dtype == np.int64 and idx.size == n and idx.min() >= 0 and idx.max() < labels.size
    shares = sampled_label_distribution(idx, labels, 5)
    assert np.all(np.abs(shares - pt) <= _binomial_band(pt, n)), (shares, pt)
    assert shares[4] == 0  # weight 0 is never drawn
    assert unique_examples(idx) < n  # with replacement, label 3 (1000 examples, 8000 draws) repeats
    np.testing.assert_array_equal(idx, same_distribution_sample(labels, w, n, seed=0))
    assert not np.array_equal(idx, same_distribution_sample(labels, w, n, seed=1))


def test_elastic_allocation_by_hand():
    # mass c*w = 30, 20, 10. n=24: label 0 wants 24*30/60 = 12 >= 10 -> all 10; 14 left over labels 1, 2
    # which want 14*20/30 = 9.33 < 10 and 4.67 -> 9 + 5 by largest remainder.
    counts, w = np.array([10, 10, 10]), np.array([3.0, 2.0, 1.0])
    np.testing.assert_array_equal(elastic_allocation(counts, w, 24), [10, 9, 5])
    np.testing.assert_array_equal(elastic_allocation(counts, w, 6), [3, 2, 1])  # nothing saturates
    np.testing.assert_array_equal(elastic_allocation(counts, w, 30), [10, 10, 10])
    np.testing.assert_array_equal(elastic_allocation(counts, np.array([1.0, 0.0, 2.0]), 20), [10, 0, 10])


def test_elastic_matcher_never_repeats_and_exhausts_the_top_labels_first():
    counts = np.array([400, 300, 200, 100, 50, 30])
    labels = _examples(counts)
    w = np.array([0.5, 1.0, 2.0, 4.0, 0.0, 3.0])  # order by weight: 3, 5, 2, 1, 0; label 4 excluded
    order = [3, 5, 2, 1, 0]
    for size in (50, 300, 700, 1030):
        idx = elastic_sample(labels, w, size, seed=0)
        assert idx.size == size and unique_examples(idx) == size  # no repeats
        taken = np.bincount(labels[idx], minlength=6)
        assert taken[4] == 0 and np.all(taken <= counts)
        full = [bool(taken[y] == counts[y]) for y in order]
        assert full == sorted(full, reverse=True), (size, taken)  # saturated labels: a prefix by weight
    # small size: no label saturates, so the counts are the same-distribution target up to rounding
    idx = elastic_sample(labels, w, 100, seed=0)
    aim = counts * w / (counts * w).sum() * 100
    assert np.all(np.abs(np.bincount(labels[idx], minlength=6) - aim) < 1.0)
    # large size: the top labels are exhausted and the rest take their excess
    taken = np.bincount(labels[elastic_sample(labels, w, 700, seed=0)], minlength=6)
    assert taken[3] == 100 and taken[5] == 30 and taken[2] == 200
    np.testing.assert_array_equal(elastic_sample(labels, w, 300, seed=4), elastic_sample(labels, w, 300, seed=4))
    assert not np.array_equal(elastic_sample(labels, w, 300, seed=4), elastic_sample(labels, w, 300, seed=5))


def test_sampler_validation():
    labels = _examples([5, 5])
    for fn in (same_distribution_sample, elastic_sample):
        with pytest.raises(DataError, match="negative"):
            fn(labels, np.array([1.0, -1.0]), 3, 0)
        with pytest.raises(DataError, match="NaN"):
            fn(labels, np.array([1.0, np.nan]), 3, 0)
        with pytest.raises(DataError, match="weight 0"):
            fn(labels, np.array([0.0, 0.0]), 3, 0)
        with pytest.raises(DataError, match="lie in"):
            fn(np.array([0, 2]), np.array([1.0, 1.0]), 3, 0)
        with pytest.raises(ConfigError, match="positive integer"):
            fn(labels, np.array([1.0, 1.0]), 0, 0)
    with pytest.raises(DataError, match="exceeds the 5 upstream examples"):
        elastic_sample(labels, np.array([1.0, 0.0]), 6, 0)
    assert same_distribution_sample(labels, np.array([1.0, 0.0]), 60, 0).size == 60  # with replacement: fine


# -- Table 6 weightings ---------------------------------------------------------------------------

def test_weightings_are_distributions_over_the_selected_labels():
    ps = np.array([0.4, 0.3, 0.2, 0.05, 0.05, 0.0])
    pt = np.array([0.05, 0.15, 0.3, 0.5, 0.0, 0.0])
    sel = selected_labels(pt, ps)
    np.testing.assert_array_equal(sel, [3, 2, 1, 0])  # ranked by target mass; zero p_t or p_s excluded
    np.testing.assert_array_equal(selected_labels(pt, ps, top_labels=2), [3, 2])

    adaptive = weights_for("adaptive", pt, ps)
    np.testing.assert_allclose(adaptive, importance_weights(pt, ps), rtol=1e-12)
    q = {m: ps * weights_for(m, pt, ps) for m in ("adaptive", "uniform", "reversed")}
    for m, qm in q.items():
        assert abs(qm.sum() - 1) < 1e-12 and np.all(qm[[4, 5]] == 0), m
    np.testing.assert_allclose(q["uniform"][sel], 0.25)
    # reversed: the label with the most target mass gets the least, and so on
    np.testing.assert_allclose(q["reversed"][[3, 2, 1, 0]], [0.05, 0.15, 0.3, 0.5])
    np.testing.assert_allclose(np.sort(q["reversed"]), np.sort(q["adaptive"]))

    top2 = {m: ps * weights_for(m, pt, ps, top_labels=2) for m in ("adaptive", "uniform", "reversed")}
    np.testing.assert_allclose(top2["adaptive"][[3, 2]], [0.625, 0.375])
    np.testing.assert_allclose(top2["uniform"][[3, 2]], [0.5, 0.5])
    np.testing.assert_allclose(top2["reversed"][[3, 2]], [0.375, 0.625])
    for m in top2:
        assert np.count_nonzero(top2[m]) == 2

    # the same-distribution matcher reproduces each scheme's distribution
    labels = _examples((ps[:5] * 10_000).astype(int))
    n = 20_000
    for m in ("uniform", "reversed"):
        shares = sampled_label_distribution(same_distribution_sample(labels, weights_for(m, pt, ps)[:5], n, 0),
                                            labels, 5)
        assert np.all(np.abs(shares - q[m][:5]) <= _binomial_band(q[m][:5], n)), (m, shares)
    with pytest.raises(ConfigError, match="unknown weighting"):
        weights_for("inverse", pt, ps)
    with pytest.raises(ConfigError, match="top_labels"):
        weights_for("uniform", pt, ps, top_labels=0)


# -- end to end -----------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread (after conftest's two): the tiny models gain nothing from more, and on a
    shared two-core machine a second spinning thread only slows the run down."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- end to end (tiny world) -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    world = World(WorldConfig(seed=0, resolution=16, upstream_size=600, holdout_size=100, test_size=50))
    train = world.upstream("train").materialize()
    torch.manual_seed(0)
    baseline = ExpertModel(BACKBONES["bit_xs"], num_outputs=len(train.hierarchy.label_nodes))
    return world, train, baseline


def _run(tiny, **kw):
    world, train, baseline = tiny
    cfg = TrainConfig(steps=2, batch_size=16, lr=0.01, decay_at=())
    settings = DATConfig(**{"size": 200, **kw})
    return run_dat(baseline, train, world.task("shape_unseen"), settings, cfg, cfg, RunContext(seed=3, progress=False))


def test_run_dat_end_to_end_accounting_and_determinism(tiny):
    world, train, baseline = tiny
    r = _run(tiny)
    assert isinstance(r, DATResult) and 0.0 <= r.test_accuracy <= 1.0 and np.isfinite(r.test_accuracy)
    assert r.sampled_size == 200 and r.unique_examples == 200  # elastic: no repeats
    assert r.images == {"weights": 1000, "sample": 200, "pretrain": 32, "finetune": 32}
    assert set(r.seconds) == {"weights", "sample", "pretrain", "finetune"} and all(v >= 0 for v in r.seconds.values())
    ps = source_label_distribution(train)
    assert r.labels_selected == int((ps > 0).sum()) and r.labels_sampled <= r.labels_selected
    assert np.all(r.label_weights[ps == 0] == 0)
    s = r.label_summary
    assert set(s["domains"]) == {"glyph", "shape", "texture"}
    assert abs(sum(d["sampled"] for d in s["domains"].values()) - 1) < 1e-9
    assert abs(sum(d["target"] for d in s["domains"].values()) - 1) < 1e-9
    assert 0 <= s["tv_to_aim"] <= 1 and 0 <= s["tv_to_target"] <= 1
    counts = np.bincount(train.leaf_ids, minlength=len(ps))
    np.testing.assert_array_equal(np.bincount(train.leaf_ids[r.indices], minlength=len(ps)),
                                  elastic_allocation(counts, r.label_weights, 200))
    json.dumps(r.to_json())
    rec = dat_record(r, {"preset": "tiny"})
    assert rec["kind"] == "dat" and rec["config"]["sampler"] == "elastic" and rec["config"]["preset"] == "tiny"
    assert rec["images"]["sample"] == 200 and set(rec["seconds"]) == set(r.seconds)

    again = _run(tiny)
    assert again.test_accuracy == r.test_accuracy and again.pretrain["final_loss"] == r.pretrain["final_loss"]
    np.testing.assert_array_equal(again.label_weights, r.label_weights)

    # the weights really come from B on the target images
    logits = leaf_logits(baseline, train.hierarchy, world.task("shape_unseen").trainval.images)
    pt = np.zeros_like(ps)
    pt[ps > 0] = target_label_distribution(logits.double().numpy()[:, ps > 0], 2.0)
    np.testing.assert_allclose(r.label_weights, importance_weights(pt, ps), rtol=1e-9)


def test_run_dat_variants_and_errors(tiny):
    world, train, baseline = tiny
    r = _run(tiny, sampler="same", init="baseline", weighting="uniform", top_labels=10, size=300)
    assert np.isfinite(r.test_accuracy) and r.sampled_size == 300 and r.unique_examples <= 300
    assert r.labels_selected == 10 and r.labels_sampled <= 10
    assert r.config["init"] == "baseline" and r.config["weighting"] == "uniform"
    with pytest.raises(DataError, match="exceeds"):
        _run(tiny, size=601)
    with pytest.raises(ConfigError, match="sampler"):
        _run(tiny, sampler="greedy")
    with pytest.raises(ConfigError, match="backbone must be B's"):
        _run(tiny, init="baseline", backbone="bit_s")
    wrong = ExpertModel(BACKBONES["bit_xs"], num_outputs=5)
    with pytest.raises(ConfigError, match="label nodes"):
        run_dat(wrong, train, world.task("shape_unseen"), DATConfig(size=10), TrainConfig(1, 4, 0.01),
                TrainConfig(1, 4, 0.01), RunContext(progress=False))
