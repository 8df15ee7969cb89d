"""The benchmark run on the suite's shared tiny library (conftest.py: B, three full and three adapter
experts, the EPN): every strategy and pool scored against the oracle, the report regenerated from
records alone, and a rerun that repeats no unit."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from expertise.runtime import RunContext
from expertise.transfer.protocol import SweepConfig
from expertise.bench.runner import StrategySpec, expected_best, parse_strategies, run_bench, write_report
from expertise.store import RecordStore
from expertise.cli import app
from expertise.errors import ConfigError
from expertise.train import TrainConfig

FT = TrainConfig(steps=3, batch_size=16, lr=0.01, warmup_steps=1)
STRATEGIES = (StrategySpec("knn_loo", "proxy", "knn_loo"), StrategySpec("domain_prediction", "domain_prediction"),
              StrategySpec("task_agnostic", "task_agnostic"), StrategySpec("random", "random"))


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def bench(tiny_library, tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("bench")
    lib, world = tiny_library.library, tiny_library.world
    assert len(tiny_library.names) == 7
    tasks = [world.task("count"), world.task("glyph_digits")]
    summary = run_bench(lib, tasks, root / "out", FT, SweepConfig(lr_factors=(1.0,)), STRATEGIES,
                        ("all", "experts", "baseline"), RunContext(progress=False, log=lambda *a: None))
    return lib, tasks, root / "out", summary


def test_expected_best_is_the_mean_max_over_subsets():
    accs = [0.2, 0.5, 0.9, 0.4]
    from itertools import combinations

    for b in range(1, 5):
        brute = np.mean([max(c) for c in combinations(accs, b)])
        assert expected_best(accs, b) == pytest.approx(brute)


def test_summary_has_the_tables_and_plots(bench):
    lib, tasks, out, summary = bench
    text = summary.read_text()
    for heading in ("Table 1 layout", "Table 2 layout", "Regret per pool and budget", "Compute per task",
                    "oracle (fine-tune every member)", "Relative delta against `task_agnostic`", "Per task:"):
        assert heading in text
    for row in ("knn_loo", "domain_prediction", "task_agnostic", "random"):
        assert f"| {row} |" in text
    for png in ("strategies.png", "task_regret.png", "task_delta.png", "zero_regret.all.png"):
        assert (out / png).stat().st_size > 0
    lines = (out / "records.jsonl").read_text().splitlines()
    assert {json.loads(x)["kind"] for x in lines} >= {"embed", "selection", "protocol", "transfer_retrain"}


def test_no_strategy_beats_the_oracle(bench):
    lib, tasks, out, _ = bench
    store = RecordStore(out)
    acc = {}
    for rec in store.all("protocol"):
        acc.setdefault(rec["config"]["task"], {})[rec["config"]["member"]] = rec["metrics"]["test_accuracy"]
    for rec in store.all("selection"):
        c, m = rec["config"], rec["metrics"]
        if "error" in m:
            assert c["strategy"] == "domain_prediction" and c["pool"] == "baseline"
            continue
        pick = m["picks"][0]
        assert pick in c["members"]
        assert acc[c["task"]][pick] <= max(acc[c["task"]][n] for n in c["members"])


def test_rerun_repeats_nothing_and_report_comes_from_records(bench):
    lib, tasks, out, summary = bench
    store = RecordStore(out)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "units").iterdir()}
    first = summary.read_text()
    run_bench(lib, tasks, out, FT, SweepConfig(lr_factors=(1.0,)), STRATEGIES, ("all", "experts", "baseline"),
              RunContext(progress=False, log=lambda *a: None))
    assert {p.name: p.stat().st_mtime_ns for p in (out / "units").iterdir()} == before
    assert summary.read_text() == first
    import shutil

    shutil.rmtree(out / "cache")
    assert write_report(out).read_text() == first  # records alone
    assert len(store.all("protocol")) == 2 * 7  # two tasks x (B + three full + three adapter experts)


def test_cli_bench_report_and_bad_strategy(bench, tmp_path):
    lib, tasks, out, summary = bench
    result = CliRunner().invoke(app, ["bench", "report", str(out)])
    assert result.exit_code == 0, result.output
    assert "Table 1 layout" in result.output
    with pytest.raises(ConfigError, match="unknown strategy"):
        parse_strategies(["oracle"])
    assert parse_strategies(["proxy:logme"])[0].proxy == "logme"
    empty = CliRunner().invoke(app, ["bench", "report", str(tmp_path)])
    assert empty.exit_code == 2 and "no finished protocol units" in empty.output


def test_cli_dat_reports_accuracy_and_cost_beside_knn(bench, tmp_path):
    lib, *_ = bench
    result = CliRunner().invoke(app, [
        "dat", "--library", str(lib.path), "--task", "count", "--init", "baseline", "--size", "200", "--out",
        str(tmp_path), "--preset", "tiny", "--set", "expert.steps=2", "--set", "expert.warmup_steps=1", "--set", "finetune.steps=2",
        "--set", "finetune.warmup_steps=1", "-q"])
    assert result.exit_code == 0, result.output
    assert "DAT on count: test accuracy" in result.output and "kNN selection of 7 members" in result.output
    record = json.loads(next(tmp_path.glob("dat.count.*.json")).read_text())
    assert record["kind"] == "dat" and record["config"]["knn_selection"]["images"] == 7 * 1000
    bad = CliRunner().invoke(app, ["dat", "--library", str(lib.path), "--task", "count", "--upstream", "/data/x"])
    assert bad.exit_code == 2 and "--upstream world" in bad.output


def test_embed_units_measure_the_cold_cost_even_from_a_warm_cache(bench, tmp_path, monkeypatch):
    from expertise.bench.units import _embed_unit
    from expertise.select.embed import EmbeddingCache, cache_key

    lib, tasks, out, _ = bench
    name, task = lib.names()[0], tasks[0]
    loads = []
    real_load = lib.load
    monkeypatch.setattr(lib, "load", lambda n, **kw: loads.append(n) or real_load(n, **kw))
    cache = EmbeddingCache(tmp_path)
    _embed_unit(lib, task, cache, name, 500, torch.device("cpu"))
    key = cache_key(task, lib.info(name).preprocessing)
    assert cache.get(lib.member_hash(name), key, "trainval") is not None  # fills an empty cache
    unit = _embed_unit(lib, task, cache, name, 500, torch.device("cpu"))  # now the cache is warm
    assert loads == [name, name]  # the member ran again: the cost is the cold one
    assert unit.images == {"embed": len(task.trainval)} and unit.seconds["embed"] > 0.0


def test_seeds_of_one_is_the_run_without_seeds(bench):
    lib, tasks, out, summary = bench
    before = {p.name: p.stat().st_mtime_ns for p in (out / "units").iterdir()}
    first = summary.read_text()
    again = run_bench(lib, tasks, out, FT, SweepConfig(lr_factors=(1.0,)), STRATEGIES, ("all", "experts", "baseline"),
                      RunContext(progress=False, log=lambda *a: None), seeds=(0,))
    assert {p.name: p.stat().st_mtime_ns for p in (out / "units").iterdir()} == before  # the same records
    assert again.read_text() == first and first.count("## Table 1 layout") == 1 and "median over seeds" not in first
    with pytest.raises(ConfigError, match="distinct"):
        run_bench(lib, tasks, out, FT, seeds=(1, 1))


def test_kendall_tau_of_two_rankings():
    from expertise.bench.halving import kendall_tau

    assert kendall_tau(list("abcd"), list("abcd")) == pytest.approx(1.0)
    assert kendall_tau(list("abcd"), list("dcba")) == pytest.approx(-1.0)
    assert kendall_tau(list("abcd"), list("acbd")) == pytest.approx((5 - 1) / 6)  # one discordant pair of six
    with pytest.raises(ValueError, match="different members"):
        kendall_tau(list("abc"), list("abd"))


def test_halving_adds_its_units_and_a_report_section(bench, tmp_path):
    """--halving on a finished folder (a copy): only the halving units run (knn_loo on the first pool,
    cold), the report gains its section, and a rerun recomputes nothing."""
    import shutil

    from expertise.bench.halving import kendall_tau

    lib, tasks, out, _ = bench
    folder = tmp_path / "out"
    shutil.copytree(out, folder, ignore=shutil.ignore_patterns("cache"))
    before = {p.name for p in (folder / "units").iterdir()}
    args = (lib, tasks, folder, FT, SweepConfig(lr_factors=(1.0,)), STRATEGIES, ("all", "experts", "baseline"),
            RunContext(progress=False, log=lambda *a: None))
    summary = run_bench(*args, halving=True)
    new = {p.name for p in (folder / "units").iterdir()} - before
    assert len(new) == 2 and all(n.startswith("halving.") for n in new)  # two tasks x knn_loo on pool "all"
    store = RecordStore(folder)
    full = {r["config"]["task"]: r["metrics"] for r in store.all("selection")
            if r["config"]["pool"] == "all" and r["config"]["strategy"] == "knn_loo"}
    taus = []
    for rec in store.all("halving"):
        c, m = rec["config"], rec["metrics"]
        assert (c["pool"], c["strategy"], c["budget"]) == ("all", "knn_loo", 1)
        assert [len(r["members"]) for r in m["rounds"]] == [7, 4, 2] and m["full_scoring_images"] == 7 * 1000
        assert m["images_embedded"] == rec["images"]["embedded"] == 7 * 250 + 4 * 250 + 2 * 500  # cold: every image
        assert sorted(n for n, _ in m["ranking"]) == sorted(c["members"]) and m["picks"] == [m["ranking"][0][0]]
        assert set(m["rounds"][-1]["members"]) == {n for n, _ in m["ranking"][:2]}  # the finalists lead
        taus.append(kendall_tau([n for n, _ in full[c["task"]]["ranking"]], [n for n, _ in m["ranking"]]))
    text = summary.read_text()
    assert "## Successive halving against full scoring (pool `all`, budget 1)" in text
    assert "| count | knn_loo |" in text and "| glyph_digits | knn_loo |" in text
    got = json.loads((folder / "summary.json").read_text())["halving"]["strategies"]["knn_loo"]
    assert got["kendall_tau"] == pytest.approx(float(np.mean(taus))) and got["runs"] == 2
    assert got["images_embedded"] == 2 * 3750 < got["full_scoring_images"] == 2 * 7000
    agree = [full[r["config"]["task"]]["picks"][0] == r["metrics"]["picks"][0] for r in store.all("halving")]
    assert got["top1_agreement"] == pytest.approx(np.mean(agree))
    mtimes = {p.name: p.stat().st_mtime_ns for p in (folder / "units").iterdir()}
    assert run_bench(*args, halving=True).read_text() == text
    assert {p.name: p.stat().st_mtime_ns for p in (folder / "units").iterdir()} == mtimes  # and the report from records
    assert "Successive halving" not in (out / "summary.md").read_text()  # off by default


def test_cli_bench_passes_halving_on_and_leaves_it_off_by_default(tiny_library, tmp_path, monkeypatch):
    import expertise.bench.runner as runner_module

    calls = []

    def fake_run_bench(*args, **kwargs):
        calls.append(kwargs.get("halving"))
        (tmp_path / "summary.md").write_text("report")
        return tmp_path / "summary.md"

    monkeypatch.setattr(runner_module, "run_bench", fake_run_bench)
    base = ["bench", "--library", str(tiny_library.library.path), "--suite", "count", "--out", str(tmp_path / "o"),
            "--preset", "tiny", "-q", "--threads", "1"]
    for extra in ([], ["--halving"]):
        result = CliRunner().invoke(app, base + extra)
        assert result.exit_code == 0, result.output
    assert calls == [False, True]
