"""Successive halving (`select --search halving`) against full scoring, on a pool of 12 members with
a clear winner: 11 of our randomly initialised ResNet-v2 members (GroupNorm: nearly blind to the
brightness that decides the task's labels) and one timm test_resnet (BatchNorm in eval mode: sees it)."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
from typer.testing import CliRunner

from expertise.cli import app
from expertise.data.tasks import Split, Task
from expertise.library import Library, MemberInfo
from expertise.models.backbones import BACKBONES, ExpertModel
from expertise.models.external import from_checkpoint
from expertise.pool import add_external
from expertise.runtime import RunContext
from expertise.select.embed import EmbeddingCache
from expertise.select.halving import sample_sizes
from expertise.select.run import run_selection

runner = CliRunner()


def _images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes of 16-px gray noise, one brighter by 40 levels: uint8 [n, 3, 16, 16], labels [n]."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    noise = torch.rand((n, 1, 16, 16), generator=g).expand(n, 3, 16, 16) * 255 * 0.6
    return (noise + 40 * labels.view(-1, 1, 1, 1)).clamp(0, 255).to(torch.uint8).contiguous(), labels


def _task() -> Task:
    images, labels = _images(240)
    cut = lambda a, b: Split(images[a:b], labels[a:b])  # noqa: E731
    return Task("bright", "natural", ("dark", "bright"), cut(0, 160), cut(160, 200), cut(200, 240), source="test")


@pytest.fixture(scope="module")
def pool(tmp_path_factory, make_timm_net) -> tuple[Library, list[str]]:
    root = tmp_path_factory.mktemp("halving")
    lib = Library.create(root / "lib", None)
    names = []
    for seed in range(11):
        torch.manual_seed(seed)
        names.append(f"own{seed}")
        lib.add(MemberInfo(names[-1], "full_expert", None, None, 10, 0, 0, None, {}), ExpertModel(BACKBONES["bit_xs"], 4))
    path = root / "winner.safetensors"
    safetensors.torch.save_file(make_timm_net("test_resnet", num_classes=4, seed=0).state_dict(), str(path))
    names.insert(5, add_external(lib, *from_checkpoint("test_resnet", path, size=16), name="winner").name)
    return lib, names


@pytest.fixture(scope="module")
def task_ctx(tmp_path_factory) -> tuple[Task, RunContext]:
    """The task and one embedding cache shared by the runs below."""
    return _task(), RunContext(progress=False, cache=EmbeddingCache(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def runs(pool, task_ctx):
    """Halving on a cold cache, full scoring after it (its finalists' full passes cached by
    halving), and halving again (everything cached)."""
    lib, names = pool
    task, ctx = task_ctx
    first = run_selection(lib, task, "proxy", 1, "knn_loo", names, ctx, 64, search="halving")
    full = run_selection(lib, task, "proxy", 1, "knn_loo", names, ctx, 64, resamples=0)
    again = run_selection(lib, task, "proxy", 1, "knn_loo", names, ctx, 64, search="halving")
    return names, first, full, again


def test_halving_agrees_with_full_scoring_and_embeds_fewer_images(runs):
    names, halving, full, _ = runs
    assert full.selection.best == halving.selection.best == "winner"
    assert full.search is None and full.images_per_member * len(full.members_embedded) == 12 * 200
    report = halving.search
    assert report is not None and report.full_images == 12 * 200
    assert [r.images for r in report.rounds] == sample_sizes(200, 12, 1, 2) == [50, 100, 200]
    assert [len(r.scores) for r in report.rounds] == [12, 6, 3]
    assert halving.embed.images == report.images_embedded == 12 * 50 + 6 * 50 + 3 * 100 < report.full_images
    for before, after in zip(report.rounds, report.rounds[1:]):  # survivors are the best of the round before
        best = sorted(before.scores, key=lambda n: -before.scores[n])[:len(after.scores)]
        assert set(after.scores) == set(best)
    assert {n for n, _ in halving.selection.ranking} == set(names)  # every member ranked
    last = report.rounds[-1].scores
    assert [n for n, _ in halving.selection.ranking][:3] == sorted(last, key=lambda n: -last[n])
    for n in last:  # the finalists' scores are full scoring's: all 200 images
        assert last[n] == dict(full.selection.ranking)[n]
    assert halving.to_json()["search"]["images_embedded"] == report.images_embedded


def test_halving_reads_and_fills_the_embedding_cache(runs):
    _, first, full, again = runs
    finalists = set(first.search.rounds[-1].scores)
    assert full.embed.cached == len(finalists) and full.embed.images == (12 - len(finalists)) * 200
    assert again.search.images_embedded == 0 and again.selection.ranking == first.selection.ranking


def test_the_cli_reports_halving_and_refuses_it_without_a_proxy_strategy(pool, tmp_path):
    from PIL import Image

    lib, _ = pool
    images, labels = _images(140)
    for i in range(140):
        folder = tmp_path / "photos" / ("bright" if labels[i] else "dark")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    args = ["select", "--library", str(lib.path), "--task", str(tmp_path / "photos"), "--cache", str(tmp_path / "c"),
            "--out", str(tmp_path / "out"), "-q", "--threads", "1"]
    r = runner.invoke(app, args + ["--search", "halving", "--strategy", "task_agnostic"])
    assert r.exit_code == 2 and "use it with a strategy that reads one (--strategy proxy or hybrid), not " \
        "'task_agnostic'" in r.output and len(r.output.strip().splitlines()) == 1
    r = runner.invoke(app, args + ["--search", "bisect"])
    assert r.exit_code == 2 and "choose one of: full, halving" in r.output
    r = runner.invoke(app, args + ["--search", "halving"])
    assert r.exit_code == 0, r.output
    assert "halving: 3 round(s) on 50, 56, 112 images (12 -> 6 -> 3 members)" in r.output, r.output
    assert "full scoring embeds 1,344" in r.output and (tmp_path / "out" / "photos.knn_loo.halving.json").exists()


def test_hybrid_ranks_its_task_aware_part_by_halving(pool, task_ctx, runs):
    """--strategy hybrid --search halving: the task-agnostic top-1, then halving's ranking (the
    cache is warm from the runs above, so nothing is embedded)."""
    from expertise.errors import ConfigError

    lib, names = pool
    task, ctx = task_ctx
    _, halving, _, _ = runs
    agnostic = run_selection(lib, task, "task_agnostic", 2, "knn_loo", names, ctx)
    full = run_selection(lib, task, "hybrid", 2, "knn_loo", names, ctx, 64, resamples=0)
    run = run_selection(lib, task, "hybrid", 2, "knn_loo", names, ctx, 64, search="halving")
    first = agnostic.selection.best
    assert first != "winner" and run.selection.picks == full.selection.picks == (first, "winner")
    aware = [n for n, _ in halving.selection.ranking]
    assert [n for n, _ in run.selection.ranking] == [first, *(n for n in aware if n != first)]
    assert run.label == "hybrid(knn_loo)" and run.search is not None and run.search.images_embedded == 0
    assert run.to_json()["search"]["search"] == "halving" and "aware.halving" in run.selection.seconds
    with pytest.raises(ConfigError, match=r"reads one \(proxy, hybrid\), not 'random'"):
        run_selection(lib, task, "random", 1, "knn_loo", names, ctx, search="halving")
