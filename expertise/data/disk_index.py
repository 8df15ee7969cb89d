"""A labelled index of an upstream dataset on disk: where each image is, and its labels.

Labels only, never pixels: a :class:`DiskIndex` is built by listing folders, reading a manifest or
reading the label members of WebDataset shards (``expertise.data.disk_layouts``), and everything it
answers (subtree image counts, top-K expert domains, a node's slice, the multi-hot targets of a
batch) comes from the labels. Each image keeps its own labels (one or more label nodes, internal
nodes allowed, as in JFT); its targets are those nodes and all their ancestors, expanded through the
hierarchy's sparse ancestry table batch by batch, so no [images x nodes] matrix is ever held.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from expertise.data.hierarchy import ROOT, Hierarchy, csr_gather
from expertise.errors import DataError


def sorted_unique(a: np.ndarray) -> np.ndarray:
    """``np.unique`` of an int64 array by one sort (NumPy 2's hash-based unique is several times
    slower on the millions of keys an index holds)."""
    a = np.sort(a.astype(np.int64, copy=False))
    keep = np.ones(a.size, dtype=bool)
    keep[1:] = a[1:] != a[:-1]
    return a[keep]


class Strings:
    """Many strings held as one UTF-8 buffer and int64 offsets (len + 8 bytes each, not the ~60 bytes
    of a Python object), indexable like a tuple."""

    def __init__(self, items: Iterable[str] = ()) -> None:
        buf = bytearray()
        ends = array("q", [0])
        for s in items:
            buf += s.encode("utf-8")
            ends.append(len(buf))
        self._buf = bytes(buf)
        self._offsets = np.frombuffer(ends, dtype=np.int64).copy()

    @classmethod
    def from_buffer(cls, buf: bytes | bytearray, ends: array) -> Strings:
        """From the concatenated UTF-8 bytes and the end offsets (``array('q')`` starting at 0)."""
        out = cls()
        out._buf = bytes(buf)
        out._offsets = np.frombuffer(ends, dtype=np.int64).copy()
        return out

    def __len__(self) -> int:
        return int(self._offsets.size - 1)

    def __getitem__(self, i: int) -> str:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        return self._buf[self._offsets[i]:self._offsets[i + 1]].decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))

    @property
    def buffer(self) -> bytes:
        """The concatenated UTF-8 bytes of every string."""
        return self._buf

    @property
    def offsets(self) -> np.ndarray:
        """int64 [len + 1]: where each string starts and ends in :attr:`buffer`."""
        return self._offsets

    @property
    def nbytes(self) -> int:
        return len(self._buf) + self._offsets.nbytes


class IndexBuilder:
    """Collects (name, labels) image by image in compact arrays (a label is interned once, each
    image costs its name's bytes and a few integers), then :meth:`build` maps labels to the
    hierarchy's columns, which may be known only at the end (WordNet's closure of the labels seen)."""

    def __init__(self) -> None:
        self._names = bytearray()
        self._ends = array("q", [0])
        self._ptr = array("q", [0])
        self._ids = array("i")
        self.vocabulary: dict[str, int] = {}  # label -> local id, in order of first appearance

    def add(self, name: str, labels: Iterable[str]) -> None:
        vocab = self.vocabulary
        for label in labels:
            self._ids.append(vocab.setdefault(label, len(vocab)))
        if len(self._ids) == self._ptr[-1]:
            raise DataError(f"{name}: every image needs at least one label")
        self._ptr.append(len(self._ids))
        self._names += name.encode("utf-8")
        self._ends.append(len(self._names))

    def __len__(self) -> int:
        return len(self._ptr) - 1

    def build(self, hierarchy: Hierarchy, root: str, layout: str, source: str,
              notes: Sequence[str] = ()) -> DiskIndex:
        """The index, each image's label columns sorted and without repeats."""
        index = hierarchy.label_index
        column_of = np.array([index[label] for label in self.vocabulary], dtype=np.int64)
        ptr = np.frombuffer(self._ptr, dtype=np.int64)
        ids = np.frombuffer(self._ids, dtype=np.int32)
        rows = np.repeat(np.arange(ptr.size - 1, dtype=np.int64), np.diff(ptr))
        width = len(hierarchy.label_nodes)
        key = sorted_unique(rows * width + column_of[ids])
        indptr = np.zeros(ptr.size, dtype=np.int64)
        np.cumsum(np.bincount(key // width, minlength=ptr.size - 1), out=indptr[1:])
        names = Strings.from_buffer(self._names, self._ends)
        return DiskIndex(hierarchy, root, names, indptr, (key % width).astype(np.int32), layout, source, tuple(notes))


@dataclass(frozen=True, eq=False)
class DiskIndex:
    """Images on disk with their labels. Image ``i`` is at ``location(i)`` (a file, or
    ``shard.tar#key`` for a WebDataset sample) and has the label columns (indices into
    ``hierarchy.label_nodes``) ``label_columns[label_indptr[i]:label_indptr[i + 1]]``: at least one,
    sorted, without repeats. ``notes`` lists what was skipped while reading (empty folders, ...)."""

    hierarchy: Hierarchy
    root: str
    names: Strings
    label_indptr: np.ndarray
    label_columns: np.ndarray
    layout: str
    source: str
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        n, ptr, cols = len(self.names), self.label_indptr, self.label_columns
        if ptr.shape != (n + 1,) or ptr[0] != 0 or ptr[-1] != cols.size or np.any(np.diff(ptr) < 1):
            raise DataError(f"{self.source}: every image needs at least one label")
        if cols.size and (int(cols.min()) < 0 or int(cols.max()) >= len(self.hierarchy.label_nodes)):
            raise DataError(f"{self.source}: label columns must index the hierarchy's "
                            f"{len(self.hierarchy.label_nodes)} label nodes")
        for a in (ptr, cols):
            a.flags.writeable = False

    @classmethod
    def from_labels(cls, hierarchy: Hierarchy, root: str, names: Sequence[str], labels: Sequence[Sequence[str]],
                    layout: str, source: str, notes: Sequence[str] = ()) -> DiskIndex:
        """From each image's label names (nodes of ``hierarchy``)."""
        builder = IndexBuilder()
        for name, ls in zip(names, labels, strict=True):
            builder.add(name, ls)
        return builder.build(hierarchy, root, layout, source, notes)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return (f"DiskIndex({self.layout}, {self.source!r}: {len(self):,} images, {len(self.class_counts()):,} classes, "
                f"{len(self.hierarchy.label_nodes):,} label nodes)")

    # -- one image -----------------------------------------------------------------------------
    def location(self, i: int) -> str:
        return os.path.join(self.root, self.names[i])  # an absolute name stays as it is

    def labels(self, i: int) -> tuple[str, ...]:
        """The image's own labels (not their ancestors)."""
        nodes = self.hierarchy.label_nodes
        return tuple(nodes[c] for c in self.label_columns[self.label_indptr[i]:self.label_indptr[i + 1]])

    # -- labels of many images -----------------------------------------------------------------
    def _check(self, indices: np.ndarray | None) -> np.ndarray:
        if indices is None:
            return np.arange(len(self), dtype=np.int64)
        idx = np.asarray(indices)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise DataError(f"{self.source}: indices must be a 1-D integer array, got {idx.dtype} {idx.shape}")
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= len(self)):
            raise DataError(f"{self.source}: indices must lie in [0, {len(self)})")
        return idx.astype(np.int64)

    def label_entries(self, indices: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(position int64 [E], column int32 [E]): every label column of each image, its own labels
        and all their ancestors (root excluded), each once, tagged with the image's position."""
        idx = self._check(indices)
        image, own = csr_gather(self.label_indptr, self.label_columns, idx)
        which, cols = self.hierarchy.closure_entries(own)
        position = image[which]
        key = sorted_unique(position * len(self.hierarchy.label_nodes) + cols)  # one entry per (image, column)
        return key // len(self.hierarchy.label_nodes), (key % len(self.hierarchy.label_nodes)).astype(np.int32)

    def targets(self, indices: np.ndarray) -> torch.Tensor:
        """float32 [B, num_label_nodes]: multi-hot labels, each image's labels and all their ancestors."""
        idx = self._check(indices)
        position, cols = self.label_entries(idx)
        out = torch.zeros((idx.size, len(self.hierarchy.label_nodes)), dtype=torch.float32)
        out[torch.from_numpy(position), torch.from_numpy(cols.astype(np.int64))] = 1.0
        return out

    def node_targets(self, indices: np.ndarray, nodes: Sequence[str]) -> torch.Tensor:
        """float32 [B, E]: 1 where image b is in node e's slice (the root holds every image): the
        routing targets of an expert prediction network over the expert domains ``nodes``."""
        h = self.hierarchy
        unknown = [n for n in nodes if n not in h.parents]
        if unknown:
            raise DataError(f"{self.source}: unknown hierarchy node(s) {unknown[:5]}")
        t = self.targets(indices)
        out = torch.ones((t.shape[0], len(nodes)), dtype=torch.float32)
        for e, n in enumerate(nodes):
            if n != ROOT:
                out[:, e] = t[:, h.label_index[n]]
        return out

    # -- statistics, from labels alone ---------------------------------------------------------
    def class_counts(self) -> dict[str, int]:
        """Images per own label (a node that labels at least one image directly), in label order."""
        counts = np.bincount(self.label_columns, minlength=len(self.hierarchy.label_nodes))
        return {self.hierarchy.label_nodes[c]: int(counts[c]) for c in np.flatnonzero(counts)}

    def column_counts(self, indices: np.ndarray | None = None, chunk: int = 1 << 16) -> np.ndarray:
        """int64 [num_label_nodes]: images (all, or the given ones; a repeated index counts again)
        under each label column: an image counts once for a node when the node is one of its labels
        or an ancestor of one. Single-label images are counted per label column, then spread over
        the column's ancestors; multi-label images a chunk at a time, their label sets expanded and
        each node kept once per image."""
        h = self.hierarchy
        idx = self._check(indices)
        lengths = self.label_indptr[idx + 1] - self.label_indptr[idx]
        single = lengths == 1
        per_column = np.bincount(self.label_columns[self.label_indptr[idx[single]]], minlength=len(h.label_nodes))
        used = np.flatnonzero(per_column)
        which, cols = h.closure_entries(used)
        totals = np.zeros(len(h.label_nodes), dtype=np.int64)
        np.add.at(totals, cols, per_column[used][which])
        multi = idx[~single]
        for start in range(0, multi.size, chunk):  # multi-label images: each node once per image
            _, cols = self.label_entries(multi[start:start + chunk])
            totals += np.bincount(cols, minlength=len(h.label_nodes))
        return totals

    def node_counts(self, indices: np.ndarray | None = None) -> dict[str, int]:
        """Images under each hierarchy node (:meth:`column_counts`), by name; the root counts every
        image (of ``indices``, when given)."""
        totals = self.column_counts(indices)
        out = {ROOT: len(self) if indices is None else int(np.asarray(indices).size)}
        out.update({n: int(totals[i]) for i, n in enumerate(self.hierarchy.label_nodes)})
        return out

    def label_distribution(self, indices: np.ndarray | None = None) -> np.ndarray:
        """float64 [num_label_nodes]: the mean multi-hot target over those images (all if None);
        zeros for none."""
        n = len(self) if indices is None else int(np.asarray(indices).size)
        if n == 0:
            return np.zeros(len(self.hierarchy.label_nodes), dtype=np.float64)
        return self.column_counts(indices).astype(np.float64) / n

    def class_columns(self) -> np.ndarray:
        """Sorted int64 label columns that label at least one image directly: the dataset's classes
        (ImageNet-21k: its class folders; a JFT-like manifest: every label used)."""
        return sorted_unique(self.label_columns)

    def primary_columns(self, indices: np.ndarray | None = None) -> np.ndarray:
        """int64 [N]: one own label column per image, the one that labels the fewest images (the
        most specific; ties to the lower column). For a single-label image, its label."""
        idx = self._check(indices)
        counts = np.bincount(self.label_columns, minlength=len(self.hierarchy.label_nodes))
        position, cols = csr_gather(self.label_indptr, self.label_columns, idx)
        order = np.lexsort((cols, counts[cols], position))  # per image: rarest first, then lower column
        first = np.ones(order.size, dtype=bool)
        first[1:] = position[order][1:] != position[order][:-1]
        out = np.empty(idx.size, dtype=np.int64)
        out[position[order][first]] = cols[order][first]
        return out

    def fingerprint(self) -> str:
        """sha256 (hex) of what a model trained on this index saw: the layout, every image's name
        (relative to the folder or manifest; a shard sample as ``shard#member``), its own labels
        and the hierarchy. The same dataset read again gives the same fingerprint."""
        import hashlib
        import json

        h = hashlib.sha256(f"expertise-disk-index-1:{self.layout}:{len(self)}".encode())
        h.update(self.names.buffer)
        for a in (self.names.offsets, self.label_indptr, self.label_columns.astype(np.int32)):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(json.dumps(self.hierarchy.to_json(), sort_keys=True).encode())
        return h.hexdigest()

    def choose_expert_domains(self, k: int) -> list[str]:
        """The top-``k`` nodes by images in their subtree, root excluded, with the ties of
        :meth:`Hierarchy.choose_expert_domains` (shallower first, then alphabetical)."""
        return self.hierarchy.rank_nodes(self.node_counts(), k)

    def slice(self, node: str) -> np.ndarray:
        """Sorted int64 indices of the images that carry ``node`` (as a label or an ancestor of one)."""
        h = self.hierarchy
        if node not in h.parents:
            raise DataError(f"{self.source}: unknown hierarchy node {node!r}")
        if node == ROOT:
            return np.arange(len(self), dtype=np.int64)
        which, cols = h.closure_entries(np.arange(len(h.label_nodes), dtype=np.int64))
        below = np.zeros(len(h.label_nodes), dtype=np.int64)
        below[which[cols == h.label_index[node]]] = 1  # columns whose closure holds the node
        hits = np.add.reduceat(below[self.label_columns], self.label_indptr[:-1]) if len(self) else np.zeros(0)
        return np.flatnonzero(hits > 0).astype(np.int64)

    def label_matrix(self, indices: np.ndarray | None = None) -> np.ndarray:
        """uint8 [N, num_label_nodes] of the given images (all if None): for tests and small data."""
        idx = self._check(indices)
        position, cols = self.label_entries(idx)
        m = np.zeros((idx.size, len(self.hierarchy.label_nodes)), dtype=np.uint8)
        m[position, cols] = 1
        return m
