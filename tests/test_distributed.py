"""Data-parallel training under torchrun (expertise/distributed.py, train.fit): two gloo processes on
the CPU with half the global batch each against one process with the whole batch.

Tolerance: the weights of 2 ranks x b/2 and of 1 process x b agree within ``ATOL`` + ``RTOL`` * |w|
(float32; the only difference is the order of the sums: per-rank means averaged by the all-reduce
instead of one mean over b). Resuming a DDP run from its checkpoint gives the uninterrupted run's
weights within the same tolerance (in practice bit for bit).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import ddp_job
from expertise import distributed
from expertise.errors import ConfigError
from expertise.train import EpochSampler

ROOT = Path(__file__).resolve().parents[1]
ATOL, RTOL = 1e-5, 1e-4  # float32 weights after 6 SGD steps (measured: 2.6e-8)
E2E_ATOL = 2e-3  # B and the full experts of the tiny preset built by torchrun against one process


def torchrun(*args: str, nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=N ARGS`` (a free port of its own), one thread per rank."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
           "EXPERTISE_PROGRESS": "0"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                           *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=timeout)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    done = torchrun(str(ROOT / "tests" / "ddp_job.py"), str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        torch.testing.assert_close(v, b[k], atol=ATOL, rtol=RTOL, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.slow  # torchrun starts 2 fresh interpreters (~12 s on an idle machine)
def test_two_ranks_with_half_batches_equal_one_process_with_the_whole(ddp_run):
    single, losses = ddp_job.train(ddp_job.Batches())
    ranks = [load_file(str(ddp_run / f"ddp.rank{r}.safetensors")) for r in (0, 1)]
    start = ddp_job.weights(ddp_job.model())
    assert any(not torch.allclose(ranks[0][k], start[k]) for k in start), "the DDP run did not train"
    assert_close(ranks[0], ddp_job.weights(single))
    for k in ranks[0]:  # DDP keeps the replicas identical
        assert torch.equal(ranks[0][k], ranks[1][k]), k
    ddp_losses = json.loads((ddp_run / "losses.json").read_text())["ddp"]
    np.testing.assert_allclose(ddp_losses, losses, rtol=1e-5)  # the stats hold the global batch's loss


@pytest.mark.slow
def test_resumed_ddp_run_ends_where_the_uninterrupted_one_does(ddp_run):
    resumed = load_file(str(ddp_run / "resumed.safetensors"))
    assert_close(resumed, load_file(str(ddp_run / "ddp.rank0.safetensors")))
    losses = json.loads((ddp_run / "losses.json").read_text())
    assert len(losses["resumed"]) == ddp_job.STEPS  # the checkpoint's 4 losses and the 2 after it
    np.testing.assert_allclose(losses["resumed"], losses["ddp"], rtol=1e-6)


@pytest.mark.slow
def test_world_size_that_does_not_divide_the_batch_is_one_line(ddp_run):
    msg = (ddp_run / "error.txt").read_text()
    assert "\n" not in msg
    assert "global batch of 7 does not split over 2 torchrun processes" in msg
    assert "divisible by 2" in msg and "--nproc_per_node" in msg


def test_shards_in_rank_order_are_the_global_batch():
    sampler = EpochSampler(np.arange(13), 6, seed=3)
    shards = [sampler.shard(r, 3) for r in range(3)]
    for step in (0, 1, 2, 7):  # across epochs too
        assert np.array_equal(np.concatenate([s.batch(step) for s in shards]), sampler.batch(step))
        assert all(len(s.batch(step)) == 2 for s in shards)
    with pytest.raises(ConfigError, match="divisible by 4"):
        sampler.shard(0, 4)
    with pytest.raises(ConfigError, match="rank 3 is not one of 3"):
        sampler.shard(3, 3)


def test_check_divides_suggests_a_setting():
    distributed.check_divides({"baseline.batch_size": 64}, 4)
    with pytest.raises(ConfigError, match=r"baseline.batch_size = 64 does not split over 3 .*--set baseline.batch_size=63"):
        distributed.check_divides({"baseline.batch_size": 64}, 3)


def test_one_process_has_no_process_group(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"):
        monkeypatch.delenv(k, raising=False)
    assert distributed.launch_from_env() is None and not distributed.launched()
    assert (distributed.rank(), distributed.world(), distributed.is_main()) == (0, 1, True)
    distributed.barrier()
    assert distributed.all_sum([1.5, 2.0]) == [1.5, 2.0] and distributed.broadcast_int(7) == 7


@pytest.mark.parametrize("env, match", [
    ({"WORLD_SIZE": "two", "RANK": "0"}, "malformed"),
    ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "x"}, "inconsistent"),
    ({"WORLD_SIZE": "2", "RANK": "1"}, "MASTER_ADDR is not"),
])
def test_bad_torchrun_environment_is_one_line(env, match):
    with pytest.raises(ConfigError, match=match):
        distributed.launch_from_env(env)


class _Recording:
    """Stands for UpstreamData: remembers which images were rendered."""

    def __init__(self) -> None:
        self.rendered: list[int] = []

    def images(self, idx: np.ndarray) -> torch.Tensor:
        self.rendered += idx.tolist()
        return torch.from_numpy(np.repeat(idx.astype(np.uint8), 3 * 4 * 4).reshape(len(idx), 3, 4, 4))

    def targets(self, idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(idx.astype(np.float32))[:, None]


def test_upstream_batches_render_only_their_shard():
    from expertise.models.backbones import Preprocessing
    from expertise.upstream.baseline import UpstreamBatches

    data = _Recording()
    whole = UpstreamBatches(data, np.arange(20), 8, Preprocessing(4), seed=5)  # type: ignore[arg-type]
    halves = [whole.shard(r, 2) for r in (0, 1)]
    x, y = whole(3)
    data.rendered.clear()
    parts = [h(3) for h in halves]
    assert len(data.rendered) == 8  # 4 + 4: each shard rendered its own half only
    assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
    assert torch.equal(whole(3)[1], y)  # sharding made copies; the whole source is unchanged


@pytest.mark.filterwarnings("ignore:skipped 1 unreadable")
def test_disk_batches_decode_only_their_shard(tmp_path):
    from disk_datasets import make_dataset

    from expertise.data.disk_layouts import read_manifest
    from expertise.upstream.streaming import DiskBatches
    from expertise.models.backbones import Preprocessing

    index = read_manifest(make_dataset(tmp_path)["manifest"])
    prep = Preprocessing(16)
    with DiskBatches(index, 4, prep, seed=2, steps=3) as whole:
        x, y = whole(1)
        skipped = len(whole.skipped)
    parts = []
    for r in (0, 1):
        with DiskBatches(index, 4, prep, seed=2, steps=3).shard(r, 2) as half:
            parts.append(half(1))
            skipped -= len(half.skipped)
        assert len(parts[-1][0]) <= 2
    assert skipped == 0
    assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)


@pytest.mark.slow
def test_torchrun_builds_a_valid_library_with_the_weights_of_one_process(tmp_path, tiny_library):
    """``torchrun -m expertise upstream`` then ``experts --kind full`` with 2 gloo ranks (the second
    reuses B, loaded by every rank) on the shared tiny library's settings: the library verifies and
    B and the full experts are the weights one process trained. Tolerance ``E2E_ATOL``: float32
    reordering, amplified over 40 steps of B at learning rate 0.1 (measured ~3e-4 after 10 steps;
    B trained on half the batch instead differs by ~3e-2)."""
    from conftest import TINY_OVERRIDES

    from expertise.library import Library

    lib = tmp_path / "lib"
    common = ["--preset", "tiny", "--library", str(lib), "--device", "cpu", "--quiet"]
    for k, v in TINY_OVERRIDES.items():
        common += ["--set", f"{k}={v}"]
    up = torchrun("-m", "expertise", "upstream", *common)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    assert up.stdout.count("baseline bit_xs.baseline: upstream holdout") == 1  # rank 0 alone logs
    ex = torchrun("-m", "expertise", "experts", "--kind", "full", *common)
    assert ex.returncode == 0, ex.stdout[-3000:] + ex.stderr[-3000:]
    assert "baseline bit_xs.baseline already in the library: reusing it" in ex.stdout
    library = Library.open(lib)
    assert library.verify() == []
    ours, theirs = set(library.names()), set(tiny_library.library.names())
    full = sorted(n for n in theirs if tiny_library.library.info(n).kind in ("baseline", "full_expert"))
    assert len(full) == 4 and set(full) <= ours and "bit_xs.epn" in ours
    for name in full:
        a, b = library.load(name).state_dict(), tiny_library.library.load(name).state_dict()
        worst = max((a[k] - b[k]).abs().max().item() for k in a)
        assert worst < E2E_ATOL, f"{name}: weights differ by {worst}"
        assert library.info(name).extra["stats"]["images"] == tiny_library.library.info(name).extra["stats"]["images"]


def test_commands_that_do_not_train_data_parallel_refuse_torchrun(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from expertise.cli import app

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    res = CliRunner().invoke(app, ["demo", "--preset", "tiny", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "launch it without torchrun" in res.output


def test_build_commands_check_every_batch_they_train_before_any_work(monkeypatch):
    from expertise.cli.upstream_cmds import data_parallel_options
    from expertise.config import get_preset

    monkeypatch.setattr(distributed, "world", lambda: 4)
    data_parallel_options(get_preset("tiny"), ("full",))  # 64 everywhere: 16 per rank
    odd = get_preset("tiny", {"expert.batch_size": "30"})
    data_parallel_options(odd, ())  # `upstream` trains no expert
    with pytest.raises(ConfigError, match=r"expert.batch_size = 30 does not split over 4 .*--set expert.batch_size=28"):
        data_parallel_options(odd, ("full",))
    with pytest.raises(ConfigError, match="adapter experts train in one process"):
        data_parallel_options(get_preset("tiny"), ("full", "adapter"))
