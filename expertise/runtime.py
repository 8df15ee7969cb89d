"""Device, threads and seeding: the few process-wide settings every stage shares, and the
:class:`RunContext` a stage is handed instead of a device, a seed, a progress flag, a log, a record
store and an embedding cache one by one."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from expertise.errors import ConfigError

if TYPE_CHECKING:
    from expertise.select.embed import EmbeddingCache
    from expertise.store import RecordStore


@dataclass(frozen=True)
class RunContext:
    """What every stage of one run shares: the device it computes on, its seed (every random stream
    is derived from it and the unit's name), whether it shows progress, where it logs, and where
    finished units (``store``) and embeddings (``cache``) are kept. ``with_(...)`` gives a copy with
    some fields changed."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    progress: bool = True
    log: Callable[[str], None] = print
    store: RecordStore | None = None
    cache: EmbeddingCache | None = None

    def with_(self, **changes: Any) -> RunContext:
        return replace(self, **changes)

    def require_store(self) -> RecordStore:
        if self.store is None:
            raise ValueError("this stage records its units: give the RunContext a store (RecordStore(DIR))")
        return self.store


def default_threads() -> int:
    """The CPU threads a run uses unless told: ``OMP_NUM_THREADS`` when set (its first number, as
    OpenMP reads it), else the cores this process may run on (its affinity mask, which a container or
    ``taskset`` narrows), else every core."""
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def resolve_device(device: str = "auto") -> torch.device:
    """The device a name stands for: ``auto`` (CUDA when there is one, else the CPU), ``cpu``,
    ``cuda`` or ``cuda:N``. Anything else, or CUDA on a machine without it, is a one-line
    :class:`ConfigError` before any work starts."""
    name = device.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    kind, _, index = name.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ConfigError(f"unknown device {device!r}; choose auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: this machine has no usable CUDA GPU (torch {torch.__version__} "
                          f"sees none); use --device cpu or auto")
    if index and int(index) >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                          f"numbered from 0")
    return torch.device(name)


def configure(threads: int | None = None, device: str = "auto") -> torch.device:
    """Check the device and set torch's CPU thread count (default :func:`default_threads`); returns
    the device ("auto" prefers CUDA). Both are checked before anything is set."""
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads {threads}: give at least 1 (default: OMP_NUM_THREADS, else the cores "
                          f"this process may use, here {default_threads()})")
    dev = resolve_device(device)
    torch.set_num_threads(threads or default_threads())
    return dev


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator for code that wants its own stream."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def derive_seed(seed: int, *parts: object) -> int:
    """A stable 63-bit seed for a sub-stream named by ``parts`` (e.g. (seed, "expert", node))."""
    import hashlib

    h = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


def autocast(device: torch.device):
    """bf16 autocast on CUDA (BiT-size models on an accelerator); a no-op context on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    import contextlib

    return contextlib.nullcontext()
