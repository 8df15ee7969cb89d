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


def configure(threads: int | None = None, device: str = "auto") -> torch.device:
    """Set the CPU thread count (default: every core) and pick the device ("auto" prefers CUDA)."""
    torch.set_num_threads(threads or os.cpu_count() or 1)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


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
