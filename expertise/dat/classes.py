"""What DAT weights and samples by: one class per upstream image (see the package docstring).

On the embedded world the classes are the hierarchy's leaves and an image's class is its leaf. On
a dataset on disk (:class:`~expertise.upstream.disk_data.DiskUpstream`) the classes are the labels
that name at least one image directly (an ImageNet-21k folder's wnid; any label of a JFT-like
manifest), and an image with several labels is weighted by the rarest of them
(:meth:`~expertise.data.disk_index.DiskIndex.primary_columns`: the most specific, as a leaf is):
the label set of such an image is not a function of one class, so the identity of the package
docstring holds for its primary class and only approximately for its others.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from expertise.data.hierarchy import ROOT, Hierarchy
from expertise.data.upstream_data import UpstreamData
from expertise.errors import ConfigError


@dataclass(frozen=True, eq=False)
class UpstreamClasses:
    """``names`` [C] of the classes, their ``columns`` among the hierarchy's label nodes (the
    upstream head's outputs), and each image's class ``of_image`` (int64 [N] into ``names``)."""

    hierarchy: Hierarchy
    names: tuple[str, ...]
    columns: np.ndarray
    of_image: np.ndarray

    def __len__(self) -> int:
        return len(self.names)

    def distribution(self) -> np.ndarray:
        """``p_s``: float64 [C], each class's share of the upstream images."""
        counts = np.bincount(self.of_image, minlength=len(self)).astype(np.float64)
        return counts / counts.sum()

    def under(self, node: str) -> np.ndarray:
        """bool [C]: which classes are ``node`` or lie below it (every class for the root)."""
        if node == ROOT:
            return np.ones(len(self), dtype=bool)
        h = self.hierarchy
        position, cols = h.closure_entries(self.columns)
        mask = np.zeros(len(self), dtype=bool)
        mask[position[cols == h.label_index[node]]] = True
        return mask

    def logits(self, upstream_logits: torch.Tensor) -> torch.Tensor:
        """[N, C]: the class columns of an upstream head's outputs [N, num_label_nodes]."""
        if upstream_logits.ndim != 2 or upstream_logits.shape[1] != len(self.hierarchy.label_nodes):
            raise ConfigError(f"the upstream model has {upstream_logits.shape[-1]} upstream outputs but the hierarchy has "
                              f"{len(self.hierarchy.label_nodes)} label nodes; use the B trained on this upstream data")
        return upstream_logits[:, torch.from_numpy(self.columns)]


def upstream_classes(data) -> UpstreamClasses:
    """The classes of the embedded world's :class:`UpstreamData` (its leaves) or of a dataset on
    disk's train split (its directly labelled nodes, each image's rarest)."""
    h = data.hierarchy
    if isinstance(data, UpstreamData):
        return UpstreamClasses(h, h.leaves, np.asarray(h.leaf_columns, dtype=np.int64), data.leaf_ids)
    index = data.index
    columns = index.class_columns()
    of_image = np.searchsorted(columns, index.primary_columns(data.rows)).astype(np.int64)
    return UpstreamClasses(h, tuple(h.label_nodes[c] for c in columns), columns, of_image)
