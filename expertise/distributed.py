"""Data-parallel runs launched by torchrun: the process group, this process's rank, and the few
collectives the training loop and the library's writers need.

``torchrun --nproc_per_node=N -m expertise upstream ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR``/``MASTER_PORT`` in their environment;
:func:`init` reads them and joins the process group: NCCL with ``cuda:LOCAL_RANK`` on a machine with
CUDA GPUs, gloo on the CPU. Without torchrun (or with one process) nothing is initialised, and
every function here answers as for the only process: rank 0 of 1, the main one, barriers that
return at once. :func:`expertise.train.fit` reads :func:`world` to decide whether to train
data-parallel.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from expertise.errors import ConfigError

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Launch:
    """What torchrun told this process: its global ``rank`` of ``world`` and its ``local_rank`` on
    this node."""

    rank: int
    world: int
    local_rank: int


def launch_from_env(env: Mapping[str, str] | None = None) -> Launch | None:
    """The torchrun launch this process is part of, or None when it was not started by torchrun
    (no ``WORLD_SIZE``). Malformed values are a one-line :class:`ConfigError`."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return None
    try:
        rank, world, local = (int(env.get(k, "0")) for k in ENV)
    except ValueError:
        raise ConfigError(f"torchrun's environment is malformed ({', '.join(f'{k}={env.get(k)!r}' for k in ENV)}); "
                          "launch with torchrun, or unset WORLD_SIZE to run in one process") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(f"torchrun's environment is inconsistent (RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}); "
                          "launch with torchrun, or unset WORLD_SIZE to run in one process")
    if world > 1 and "MASTER_ADDR" not in env:
        raise ConfigError("WORLD_SIZE is set but MASTER_ADDR is not: launch the command with torchrun "
                          "(or unset WORLD_SIZE to run in one process)")
    return Launch(rank, world, local)


def launched() -> bool:
    """Whether this process is one of several torchrun started."""
    run = launch_from_env()
    return run is not None and run.world > 1


def init(device: str = "auto") -> torch.device:
    """Join torchrun's process group (once) and return this rank's device: ``cuda:LOCAL_RANK`` with
    NCCL when ``device`` is auto or cuda and CUDA is there, the CPU with gloo for ``device`` cpu or
    without CUDA. An explicit ``cuda:N`` is refused: torchrun gives each rank its GPU."""
    run = launch_from_env()
    if run is None or run.world == 1:
        raise ConfigError("not launched by torchrun with more than one process; call expertise.runtime.resolve_device instead")
    name = device.strip().lower()
    if name not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device {device}: under torchrun each rank uses the GPU of its LOCAL_RANK; "
                          "pass --device cuda (or auto), or cpu")
    cuda = name != "cpu" and torch.cuda.is_available()
    if name == "cuda" and not cuda:
        raise ConfigError(f"--device cuda: this machine has no usable CUDA GPU (torch {torch.__version__} sees none); "
                          "use --device cpu or auto")
    if cuda and run.local_rank >= torch.cuda.device_count():
        raise ConfigError(f"LOCAL_RANK {run.local_rank} but this node has {torch.cuda.device_count()} CUDA device(s): "
                          "pass --nproc_per_node at most the number of GPUs")
    dev = torch.device(f"cuda:{run.local_rank}") if cuda else torch.device("cpu")
    if dist.is_initialized():
        return dev
    if cuda:
        torch.cuda.set_device(dev)
        dist.init_process_group("nccl", device_id=dev)
    else:
        dist.init_process_group("gloo")
    atexit.register(shutdown)
    return dev


def shutdown() -> None:
    """Leave the process group (at exit; harmless when there is none)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def world() -> int:
    """How many processes train together (1 without a process group)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes: checkpoints, records, the library, logs and progress."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank is here (returns at once in one process)."""
    if world() > 1:
        dist.barrier()


def _device() -> torch.device:
    """Where small collective tensors live: the current GPU for NCCL, the CPU for gloo."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _all_reduce(values: list[float], op: dist.ReduceOp.RedOpType) -> list[float]:
    if world() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(t, op=op)
    return t.cpu().tolist()


def all_sum(values: list[float]) -> list[float]:
    """Each value summed over the ranks (float64; the values themselves in one process)."""
    return _all_reduce(values, dist.ReduceOp.SUM)


def all_max(values: list[float]) -> list[float]:
    """Each value's maximum over the ranks."""
    return _all_reduce(values, dist.ReduceOp.MAX)


def broadcast_int(value: int) -> int:
    """Rank 0's ``value`` on every rank (what the others pass is ignored)."""
    if world() == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=_device())
    dist.broadcast(t, src=0)
    return int(t.item())


def check_divides(batches: Mapping[str, int], n: int | None = None, settings: bool = True) -> None:
    """A one-line :class:`ConfigError` unless every global batch size in ``batches`` splits evenly
    over ``n`` ranks (default: this run's world size). The keys are preset settings
    (``baseline.batch_size``, suggested as ``--set``) or, with ``settings=False``, what trains."""
    n = world() if n is None else n
    for name, size in batches.items():
        if size % n:
            near = (size // n) * n or n
            what = f"{name} = {size}" if settings else f"{name}: the global batch of {size}"
            fix = f"--set {name}={near}" if settings else str(near)
            raise ConfigError(
                f"{what} does not split over {n} torchrun processes (each rank takes an equal share of the global "
                f"batch): pick a batch size divisible by {n} (e.g. {fix}) or another --nproc_per_node")
