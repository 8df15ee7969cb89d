"""Data-parallel step time: `make bench-ddp`, or
`.venv/bin/python -m perf.ddp [--preset cpu] [--steps 20] [--repeats 3] [--ranks 2] [--quick]`.

Times steps of B's training through the one loop (``train.fit``: the preset's backbone at its
resolution, B's global batch and settings, every hierarchy-sized output) in three ways on the same
machine: one process with 1 thread, one process with ``--ranks`` threads, and ``--ranks`` gloo
processes of 1 thread each under torchrun (DistributedDataParallel, each rank half the global batch
when ``--ranks`` is 2). The batches are synthetic images already prepared in memory, so the figures
are the step alone (forward, backward, the gradient all-reduce, the update), not data loading. Each
cell is the median of ``--repeats`` runs (each in a fresh process, after a warm-up of a few steps
in it). Run it on an otherwise idle machine. Writes perf/ddp.md and splices it into BENCHMARKS.md
(``--quick``, a check that the script runs, only prints).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from perf.timing import machine

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- ddp:start -->", "<!-- ddp:end -->"
WARMUP = 3


class Synthetic:
    """Random prepared images and multi-hot targets in memory, drawn by an ``EpochSampler``; ``shard``
    as the upstream batch sources have it."""

    def __init__(self, batch: int, res: int, outputs: int, sampler=None) -> None:
        from expertise.train import EpochSampler

        g = torch.Generator().manual_seed(0)
        n = 4 * batch
        self.x = torch.randn(n, 3, res, res, generator=g)
        self.y = (torch.rand(n, outputs, generator=g) < 0.05).float()
        self.sampler = sampler or EpochSampler(np.arange(n), batch, seed=0)
        self.args = (batch, res, outputs)

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.from_numpy(self.sampler.batch(step))
        return self.x[idx], self.y[idx]

    def shard(self, rank: int, world: int) -> Synthetic:
        return Synthetic(*self.args, sampler=self.sampler.shard(rank, world))


def worker(preset: str, steps: int, threads: int, out: Path) -> None:
    """One timed run (in this process, or as one rank of torchrun): seconds per step into ``out``."""
    from expertise import distributed
    from expertise.config import get_preset
    from expertise.models.backbones import BACKBONES, ExpertModel, count_parameters
    from expertise.train import fit, multilabel_loss

    if distributed.launched():
        distributed.init("cpu")
    torch.set_num_threads(threads)
    cfg = get_preset(preset)
    backbone = BACKBONES[cfg.backbone]
    outputs = 150
    torch.manual_seed(0)
    model = ExpertModel(backbone, num_outputs=outputs)
    batches = Synthetic(cfg.baseline.batch_size, backbone.resolution, outputs)
    fit(model, batches, dataclasses.replace(cfg.baseline, steps=WARMUP, warmup_steps=0), multilabel_loss,
        show_progress=False)
    stats = fit(model, batches, dataclasses.replace(cfg.baseline, steps=steps, warmup_steps=0), multilabel_loss,
                show_progress=False)
    seconds = distributed.all_max([stats.seconds])[0]  # the slowest rank sets the pace
    if distributed.is_main():
        out.write_text(json.dumps({"seconds_per_step": seconds / steps, "images_per_step": stats.images / steps,
                                   "parameters": count_parameters(model), "world": distributed.world()}))


def run(preset: str, steps: int, threads: int, ranks: int) -> dict:
    """One fresh run: ``ranks`` == 1 in one process, else under torchrun with a free port."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        args = ["-m", "perf.ddp", "--worker", str(out), "--preset", preset, "--steps", str(steps), "--threads", str(threads)]
        if ranks > 1:
            args = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", *args]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "EXPERTISE_PROGRESS": "0",
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"perf.ddp: a run failed ({ranks} rank(s)):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        return json.loads(out.read_text())


def section(preset: str, steps: int, repeats: int, ranks: int) -> str:
    from expertise.config import get_preset
    from expertise.models.backbones import BACKBONES

    setups = [("1 process, 1 thread", 1, 1), (f"1 process, {ranks} threads", ranks, 1),
              (f"{ranks} gloo ranks (torchrun), 1 thread each", 1, ranks)]
    results: dict[str, list[dict]] = {name: [] for name, _, _ in setups}
    for _ in range(repeats):  # interleaved, so slow drifts of the machine touch every setup alike
        for name, threads, n in setups:
            results[name].append(run(preset, steps, threads, n))
    cfg = get_preset(preset)
    backbone = BACKBONES[cfg.backbone]
    first = results[setups[0][0]][0]
    grad_mb = first["parameters"] * 4 / 1e6
    base = statistics.median(r["seconds_per_step"] for r in results[setups[0][0]])
    runs = "one run" if repeats == 1 else f"the median of {repeats} runs"
    lines = [
        START, "## Data-parallel training (torchrun, gloo)", "",
        f"Regenerate with `make bench-ddp` (`python -m perf.ddp`) on an otherwise idle machine. Steps of B's training "
        f"through `train.fit` on the `{preset}` preset ({cfg.backbone}, {backbone.resolution} px, global batch "
        f"{cfg.baseline.batch_size}, {first['parameters']:,} parameters: {grad_mb:.1f} MB of float32 gradients "
        f"all-reduced per step), synthetic images already in memory (the step alone, no data loading), {steps} timed "
        f"steps after {WARMUP} warm-up steps, each cell {runs} in a fresh process; {os.cpu_count()} cores, "
        f"{machine()}, torch {torch.__version__}. Every setup takes the same global "
        f"batch, so the same steps reach the same weights (tests/test_distributed.py).", "",
        "| setup | s / step | images / s | time / 1 process with 1 thread |", "|---|---:|---:|---:|",
    ]
    for name, _, _ in setups:
        sec = statistics.median(r["seconds_per_step"] for r in results[name])
        every = ", ".join(f"{r['seconds_per_step']:.3f}" for r in results[name])
        lines.append(f"| {name} | {sec:.3f} [{every}] | {first['images_per_step'] / sec:.0f} | {sec / base:.2f} |")
    lines += [
        "",
        f"What {os.cpu_count()} CPU cores can show: {ranks} ranks share the cores one process with {ranks} threads "
        "uses, so the ratio of the last two rows is the price of data parallelism itself (the gradient all-reduce "
        "through gloo, per-rank overheads, smaller per-rank batches) against intra-op threading, not a speed-up. "
        "On N GPUs each rank has its own device: a step takes about t(b/N) + t_allreduce, where t(b/N) is one "
        "device's step on its share of the batch and the ring all-reduce moves 2(N-1)/N of the gradient bytes "
        "per rank (over NVLink or the network; DDP overlaps it with the backward pass bucket by bucket), so the "
        "speed-up stays near N while t(b/N) is well above the all-reduce time.",
        "", END,
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu", help="preset whose backbone and B settings are timed")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per run")
    ap.add_argument("--repeats", type=int, default=3, help="runs per setup (the median is reported)")
    ap.add_argument("--ranks", type=int, default=2, help="torchrun processes (and the threads of the one-process run)")
    ap.add_argument("--quick", action="store_true", help="tiny preset, 2 steps, 1 run: checks the script, writes nothing")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        worker(args.preset, args.steps, args.threads, args.worker)
        return
    if args.quick:
        print(section("tiny", 2, 1, args.ranks))
        return
    from perf.timing import splice_section

    text = section(args.preset, args.steps, args.repeats, args.ranks)
    print(text)
    splice_section(ROOT / "perf" / "ddp.md", START, END, text)


if __name__ == "__main__":
    main()
