"""Units as plain data (expertise.units): specs survive JSON, the one registry of kinds names the
known kinds when asked for another, and the driver runs plans on the local executor: a recorded
unit is never run again, a unit two plans ask for runs once, and a plan moves on with its results."""

import json

import pytest

from expertise.errors import ConfigError
from expertise.store import RecordStore, UnitResult
from expertise.units import KINDS, LocalExecutor, Plan, UnitKind, UnitSpec, WorkerContext, drive, get_kind, register_kind

RUNS: list[int] = []


def _square(spec: UnitSpec, ctx: WorkerContext) -> UnitResult:
    RUNS.append(spec.config["x"])
    return UnitResult({"y": spec.config["x"] ** 2}, images=1, seconds=0.5)


@pytest.fixture(autouse=True)
def square_kind():
    register_kind(UnitKind("test_square", _square, help="a test-only kind"), replace=True)
    RUNS.clear()
    yield
    KINDS.remove("test_square")


def _plan(xs, then=None):
    def steps():
        units = yield [UnitSpec("test_square", {"x": x}) for x in xs]
        total = sum(u.metrics["y"] for u in units)
        if then is not None:
            more = yield [UnitSpec("test_square", {"x": then + total})]
            total += more[0].metrics["y"]
        return total

    return Plan(steps(), len(xs) + (then is not None))


def test_a_spec_is_plain_json_and_back():
    spec = UnitSpec("transfer_retrain", {"member": "m", "member_hash": "ab", "seed": 3, "lrs": (0.1, 0.3)},
                    {"library": "/lib", "task": {"name": "count"}}, {"redo": True})
    again = UnitSpec.from_json(json.loads(json.dumps(spec.to_json())))
    assert again == spec and again.config["lrs"] == [0.1, 0.3] and again.redo
    assert spec.describe() == "transfer_retrain (m)"
    with pytest.raises(ConfigError, match="plain JSON"):
        UnitSpec("embed", {"x": float("nan")})
    with pytest.raises(ConfigError, match="same version"):
        UnitSpec.from_json({"kind": "embed"})


def test_an_unknown_kind_is_one_line_naming_the_known_kinds(tmp_path):
    with pytest.raises(ConfigError) as e:
        get_kind("finetune_everything")
    line = str(e.value)
    assert "\n" not in line and "'finetune_everything'" in line
    assert all(k in line for k in ("embed", "selection", "transfer_sweep", "transfer_retrain"))
    plan = Plan(iter([[UnitSpec("nope", {})]]), 1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown unit kind 'nope'"):
        drive([plan], LocalExecutor(), RecordStore(tmp_path), WorkerContext(), progress=False)
    assert not (tmp_path / "units").exists()


def test_the_driver_records_each_unit_once_and_feeds_plans_their_results(tmp_path):
    store = RecordStore(tmp_path)
    results = drive([_plan([1, 2, 3], then=10), _plan([3, 4])], LocalExecutor(), store, WorkerContext(), progress=False)
    assert results == [14 + 24 ** 2, 25]
    assert sorted(RUNS) == [1, 2, 3, 4, 24]  # x=3 was asked for by both plans and ran once
    assert len(store.all("test_square")) == 5
    rec = store.get_record("test_square", {"x": 24})
    assert rec["metrics"] == {"y": 576} and rec["seconds"] == {"test_square": 0.5} and rec["images"] == {"test_square": 1}
    RUNS.clear()
    assert drive([_plan([1, 2, 3], then=10)], LocalExecutor(), store, WorkerContext(), progress=False) == [14 + 24 ** 2]
    assert RUNS == []  # every unit recorded: nothing runs again


def test_a_failing_unit_keeps_what_finished(tmp_path):
    def boom(spec, ctx):
        raise ConfigError("the unit failed")

    register_kind(UnitKind("test_boom", boom), replace=True)
    try:
        def steps():
            yield [UnitSpec("test_square", {"x": 5}), UnitSpec("test_boom", {}), UnitSpec("test_square", {"x": 6})]

        store = RecordStore(tmp_path)
        with pytest.raises(ConfigError, match="the unit failed"):
            drive([Plan(steps(), 3)], LocalExecutor(), store, WorkerContext(), progress=False)
        assert [r["config"] for r in store.all("test_square")] == [{"x": 5}]
    finally:
        KINDS.remove("test_boom")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_executor_options_are_one_line_before_any_work(tmp_path, monkeypatch):
    import sys

    from typer.testing import CliRunner

    from expertise.cli import app

    def run(*args, env=None):
        result = CliRunner().invoke(app, ["bench", "--library", str(tmp_path / "no_library"), "--out", str(tmp_path / "o"),
                                          "--preset", "tiny", *args], env=env)
        assert result.exit_code == 2, result.output
        return " ".join(result.output.split())

    port = _free_port()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert "no Ray cluster answers at 127.0.0.1:" in run("--executor", "ray", "--ray-address", f"127.0.0.1:{port}")
    said = run("--executor", "ray", env={"RAY_ADDRESS": f"127.0.0.1:{port}"})  # RAY_ADDRESS when no --ray-address
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in said and "ray start --head" in said
    assert "give HOST:PORT" in run("--executor", "ray", "--ray-address", "head-node")
    assert "--ray-address is an option of --executor ray" in run("--ray-address", f"127.0.0.1:{port}")
    assert "--executor 'dask': choose one of local, ray" in run("--executor", "dask")
    assert "--ray-cpus must be at least 1" in run("--executor", "ray", "--ray-cpus", "0")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert "pip install 'expertise[ray]'" in run("--executor", "ray")
    assert not (tmp_path / "o").exists()


def test_a_task_reference_rebuilds_a_folder_task_at_its_source_sizes(tmp_path):
    """A worker rebuilds a folder task from its reference exactly: source sizes kept (capped at the
    coordinator's max_side), the suite's name and group, the same fingerprint."""
    import numpy as np
    from PIL import Image

    from expertise.data.loaders import load_image_folder
    from expertise.units import task_ref
    from expertise.units.spec import load_task_ref

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "d" / cls).mkdir(parents=True)
        for i, (h, w) in enumerate([(40, 60), (50, 30), (64, 64), (20, 90), (33, 47)] * 2):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "d" / cls / f"{i}.png")
    task = load_image_folder(tmp_path / "d", None, seed=3, group="specialized", name="mine", max_side=48)
    assert task.source_sizes and task.max_side == 48
    ref = json.loads(json.dumps(task_ref(task, 3)))
    again = load_task_ref(ref, world=None)
    assert (again.name, again.group, again.max_side) == ("mine", "specialized", 48)
    assert again.fingerprint() == task.fingerprint()
