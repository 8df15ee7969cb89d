"""The one embedding path: batched, inference-mode extraction of pre-logits features for every
pool member on a task's images, cached on disk by (member hash, task fingerprint)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from expertise.data.tasks import Split, Task
from expertise.io import atomic_save_safetensors
from expertise.models.backbones import Preprocessing, prepare
from expertise.progress import progress_bar
from expertise.runtime import autocast


@torch.inference_mode()
def embed_images(model: nn.Module, images: torch.Tensor, batch_size: int = 500,
                 device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> float32 [N, D] pre-logits features, prepared with the model's own
    preprocessing batch by batch (so the float copy of a large split never sits in memory)."""
    prep: Preprocessing = model.preprocessing  # type: ignore[assignment]
    model.to(device).eval()
    out = []
    for i in range(0, images.shape[0], batch_size):
        x = prepare(images[i:i + batch_size], prep).to(device)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device):
            out.append(model.embed(x).float().cpu())
    return torch.cat(out)


@dataclass
class EmbedStats:
    seconds: float = 0.0
    images: int = 0
    cached: int = 0


class EmbeddingCache:
    """Features on disk: ``DIR/<member hash>/<task fingerprint>.<split>.safetensors``. A member's hash
    changes whenever any of its weight files does, so a stale entry is never read."""

    def __init__(self, root: Path | None) -> None:
        self.root = Path(root) if root is not None else None

    def _path(self, member_hash: str, task_key: str, split: str) -> Path | None:
        return None if self.root is None else self.root / member_hash / f"{task_key}.{split}.safetensors"

    def get(self, member_hash: str, task_key: str, split: str) -> torch.Tensor | None:
        path = self._path(member_hash, task_key, split)
        if path is None or not path.exists():
            return None
        return load_file(str(path))["features"]

    def put(self, member_hash: str, task_key: str, split: str, features: torch.Tensor) -> None:
        path = self._path(member_hash, task_key, split)
        if path is not None:
            atomic_save_safetensors(path, {"features": features})


def task_split(task: Task, split: str) -> Split:
    if split == "trainval":
        return task.trainval
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown split {split!r}; use train, val, test or trainval")
    return getattr(task, split)


def embed_pool(names: Sequence[str], load: Callable[[str], nn.Module], member_hash: Callable[[str], str],
               task: Task, cache: EmbeddingCache, split: str = "trainval", batch_size: int = 500,
               device: torch.device = torch.device("cpu"), progress: bool = True) -> tuple[dict[str, torch.Tensor], EmbedStats]:
    """Embed one split of ``task`` with every named member; members are loaded one at a time so
    only one sits in memory. Returns features per member and what it cost."""
    images = task_split(task, split).images
    key = task.fingerprint()
    feats: dict[str, torch.Tensor] = {}
    stats = EmbedStats()
    t0 = time.perf_counter()
    with progress_bar(f"embed {task.name}", total=len(names), enabled=progress) as advance:
        for name in names:
            h = member_hash(name)
            cached = cache.get(h, key, split)
            if cached is None:
                cached = embed_images(load(name), images, batch_size, device)
                cache.put(h, key, split, cached)
                stats.images += images.shape[0]
            else:
                stats.cached += 1
            feats[name] = cached
            advance(1)
    stats.seconds = time.perf_counter() - t0
    return feats, stats
