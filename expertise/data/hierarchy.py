"""The label hierarchy: an is-a DAG over label nodes, with one root.

Every upstream image carries a leaf and all of that leaf's ancestors (multi-label, as in
ImageNet-21k and JFT). Expert domains are hierarchy nodes, chosen by subtree image count
(paper 000, section 6.1: "the 50 synsets ... with the largest number of images").

Ancestry is held sparsely, as one CSR table over label columns (each node's own column and its
ancestors' columns), so ImageNet-21k with WordNet (21,843 classes, 6,293 nodes above them) costs a
few megabytes; the dense ``leaf_label_matrix`` is built only when something asks for it, and nothing
on the paths a large hierarchy takes (labels of a batch, subtree counts, slices, label
distributions, expert domains) does.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from expertise import reading
from expertise.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch

ROOT = "root"
MAX_NODES = 4_000_000  # a bound checked before a hierarchy file is built (ImageNet-21k with WordNet: about 32k)
# Levels below the root: the ancestor table grows with the square of the depth (a chain of 20,000 nodes
# would take 11 GB), so a deeper hierarchy is refused at once. WordNet's nouns are under 20 levels deep.
MAX_LEVELS = 256


def csr_gather(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The entries of ``rows`` (int64 [M]) of a CSR table: (position int64 [E], value [E]), each
    value tagged with the position in ``rows`` of the row it came from, rows in the given order."""
    starts = indptr[rows]
    lengths = indptr[rows + 1] - starts
    position = np.repeat(np.arange(rows.size, dtype=np.int64), lengths)
    offsets = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return position, indices[np.repeat(starts, lengths) + offsets]


@dataclass(frozen=True)
class Hierarchy:
    """An is-a DAG. ``parents[n]`` lists the direct parents of node ``n``; the root has none.

    ``nodes`` is a topological order (every parent before its children), root first. Label vectors
    index ``label_nodes``: every node but the root (the root is true of every image).
    """

    parents: Mapping[str, tuple[str, ...]]
    nodes: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        roots = [n for n, ps in self.parents.items() if not ps]
        if roots != [ROOT] and sorted(roots) != [ROOT]:
            raise DataError(f"a hierarchy needs exactly one root named {ROOT!r}; found roots {roots}")
        for n, ps in self.parents.items():
            for p in ps:
                if p not in self.parents:
                    raise DataError(f"node {n!r} names parent {p!r}, which is not a node of the hierarchy")
        object.__setattr__(self, "nodes", tuple(self._topological_order()))
        deepest = max(self._depths.values(), default=0)  # linear in the edges, before anything grows with depth
        if deepest > MAX_LEVELS:
            raise DataError(f"a hierarchy {deepest:,} levels deep; at most {MAX_LEVELS} levels below the root are "
                            "supported (the ancestor table grows with the square of the depth)")

    def _topological_order(self) -> list[str]:
        children = self.children_map
        order: list[str] = []
        indegree = {n: len(ps) for n, ps in self.parents.items()}
        frontier = deque([ROOT])
        while frontier:
            n = frontier.popleft()
            order.append(n)
            for c in children[n]:
                indegree[c] -= 1
                if indegree[c] == 0:
                    frontier.append(c)
        if len(order) != len(self.parents):
            raise DataError(f"the hierarchy has a cycle: {' -> '.join(self._a_cycle(set(self.parents) - set(order)))}; "
                            f"remove one of its edges")
        return order

    def _a_cycle(self, stuck: set[str]) -> list[str]:
        """A cycle among the nodes the topological order never reached (each has a parent among them:
        the root is reached, and a node is reached once all its parents are), written child to parent."""
        path: list[str] = []
        seen: dict[str, int] = {}
        n = min(stuck)
        while n not in seen:
            seen[n] = len(path)
            path.append(n)
            n = min(p for p in self.parents[n] if p in stuck)
        return [*path[seen[n]:], n]

    @cached_property
    def children_map(self) -> dict[str, tuple[str, ...]]:
        kids: dict[str, list[str]] = {n: [] for n in self.parents}
        for n, ps in self.parents.items():
            for p in ps:
                kids[p].append(n)
        return {n: tuple(sorted(c)) for n, c in kids.items()}

    def children(self, node: str) -> tuple[str, ...]:
        return self.children_map[self._check(node)]

    @cached_property
    def leaves(self) -> tuple[str, ...]:
        """Leaf nodes in topological order: the classes an image is drawn from."""
        return tuple(n for n in self.nodes if not self.children_map[n])

    @cached_property
    def label_nodes(self) -> tuple[str, ...]:
        """The nodes a label vector covers: every node but the root, in topological order."""
        return tuple(n for n in self.nodes if n != ROOT)

    @cached_property
    def label_index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.label_nodes)}

    @cached_property
    def ancestor_columns(self) -> tuple[np.ndarray, np.ndarray]:
        """The closure table, CSR over label columns: for label column ``c`` (``label_nodes[c]``),
        ``indices[indptr[c]:indptr[c + 1]]`` are the sorted columns of that node and of every strict
        ancestor but the root. ``indptr`` int64 [num_label_nodes + 1], ``indices`` int32."""
        index = self.label_index
        closure: dict[str, frozenset[int]] = {}
        lengths = np.zeros(len(self.label_nodes), dtype=np.int64)
        chunks: list[np.ndarray] = []
        for n in self.label_nodes:  # parents come first, so their closures are ready
            acc: set[int] = {index[n]}
            for p in self.parents[n]:
                if p != ROOT:
                    acc |= closure[p]
            closure[n] = frozenset(acc)
            row = np.fromiter(sorted(acc), dtype=np.int32, count=len(acc))
            lengths[index[n]] = row.size
            chunks.append(row)
        indptr = np.zeros(len(self.label_nodes) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        indices = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int32)
        indptr.flags.writeable = False
        indices.flags.writeable = False
        return indptr, indices

    def closure_entries(self, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For label columns int [M]: (position int64 [E], column int32 [E]), every column of each
        given node and its ancestors (root excluded), tagged with the position of the node it came from."""
        return csr_gather(*self.ancestor_columns, np.asarray(columns, dtype=np.int64).ravel())

    def ancestors(self, node: str) -> frozenset[str]:
        """Every strict ancestor of ``node``, the root included."""
        node = self._check(node)
        if node == ROOT:
            return frozenset()
        indptr, indices = self.ancestor_columns
        c = self.label_index[node]
        return frozenset(self.label_nodes[j] for j in indices[indptr[c]:indptr[c + 1]] if j != c) | {ROOT}

    @cached_property
    def _depths(self) -> dict[str, int]:
        depth: dict[str, int] = {}
        for n in self.nodes:  # parents first
            depth[n] = 1 + max(depth[p] for p in self.parents[n]) if self.parents[n] else 0
        return depth

    def depth(self, node: str) -> int:
        """Length of the longest path from the root."""
        return self._depths[self._check(node)]

    def descendant_leaves(self, node: str) -> tuple[str, ...]:
        mask = self.leaves_under(node)
        return tuple(leaf for leaf, on in zip(self.leaves, mask) if on)

    def leaves_under(self, node: str) -> np.ndarray:
        """bool [num_leaves]: which leaves (in ``leaves`` order) are ``node`` or lie below it; one
        column of ``leaf_label_matrix`` (every leaf for the root), computed without that matrix."""
        node = self._check(node)
        if node == ROOT:
            return np.ones(len(self.leaves), dtype=bool)
        position, cols = self.closure_entries(np.asarray(self.leaf_columns, dtype=np.int64))
        mask = np.zeros(len(self.leaves), dtype=bool)
        mask[position[cols == self.label_index[node]]] = True
        return mask

    @cached_property
    def leaf_label_matrix(self) -> np.ndarray:
        """bool [num_leaves, num_label_nodes]: row l marks leaf l and all its ancestors (root excluded).

        Dense, so for small hierarchies only (ImageNet-21k's would be 17k x 24k); everything in this
        class and in :class:`~expertise.data.upstream_data.UpstreamData` works without it."""
        return self.leaf_label_rows(np.arange(len(self.leaves))).astype(bool)

    def leaf_label_rows(self, leaf_ids: np.ndarray) -> np.ndarray:
        """uint8 [N, num_label_nodes]: row i marks leaf ``leaf_ids[i]`` and its ancestors."""
        ids = np.asarray(leaf_ids, dtype=np.int64).ravel()
        position, cols = self.closure_entries(np.asarray(self.leaf_columns, dtype=np.int64)[ids])
        m = np.zeros((ids.size, len(self.label_nodes)), dtype=np.uint8)
        m[position, cols] = 1
        return m

    @cached_property
    def leaf_columns(self) -> tuple[int, ...]:
        """The column of each leaf (in ``leaves`` order) among ``label_nodes``, so in an upstream
        head's outputs. Each upstream image has one leaf, so these are the columns a softmax or an
        argmax over upstream classes reads."""
        return tuple(self.label_index[leaf] for leaf in self.leaves)

    def leaf_logits(self, logits: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """[N, num_leaves]: the leaf columns of an upstream head's outputs [N, num_label_nodes]
        (a tensor or an array; the result is of the same kind)."""
        if logits.ndim != 2 or logits.shape[1] != len(self.label_nodes):
            raise DataError(f"upstream outputs of shape {tuple(logits.shape)} do not match this hierarchy's "
                            f"{len(self.label_nodes)} label nodes")
        return logits[:, list(self.leaf_columns)]

    def label_matrix(self, leaf_ids: np.ndarray) -> np.ndarray:
        """Multi-hot labels, float32 [N, num_label_nodes], for leaf indices into ``leaves``."""
        return self.leaf_label_rows(leaf_ids).astype(np.float32)

    def leaf_column_sums(self, leaf_weights: np.ndarray) -> np.ndarray:
        """[num_label_nodes]: for each label column, the sum of ``leaf_weights`` [num_leaves] over
        the leaves under it (``leaf_weights @ leaf_label_matrix``, computed sparsely; int64 for
        integer weights, float64 otherwise)."""
        w = np.asarray(leaf_weights)
        if w.shape != (len(self.leaves),):
            raise DataError(f"leaf weights of shape {w.shape} do not match this hierarchy's {len(self.leaves)} leaves")
        position, cols = self.closure_entries(np.asarray(self.leaf_columns, dtype=np.int64))
        out = np.zeros(len(self.label_nodes), dtype=np.int64 if np.issubdtype(w.dtype, np.integer) else np.float64)
        np.add.at(out, cols, w[position].astype(out.dtype))
        return out

    def subtree_counts(self, leaf_counts: Mapping[str, int]) -> dict[str, int]:
        """Images under each node: the sum over its descendant leaves (each leaf counted once)."""
        unknown = set(leaf_counts) - set(self.leaves)
        if unknown:
            raise DataError(f"counts name nodes that are not leaves: {sorted(unknown)[:5]}")
        w = np.array([int(leaf_counts.get(leaf, 0)) for leaf in self.leaves], dtype=np.int64)
        sums = self.leaf_column_sums(w)
        return {n: int(w.sum()) if n == ROOT else int(sums[self.label_index[n]]) for n in self.nodes}

    def rank_nodes(self, counts: Mapping[str, int], k: int) -> list[str]:
        """The top-``k`` nodes by ``counts`` (images under each node), root excluded; ties go to the
        shallower, then alphabetically earlier node, so the choice is deterministic."""
        if k < 1:
            raise DataError(f"the number of expert domains must be at least 1, got {k}")
        ranked = sorted(
            (n for n in self.nodes if n != ROOT), key=lambda n: (-counts.get(n, 0), self.depth(n), n)
        )
        return ranked[:k]

    def choose_expert_domains(self, leaf_counts: Mapping[str, int], k: int) -> list[str]:
        """The top-``k`` nodes by subtree image count, root excluded; ties go to the shallower, then
        alphabetically earlier node, so the choice is deterministic."""
        if k < 1:
            raise DataError(f"the number of expert domains must be at least 1, got {k}")
        return self.rank_nodes(self.subtree_counts(leaf_counts), k)

    def _check(self, node: str) -> str:
        if node not in self.parents:
            raise DataError(f"unknown hierarchy node {node!r}")
        return node

    # -- I/O -----------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"format": 1, "root": ROOT, "parents": {n: list(self.parents[n]) for n in self.nodes}}

    @classmethod
    def from_json(cls, data: Mapping) -> Hierarchy:
        """Checked before anything is built: an object ``{"parents": {node: [parent, ...]}}`` of
        string names (at most 256 characters, at most 4,000,000 nodes)."""
        if not isinstance(data, Mapping) or not isinstance(data.get("parents"), Mapping):
            raise DataError("a hierarchy file needs a 'parents' object mapping each node to its parent list")
        parents = data["parents"]
        if len(parents) > MAX_NODES:
            raise DataError(f"a hierarchy has at most {MAX_NODES:,} nodes, this one {len(parents):,}")
        out: dict[str, tuple[str, ...]] = {}
        for n, ps in parents.items():
            if not isinstance(ps, list) or not all(isinstance(p, str) and 0 < len(p) <= 256 for p in ps) or len(n) > 256:
                raise DataError(f"hierarchy node {str(n)[:60]!r}: its parents must be a list of node names "
                                f"(strings of 1-256 characters), got {str(ps)[:60]}")
            out[n] = tuple(ps)
        return cls(out)

    def save(self, path: Path) -> None:
        from expertise.io import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: Path) -> Hierarchy:
        path = Path(path)
        try:
            data = reading.read_json(path)
        except FileNotFoundError:
            raise DataError(f"no hierarchy file at {path}") from None
        except OSError as e:
            raise DataError(f"{path} cannot be read ({e.strerror or e})") from None
        except ConfigError as e:
            raise DataError(f"{e}; rewrite it or restore it from the library") from None
        return cls.from_json(data)

    @classmethod
    def read(cls, path: Path) -> Hierarchy:
        """A hierarchy file: ``hierarchy.json`` as :meth:`save` writes it, or a text file of
        parent-child pairs, one a line (``parent,child``, tab or space separated; ``#`` comments and
        a ``parent,child`` header allowed; a child may have several parents; nodes without a parent
        hang under the root)."""
        path = Path(path)
        if path.suffix == ".json":
            return cls.load(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError(f"no hierarchy file at {path}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{path} cannot be read as text ({getattr(e, 'strerror', None) or e})") from None
        lines = text.count("\n") + 1
        if lines > 2 * MAX_NODES:  # counted before anything is built from them
            raise DataError(f"a hierarchy has at most {MAX_NODES:,} edges here, {path} has {lines:,} lines")
        edges: list[tuple[str, str]] = []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            fields = [f.strip() for f in (line.split(",") if "," in line else line.split())]
            if len(fields) != 2 or not all(0 < len(f) <= 256 for f in fields):
                raise DataError(f"{path}, line {number}: expected 'parent,child', got {line[:60]!r}")
            if not edges and [f.lower() for f in fields] == ["parent", "child"]:
                continue  # the header
            edges.append((fields[1], fields[0]))
        if not edges:
            raise DataError(f"{path} holds no parent-child pairs; write one 'parent,child' pair a line")
        if len(edges) > MAX_NODES:
            raise DataError(f"a hierarchy has at most {MAX_NODES:,} edges here, {path} has {len(edges):,}")
        try:
            return cls.from_edges(edges)
        except DataError as e:
            raise DataError(f"{path}: {e}") from None

    @classmethod
    def from_edges(cls, edges: Iterable[tuple[str, str]]) -> Hierarchy:
        """Build from (child, parent) pairs; nodes without a parent hang under the root."""
        parents: dict[str, list[str]] = {ROOT: []}
        for child, parent in edges:
            parents.setdefault(parent, [])
            ps = parents.setdefault(child, [])
            if parent not in ps:  # a pair given twice is one edge
                ps.append(parent)
        for n, ps in parents.items():
            if n != ROOT and not ps:
                ps.append(ROOT)
        return cls({n: tuple(ps) for n, ps in parents.items()})
