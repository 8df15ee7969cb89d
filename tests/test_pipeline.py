"""End-to-end smoke run of the whole pipeline on the tiny world, and its resumption.

The demo starts from a copy of the suite's shared tiny library (conftest.py), which
:func:`expertise.upstream.build.build_library` built from nothing with the same preset; the demo's own
call resumes it, retraining nothing, and runs selection, fine-tuning and the report."""

import json

import pytest

from expertise.runtime import RunContext
from expertise.config import get_preset
from expertise.demo import DEMO_STRATEGIES, run_demo, takeaway
from expertise.store import RecordStore
from expertise.library import Library
from expertise.select.run import pool_names

# Not marked slow: the demo at the tiny scale is the one end-to-end run `make test` keeps.


@pytest.fixture(scope="module")
def demo_run(tiny_library, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    tiny_library.copy_to(out / "library")
    def member_files():  # the library's weights; its embedding cache (library/cache) is written by the demo
        return {p: p.stat().st_mtime_ns for p in (out / "library").rglob("*.safetensors")
                if (out / "library" / "cache") not in p.parents}

    before = member_files()
    preset = tiny_library.preset
    result = run_demo(preset, out, progress=False, log=lambda *a: None)
    assert before and before == member_files()  # resumed, not rebuilt
    return preset, out, result


def test_demo_writes_library_results_and_plots(demo_run):
    preset, out, result = demo_run
    lib = Library.open(out / "library")
    k = preset.num_experts
    assert len(lib) == 1 + k + 1 + k  # B, the full experts, the EPN, the adapter experts
    assert lib.verify() == []
    pool = pool_names(lib)
    kinds = [lib.info(n).kind for n in lib.names()]
    assert kinds == ["baseline"] + ["full_expert"] * k + ["epn"] + ["adapter_expert"] * k
    assert pool == lib.names()[:1 + k] + lib.names()[2 + k:]
    assert lib.info(lib.names()[1 + k]).extra["nodes"] == [lib.info(n).domain for n in pool[1:1 + k]]
    for name in pool[1:]:
        info = lib.info(name)
        assert info.parent == lib.names()[0] and info.domain
        prior = lib.label_prior(name)
        assert prior is not None and abs(float(prior.max()) - 1.0) < 1e-9  # every image is under its own domain node
    for f in ("results.md", "results.json", "knn.png", "world.png"):
        assert (out / f).stat().st_size > 0
    rows = json.loads((out / "results.json").read_text())["metrics"]["tasks"]
    assert [r["task"] for r in rows] == list(preset.tasks)
    for r in rows:
        assert set(r["knn"]) == set(pool)
        assert r["selected"] == max(r["knn"], key=lambda n: (r["knn"][n], -pool.index(n)))
        assert set(r["picks"]) == {label for label, *_ in DEMO_STRATEGIES}
        assert all(set(p) <= set(pool) for p in r["picks"].values())
        assert len(r["picks"]["hybrid(knn_loo), B=2"]) == 2
        assert 0.0 <= r["test_selected"] <= 1.0 and 0.0 <= r["test_baseline"] <= 1.0
    md = (out / "results.md").read_text()
    assert "| task | group | kNN B" in md and "glyph_digits" in md and "## The pick of every strategy" in md
    # The demo fine-tunes B and the kNN pick only; Table 2 comes from `expertise bench` on the same folder.
    assert "## Table 2 layout" not in md
    base = next(n for n in pool if n.endswith(".baseline"))
    store = RecordStore(out)
    assert len(store.all("transfer_retrain")) == len({(r["task"], m) for r in rows for m in (base, r["selected"])})
    # each task's features of every member the strategies read (the pool and the EPN), embedded as units
    assert len(store.all("embed")) == len(rows) * (len(pool) + 1)
    assert len(store.all()) == len(store.all("transfer_retrain")) + len(store.all("embed"))


def test_demo_ends_with_its_takeaway_from_what_it_measured(demo_run):
    preset, out, result = demo_run
    rows = result["metrics"]["tasks"]
    sentence = result["metrics"]["takeaway"]
    natural = [r for r in rows if r["group"] == "natural"]
    gain = 100 * sum(r["test_selected"] - r["test_baseline"] for r in natural) / len(natural)
    assert sentence.startswith(f"Choosing by kNN gave {gain:+.1f} points over B on the {len(natural)} natural tasks")
    assert sentence in (out / "results.md").read_text()


def test_takeaway_by_hand():
    rows = [{"group": "natural", "test_selected": 0.80, "test_baseline": 0.75, "selected": "e"},
            {"group": "natural", "test_selected": 0.60, "test_baseline": 0.60, "selected": "B"},
            {"group": "structured", "test_selected": 0.10, "test_baseline": 0.90, "selected": "e"}]
    text = takeaway(rows, "B")
    assert text.startswith("Choosing by kNN gave +2.5 points over B on the 2 natural tasks (mean test accuracy 70.0% "
                           "against 67.5%; kNN chose B itself on 1 of them).")
    assert takeaway(rows[2:], "B").startswith("Choosing by kNN gave -80.0 points over B on all 1 tasks")


def test_demo_rerun_reuses_everything(demo_run):
    preset, out, first = demo_run
    lib = Library.open(out / "library")
    before = {p: p.stat().st_mtime_ns for p in (out / "library").rglob("*.safetensors")}
    second = run_demo(preset, out, progress=False, log=lambda *a: None)
    after = {p: p.stat().st_mtime_ns for p in (out / "library").rglob("*.safetensors")}
    assert before == after  # no member retrained
    assert all(r["embedded_images"] == 0 for r in second["metrics"]["tasks"])  # embeddings from the cache
    assert (out / "library" / "cache").is_dir() and not (out / "cache").exists()  # the library's one cache
    assert [r["test_selected"] for r in second["metrics"]["tasks"]] == [r["test_selected"] for r in first["metrics"]["tasks"]]
    assert len(lib) == 2 + 2 * preset.num_experts


def test_resuming_with_other_upstream_settings_is_refused(demo_run):
    from expertise.errors import LibraryError
    from expertise.upstream.build import build_library

    preset, out, _ = demo_run
    other = get_preset("tiny", {"baseline.steps": "77"})
    with pytest.raises(LibraryError, match="other upstream settings"):
        build_library(other, out / "library", RunContext(progress=False, log=lambda *a: None))


def test_a_library_of_an_earlier_world_version_is_refused(demo_run, tmp_path):
    """A library's tasks are rebuilt from its world config; pixels of another world version would
    silently differ from the ones it was trained on, so that is an error that says what to do."""
    import shutil

    from expertise.data.world import WORLD_VERSION
    from expertise.errors import LibraryError
    from expertise.library.upstream_meta import UPSTREAM_FILE, world_of_library

    _, out, _ = demo_run
    assert world_of_library(Library.open(out / "library")).cfg.resolution == get_preset("tiny").world.resolution
    shutil.copytree(out / "library", tmp_path / "old")
    meta = json.loads((tmp_path / "old" / UPSTREAM_FILE).read_text())
    assert meta["settings"]["world_version"] == WORLD_VERSION
    del meta["settings"]["world_version"]  # as a version-1 library wrote it
    (tmp_path / "old" / UPSTREAM_FILE).write_text(json.dumps(meta))
    manifest = json.loads((tmp_path / "old" / "library.json").read_text())
    del manifest["files"]  # version-1 libraries were written before top-level files were hashed
    (tmp_path / "old" / "library.json").write_text(json.dumps(manifest))
    with pytest.raises(LibraryError, match=f"version 1 of the embedded world.*renders version {WORLD_VERSION}"):
        world_of_library(Library.open(tmp_path / "old"))
