"""The local executor with worker processes (``--jobs N``, expertise.units.processes): the tiny
benchmark gives the records and report of the one-process executor with the same threads per unit;
a worker killed in the middle of a unit is retried and nothing is lost or doubled; a unit's error
comes back as itself; cancelling kills every worker at once; a worker's bars reach the coordinator;
--jobs is checked in one line, against the memory too."""

import json
import re
import time
from pathlib import Path

import pytest
import torch

from expertise.bench.runner import StrategySpec, run_bench
from expertise.errors import ConfigError, ExpertiseError
from expertise.progress import RemoteBars, log_progress_to
from expertise.runtime import RunContext
from expertise.store import RecordStore, UnitResult
from expertise.train import TrainConfig
from expertise.transfer.protocol import SweepConfig
from expertise.units import UnitKind, UnitSpec, WorkerContext, batch_plan, drive, register_kind
from expertise.units.processes import ProcessExecutor, check_memory, resolve_jobs, worker_memory
from expertise.units.worker import ARMED, FIRED, KILL_ENV

FT = TrainConfig(steps=3, batch_size=16, lr=0.01, warmup_steps=1)
SWEEP = SweepConfig(lr_factors=(1.0, 3.0))  # a sweep of two settings and a retrain per member
STRATEGIES = (StrategySpec("knn_loo", "proxy", "knn_loo"), StrategySpec("random", "random"))
POOLS = ("full_experts", "baseline")
TIMING = {"seconds", "phase_seconds", "select_seconds"}


def _bench(tiny_library, out: Path, executor=None) -> Path:
    torch.set_num_threads(1)  # the one-process run on the workers' one thread
    return run_bench(tiny_library.library, [tiny_library.world.task("count")], out, FT, SWEEP, STRATEGIES, POOLS,
                     RunContext(progress=False, log=lambda *a: None), executor=executor)


def _records(out: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((out / "units").glob("*.json"))}


def _untimed(d):
    if isinstance(d, dict):
        return {k: _untimed(v) for k, v in d.items() if k not in TIMING}
    return d


def _without_compute(summary: str) -> str:
    return re.sub(r"## Compute per task.*?(?=\n## |\Z)", "", summary, flags=re.S)


@pytest.fixture(scope="module")
def runs(tiny_library, tmp_path_factory):
    """The same benchmark in this process, and on 2 one-thread workers with one killed in a retrain."""
    root = tmp_path_factory.mktemp("runs")
    kill = tmp_path_factory.mktemp("kill")
    local = _bench(tiny_library, root / "local")
    (kill / ARMED).write_text("transfer_retrain")
    mp = pytest.MonkeyPatch()
    mp.setenv(KILL_ENV, str(kill))
    try:
        executor = ProcessExecutor(2, threads=1, progress=False)
        try:
            parallel = _bench(tiny_library, root / "jobs2", executor)
        finally:
            executor.close()
    finally:
        mp.undo()
    return local, parallel, kill


def test_workers_give_the_records_and_report_of_one_process(runs):
    local, parallel, _ = runs
    a, b = _records(local.parent), _records(parallel.parent)
    assert a.keys() == b.keys() and len(a) == 5 + 4 + 4 * 3 + 4  # embeds (+ EPN), selections, fine-tunes, protocols
    for name in a:
        assert a[name]["config"] == b[name]["config"], name
        assert _untimed(a[name]["metrics"]) == _untimed(b[name]["metrics"]), name
        assert a[name]["images"] == b[name]["images"], name
    assert _without_compute(local.read_text()) == _without_compute(parallel.read_text())


def test_a_worker_killed_mid_unit_is_retried_and_nothing_is_lost_or_doubled(runs, tiny_library):
    local, parallel, kill = runs
    assert (kill / FIRED).read_text() == "transfer_retrain" and not (kill / ARMED).exists()  # a worker did die
    keys = [json.loads(line)["key"] for line in (parallel.parent / "records.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) == len(_records(local.parent))
    assert tiny_library.library.verify() == []
    before = {p.name: p.stat().st_mtime_ns for p in (parallel.parent / "units").iterdir()}
    executor = ProcessExecutor(2, threads=1, progress=False)
    try:
        _bench(tiny_library, parallel.parent, executor)  # a rerun finds every unit recorded: no worker starts
        assert executor._pool is None
    finally:
        executor.close()
    assert {p.name: p.stat().st_mtime_ns for p in (parallel.parent / "units").iterdir()} == before


def _nap(spec, ctx):
    if spec.config["x"] < 0:
        raise ConfigError(f"x must not be negative, got {spec.config['x']}")
    time.sleep(spec.config.get("sleep", 0.0))
    from expertise.progress import progress_bar

    with progress_bar(f"nap {spec.config['x']}", 3, enabled=ctx.progress) as advance:
        for _ in range(3):
            advance(1, loss=0.5)
    return UnitResult({"x": spec.config["x"], "threads": torch.get_num_threads()}, images={"n": 1})


register_kind(UnitKind("test_nap", _nap, help="a test unit"), replace=True)


def test_every_unit_runs_on_the_workers_threads_and_errors_come_back_as_themselves(tmp_path):
    specs = [UnitSpec("test_nap", {"x": i}) for i in range(3)]
    executor = ProcessExecutor(2, threads=1, progress=False)
    try:
        done = drive([batch_plan(specs)], executor, RecordStore(tmp_path), WorkerContext(), progress=False)[0]
        assert [u.metrics["x"] for u in done] == [0, 1, 2] and [u.metrics["threads"] for u in done] == [1, 1, 1]
        with pytest.raises(ConfigError, match="x must not be negative, got -1"):
            drive([batch_plan([UnitSpec("test_nap", {"x": -1})])], executor, RecordStore(tmp_path), WorkerContext(),
                  progress=False)
    finally:
        executor.close()
    assert len(RecordStore(tmp_path).all("test_nap")) == 3  # the failed unit left no record


_ORPHAN = """
import sys, time
sys.path.insert(0, sys.argv[1])
import test_process_executor  # registers test_nap, as the suite's coordinator does
from expertise.units import UnitSpec, WorkerContext
from expertise.units.processes import ProcessExecutor
ex = ProcessExecutor(2, threads=1, progress=False)
for token in range(2):
    ex.submit(token, UnitSpec("test_nap", {"x": token, "sleep": 120.0}), WorkerContext())
ex._dispatch()
time.sleep(5)
print(" ".join(str(p.pid) for p in ex._pool._processes.values()), flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.slow  # a fresh interpreter and its fork server (~10 s)
def test_workers_end_when_their_coordinator_is_killed():
    import signal
    import subprocess
    import sys

    coordinator = subprocess.Popen([sys.executable, "-c", _ORPHAN, str(Path(__file__).parent)], stdout=subprocess.PIPE,
                                   text=True)
    try:
        workers = [int(p) for p in coordinator.stdout.readline().split()]
        assert len(workers) == 2 and all(_alive(p) for p in workers)
        coordinator.send_signal(signal.SIGKILL)
        coordinator.wait(10)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(p) for p in workers)
    finally:
        coordinator.kill()


def test_cancel_kills_every_worker_at_once(tmp_path):
    executor = ProcessExecutor(2, threads=1, progress=False)
    for token in range(3):
        executor.submit(token, UnitSpec("test_nap", {"x": token, "sleep": 60.0}), WorkerContext())
    executor._dispatch()
    time.sleep(1.0)
    procs = list(executor._pool._processes.values())
    assert len(procs) == 2 and all(p.is_alive() for p in procs)
    t0 = time.perf_counter()
    executor.cancel()
    assert time.perf_counter() - t0 < 10 and not any(p.is_alive() for p in procs)
    executor.close()


def test_a_workers_bars_reach_the_coordinators_log(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPERTISE_PROGRESS", "1")
    lines: list[str] = []
    executor = ProcessExecutor(2, threads=1, progress=True)
    try:
        with log_progress_to(lines.append):
            drive([batch_plan([UnitSpec("test_nap", {"x": 7})])], executor, RecordStore(tmp_path), WorkerContext(),
                  progress=True, log=lines.append)
    finally:
        executor.close()
    assert any(line.startswith("nap 7: 3/3 done") and "loss 0.500" in line for line in lines), lines
    assert any(line.startswith("done: test_nap in ") for line in lines), lines


def test_remote_bars_end_with_their_worker(monkeypatch):
    monkeypatch.setenv("EXPERTISE_PROGRESS", "1")
    lines: list[str] = []
    with log_progress_to(lines.append):
        bars = RemoteBars(enabled=True)
        bars.handle(("open", (1, 0), "expert x", 10))
        bars.handle(("advance", (1, 0), 4, {"loss": 1.0}))
        bars.handle(("advance", (9, 9), 1, {}))  # a bar never opened (its worker died before): ignored
        bars.close_all()
    assert len(lines) == 1 and lines[0].startswith("expert x: 4/10 done in ") and lines[0].endswith("loss 1.000")


def test_jobs_are_checked_in_one_line(monkeypatch):
    monkeypatch.delenv("EXPERTISE_JOBS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert resolve_jobs(None, None) == (4, 1) and resolve_jobs(None, 2) == (2, 2) and resolve_jobs(1, None) == (1, 4)
    assert resolve_jobs(3, None) == (3, 1)
    monkeypatch.setenv("EXPERTISE_JOBS", "2")
    assert resolve_jobs(None, None) == (2, 2)
    with pytest.raises(ConfigError, match=r"--jobs 0: give at least 1"):
        resolve_jobs(0, None)
    monkeypatch.setenv("EXPERTISE_JOBS", "many")
    with pytest.raises(ConfigError, match="EXPERTISE_JOBS='many'"):
        resolve_jobs(None, None)
    from expertise.config import get_preset

    gpu = get_preset("gpu")
    need = worker_memory(gpu)
    assert need > 3 << 30  # 310,000 images of 64 px, uint8, per worker
    with pytest.raises(ConfigError, match=r"--jobs 8: each worker needs about .* GB .*: 2 fit; pass --jobs 2"):
        check_memory(8, gpu, available=int(2.5 * need))
    check_memory(2, gpu, available=int(2.5 * need))
    with pytest.raises(ExpertiseError):
        ProcessExecutor(1)
