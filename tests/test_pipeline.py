"""End-to-end smoke run of the whole pipeline on the tiny world, and its resumption."""

import json

import pytest

from expertise.config import get_preset
from expertise.demo import run_demo
from expertise.library import Library

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    preset = get_preset("tiny")
    result = run_demo(preset, out, progress=False, log=lambda *a: None)
    return preset, out, result


def test_demo_writes_library_results_and_plots(demo_run):
    preset, out, result = demo_run
    lib = Library.open(out / "library")
    assert len(lib) == 1 + preset.num_experts
    assert lib.verify() == []
    kinds = [lib.info(n).kind for n in lib.names()]
    assert kinds[0] == "baseline" and kinds[1:] == ["full_expert"] * preset.num_experts
    for name in lib.names()[1:]:
        info = lib.info(name)
        assert info.parent == lib.names()[0] and info.domain
        prior = lib.label_prior(name)
        assert prior is not None and abs(float(prior.max()) - 1.0) < 1e-9  # every image is under its own domain node
    for f in ("results.md", "results.json", "knn.png", "world.png"):
        assert (out / f).stat().st_size > 0
    rows = json.loads((out / "results.json").read_text())["metrics"]["tasks"]
    assert [r["task"] for r in rows] == list(preset.tasks)
    for r in rows:
        assert set(r["knn"]) == set(lib.names())
        assert r["selected"] == max(r["knn"], key=lambda n: (r["knn"][n], -lib.names().index(n)))
        assert 0.0 <= r["test_selected"] <= 1.0 and 0.0 <= r["test_baseline"] <= 1.0
    md = (out / "results.md").read_text()
    assert "| task | group | kNN B" in md and "glyph_digits" in md


def test_demo_rerun_reuses_everything(demo_run):
    preset, out, first = demo_run
    lib = Library.open(out / "library")
    before = {p: p.stat().st_mtime_ns for p in (out / "library").rglob("*.safetensors")}
    second = run_demo(preset, out, progress=False, log=lambda *a: None)
    after = {p: p.stat().st_mtime_ns for p in (out / "library").rglob("*.safetensors")}
    assert before == after  # no member retrained
    assert all(r["embedded_images"] == 0 for r in second["metrics"]["tasks"])  # embeddings from the cache
    assert [r["test_selected"] for r in second["metrics"]["tasks"]] == [r["test_selected"] for r in first["metrics"]["tasks"]]
    assert len(lib) == 1 + preset.num_experts


def test_resuming_with_other_upstream_settings_is_refused(demo_run):
    from expertise.errors import LibraryError
    from expertise.pipeline import build_library

    preset, out, _ = demo_run
    other = get_preset("tiny", {"baseline.steps": "77"})
    with pytest.raises(LibraryError, match="other upstream settings"):
        build_library(other, out / "library", device=__import__("torch").device("cpu"), progress=False, log=lambda *a: None)
