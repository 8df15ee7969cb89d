"""Embedding a pool: pre-logits features (and upstream logits) of every member on a task's images,
through the one forward path (``expertise.models.forward``), cached on disk by (member hash, task
fingerprint, the member's preprocessing)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from expertise import tags
from expertise.errors import DiskError
from expertise.data.ragged import Images
from expertise.data.tasks import Split, Task
from expertise.io import atomic_save_safetensors
from expertise.models.forward import forward_batches, upstream_head
from expertise.models.preprocess import Preprocessing
from expertise.progress import progress_bar
from expertise.store import UntrustedWarning


def embed_images(model: nn.Module, images: Images, batch_size: int = 500,
                 device: torch.device = torch.device("cpu"), with_logits: bool = False
                 ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 [N, 3, H, W] -> float32 [N, D] pre-logits features, through the one forward path.
    ``with_logits`` also returns the upstream logits float32 [N, L] (None for a member without an
    upstream head), computed from the same features."""
    has_head = with_logits and upstream_head(model) is not None
    out = forward_batches(model, images, ("features", "upstream_logits") if has_head else ("features",),
                          batch_size, device)
    if not with_logits:
        return out["features"]
    return out["features"], out.get("upstream_logits")


@dataclass
class EmbedStats:
    seconds: float = 0.0
    images: int = 0
    cached: int = 0


def cache_key(task: Task, preprocessing: Preprocessing | Mapping) -> str:
    """The task half of a cache entry's key: the task's fingerprint (its name, every split's pixels
    and labels) and what the member's preprocessing (resize, crop, interpolation, mean, std) makes
    of those pixels."""
    prep = preprocessing if isinstance(preprocessing, Preprocessing) else Preprocessing.from_json(dict(preprocessing))
    return f"{task.fingerprint()}.{prep.key()}"


def _content(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """What a cache entry's tag covers: every tensor's name, dtype, shape and bytes, in name order."""
    parts = []
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        parts += [name.encode(), str(t.dtype).encode(), repr(tuple(t.shape)).encode(),
                  t.reshape(-1).view(torch.uint8).numpy().tobytes()]
    return b"\0".join(parts)


class EmbeddingCache:
    """Features on disk: ``DIR/<member hash>/<task fingerprint>.<preprocessing>.<split>.v3.safetensors``
    (the task key from :func:`cache_key`), holding ``features`` and, for members with an upstream
    head, ``upstream_logits``. A member's hash changes whenever any of its weight files does, so a
    stale entry is never read. Each entry carries an authentication tag (:mod:`expertise.tags`) over
    its tensors and where it is filed: one without a valid tag (copied from elsewhere, edited,
    truncated) is not read, but counted in ``rejected`` and computed again."""

    VERSION = "v3"  # v1 files held features only, v2 keys lacked the preprocessing; both are ignored, not misread

    def __init__(self, root: Path | None) -> None:
        self.root = Path(root) if root is not None else None
        self.rejected: list[Path] = []  # entries found without a valid tag (each is embedded again)
        self._told = 0

    def _path(self, member_hash: str, task_key: str, split: str) -> Path | None:
        return None if self.root is None else self.root / member_hash / f"{task_key}.{split}.{self.VERSION}.safetensors"

    def has(self, member_hash: str, task_key: str, split: str) -> bool:
        path = self._path(member_hash, task_key, split)
        return path is not None and path.exists()

    @staticmethod
    def _identity(member_hash: str, task_key: str, split: str) -> str:
        return f"{member_hash}/{task_key}/{split}/{EmbeddingCache.VERSION}"

    def get(self, member_hash: str, task_key: str, split: str) -> dict[str, torch.Tensor] | None:
        """The entry's tensors, or None when there is none or it is not believed (no valid tag)."""
        path = self._path(member_hash, task_key, split)
        if path is None or not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                given = (f.metadata() or {}).get("tag")
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
        except Exception:  # noqa: BLE001 - a file that is not safetensors at all: not believed, recomputed
            tensors, given = {}, None
        if "features" in tensors and tags.verify("cache", self._identity(member_hash, task_key, split),
                                                 _content(tensors), given):
            return tensors
        self.rejected.append(path)
        return None

    def put(self, member_hash: str, task_key: str, split: str, tensors: dict[str, torch.Tensor]) -> None:
        path = self._path(member_hash, task_key, split)
        if path is not None:
            tag = tags.tag("cache", self._identity(member_hash, task_key, split), _content(tensors))
            try:
                atomic_save_safetensors(path, tensors, metadata={"tag": tag})
            except DiskError as e:  # a library on a read-only disk: the cache can live elsewhere
                raise DiskError(f"{e}; or keep the embedding cache elsewhere (--cache DIR)") from None

    def audit(self) -> tuple[int, list[Path]]:
        """(entries, those without a valid tag) of the whole cache folder: what ``library verify`` reports."""
        if self.root is None or not self.root.is_dir():
            return 0, []
        bad, total = [], 0
        for path in sorted(self.root.glob(f"*/*.{self.VERSION}.safetensors")):
            total += 1
            stem = path.name.removesuffix(f".{self.VERSION}.safetensors")
            task_key, _, split = stem.rpartition(".")
            before = len(self.rejected)
            if self.get(path.parent.name, task_key, split) is None and len(self.rejected) > before:
                bad.append(path)
        return total, bad

    def tell_rejected(self) -> None:
        """One warning line for the entries found without a valid tag since the last one."""
        new = self.rejected[self._told:]
        self._told = len(self.rejected)
        if new:
            warnings.warn(f"{len(new)} cached embedding(s) in {self.root} had no valid tag (copied from elsewhere, "
                          "edited or truncated): not read, embedded again", UntrustedWarning, stacklevel=2)


def task_split(task: Task, split: str) -> Split:
    if split == "trainval":
        return task.trainval
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown split {split!r}; use train, val, test or trainval")
    return getattr(task, split)


@dataclass
class PoolEmbeddings:
    """What one pass over a task gives for each member: features [N, D] and, where the member has
    an upstream head, upstream logits [N, L]; plus what the pass cost."""

    features: dict[str, torch.Tensor]
    upstream_logits: dict[str, torch.Tensor]
    stats: EmbedStats


def embed_pool(names: Sequence[str], load: Callable[[str], nn.Module], member_hash: Callable[[str], str],
               task: Task, cache: EmbeddingCache, split: str = "trainval", batch_size: int = 500,
               device: torch.device = torch.device("cpu"), progress: bool = True,
               preprocessing: Callable[[str], Preprocessing | Mapping] | None = None) -> PoolEmbeddings:
    """Embed one split of ``task`` with every named member (and keep its upstream logits); members
    are loaded one at a time so only one sits in memory, and each result is cached on disk, keyed
    by the member's hash and its ``preprocessing`` (from the library's manifest; without it, from
    the loaded member)."""
    images = task_split(task, split).images
    out = PoolEmbeddings({}, {}, EmbedStats())
    t0 = time.perf_counter()
    with progress_bar(f"embed {task.name}", total=len(names), enabled=progress) as advance:
        for name in names:
            h = member_hash(name)
            model = None if preprocessing is not None else load(name)
            key = cache_key(task, preprocessing(name) if preprocessing is not None else model.preprocessing)  # type: ignore[union-attr]
            entry = cache.get(h, key, split)
            if entry is None:
                feats, logits = embed_images(model or load(name), images, batch_size, device, with_logits=True)
                entry = {"features": feats} if logits is None else {"features": feats, "upstream_logits": logits}
                cache.put(h, key, split, entry)
                out.stats.images += len(images)
            else:
                out.stats.cached += 1
            out.features[name] = entry["features"]
            if "upstream_logits" in entry:
                out.upstream_logits[name] = entry["upstream_logits"]
            advance(1)
    cache.tell_rejected()
    out.stats.seconds = time.perf_counter() - t0
    return out
