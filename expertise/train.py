"""The one training loop. Upstream baseline, experts and downstream fine-tuning all call
:func:`fit`; what differs between them is the batch source, the loss and the schedule.

Schedule (BiT-HyperRule style): SGD with momentum 0.9, linear warm-up, then the learning rate
drops by ``decay_factor`` at each fraction of training listed in ``decay_at``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from expertise import distributed
from expertise.errors import ConfigError
from expertise.progress import progress_bar
from expertise.runtime import autocast

if TYPE_CHECKING:
    from expertise.checkpoint import Checkpoint

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 0.0
    warmup_steps: int = 0
    decay_at: tuple[float, ...] = (0.3, 0.6, 0.9)
    decay_factor: float = 0.1
    grad_clip: float | None = 1.0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError(f"training needs steps >= 1, batch_size >= 1 and lr > 0; got {self}")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ConfigError(f"warmup_steps must be within [0, steps]; got {self.warmup_steps} of {self.steps}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> TrainConfig:
        """The config a :meth:`to_json` (read back from JSON) describes."""
        d = dict(d)
        if "decay_at" in d:
            d["decay_at"] = tuple(d["decay_at"])
        return cls(**d)

    def lr_at(self, step: int) -> float:
        """Learning rate for ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        drops = sum(step >= f * self.steps for f in self.decay_at)
        return self.lr * self.decay_factor**drops


@dataclass
class TrainStats:
    steps: int = 0
    images: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        tail = self.losses[-max(1, len(self.losses) // 10):]
        return float(np.mean(tail)) if tail else float("nan")

    def to_json(self) -> dict:
        return {"steps": self.steps, "images": self.images, "seconds": round(self.seconds, 3), "final_loss": self.final_loss}


def multilabel_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sigmoid cross-entropy over every label node, summed over nodes and averaged over the batch
    (BiT's upstream loss on multi-label data)."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / logits.shape[0]


def softmax_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, targets)


class _Step(nn.Module):
    """``forward(model, x)`` as a module, so DistributedDataParallel sees every forward however the
    caller computes its logits."""

    def __init__(self, model: nn.Module, forward: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.step = forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.step(self.model, x)


def shard_batches(batches: Callable[[int], Batch], batch_size: int, desc: str) -> Callable[[int], Batch]:
    """``batches`` for this rank of a data-parallel run: its ``shard(rank, world)``, which loads only
    the rank's share of each global batch (the batch sources of :class:`EpochSampler` have one)."""
    n = distributed.world()
    distributed.check_divides({desc: batch_size}, n, settings=False)
    shard = getattr(batches, "shard", None)
    if shard is None:
        raise ConfigError(f"{desc}: its batch source cannot load one rank's share of a batch, so it cannot train under "
                          "torchrun; run it in one process (batch sources with shard(rank, world), as UpstreamBatches "
                          "and DiskBatches, train data-parallel)")
    return shard(distributed.rank(), n)


def _restore(checkpoint: Checkpoint, model: nn.Module, opt: torch.optim.Optimizer, stats: TrainStats,
             steps: int, device: torch.device) -> int:
    """Every rank resumes from the same checkpoint (rank 0's lines alone are shown); a step the ranks
    do not agree on (the file changed while they read it) is an error rather than a silent divergence."""
    log = checkpoint.log
    if not distributed.is_main():
        checkpoint.log = lambda _: None
    try:
        first = checkpoint.restore(model, opt, stats, steps, device)
    finally:
        checkpoint.log = log
    hi, neg_lo = distributed.all_max([first, -first])
    if hi != -neg_lo:
        raise ConfigError(f"the torchrun processes resumed from different steps ({int(-neg_lo)} and {int(hi)}) of "
                          f"{checkpoint.path}: it changed while they read it; run the command again")
    return first


def fit(
    model: nn.Module,
    batches: Callable[[int], Batch],
    cfg: TrainConfig,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    params: Iterable[nn.Parameter] | None = None,
    forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
    device: torch.device = torch.device("cpu"),
    desc: str = "train",
    show_progress: bool = True,
    checkpoint: Checkpoint | None = None,
) -> TrainStats:
    """Train ``model`` for ``cfg.steps`` steps. ``batches(step)`` returns (inputs, targets) on CPU;
    ``params`` restricts what learns (default: every parameter that requires grad); ``forward``
    maps (model, inputs) to logits (default: ``model(inputs)``). With a ``checkpoint``
    (:class:`expertise.checkpoint.Checkpoint`) the run first resumes from it when it is there and
    of the same identity, and saves one periodically; the returned stats then count the whole run.

    Under torchrun (:mod:`expertise.distributed`, more than one process) the run is data-parallel:
    ``cfg.batch_size`` is the global batch, each rank loads its equal share (``batches.shard``), the
    model is wrapped in DistributedDataParallel (gradients averaged over ranks, so with a loss that
    is a mean over the batch the step equals one process's step on the whole batch), the losses and
    image counts in the stats are the global ones, and only rank 0 saves checkpoints and shows
    progress; every rank resumes from the same checkpoint."""
    trainable = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    if not trainable:
        raise ConfigError(f"{desc}: nothing to train (no parameter requires grad)")
    world = distributed.world()
    if world > 1:
        batches = shard_batches(batches, cfg.batch_size, desc)
    decay = [p for p in trainable if p.ndim > 1]
    no_decay = [p for p in trainable if p.ndim <= 1]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, momentum=cfg.momentum,
    )
    forward = forward or (lambda m, x: m(x))
    model.to(device).train()
    stats = TrainStats()
    first = _restore(checkpoint, model, opt, stats, cfg.steps, device) if checkpoint is not None else 0
    step_fn: Callable[[torch.Tensor], torch.Tensor] = functools.partial(forward, model)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        gpu = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
        step_fn = DistributedDataParallel(_Step(model, forward), device_ids=gpu)
    earlier, start = stats.seconds, time.perf_counter()
    with progress_bar(desc, total=cfg.steps, enabled=show_progress and distributed.is_main()) as advance:
        if first:
            advance(first)
        for step in range(first, cfg.steps):
            for group in opt.param_groups:
                group["lr"] = cfg.lr_at(step)
            x, y = batches(step)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast(device):
                logits = step_fn(x)
            loss = loss_fn(logits.float(), y)
            # One number for every rank: the mean of the ranks' losses (that of the whole global batch)
            total, images = distributed.all_sum([loss.item(), float(x.shape[0])])
            mean_loss = total / world
            if not np.isfinite(mean_loss):
                raise FloatingPointError(f"{desc}: loss became {mean_loss} at step {step}; lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            opt.step()
            stats.losses.append(mean_loss)
            stats.images += int(images)
            stats.steps += 1
            advance(1, loss=mean_loss)
            if checkpoint is not None and distributed.is_main() and checkpoint.due(step + 1, cfg.steps):
                stats.seconds = earlier + time.perf_counter() - start
                checkpoint.save(step + 1, model, opt, stats, device)
    del step_fn  # a DDP wrapper's hooks go with it
    model.eval()
    stats.seconds = earlier + time.perf_counter() - start
    return stats


class EpochSampler:
    """Seeded sampling of batch indices: a fresh permutation of ``indices`` each epoch, so every
    example is seen once per epoch; deterministic given the seed, and ``batch(step)`` is a pure
    function of the step, so a run can restart from any step."""

    def __init__(self, indices: np.ndarray, batch_size: int, seed: int) -> None:
        if len(indices) == 0:
            raise ConfigError("cannot sample batches from an empty set of examples")
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.rank, self.world = 0, 1
        self._epoch = -1
        self._perm = self.indices

    def shard(self, rank: int, world: int) -> EpochSampler:
        """The sampler of rank ``rank`` of ``world`` data-parallel processes: ``batch(step)`` is its
        contiguous share (``batch_size / world`` indices) of the same global batch, so the ranks'
        shares in rank order are exactly one process's batch at any world size."""
        if not 0 <= rank < world:
            raise ConfigError(f"rank {rank} is not one of {world} processes")
        distributed.check_divides({"the sampler": self.batch_size}, world, settings=False)
        out = EpochSampler(self.indices, self.batch_size, self.seed)
        out.rank, out.world = rank, world
        return out

    def batch(self, step: int) -> np.ndarray:
        """The indices of step ``step``: the global batch, or this shard's share of it."""
        full = self.global_batch(step)
        if self.world == 1:
            return full
        size = self.batch_size // self.world
        return full[self.rank * size:(self.rank + 1) * size]

    def global_batch(self, step: int) -> np.ndarray:
        n = len(self.indices)
        out = np.empty(self.batch_size, dtype=np.int64)
        pos = step * self.batch_size
        filled = 0
        while filled < self.batch_size:
            epoch, offset = divmod(pos + filled, n)
            if epoch != self._epoch:
                self._perm = self.indices[np.random.default_rng([self.seed, epoch]).permutation(n)]
                self._epoch = epoch
            take = min(self.batch_size - filled, n - offset)
            out[filled:filled + take] = self._perm[offset:offset + take]
            filled += take
        return out
