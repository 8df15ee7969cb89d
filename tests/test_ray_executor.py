"""--executor ray (expertise.units.ray_executor) on one local Ray of 2 CPUs for the module: the tiny
benchmark gives the records and report of the local executor; a worker killed in the middle of a
fine-tune is retried and the run completes with no record lost or doubled; the transfer command
keeps its model from a Ray worker; a kind the workers do not know is one line."""

import json
import os
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import expertise
from expertise.bench.runner import StrategySpec, run_bench
from expertise.cli import app
from expertise.errors import ConfigError
from expertise.runtime import RunContext
from expertise.store import RecordStore, UnitResult
from expertise.train import TrainConfig
from expertise.transfer.protocol import SweepConfig
from expertise.units import KINDS, Plan, UnitKind, UnitSpec, WorkerContext, drive, register_kind
from expertise.units.worker import ARMED, FIRED, KILL_ENV

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

FT = TrainConfig(steps=3, batch_size=16, lr=0.01, warmup_steps=1)
SWEEP = SweepConfig(lr_factors=(1.0, 3.0))  # a sweep of two settings and a retrain per member
STRATEGIES = (StrategySpec("knn_loo", "proxy", "knn_loo"), StrategySpec("random", "random"))
POOLS = ("full_experts", "baseline")
TIMING = {"seconds", "phase_seconds", "select_seconds"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One local Ray of 2 CPUs; its workers import this checkout and die on cue (KILL_ENV)."""
    kill = tmp_path_factory.mktemp("kill")
    root = str(Path(expertise.__file__).parent.parent)
    env = {KILL_ENV: str(kill), "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
           "EXPERTISE_PROGRESS": "0", "OMP_NUM_THREADS": "1",
           "EXPERTISE_KEY": os.environ["EXPERTISE_KEY"]}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning",
             runtime_env={"env_vars": env})
    yield kill
    ray.shutdown()


def _bench(tiny_library, out: Path, executor=None) -> Path:
    from expertise.units.ray_executor import RayExecutor

    torch.set_num_threads(1)
    return run_bench(tiny_library.library, [tiny_library.world.task("count")], out, FT, SWEEP, STRATEGIES, POOLS,
                     RunContext(progress=False, log=lambda *a: None), executor=RayExecutor() if executor else None)


@pytest.fixture(scope="module")
def runs(cluster, tiny_library, tmp_path_factory):
    """The same benchmark by the local executor, and by Ray with a worker killed during a retrain."""
    root = tmp_path_factory.mktemp("runs")
    local = _bench(tiny_library, root / "local")
    (cluster / ARMED).write_text("transfer_retrain")
    on_ray = _bench(tiny_library, root / "ray", executor="ray")
    return local, on_ray, cluster


def _records(out: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((out / "units").glob("*.json"))}


def _untimed(d):
    if isinstance(d, dict):
        return {k: _untimed(v) for k, v in d.items() if k not in TIMING}
    return d


def _without_compute(summary: str) -> str:
    return re.sub(r"## Compute per task.*?(?=\n## |\Z)", "", summary, flags=re.S)


def test_ray_gives_the_records_and_report_of_the_local_executor(runs):
    local, on_ray, _ = runs
    a, b = _records(local.parent), _records(on_ray.parent)
    assert a.keys() == b.keys() and len(a) == 5 + 4 + 4 * 3 + 4  # embeds (+ EPN), selections, fine-tunes, protocols
    for name in a:
        assert a[name]["config"] == b[name]["config"], name
        assert _untimed(a[name]["metrics"]) == _untimed(b[name]["metrics"]), name
        assert a[name]["images"] == b[name]["images"], name
    assert _without_compute(local.read_text()) == _without_compute(on_ray.read_text())
    assert "## Compute per task" in on_ray.read_text()


def test_a_worker_killed_mid_unit_is_retried_and_nothing_is_lost_or_doubled(runs, tiny_library):
    local, on_ray, kill = runs
    assert (kill / FIRED).read_text() == "transfer_retrain" and not (kill / ARMED).exists()  # a worker did die
    lines = (on_ray.parent / "records.jsonl").read_text().splitlines()
    keys = [json.loads(line)["key"] for line in lines]
    assert len(keys) == len(set(keys)) == len(_records(local.parent))
    assert all(p.name == f"{r['kind']}.{r['key']}.json" for p in (on_ray.parent / "units").glob("*.json")
               for r in [json.loads(p.read_text())])
    result = CliRunner().invoke(app, ["library", "verify", str(tiny_library.library.path)])
    assert result.exit_code == 0, result.output
    before = {p.name: p.stat().st_mtime_ns for p in (on_ray.parent / "units").iterdir()}
    _bench(tiny_library, on_ray.parent, executor="ray")  # a rerun on Ray finds every unit recorded
    assert {p.name: p.stat().st_mtime_ns for p in (on_ray.parent / "units").iterdir()} == before


def test_transfer_keeps_its_model_from_a_ray_worker(cluster, tiny_library, tmp_path):
    out = tmp_path / "t"
    result = CliRunner().invoke(app, [
        "transfer", "--library", str(tiny_library.library.path), "--task", "count", "--strategy", "random", "--budget", "1",
        "--lr-factors", "1,3", "--preset", "tiny", "--set", "finetune.steps=3", "--set", "finetune.warmup_steps=1",
        "--out", str(out), "--cache", str(tmp_path / "cache"), "--executor", "ray", "-q"])
    assert result.exit_code == 0, result.output
    assert "median test accuracy" in result.output and "model kept in" in result.output
    assert len(RecordStore(out).all("transfer_sweep")) == 2 and len(RecordStore(out).all("transfer_retrain")) == 1
    assert len(list((out / "models").glob("*/model.json"))) == 1


def _square(spec, ctx):
    return UnitResult({"y": spec.config["x"] ** 2})


def test_a_kind_the_workers_do_not_know_is_one_line(cluster, tmp_path):
    from expertise.units.ray_executor import RayExecutor

    register_kind(UnitKind("test_coordinator_only", _square), replace=True)  # known here, not in the workers
    try:
        plan = Plan(iter([[UnitSpec("test_coordinator_only", {"x": 3})]]), 1)  # type: ignore[arg-type]
        with pytest.raises(ConfigError) as e:
            drive([plan], RayExecutor(), RecordStore(tmp_path), WorkerContext(), progress=False)
    finally:
        KINDS.remove("test_coordinator_only")
    assert "unknown unit kind 'test_coordinator_only'" in str(e.value) and "\n" not in str(e.value)
    assert "transfer_retrain" in str(e.value) and not (tmp_path / "units").exists()


def test_experts_select_and_dat_on_ray_match_the_local_executor(cluster, tiny_library, tmp_path):
    """expertise experts --executor ray: each full expert, the EPN and the adapter bank trained by Ray
    workers, committed by the coordinator, tensor for tensor the library the local build made (the
    shared one); expertise select --executor ray: the pool embedded by Ray workers, the same ranking
    and scores as in one process; expertise dat --executor ray: the run's record of the local executor."""
    from test_upstream_units import assert_same_library, without_experts

    from expertise.units.ray_executor import RayExecutor
    from expertise.upstream.build import build_library

    torch.set_num_threads(1)
    lib = without_experts(tiny_library, tmp_path / "lib")
    _, _, names = build_library(tiny_library.preset, lib.path, RunContext(progress=False, log=lambda *a: None),
                                executor=RayExecutor())
    assert names == tiny_library.names
    assert_same_library(lib.path, tiny_library.library)

    runs = {}
    for executor in ("local", "ray"):
        out = tmp_path / f"select-{executor}"
        result = CliRunner().invoke(app, [
            "select", "--library", str(tiny_library.library.path), "--task", "count", "--proxy", "knn_loo",
            "--cache", str(tmp_path / f"cache-{executor}"), "--out", str(out), "--executor", executor, "-q"])
        assert result.exit_code == 0, result.output
        runs[executor] = json.loads(next(out.glob("count.*.json")).read_text())
    local, on_ray = runs["local"], runs["ray"]
    assert on_ray["ranking"] == local["ranking"] and on_ray["picks"] == local["picks"]
    assert _untimed(on_ray["uncertainty"]) == _untimed(local["uncertainty"]) and len(local["ranking"]) == len(tiny_library.names)
    for executor in ("local", "ray"):  # one embed unit a member, whichever executor runs it
        assert len(RecordStore(tmp_path / f"select-{executor}").all("embed")) == len(tiny_library.names)

    dat = {}
    for executor in ("local", "ray"):
        out = tmp_path / f"dat-{executor}"
        result = CliRunner().invoke(app, [
            "dat", "--library", str(tiny_library.library.path), "--task", "count", "--init", "baseline", "--size", "200",
            "--out", str(out), "--preset", "tiny", "--set", "expert.steps=2", "--set", "expert.warmup_steps=1",
            "--set", "finetune.steps=2", "--set", "finetune.warmup_steps=1", "--executor", executor, "-q",
            "--threads", "1"])  # the Ray workers' one thread (OMP_NUM_THREADS=1): the same summation order
        assert result.exit_code == 0, result.output
        dat[executor] = json.loads(next(out.glob("dat.count.*.json")).read_text())
        assert len(RecordStore(out).all("dat")) == 1
    def untimed(d):  # the record without the wall times it measured (seconds, train_seconds, ...)
        return {k: untimed(v) for k, v in d.items() if not k.endswith("seconds")} if isinstance(d, dict) else d

    assert untimed(dat["ray"]["metrics"]) == untimed(dat["local"]["metrics"])
    assert dat["ray"]["metrics"]["test_accuracy"] == dat["local"]["metrics"]["test_accuracy"]
    assert dat["ray"]["images"] == dat["local"]["images"] and untimed(dat["ray"]["config"]) == untimed(dat["local"]["config"])
