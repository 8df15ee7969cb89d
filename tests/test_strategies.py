"""Selection strategies on constructed pools whose right answer is known."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import entropy

from expertise.errors import ConfigError, DataError
from expertise.library import MemberInfo
from expertise.select.registry import READS, STRATEGIES, default_rows, get_strategy, register
from expertise.select.strategies import (
    Selection, domain_prediction, hybrid, label_matching, random_selection, task_agnostic,
    task_label_distribution,
)

torch.set_num_threads(1)


def info(name, acc, images=100, params=1000):
    return MemberInfo(name=name, kind="full_expert", parent=None, domain=None, upstream_images=images,
                      parameters=params, embedding_dim=8, upstream_accuracy=acc, preprocessing={})


def smooth(v, eps=1e-6):
    v = np.asarray(v, dtype=np.float64) + eps
    return v / v.sum()


def check_selection(sel: Selection, pool: set[str], budget: int) -> None:
    names = [n for n, _ in sel.ranking]
    assert sorted(names) == sorted(pool) and len(set(names)) == len(names)
    assert sel.picks == tuple(names[:budget]) and len(set(sel.picks)) == budget


def test_strategy_names():
    assert tuple(STRATEGIES) == ("random", "task_agnostic", "domain_prediction", "label_matching", "proxy", "hybrid")


def test_registry_declares_what_each_strategy_reads():
    reads = {n: set(s.reads) for n, s in STRATEGIES.items()}
    assert reads == {"random": {"seed"}, "task_agnostic": {"metadata"}, "domain_prediction": {"epn_predictions"},
                     "label_matching": {"baseline_predictions", "label_priors"}, "proxy": {"features"},
                     "hybrid": {"features", "metadata"}}
    assert all(s.reads <= READS for s in STRATEGIES.values())
    assert [n for n, s in STRATEGIES.items() if s.uses_proxy] == ["proxy", "hybrid"]
    labels = [r.label for r, _ in default_rows()]
    assert labels == ["knn_loo", "linear_probe", "logme", "leep", "label_matching", "domain_prediction",
                      "task_agnostic", "hybrid(knn_loo)", "random"]
    with pytest.raises(ConfigError, match="did you mean 'hybrid'"):
        get_strategy("hybird")
    with pytest.raises(ValueError, match="unknown inputs"):
        register("oracle", {"test_labels"}, "cheating", ())


def test_a_registered_strategy_is_one_entry_everywhere(monkeypatch):
    """Adding a strategy is one entry: it shows up in the CLI help, the demo and the benchmark rows."""
    import importlib

    import expertise.bench.runner as runner
    import expertise.demo as demo
    from expertise.select import registry
    from expertise.select.registry import Row

    monkeypatch.setattr(registry, "STRATEGIES", registry.STRATEGIES.copy())
    register("smallest", {"metadata"}, "fewest parameters first", (Row("smallest", 9),))(
        lambda i: task_agnostic([i.library.info(n) for n in i.pool], i.budget))
    assert "smallest" in importlib.reload(runner).parse_strategies(["smallest"])[0].label
    assert any(label == "smallest" for label, *_ in importlib.reload(demo).DEMO_STRATEGIES)
    import expertise.cli as cli

    assert "smallest" in cli._registry_help()[0]
    monkeypatch.undo()
    importlib.reload(runner)
    importlib.reload(demo)


# -- random -----------------------------------------------------------------------------------
def test_random_is_seeded_and_deterministic():
    names = [f"m{i}" for i in range(8)]
    a, b = random_selection(names, 3, seed=7), random_selection(names, 3, seed=7)
    assert a.ranking == b.ranking and a.picks == b.picks
    check_selection(a, set(names), 3)
    others = {random_selection(names, 3, seed=s).ranking for s in range(8)}
    assert len(others) > 1  # the seed matters
    assert [s for _, s in a.ranking] == sorted((s for _, s in a.ranking), reverse=True)


# -- task agnostic ----------------------------------------------------------------------------
def test_task_agnostic_order_and_tie_breaks():
    pool = [
        info("none", None, images=10**6),
        info("low", 0.5),
        info("tie_small", 0.8, images=100, params=10),
        info("tie_more_images", 0.8, images=200, params=1),
        info("tie_more_params", 0.8, images=100, params=20),
        info("tie_pool_order_b", 0.8, images=100, params=10),
        info("best", 0.9),
    ]
    sel = task_agnostic(pool, 2)
    assert [n for n, _ in sel.ranking] == [
        "best", "tie_more_images", "tie_more_params", "tie_small", "tie_pool_order_b", "low", "none"]
    assert sel.picks == ("best", "tie_more_images")
    assert sel.scores()["none"] == -1.0 and sel.scores()["best"] == 0.9
    check_selection(sel, {i.name for i in pool}, 2)


# -- label matching ---------------------------------------------------------------------------
def test_label_matching_picks_the_exact_prior_with_kl_zero():
    task = np.array([0.6, 0.3, 0.1, 0.0])
    priors = {"B": np.full(4, 0.25), "exact": task.copy(), "other": np.array([0.0, 0.1, 0.3, 0.6])}
    sel = label_matching(task, priors, budget=2)
    assert sel.best == "exact" and sel.scores()["exact"] == pytest.approx(0.0, abs=1e-12)
    check_selection(sel, set(priors), 2)
    for n, s in sel.ranking:  # score = -KL(p_task || q_expert) on the smoothed, normalised vectors
        assert s == pytest.approx(-entropy(smooth(task), smooth(priors[n])), rel=1e-9, abs=1e-12)


def test_label_matching_kl_direction_is_task_as_reference():
    task = np.array([0.5, 0.5, 0.0])
    priors = {"broad": np.array([1.0, 1.0, 1.0]) / 3, "narrow": np.array([0.9, 0.1, 0.0])}
    p = smooth(task)
    forward = {n: entropy(p, smooth(q)) for n, q in priors.items()}
    reverse = {n: entropy(smooth(q), p) for n, q in priors.items()}
    # The constructed case: the two directions disagree.
    assert min(forward, key=forward.get) == "broad" and min(reverse, key=reverse.get) == "narrow"
    sel = label_matching(task, priors)
    assert sel.best == "broad"
    assert sel.scores()["narrow"] == pytest.approx(-forward["narrow"], rel=1e-9)


def test_label_matching_scale_free_and_validates():
    task = np.array([2.0, 1.0, 0.0])  # multi-hot means need not sum to 1: only the shape matters
    assert label_matching(task, {"a": task / 3, "b": np.array([0.0, 1.0, 2.0])}).best == "a"
    with pytest.raises(DataError, match="label nodes"):
        label_matching(task, {"a": np.ones(4)})
    with pytest.raises(DataError, match="non-negative"):
        label_matching(task, {"a": np.array([1.0, -1.0, 0.0])})
    with pytest.raises(ConfigError, match="empty"):
        label_matching(task, {})
    with pytest.raises(ConfigError, match="budget"):
        label_matching(task, {"a": task}, budget=2)
    with pytest.raises(ConfigError, match="eps"):
        label_matching(task, {"a": task}, eps=0.0)


def test_task_label_distribution_is_the_mean_probability():
    probs = np.array([[0.2, 0.8], [0.4, 0.0]], dtype=np.float32)
    out = task_label_distribution(torch.from_numpy(probs))
    assert out.dtype == np.float64 and np.allclose(out, [0.3, 0.4])
    with pytest.raises(DataError, match="sigmoid"):
        task_label_distribution(np.array([[2.0, 0.1]]))
    with pytest.raises(DataError, match=r"\[N, L\]"):
        task_label_distribution(np.zeros(3))


# -- domain prediction ------------------------------------------------------------------------
def test_domain_prediction_uses_the_geometric_mean():
    # spiky: arithmetic mean 0.50005, geometric 0.01; steady: both 0.3.
    probs = np.array([[1.0, 0.3], [1e-4, 0.3]])
    assert probs.mean(0).argmax() == 0
    sel = domain_prediction(probs, ["spiky", "steady"], budget=1)
    assert sel.best == "steady" and sel.images == 2
    assert sel.scores()["steady"] == pytest.approx(math.log(0.3))
    assert sel.scores()["spiky"] == pytest.approx(0.5 * math.log(1e-4))
    # a zero probability is clipped at 1e-12, so the score stays finite
    assert math.isfinite(domain_prediction(np.array([[0.0, 1.0]]), ["a", "b"], 2).scores()["a"])


def test_domain_prediction_validates():
    with pytest.raises(DataError, match="columns"):
        domain_prediction(np.full((3, 2), 0.5), ["a", "b", "c"])
    with pytest.raises(DataError, match="sigmoid"):
        domain_prediction(np.full((3, 2), 1.5), ["a", "b"])
    with pytest.raises(ConfigError, match="budget"):
        domain_prediction(np.full((3, 2), 0.5), ["a", "b"], budget=0)
    with pytest.raises(ConfigError, match="more than once"):
        domain_prediction(np.full((3, 2), 0.5), ["a", "a"])
    with pytest.raises(ConfigError, match="empty"):
        domain_prediction(np.zeros((3, 0)), [])


# -- hybrid -----------------------------------------------------------------------------------
def sel_of(order, name):
    return Selection(name, tuple((n, float(len(order) - i)) for i, n in enumerate(order)), (order[0],),
                     {"score": 1.0}, images=5)


def test_hybrid_combines_without_repeats():
    agnostic = sel_of(["c", "a", "b", "d"], "task_agnostic")
    aware = sel_of(["a", "b", "c", "d"], "knn")
    one = hybrid(agnostic, aware, 1)
    assert one.picks == ("c",)
    three = hybrid(agnostic, aware, 3)
    assert three.picks == ("c", "a", "b")
    assert [n for n, _ in three.ranking] == ["c", "a", "b", "d"]
    assert three.scores() == aware.scores()
    assert set(three.seconds) >= {"agnostic.score", "aware.score"} and three.images == 5
    check_selection(three, set("abcd"), 3)


def test_hybrid_when_both_top1_agree_takes_the_aware_runner_up():
    agnostic = sel_of(["a", "d", "c", "b"], "task_agnostic")
    aware = sel_of(["a", "b", "c", "d"], "knn")
    assert hybrid(agnostic, aware, 2).picks == ("a", "b")
    assert hybrid(agnostic, aware, 4).picks == ("a", "b", "c", "d")


def test_hybrid_validates():
    aware = sel_of(["a", "b"], "knn")
    with pytest.raises(ConfigError, match="budget"):
        hybrid(sel_of(["a", "b"], "ta"), aware, 3)
    with pytest.raises(ConfigError, match="different pools"):
        hybrid(sel_of(["a", "x"], "ta"), aware, 1)


@pytest.mark.parametrize("budget", [0, 3, -1, True])
def test_budget_out_of_range_raises_everywhere(budget):
    with pytest.raises(ConfigError, match="budget"):
        random_selection(["a", "b"], budget, 0)
    with pytest.raises(ConfigError, match="budget"):
        task_agnostic([info("a", 0.1), info("b", 0.2)], budget)


def test_empty_pools_raise():
    with pytest.raises(ConfigError, match="empty"):
        random_selection([], 1, 0)
    with pytest.raises(ConfigError, match="empty"):
        task_agnostic([], 1)
