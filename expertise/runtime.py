"""Device, threads and seeding: the few process-wide settings every stage shares."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


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
