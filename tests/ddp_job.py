"""A few steps of :func:`expertise.train.fit` on a tiny model, run by torchrun from
``tests/test_distributed.py`` (``torchrun --standalone --nproc_per_node=2 tests/ddp_job.py OUT``) and
by the test itself in one process, so both train on the same data with the same settings.

Under torchrun it runs, in one process group: an uninterrupted run (``OUT/ddp.rank<R>.safetensors``),
a run interrupted after its checkpoint at step 4 and the rerun that resumes it
(``OUT/resumed.safetensors``), and a global batch the world size does not divide (its error in
``OUT/error.txt``). Rank 0 also writes the losses (``OUT/losses.json``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from expertise import distributed
from expertise.checkpoint import Checkpoint
from expertise.errors import ConfigError
from expertise.train import EpochSampler, TrainConfig, fit, multilabel_loss

STEPS = 6
BATCH = 8  # the global batch: 4 per rank with 2 ranks
CFG = TrainConfig(steps=STEPS, batch_size=BATCH, lr=0.1, warmup_steps=2, weight_decay=1e-3, decay_at=(0.5,),
                  grad_clip=1.0)


class Stop(Exception):
    """Stands for a run killed in the middle."""


class Batches:
    """Fixed random images and multi-hot targets, drawn by an :class:`EpochSampler`; ``shard`` as
    the upstream batch sources have it. ``stop_at``: raise :class:`Stop` when asked for that step."""

    def __init__(self, batch_size: int = BATCH, stop_at: int | None = None, sampler: EpochSampler | None = None) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(40, 3, 8, 8, generator=g)
        self.y = (torch.rand(40, 5, generator=g) < 0.3).float()
        self.sampler = sampler or EpochSampler(np.arange(40), batch_size, seed=1)
        self.stop_at = stop_at
        self.seen: list[int] = []  # how many images each call returned

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if step == self.stop_at:
            raise Stop
        idx = torch.from_numpy(self.sampler.batch(step))
        self.seen.append(len(idx))
        return self.x[idx], self.y[idx]

    def shard(self, rank: int, world: int) -> Batches:
        return Batches(stop_at=self.stop_at, sampler=self.sampler.shard(rank, world))


def model() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 5))


def train(batches: Batches, checkpoint: Checkpoint | None = None) -> tuple[nn.Module, list[float]]:
    m = model()
    stats = fit(m, batches, CFG, multilabel_loss, desc="ddp test", show_progress=False, checkpoint=checkpoint)
    return m, stats.losses


def weights(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in m.state_dict().items()}


def main(out: Path) -> None:
    distributed.init("cpu")
    rank = distributed.rank()
    ddp, losses = train(Batches())
    save_file(weights(ddp), str(out / f"ddp.rank{rank}.safetensors"))
    ckpt = out / "run.ckpt"
    try:
        train(Batches(stop_at=5), Checkpoint(ckpt, {"run": "ddp test"}, every_steps=2))
        raise AssertionError("the interrupted run was not interrupted")
    except Stop:
        pass
    resumed, resumed_losses = train(Batches(), Checkpoint(ckpt, {"run": "ddp test"}, every_steps=2))
    if rank == 0:
        save_file(weights(resumed), str(out / "resumed.safetensors"))
        (out / "losses.json").write_text(json.dumps({"ddp": losses, "resumed": resumed_losses}))
    try:
        fit(model(), Batches(batch_size=7), CFG.__class__(steps=2, batch_size=7, lr=0.1), multilabel_loss,
            desc="odd batch", show_progress=False)
    except ConfigError as e:
        if rank == 0:
            (out / "error.txt").write_text(str(e))
    distributed.barrier()


if __name__ == "__main__":
    assert os.environ.get("OMP_NUM_THREADS") == "1", "the test runs each rank on one thread"
    main(Path(sys.argv[1]))
