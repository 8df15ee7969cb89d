"""Upstream datasets: index-addressable, multi-label images over a label hierarchy.

An :class:`UpstreamData` is a list of leaf ids (one per image) plus a ``render`` function that
turns image indices into uint8 images. The embedded world (``expertise.data.world``) renders on
demand, so nothing is stored; :meth:`UpstreamData.materialize` renders everything once into memory,
and :meth:`UpstreamData.from_arrays` wraps images a user already has (e.g. read from disk).

Image ``i`` carries its leaf ``leaf_ids[i]`` and every ancestor of that leaf (the hierarchy's
multi-hot label rows), as in ImageNet-21k and JFT.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from expertise.data.hierarchy import ROOT, Hierarchy
from expertise.errors import DataError

Render = Callable[[np.ndarray], torch.Tensor]


class _TensorRender:
    """Renders by indexing a uint8 tensor [N, 3, R, R] held in memory (picklable, unlike a lambda)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __call__(self, indices: np.ndarray) -> torch.Tensor:
        return self.images.index_select(0, torch.from_numpy(np.ascontiguousarray(indices, dtype=np.int64)))


class UpstreamData:
    """Index-addressable multi-label upstream dataset: image i has leaf leaf_ids[i] and all its ancestors.

    ``leaf_ids`` is int64 [N] indexing ``hierarchy.leaves``; ``render(indices int64 [B])`` returns
    uint8 [B, 3, R, R] and is only ever called with validated, non-empty index arrays.
    """

    def __init__(self, hierarchy: Hierarchy, leaf_ids: np.ndarray, render: Render, resolution: int, name: str) -> None:
        leaf_ids = np.asarray(leaf_ids)
        if leaf_ids.ndim != 1 or not (leaf_ids.size == 0 or np.issubdtype(leaf_ids.dtype, np.integer)):
            raise DataError(f"{name}: leaf ids must be a 1-D integer array, got {leaf_ids.dtype} {leaf_ids.shape}")
        num_leaves = len(hierarchy.leaves)
        if leaf_ids.size and (int(leaf_ids.min()) < 0 or int(leaf_ids.max()) >= num_leaves):
            raise DataError(f"{name}: leaf ids must lie in [0, {num_leaves}), the hierarchy's leaves")
        if int(resolution) < 1:
            raise DataError(f"{name}: resolution must be positive, got {resolution}")
        self.hierarchy = hierarchy
        self.leaf_ids = leaf_ids.astype(np.int64)  # a private copy, frozen so counts stay truthful
        self.leaf_ids.flags.writeable = False
        self.resolution = int(resolution)
        self.name = name
        self._render = render

    @classmethod
    def from_arrays(cls, hierarchy: Hierarchy, images_uint8: torch.Tensor | np.ndarray, leaf_ids: np.ndarray,
                    name: str) -> UpstreamData:
        """An in-memory dataset: ``images_uint8`` is uint8 [N, 3, R, R], ``leaf_ids`` int [N]."""
        images = torch.as_tensor(images_uint8)
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
            raise DataError(f"{name}: images must be uint8 [N, 3, R, R], got {images.dtype} {tuple(images.shape)}")
        if images.shape[0] != len(leaf_ids):
            raise DataError(f"{name}: {images.shape[0]} images but {len(leaf_ids)} leaf ids")
        return cls(hierarchy, np.asarray(leaf_ids), _TensorRender(images.contiguous()), int(images.shape[-1]), name)

    def __len__(self) -> int:
        return int(self.leaf_ids.shape[0])

    def __repr__(self) -> str:
        return f"UpstreamData({self.name!r}, {len(self)} images, {self.resolution}px, {len(self.hierarchy.leaves)} leaves)"

    # -- images and labels ---------------------------------------------------------------------
    def _check(self, indices: np.ndarray) -> np.ndarray:
        """Validated indices: int64 [B], each in [0, N)."""
        idx = np.asarray(indices)
        if idx.ndim != 1:
            raise DataError(f"{self.name}: indices must be a 1-D array, got shape {idx.shape}")
        if idx.size == 0:
            return np.zeros(0, dtype=np.int64)
        if not np.issubdtype(idx.dtype, np.integer):
            raise DataError(f"{self.name}: indices must be integers, got {idx.dtype}")
        if int(idx.min()) < 0 or int(idx.max()) >= len(self):
            raise DataError(f"{self.name}: indices must lie in [0, {len(self)}); got range [{idx.min()}, {idx.max()}]")
        return idx.astype(np.int64)

    def images(self, indices: np.ndarray) -> torch.Tensor:
        """uint8 [B, 3, R, R] for the given image indices."""
        idx = self._check(indices)
        r = self.resolution
        if idx.size == 0:
            return torch.zeros((0, 3, r, r), dtype=torch.uint8)
        out = self._render(idx)
        if out.dtype != torch.uint8 or tuple(out.shape) != (idx.size, 3, r, r):
            raise DataError(f"{self.name}: the renderer returned {out.dtype} {tuple(out.shape)}, not uint8 [{idx.size}, 3, {r}, {r}]")
        return out

    def targets(self, indices: np.ndarray) -> torch.Tensor:
        """float32 [B, num_label_nodes]: multi-hot labels, the leaf and all its ancestors (root excluded)."""
        return torch.from_numpy(self.hierarchy.label_matrix(self.leaf_ids[self._check(indices)]))

    # -- statistics ----------------------------------------------------------------------------
    def _leaf_histogram(self, leaf_ids: np.ndarray) -> np.ndarray:
        return np.bincount(leaf_ids, minlength=len(self.hierarchy.leaves))

    def leaf_counts(self) -> dict[str, int]:
        """Images per leaf, every leaf listed (zero where a leaf has no image)."""
        return {leaf: int(c) for leaf, c in zip(self.hierarchy.leaves, self._leaf_histogram(self.leaf_ids))}

    def node_counts(self) -> dict[str, int]:
        """Images under each hierarchy node (the root counts every image)."""
        return self.hierarchy.subtree_counts(self.leaf_counts())

    def slice(self, node: str) -> np.ndarray:
        """Sorted int64 indices of the images whose label set contains ``node`` (the root: all)."""
        if node not in self.hierarchy.parents:
            raise DataError(f"{self.name}: unknown hierarchy node {node!r}")
        if node == ROOT:
            return np.arange(len(self), dtype=np.int64)
        under = self.hierarchy.leaves_under(node)  # bool [num_leaves]
        return np.flatnonzero(under[self.leaf_ids]).astype(np.int64)

    def label_distribution(self, indices: np.ndarray | None = None) -> np.ndarray:
        """float64 [num_label_nodes]: the mean multi-hot label over those images (all if None).

        Zeros for an empty index set. Computed from leaf counts, so it is cheap for any N.
        """
        leaf_ids = self.leaf_ids if indices is None else self.leaf_ids[self._check(indices)]
        if leaf_ids.size == 0:
            return np.zeros(len(self.hierarchy.label_nodes), dtype=np.float64)
        hist = self._leaf_histogram(leaf_ids)
        return self.hierarchy.leaf_column_sums(hist).astype(np.float64) / leaf_ids.size

    # -- memory --------------------------------------------------------------------------------
    def materialize(self, max_bytes: int = 2**31, chunk: int = 4096) -> UpstreamData:
        """Render every image once, in chunks, into one uint8 tensor and return a dataset indexing it.

        Returns ``self`` when the images would take more than ``max_bytes`` or are already in memory.
        """
        r = self.resolution
        if isinstance(self._render, _TensorRender) or len(self) * 3 * r * r > max_bytes:
            return self
        store = torch.empty((len(self), 3, r, r), dtype=torch.uint8)
        for start in range(0, len(self), chunk):
            stop = min(start + chunk, len(self))
            store[start:stop] = self.images(np.arange(start, stop, dtype=np.int64))
        return UpstreamData(self.hierarchy, self.leaf_ids, _TensorRender(store), r, self.name)
