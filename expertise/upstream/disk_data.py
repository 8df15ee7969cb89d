"""An upstream dataset on disk as the upstream stages see it: a train split streamed from disk
(:class:`DiskUpstream`) and a held-out split decoded once into memory (:class:`DiskHoldout`), both
views of one :class:`~expertise.data.disk_index.DiskIndex` (labels only; images decoded when used).

The split is the index's images in a permutation seeded by the preset's seed: the first
``holdout`` images are held out (sorted), the rest train. Positions (0 .. len - 1) address a
split's images, as indices address an :class:`~expertise.data.upstream_data.UpstreamData`; ``rows``
maps them to the index.

Accuracy on the holdout generalises the embedded world's leaf accuracy to multi-label data: the
highest-scoring *class* (a label that names at least one image directly, :meth:`DiskIndex.class_columns`)
must be one of the image's own labels. With one leaf label per image, as in the world, that is
leaf accuracy.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from expertise.data.disk_index import DiskIndex
from expertise.data.hierarchy import ROOT, Hierarchy, csr_gather
from expertise.upstream.streaming import DecodeImages, DiskBatches
from expertise.errors import ConfigError, DataError
from expertise.models.backbones import Preprocessing
from expertise.runtime import derive_seed
from expertise.train import EpochSampler

MAX_DEFAULT_HOLDOUT = 10_000
HOLDOUT_MAX_BYTES = 2**31  # the decoded holdout is held in memory


def default_holdout(n: int) -> int:
    """2% of the images, at least 1 and at most 10,000."""
    return min(MAX_DEFAULT_HOLDOUT, max(1, n // 50))


def split_rows(n: int, holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, holdout rows), each sorted int64: ``holdout`` of ``n`` images held out in a
    permutation seeded by ``seed`` (the same split for the same seed)."""
    if n < 2:
        raise DataError(f"an upstream dataset needs at least 2 images (one to train on, one to hold out); it has {n}")
    if not 1 <= holdout < n:
        raise ConfigError(f"--holdout must be between 1 and {n - 1} (the dataset has {n:,} images), got {holdout}")
    perm = np.random.default_rng(derive_seed(seed, "upstream", "holdout")).permutation(n)
    return np.sort(perm[holdout:]).astype(np.int64), np.sort(perm[:holdout]).astype(np.int64)


class _Split:
    """The images ``rows`` of ``index``, addressed by position."""

    def __init__(self, index: DiskIndex, rows: np.ndarray, name: str) -> None:
        self.index, self.rows, self.name = index, np.asarray(rows, dtype=np.int64), name
        self.rows.flags.writeable = False

    @property
    def hierarchy(self) -> Hierarchy:
        return self.index.hierarchy

    def __len__(self) -> int:
        return int(self.rows.size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self):,} images of {self.index!r})"

    def _positions(self, positions: np.ndarray | None) -> np.ndarray:
        if positions is None:
            return np.arange(len(self), dtype=np.int64)
        p = np.asarray(positions)
        if p.ndim != 1 or (p.size and (not np.issubdtype(p.dtype, np.integer) or p.min() < 0 or p.max() >= len(self))):
            raise DataError(f"{self.name}: positions must be a 1-D integer array within [0, {len(self)})")
        return p.astype(np.int64)

    def slice(self, node: str) -> np.ndarray:
        """Sorted int64 positions of the images that carry ``node`` (a label or an ancestor of one)."""
        if node == ROOT:
            return np.arange(len(self), dtype=np.int64)
        under = self.index.slice(node)
        return np.flatnonzero(np.isin(self.rows, under, assume_unique=True)).astype(np.int64)

    def label_distribution(self, positions: np.ndarray | None = None) -> np.ndarray:
        """float64 [num_label_nodes]: the mean multi-hot target over those images (all if None)."""
        return self.index.label_distribution(self.rows[self._positions(positions)])

    def routing_targets(self, nodes: Sequence[str], positions: np.ndarray | None = None) -> torch.Tensor:
        """float32 [N, E]: 1 where the image is in node e's slice (an EPN's targets)."""
        return self.index.node_targets(self.rows[self._positions(positions)], nodes)


class DiskUpstream(_Split):
    """The train split: batches streamed from disk (:class:`DiskBatches`, ``workers`` decoding
    processes; ``strict`` makes an unreadable image an error instead of skipped and reported)."""

    def __init__(self, index: DiskIndex, rows: np.ndarray, name: str, workers: int = 0, strict: bool = False) -> None:
        super().__init__(index, rows, name)
        if workers < 0:
            raise ConfigError(f"--workers must be at least 0, got {workers}")
        self.workers, self.strict = workers, strict

    def choose_expert_domains(self, k: int) -> list[str]:
        """The top-``k`` nodes by images in their subtree over the whole dataset (labels alone)."""
        return self.index.choose_expert_domains(k)

    def batches(self, positions: np.ndarray, batch_size: int, prep: Preprocessing, seed: int, steps: int,
                nodes: Sequence[str] | None = None) -> DiskBatches:
        """A :func:`~expertise.train.fit` batch source over those images, in the order of an
        :class:`EpochSampler` seeded by ``seed``; targets are the multi-hot labels, or with
        ``nodes`` the routing targets of an EPN over those nodes."""
        nodes = list(nodes) if nodes is not None else None
        targets = (lambda rows: self.index.node_targets(rows, nodes)) if nodes is not None else None
        return DiskBatches(self.index, batch_size, prep, seed, steps, indices=self.rows[self._positions(positions)],
                           workers=self.workers, strict=self.strict, targets=targets)

    def adapter_batches(self, nodes: Sequence[str], batch_size: int, prep: Preprocessing, seed: int,
                        steps: int) -> DiskAdapterBatches:
        return DiskAdapterBatches(self, nodes, batch_size, prep, seed, steps)


class _Concatenated:
    """Several samplers' batches of one step, one after another."""

    def __init__(self, samplers: Sequence[EpochSampler]) -> None:
        self.samplers = list(samplers)

    def batch(self, step: int) -> np.ndarray:
        return np.concatenate([s.batch(step) for s in self.samplers])


class DiskAdapterBatches:
    """The adapter bank's batches from disk: each step one batch per expert from that expert's slice
    (each expert's own seeded sampler, as :class:`~expertise.upstream.adapter_bank.AdapterBatches`),
    decoded together. An unreadable image leaves its expert's batch one shorter; ``sizes`` holds
    each expert's count in the last batch (the bank's forward splits by it)."""

    def __init__(self, train: DiskUpstream, nodes: Sequence[str], batch_size: int, prep: Preprocessing, seed: int,
                 steps: int) -> None:
        self.nodes, self.batch_size = list(nodes), batch_size
        samplers = [EpochSampler(train.rows[train.slice(n)], batch_size, derive_seed(seed, "adapter", n)) for n in nodes]
        self.sampler = _Concatenated(samplers)
        self.source = DiskBatches(train.index, batch_size, prep, seed, steps, workers=train.workers,
                                  strict=train.strict, sampler=self.sampler)
        self.sizes = [batch_size] * len(self.nodes)

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.source(step)
        asked = self.sampler.batch(step).reshape(len(self.nodes), self.batch_size)
        kept = ~np.isin(asked, np.fromiter(self.source.skipped, dtype=np.int64, count=len(self.source.skipped)))
        sizes = kept.sum(axis=1)
        if int(sizes.sum()) != x.shape[0]:  # pragma: no cover - a file readable once and not again
            raise DataError(f"step {step}: the images read do not match those asked for; is the dataset changing on disk?")
        empty = [n for n, s in zip(self.nodes, sizes) if s == 0]
        if empty:
            raise DataError(f"no image of adapter expert {empty[0]!r}'s batch at step {step} could be read; check the dataset")
        self.sizes = [int(s) for s in sizes]
        return x, y

    def close(self) -> dict:
        return self.source.close()

    def __enter__(self) -> DiskAdapterBatches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DiskHoldout(_Split):
    """The held-out split, decoded once into memory (uint8 [N, 3, R, R]); images that cannot be
    read are left out with a warning naming them."""

    def __init__(self, index: DiskIndex, rows: np.ndarray, images: torch.Tensor, name: str) -> None:
        super().__init__(index, rows, name)
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[0] != len(self):
            raise DataError(f"{name}: {len(self)} holdout images need uint8 [N, 3, R, R], got {tuple(images.shape)}")
        self._images = images
        self.resolution = int(images.shape[-1])
        self._classes = index.class_columns()

    @classmethod
    def decode(cls, index: DiskIndex, rows: np.ndarray, resolution: int, name: str, workers: int = 0,
               strict: bool = False, batch_size: int = 256) -> DiskHoldout:
        rows = np.asarray(rows, dtype=np.int64)
        need = rows.size * 3 * resolution * resolution
        if need > HOLDOUT_MAX_BYTES:
            raise ConfigError(f"{rows.size:,} holdout images at {resolution} px take {need / 2**30:.1f} GiB in memory; "
                              f"lower --holdout")
        decode = DecodeImages(index.root, index.names, resolution)
        loader = DataLoader(Subset(decode, rows.tolist()), batch_size=batch_size, num_workers=workers,
                            collate_fn=list)
        kept: list[int] = []
        images: list[np.ndarray] = []
        bad: list[tuple[int, str]] = []
        for items in loader:
            for i, img, why in items:
                if img is None:
                    if strict:
                        raise DataError(f"cannot read image {index.location(i)} ({why}); remove or replace the file, "
                                        f"or drop --strict to skip unreadable images")
                    bad.append((i, why))
                else:
                    kept.append(i)
                    images.append(img)
        if bad:
            shown = ", ".join(index.location(i) for i, _ in bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
            warnings.warn(f"left {len(bad)} unreadable image(s) out of the upstream holdout: {shown}", stacklevel=2)
        if not kept:
            raise DataError(f"no image of the upstream holdout ({rows.size} images of {index.source}) could be read; "
                            f"check the dataset, or hold out more images (--holdout)")
        # rows stay sorted: the loader keeps their order
        return cls(index, np.asarray(kept, dtype=np.int64), torch.from_numpy(np.stack(images)), name)

    def images(self, positions: np.ndarray) -> torch.Tensor:
        """uint8 [B, 3, R, R]."""
        return self._images.index_select(0, torch.from_numpy(self._positions(positions)))

    def correct(self, positions: np.ndarray, upstream_logits: torch.Tensor) -> int:
        """How many of those images have their highest-scoring class among their own labels."""
        rows = self.rows[self._positions(positions)]
        classes = self._classes
        pred = classes[upstream_logits[:, torch.from_numpy(classes)].argmax(1).cpu().numpy()]
        position, cols = csr_gather(self.index.label_indptr, self.index.label_columns, rows)
        hit = np.zeros(rows.size, dtype=bool)
        hit[position[cols == pred[position]]] = True
        return int(hit.sum())
