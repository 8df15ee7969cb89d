"""Selection over a real (tiny) library, the suite's shared one (conftest.py): every strategy wired
to what it reads, checked against values recomputed here from the cached embeddings, the priors and
the EPN."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from expertise.cli import app
from expertise.errors import ConfigError, LibraryError
from expertise.runtime import RunContext
from expertise.upstream.build import build_library
from expertise.select.embed import EmbeddingCache, cache_key
from expertise.select.proxies import knn_loo, leep
from expertise.select.run import pool_names, ranking_table, run_selection, source_probabilities
from expertise.select.registry import STRATEGIES

@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def built(tiny_library):
    return tiny_library.library, tiny_library.world, tiny_library.names, tiny_library.world.task("count")


def test_epn_is_stored_with_its_nodes_and_kept_out_of_the_pool(built):
    lib, world, names, _ = built
    epns = [m for m in lib.members() if m.kind == "epn"]
    assert len(epns) == 1
    nodes = epns[0].extra["nodes"]
    assert nodes == [lib.info(n).domain for n in names if lib.info(n).kind == "full_expert"]
    assert nodes == [lib.info(n).domain for n in names if lib.info(n).kind == "adapter_expert"]
    assert 0.0 <= epns[0].extra["holdout_routing"]["node_accuracy"] <= 1.0
    assert pool_names(lib) == names and epns[0].name not in pool_names(lib)


def test_rebuilding_reuses_the_epn_and_refuses_other_epn_settings(tiny_library, tiny_library_copy):
    lib = tiny_library_copy
    before = {p: p.stat().st_mtime_ns for p in lib.path.rglob("*.safetensors")}
    build_library(tiny_library.preset, lib.path, RunContext(progress=False, log=lambda *a: None))
    assert before == {p: p.stat().st_mtime_ns for p in lib.path.rglob("*.safetensors")}
    _, _, upstream = build_library(tiny_library.preset, lib.path, RunContext(progress=False, log=lambda *a: None),
                                   upstream_only=True)  # 'expertise upstream': B and the EPN, no expert
    assert upstream == [tiny_library.names[0]] and before == {p: p.stat().st_mtime_ns for p in lib.path.rglob("*.safetensors")}
    other = tiny_library.preset_with(**{"epn.steps": "21"})
    with pytest.raises(LibraryError, match="EPN"):
        build_library(other, lib.path, RunContext(progress=False, log=lambda *a: None))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_ranks_the_whole_pool(built, strategy, tmp_path):
    lib, _, names, task = built
    run = run_selection(lib, task, strategy, 2, "knn_loo", ctx=RunContext(progress=False, cache=EmbeddingCache(tmp_path)))
    ranked = [n for n, _ in run.selection.ranking]
    assert sorted(ranked) == sorted(names)
    assert len(run.selection.picks) == 2 and len(set(run.selection.picks)) == 2
    assert list(run.selection.picks) == ranked[:2]
    record = json.loads(json.dumps(run.to_json(), allow_nan=False))  # plain JSON, no -Infinity
    assert record["task"] == "count" and record["seconds"]["total"] >= 0


def test_proxy_scores_equal_the_proxy_on_cached_features(built, tmp_path):
    lib, _, names, task = built
    cache = EmbeddingCache(tmp_path)
    run = run_selection(lib, task, "proxy", 1, "knn_loo", ctx=RunContext(progress=False, cache=cache))
    assert run.embed.images == len(names) * len(task.trainval)
    labels = task.trainval.labels.numpy()
    for n, score in run.selection.ranking:
        feats = cache.get(lib.member_hash(n), cache_key(task, lib.info(n).preprocessing), "trainval")["features"]
        assert score == pytest.approx(knn_loo(feats.numpy(), labels))
    again = run_selection(lib, task, "proxy", 1, "knn_loo", ctx=RunContext(progress=False, cache=cache))
    assert again.embed.images == 0 and again.embed.cached == len(names)
    assert again.selection.ranking == run.selection.ranking


def test_proxy_scoring_uses_a_worker_per_thread_with_the_same_scores(built, tmp_path, monkeypatch):
    """On the CPU the pool is scored one member per thread (``score_pool``'s workers): 2 threads give
    2 workers and the scores of 1 thread, with every bootstrap interval the same."""
    import expertise.select.registry as registry

    lib, _, names, task = built
    seen: list[int] = []
    real = registry.score_pool
    monkeypatch.setattr(registry, "score_pool", lambda *a, **k: seen.append(k["workers"]) or real(*a, **k))
    cache = EmbeddingCache(tmp_path)
    threads = torch.get_num_threads()
    runs = []
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            runs.append(run_selection(lib, task, "proxy", 1, "linear_probe", ctx=RunContext(progress=False, cache=cache)))
    finally:
        torch.set_num_threads(threads)
    assert seen == [1, 2]
    assert runs[0].selection.ranking == runs[1].selection.ranking
    assert runs[0].uncertainty is not None
    assert dataclasses.replace(runs[0].uncertainty, seconds=0.0) == dataclasses.replace(runs[1].uncertainty, seconds=0.0)


def test_leep_uses_the_softmax_over_leaf_logits(built, tmp_path):
    lib, _, names, task = built
    cache = EmbeddingCache(tmp_path)
    run = run_selection(lib, task, "proxy", 1, "leep", ctx=RunContext(progress=False, cache=cache))
    leaves = [lib.hierarchy.label_index[leaf] for leaf in lib.hierarchy.leaves]
    for n, score in run.selection.ranking:
        logits = cache.get(lib.member_hash(n), cache_key(task, lib.info(n).preprocessing), "trainval")["upstream_logits"].double()
        assert logits.shape[1] == len(lib.hierarchy.label_nodes)
        probs = torch.softmax(logits[:, leaves], 1).numpy()
        np.testing.assert_allclose(source_probabilities(lib, logits.float()), probs, rtol=1e-5, atol=1e-9)
        assert score == pytest.approx(leep(probs, task.trainval.labels.numpy()), rel=1e-5)


def test_label_matching_is_kl_from_the_baselines_predictions_to_each_prior(built, tmp_path):
    lib, _, names, task = built
    cache = EmbeddingCache(tmp_path)
    run = run_selection(lib, task, "label_matching", 1, ctx=RunContext(progress=False, cache=cache))
    assert run.members_embedded == [names[0]]  # only B looks at the task
    logits = cache.get(lib.member_hash(names[0]), cache_key(task, lib.info(names[0]).preprocessing), "trainval")["upstream_logits"].double()
    p = torch.sigmoid(logits).mean(0).numpy() + 1e-6
    p /= p.sum()
    for n, score in run.selection.ranking:
        q = lib.label_prior(n).numpy() + 1e-6
        q /= q.sum()
        assert score == pytest.approx(-float(np.sum(p * np.log(p / q))), rel=1e-9)


def test_domain_prediction_scores_experts_by_the_epn_and_puts_b_last(built, tmp_path):
    lib, _, names, task = built
    cache = EmbeddingCache(tmp_path)
    run = run_selection(lib, task, "domain_prediction", 3, ctx=RunContext(progress=False, cache=cache))
    epn = next(m for m in lib.members() if m.kind == "epn")
    assert run.members_embedded == [epn.name]
    probs = torch.sigmoid(cache.get(lib.member_hash(epn.name), cache_key(task, lib.info(epn.name).preprocessing), "trainval")["upstream_logits"].double())
    scores = run.selection.scores()
    for col, node in enumerate(epn.extra["nodes"]):
        members = [n for n in names if lib.info(n).domain == node]
        assert len(members) == 2  # the full and the adapter expert of the node score the same
        for member in members:
            assert scores[member] == pytest.approx(float(torch.log(probs[:, col].clamp_min(1e-12)).mean()))
    assert run.selection.ranking[-1] == (names[0], -math.inf)
    assert ranking_table(run, lib)[-1]["score"] is None


def test_hybrid_puts_the_task_agnostic_top1_first(built, tmp_path):
    lib, _, names, task = built
    agnostic = run_selection(lib, task, "task_agnostic", 1, ctx=RunContext(progress=False)).selection.best
    run = run_selection(lib, task, "hybrid", 3, "knn_loo", ctx=RunContext(progress=False, cache=EmbeddingCache(tmp_path)))
    aware = run_selection(lib, task, "proxy", len(names), "knn_loo", ctx=RunContext(progress=False, cache=EmbeddingCache(tmp_path)))
    assert run.selection.picks[0] == agnostic
    assert list(run.selection.picks[1:]) == [n for n in aware.selection.picks if n != agnostic][:2]
    assert run.label == "hybrid(knn_loo)"


def test_bad_requests_say_what_to_do(built):
    lib, _, names, task = built
    with pytest.raises(ConfigError, match="unknown strategy"):
        run_selection(lib, task, "oracle", 1, ctx=RunContext(progress=False))
    with pytest.raises(ConfigError, match="unknown proxy"):
        run_selection(lib, task, "proxy", 1, "knn_nope", ctx=RunContext(progress=False))
    with pytest.raises(ConfigError, match="budget"):
        run_selection(lib, task, "random", len(names) + 1, ctx=RunContext(progress=False))
    with pytest.raises(LibraryError, match="did you mean"):
        run_selection(lib, task, "random", 1, names=[names[0] + "x"], ctx=RunContext(progress=False))


def test_random_is_seeded_per_task(built):
    lib, world, names, task = built
    a = run_selection(lib, task, "random", len(names), ctx=RunContext(seed=3, progress=False)).selection.picks
    b = run_selection(lib, task, "random", len(names), ctx=RunContext(seed=3, progress=False)).selection.picks
    assert a == b


def test_cli_select_prints_saves_and_plots(tiny_library_copy, tmp_path):
    lib = tiny_library_copy  # the embedding cache goes to LIBRARY/cache by default
    out = tmp_path / "sel"
    result = CliRunner().invoke(app, ["select", "--library", str(lib.path), "--task", "count", "--strategy", "hybrid",
                                      "--proxy", "logme", "--budget", "2", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert "picked:" in result.output and "embed" in result.output and "score" in result.output
    record = json.loads((out / "count.hybrid-logme.json").read_text())
    assert record["strategy"] == "hybrid(logme)" and len(record["picks"]) == 2
    assert (out / "count.hybrid-logme.png").stat().st_size > 0
    bad = CliRunner().invoke(app, ["select", "--library", str(lib.path), "--task", "count", "--strategy", "best"])
    assert bad.exit_code == 2 and "unknown strategy" in bad.output and "Traceback" not in bad.output


def test_adapter_experts_embed_through_the_shared_stem_like_alone(built, tmp_path):
    lib, _, names, task = built
    adapters = [n for n in names if lib.info(n).kind == "adapter_expert"]
    assert len(adapters) == 3
    cache = EmbeddingCache(tmp_path)
    run = run_selection(lib, task, "proxy", 1, "knn_loo", ctx=RunContext(progress=False, cache=cache))
    assert run.embed.images == len(names) * len(task.trainval) and run.embed.cached == 0
    assert sorted(n for n, _ in run.selection.ranking) == sorted(names)  # a mixed pool: full and adapter experts
    from expertise.select.embed import embed_images

    for n in adapters:
        entry = cache.get(lib.member_hash(n), cache_key(task, lib.info(n).preprocessing), "trainval")
        alone, logits = embed_images(lib.load(n), task.trainval.images, with_logits=True)
        torch.testing.assert_close(entry["features"], alone, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(entry["upstream_logits"], logits, rtol=1e-4, atol=1e-4)


def test_rebuilding_with_other_adapter_settings_is_refused(tiny_library, tiny_library_copy):
    lib = tiny_library_copy
    other = tiny_library.preset_with(**{"adapter.steps": "7"})
    stored = next(lib.info(n).extra["train"]["steps"] for n in lib.names() if lib.info(n).kind == "adapter_expert")
    assert stored != 7  # the message names the stored value, which reuses the bank
    with pytest.raises(LibraryError, match=f"adapter experts .* other settings .to reuse them: --set adapter.steps={stored}."):
        build_library(other, lib.path, RunContext(progress=False, log=lambda *a: None))
