"""Streaming an upstream dataset on disk into training: images decoded and resized in DataLoader
worker processes, in the order of the pure index sampler (:class:`expertise.train.EpochSampler`),
never all in memory.

:class:`DiskBatches` is a batch source for :func:`expertise.train.fit` with the call signature of
:class:`expertise.upstream.baseline.UpstreamBatches`: ``batches(step)`` gives (prepared images,
targets) for the images ``EpochSampler.batch(step)`` picks from a :class:`DiskIndex`; the targets
are the multi-hot labels (each image's labels and all their ancestors) unless another ``targets``
function is given. Asking for a step other than the next one restarts the workers at that step, so
a run resumed from step ``s`` sees the batches an uninterrupted run saw.

An image that cannot be read (a corrupt file, a missing file, a bad tar member) is left out of its
batch, counted, and reported at the end with its location (a warning when the source is closed,
and :meth:`DiskBatches.report`); with ``strict=True`` the first one is a :class:`DataError`.
"""

from __future__ import annotations

import io
import tarfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from expertise.data.disk_index import DiskIndex, Strings
from expertise.data.loaders import UNREADABLE, decode_image
from expertise.errors import ConfigError, DataError
from expertise.models.backbones import Preprocessing, prepare
from expertise.train import EpochSampler

Decoded = tuple[int, np.ndarray | None, str]


class StepSampler(Protocol):
    """What picks a step's images: ``batch(step)`` -> int64 index rows, a pure function of the step."""

    def batch(self, step: int) -> np.ndarray: ...
  # (image index, uint8 [3, R, R] or None, why it failed)


class DecodeImages(Dataset):
    """Image ``i`` of an index, decoded and resized to uint8 [3, R, R] (``decode_image``: EXIF
    orientation, RGB, the whole image resized; a JPEG decoded at a reduced scale first when it is
    at least twice the size needed). Picklable: it carries the names, not the index.
    Shard members (``shard.tar#member``) are read at their offset, found once per shard and worker."""

    def __init__(self, root: str, names: Strings, resolution: int) -> None:
        self.root, self.names, self.resolution = root, names, int(resolution)
        self._members: dict[str, dict[str, tuple[int, int]]] = {}

    def __len__(self) -> int:
        return len(self.names)

    def location(self, i: int) -> str:
        return str(Path(self.root) / self.names[i]) if self.root else self.names[i]

    def __getitem__(self, i: int) -> Decoded:
        where = self.location(i)
        shard, _, member = where.partition("#")
        buf = None
        try:
            if member and shard.endswith(".tar"):
                buf = io.BytesIO(self._member_bytes(shard, member))
                return i, decode_image(buf, self.resolution, draft=True), ""
            return i, decode_image(Path(where), self.resolution, draft=True), ""
        except (*UNREADABLE, KeyError, tarfile.TarError) as e:
            why = f"{type(e).__name__}: {e}"
            return i, None, why.replace(repr(buf), repr(member)) if buf is not None else why

    def _member_bytes(self, shard: str, member: str) -> bytes:
        members = self._members.get(shard)
        if members is None:  # headers only: tarfile seeks past the data
            with tarfile.open(shard, "r:") as tar:
                members = {m.name: (m.offset_data, m.size) for m in tar.getmembers() if m.isreg()}
            self._members[shard] = members
        offset, size = members[member]
        with open(shard, "rb") as f:
            f.seek(offset)
            return f.read(size)


class _StepBatches(Sampler[list[int]]):
    """The sampler's batches for steps ``start``, ``start + 1``, ... ``stop - 1``."""

    def __init__(self, sampler: StepSampler, start: int, stop: int) -> None:
        self.sampler, self.start, self.stop = sampler, start, stop

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            yield self.sampler.batch(step).tolist()

    def __len__(self) -> int:
        return self.stop - self.start


def _collate(items: list[Decoded]) -> tuple[np.ndarray, torch.Tensor, list[tuple[int, str]]]:
    kept = [(i, img) for i, img, _ in items if img is not None]
    bad = [(i, why) for i, img, why in items if img is None]
    idx = np.asarray([i for i, _ in kept], dtype=np.int64)
    images = torch.from_numpy(np.stack([img for _, img in kept])) if kept else torch.zeros((0, 3, 1, 1), dtype=torch.uint8)
    return idx, images, bad


class DiskBatches:
    """Batches for :func:`~expertise.train.fit` from images on disk: ``batches(step)`` -> (float32
    [B', 3, S, S] prepared images, float32 [B', T] targets), B' = the batch size less the images
    that could not be read. ``indices`` are the images to sample (all by default; a node's slice
    for an expert); ``steps`` bounds the run; ``workers`` decode in that many processes (0: in this
    one). ``sampler`` replaces the sampler over ``indices`` (anything whose ``batch(step)`` is a
    pure function of the step, e.g. several experts' samplers concatenated). Use as a context
    manager, or call :meth:`close`, to stop the workers and report skipped images."""

    def __init__(self, index: DiskIndex, batch_size: int, prep: Preprocessing, seed: int, steps: int,
                 indices: np.ndarray | None = None, workers: int = 0, strict: bool = False,
                 targets: Callable[[np.ndarray], torch.Tensor] | None = None, prefetch: int = 2,
                 sampler: StepSampler | None = None) -> None:
        if workers < 0 or steps < 1 or batch_size < 1:
            raise ConfigError(f"streaming needs workers >= 0, steps >= 1 and batch_size >= 1; "
                              f"got {workers}, {steps}, {batch_size}")
        self.index, self.prep, self.steps, self.workers, self.strict = index, prep, steps, workers, strict
        self.sampler: StepSampler = sampler or EpochSampler(
            np.arange(len(index)) if indices is None else np.asarray(indices), batch_size, seed)
        self.decode = DecodeImages(index.root, index.names, prep.size)
        self.targets = targets or index.targets
        self.prefetch = prefetch
        self.skipped: dict[int, str] = {}  # image index -> why it could not be read
        self._loader: Iterator | None = None
        self._next = -1

    def _start(self, step: int) -> None:
        self._stop_workers()
        loader = DataLoader(self.decode, batch_sampler=_StepBatches(self.sampler, step, self.steps),
                            num_workers=self.workers, collate_fn=_collate,
                            prefetch_factor=self.prefetch if self.workers else None,
                            persistent_workers=False)
        self._loader = iter(loader)
        self._next = step

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= step < self.steps:
            raise ConfigError(f"step {step} is outside the {self.steps} steps this batch source was made for")
        if self._loader is None or step != self._next:
            self._start(step)
        assert self._loader is not None
        idx, images, bad = next(self._loader)
        self._next += 1
        for i, why in bad:
            if self.strict:
                raise DataError(f"cannot read image {self.index.location(i)} ({why}); remove or replace the file, "
                                f"or stream without strict to skip unreadable images")
            self.skipped[i] = why
        if idx.size == 0:
            raise DataError(f"no image of the batch of step {step} could be read (e.g. {self.index.location(bad[0][0])}); "
                            f"check the dataset")
        return prepare(images, self.prep), self.targets(idx)

    def shard(self, rank: int, world: int) -> DiskBatches:
        """This source, from now on for rank ``rank`` of ``world`` data-parallel processes: each step
        decodes only the rank's share of the global batch (:meth:`EpochSampler.shard`)."""
        self._stop_workers()
        self.sampler = self.sampler.shard(rank, world)
        return self

    def report(self) -> dict:
        """Images skipped so far: how many, and each one's location and reason."""
        return {"skipped": len(self.skipped),
                "files": [{"path": self.index.location(i), "error": why} for i, why in sorted(self.skipped.items())]}

    def _stop_workers(self) -> None:
        if self._loader is not None:
            shutdown = getattr(self._loader, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            self._loader = None

    def close(self) -> dict:
        """Stop the workers; warn about skipped images (each named, up to 10) and return :meth:`report`."""
        self._stop_workers()
        rep = self.report()
        if rep["skipped"]:
            shown = ", ".join(f["path"] for f in rep["files"][:10]) + (
                f" and {rep['skipped'] - 10} more" if rep["skipped"] > 10 else "")
            warnings.warn(f"skipped {rep['skipped']} unreadable image(s): {shown}", stacklevel=2)
        return rep

    def __enter__(self) -> DiskBatches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
