"""Options are checked before any work: a bad option fails in one line (exit 2) before any task is
loaded, any world rendered, any library built or any model run. The expensive entry points are
replaced by tripwires, so "before" is proven, not timed. And the one embedding cache per library:
``select`` after ``transfer`` embeds nothing again."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from expertise.cli import app

runner = CliRunner()


@pytest.fixture
def tripwires(monkeypatch):
    """Every expensive entry point a command reaches records its name instead of working."""
    hit: list[str] = []

    def wire(name):
        def tripped(*args, **kwargs):
            hit.append(name)
            raise AssertionError(f"{name} ran before the options were checked")
        return tripped

    import expertise.bench.runner
    import expertise.data.loaders
    import expertise.demo
    import expertise.select.run
    import expertise.upstream.build
    from expertise.data.world import World

    monkeypatch.setattr(expertise.data.loaders, "load_task", wire("load_task"))
    monkeypatch.setattr(expertise.select.run, "run_selection", wire("run_selection"))
    monkeypatch.setattr(expertise.upstream.build, "build_library", wire("build_library"))
    monkeypatch.setattr(expertise.demo, "run_demo", wire("run_demo"))
    monkeypatch.setattr(expertise.bench.runner, "suite_tasks", wire("suite_tasks"))
    monkeypatch.setattr(expertise.bench.runner, "run_bench", wire("run_bench"))
    monkeypatch.setattr(World, "upstream", wire("World.upstream"))
    monkeypatch.setattr(World, "task", wire("World.task"))
    return hit


def _fails_at_once(args: list[str], hit: list[str], *needles: str) -> None:
    result = runner.invoke(app, args)
    text = result.output
    assert result.exit_code == 2, f"{args}: exit {result.exit_code}\n{text}"
    assert "Traceback" not in text and text.count("error:") == 1 and len(text.strip().splitlines()) == 1, text
    for n in needles:
        assert n in text, f"{args}: {n!r} not in {text!r}"
    assert hit == [], f"{args}: {hit} ran before the bad option was reported"


NO_CUDA = "cuda" if not torch.cuda.is_available() else "cuda:99"


@pytest.mark.parametrize("extra, needle", [
    (["--proxy", "nonsense"], "unknown proxy"),
    (["--strategy", "best"], "unknown strategy"),
    (["--strategy", "random", "--proxy", "nonsense"], "unknown proxy"),  # a typo is a typo, read or not
    (["--budget", "0"], "--budget"),
    (["--budget", "99"], "pool size 7"),
    (["--device", "tpu"], "device"),
    (["--device", NO_CUDA], "cuda"),
])
def test_select_checks_options_first(tiny_library, tripwires, extra, needle):
    _fails_at_once(["select", "--library", str(tiny_library.library.path), "--task", "count", *extra], tripwires, needle)


@pytest.mark.parametrize("extra, needle", [
    (["--proxy", "nonsense"], "unknown proxy"),
    (["--strategy", "best"], "unknown strategy"),
    (["--budget", "8"], "pool size 7"),
    (["--lr-factors", "1,fast"], "--lr-factors"),
    (["--lr-factors", "1,-3"], "positive"),
    (["--sweeps", "0"], "--sweeps"),
    (["--retrains", "0"], "--retrains"),
    (["--preset", "huge"], "unknown preset"),
    (["--set", "finetune.stepz=3"], "unknown setting"),
    (["--device", "tpu"], "device"),
])
def test_transfer_checks_options_first(tiny_library, tripwires, tmp_path, extra, needle):
    _fails_at_once(["transfer", "--library", str(tiny_library.library.path), "--task", "count",
                    "--out", str(tmp_path / "out"), *extra], tripwires, needle)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, needle", [
    (["--member", "bit_xs.expert_nope"], "bit_xs.expert_nope"),
    (["--member", "bit_xs.epn"], "not a pool member"),
    (["--member", "bit_xs.baseline", "--preset", "huge"], "unknown preset"),
    (["--member", "bit_xs.baseline", "--device", "tpu"], "device"),
])
def test_finetune_checks_options_first(tiny_library, tripwires, extra, needle):
    assert "bit_xs.epn" in tiny_library.library.names()
    _fails_at_once(["finetune", "--library", str(tiny_library.library.path), "--task", "count", *extra], tripwires, needle)


@pytest.mark.parametrize("extra, needle", [
    (["--sampler", "greedy"], "--sampler"),
    (["--weighting", "inverse"], "--weighting"),
    (["--init", "random"], "--init"),
    (["--upstream", "imagenet"], "--upstream"),
    (["--temperature", "0"], "--temperature"),
    (["--size", "0"], "--size"),
    (["--preset", "huge"], "unknown preset"),
])
def test_dat_checks_options_first(tiny_library, tripwires, extra, needle):
    _fails_at_once(["dat", "--library", str(tiny_library.library.path), "--task", "count", *extra], tripwires, needle)


@pytest.mark.parametrize("extra, needle", [
    (["--strategy", "best"], "unknown strategy"),
    (["--strategy", "proxy:nonsense"], "unknown proxy"),
    (["--pool", "params<=lots"], "params"),
    (["--lr-factors", "x"], "--lr-factors"),
    (["--sweeps", "0"], "--sweeps"),
    (["--preset", "huge"], "unknown preset"),
    (["--suite", "count,no_such_task"], "no_such_task"),
])
def test_bench_checks_options_first(tiny_library, tripwires, tmp_path, extra, needle):
    _fails_at_once(["bench", "--library", str(tiny_library.library.path), "--out", str(tmp_path / "b"), *extra],
                   tripwires, needle)


@pytest.mark.parametrize("args, needle", [
    (["upstream", "--preset", "huge"], "unknown preset"),
    (["upstream", "--preset", "tiny", "--device", "tpu"], "device"),
    (["upstream", "--preset", "tiny", "--set", "num_experts=0"], "num_experts"),
    (["experts", "--preset", "tiny", "--kind", "lora"], "--kind"),
    (["experts", "--preset", "tiny", "-k", "0"], "--num-experts"),
    (["experts", "--preset", "tiny", "--set", "baseline.steps=x"], "baseline.steps"),
    (["demo", "--preset", "huge"], "unknown preset"),
    (["demo", "--preset", "tiny", "--device", NO_CUDA], "cuda"),
])
def test_build_commands_check_options_first(tripwires, tmp_path, args, needle):
    lib = ["--out", str(tmp_path / "demo")] if args[0] == "demo" else ["--library", str(tmp_path / "lib")]
    _fails_at_once([*args, *lib], tripwires, needle)
    assert not (tmp_path / "lib").exists() and not (tmp_path / "demo").exists()


@pytest.mark.slow
def test_select_after_transfer_embeds_nothing_again(tiny_library_copy, tmp_path):
    """transfer and select share LIBRARY/cache: the second command reads every member from it."""
    lib = tiny_library_copy
    short = ["--preset", "tiny", "--set", "finetune.steps=5", "--lr-factors", "1", "-q"]
    result = runner.invoke(app, ["transfer", "--library", str(lib.path), "--task", "count", "--out", str(tmp_path / "t"), *short])
    assert result.exit_code == 0, result.output
    assert (lib.path / "cache").is_dir() and not (tmp_path / "t" / "cache").exists()
    result = runner.invoke(app, ["select", "--library", str(lib.path), "--task", "count", "--out", str(tmp_path / "s"), "-q"])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "s" / "count.knn_loo.json").read_text())
    assert record["embedded_now"] == 0
    assert record["cached_members"] == len(record["members_embedded"]) == 7
    # --cache elsewhere: a cold cache there, the library's untouched
    before = sorted(p.name for p in (lib.path / "cache").rglob("*"))
    result = runner.invoke(app, ["select", "--library", str(lib.path), "--task", "count", "--cache", str(tmp_path / "c"),
                                 "--out", str(tmp_path / "s2"), "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "s2" / "count.knn_loo.json").read_text())["cached_members"] == 0
    assert sorted(p.name for p in (lib.path / "cache").rglob("*")) == before


def test_negative_resamples_is_one_line_before_the_library_is_read(tmp_path):
    from typer.testing import CliRunner

    from expertise.cli import app

    result = CliRunner().invoke(app, ["select", "--library", str(tmp_path / "nope"), "--task", "count", "--resamples", "-1"])
    assert result.exit_code == 2
    assert "--resamples must be at least 0" in result.output and "nope" not in result.output
