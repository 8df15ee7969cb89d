"""The label hierarchy: ancestors, subtree counts (tree and DAG), expert-domain choice, JSON I/O, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from expertise.data.hierarchy import ROOT, Hierarchy
from expertise.errors import DataError


@pytest.fixture
def tree() -> Hierarchy:
    """root -> animal -> {cat, dog -> {poodle, terrier}}; root -> plant -> tree."""
    return Hierarchy({
        ROOT: (), "animal": (ROOT,), "plant": (ROOT,), "cat": ("animal",), "dog": ("animal",),
        "poodle": ("dog",), "terrier": ("dog",), "tree": ("plant",),
    })


@pytest.fixture
def dag() -> Hierarchy:
    """As ``tree`` plus a node 'pet' under the root that is a second parent of 'dog' and 'cat'."""
    return Hierarchy({
        ROOT: (), "animal": (ROOT,), "pet": (ROOT,), "plant": (ROOT,), "cat": ("animal", "pet"),
        "dog": ("animal", "pet"), "poodle": ("dog",), "terrier": ("dog",), "tree": ("plant",),
    })


COUNTS = {"cat": 5, "poodle": 2, "terrier": 3, "tree": 1}


def test_structure(tree: Hierarchy) -> None:
    assert tree.nodes[0] == ROOT
    assert set(tree.leaves) == {"cat", "poodle", "terrier", "tree"}
    assert ROOT not in tree.label_nodes and len(tree.label_nodes) == len(tree.nodes) - 1
    for n in tree.nodes:  # topological: every parent comes before its child
        assert all(tree.nodes.index(p) < tree.nodes.index(n) for p in tree.parents[n])
    assert tree.children("dog") == ("poodle", "terrier")
    assert tree.descendant_leaves("animal") == tuple(n for n in tree.leaves if n in {"cat", "poodle", "terrier"})
    assert tree.descendant_leaves("tree") == ("tree",)


def test_ancestors_and_depth(tree: Hierarchy, dag: Hierarchy) -> None:
    assert tree.ancestors("terrier") == {"dog", "animal", ROOT}
    assert tree.ancestors(ROOT) == frozenset()
    assert tree.ancestors("animal") == {ROOT}
    assert dag.ancestors("terrier") == {"dog", "animal", "pet", ROOT}
    assert [tree.depth(n) for n in (ROOT, "plant", "dog", "poodle")] == [0, 1, 2, 3]
    with pytest.raises(DataError, match="unknown"):
        tree.ancestors("unicorn")


def test_label_matrix_marks_leaf_and_ancestors(dag: Hierarchy) -> None:
    ids = np.array([dag.leaves.index("terrier"), dag.leaves.index("tree")])
    m = dag.label_matrix(ids)
    assert m.dtype == np.float32 and m.shape == (2, len(dag.label_nodes))
    on = {dag.label_nodes[j] for j in np.flatnonzero(m[0])}
    assert on == {"terrier", "dog", "animal", "pet"}
    assert {dag.label_nodes[j] for j in np.flatnonzero(m[1])} == {"tree", "plant"}


def test_leaf_columns_pick_each_leaf_from_upstream_outputs(dag: Hierarchy) -> None:
    import torch

    assert [dag.label_nodes[c] for c in dag.leaf_columns] == list(dag.leaves)
    outputs = np.arange(3 * len(dag.label_nodes), dtype=np.float32).reshape(3, -1)
    leaf = dag.leaf_logits(outputs)
    assert leaf.shape == (3, len(dag.leaves))
    for j, name in enumerate(dag.leaves):
        assert np.array_equal(leaf[:, j], outputs[:, dag.label_index[name]])
    assert torch.equal(dag.leaf_logits(torch.from_numpy(outputs)), torch.from_numpy(leaf))
    with pytest.raises(DataError, match="label nodes"):
        dag.leaf_logits(outputs[:, :-1])


def test_subtree_counts_tree(tree: Hierarchy) -> None:
    c = tree.subtree_counts(COUNTS)
    assert c == {ROOT: 11, "animal": 10, "plant": 1, "cat": 5, "dog": 5, "poodle": 2, "terrier": 3, "tree": 1}


def test_subtree_counts_dag_counts_each_leaf_once(dag: Hierarchy) -> None:
    c = dag.subtree_counts(COUNTS)
    assert c[ROOT] == 11  # reachable through both animal and pet, still counted once
    assert c["animal"] == 10 and c["pet"] == 10 and c["dog"] == 5


def test_subtree_counts_rejects_non_leaves(tree: Hierarchy) -> None:
    with pytest.raises(DataError, match="not leaves"):
        tree.subtree_counts({"dog": 3})


def test_choose_expert_domains(tree: Hierarchy) -> None:
    assert tree.choose_expert_domains(COUNTS, 3) == ["animal", "cat", "dog"]  # 10, then a 5-5 tie: alphabetical
    assert ROOT not in tree.choose_expert_domains(COUNTS, 100)
    assert len(tree.choose_expert_domains(COUNTS, 100)) == len(tree.label_nodes)


def test_choose_expert_domains_ties_prefer_shallow_then_alphabetical(tree: Hierarchy) -> None:
    counts = {"cat": 0, "poodle": 2, "terrier": 3, "tree": 5}
    # animal = dog = plant = tree = 5: depth 1 (animal, plant) before depth 2 (dog) and 3 (tree)
    assert tree.choose_expert_domains(counts, 4) == ["animal", "plant", "dog", "tree"]
    with pytest.raises(DataError, match="at least 1"):
        tree.choose_expert_domains(counts, 0)


def test_json_round_trip(tmp_path, dag: Hierarchy) -> None:
    path = tmp_path / "sub" / "hierarchy.json"
    dag.save(path)
    back = Hierarchy.load(path)
    assert back.nodes == dag.nodes
    assert dict(back.parents) == dict(dag.parents)
    assert back.subtree_counts(COUNTS) == dag.subtree_counts(COUNTS)
    assert json.loads(path.read_text())["root"] == ROOT


def test_load_errors(tmp_path) -> None:
    with pytest.raises(DataError, match="no hierarchy file"):
        Hierarchy.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        Hierarchy.load(bad)
    bad.write_text(json.dumps({"nodes": []}))
    with pytest.raises(DataError, match="parents"):
        Hierarchy.load(bad)


def test_cycles_unknown_parents_and_roots_are_rejected() -> None:
    with pytest.raises(DataError, match="cycle"):
        Hierarchy({ROOT: (), "a": ("b",), "b": ("a",)})
    with pytest.raises(DataError, match="cycle"):
        Hierarchy({ROOT: (), "a": (ROOT, "b"), "b": ("a",)})
    with pytest.raises(DataError, match="not a node"):
        Hierarchy({ROOT: (), "a": ("nowhere",)})
    with pytest.raises(DataError, match="exactly one root"):
        Hierarchy({ROOT: (), "other_root": ()})
    with pytest.raises(DataError, match="exactly one root"):
        Hierarchy({"a": ()})


def test_from_edges_hangs_orphans_under_the_root() -> None:
    h = Hierarchy.from_edges([("dog", "animal"), ("cat", "animal"), ("oak", "tree")])
    assert h.parents["animal"] == (ROOT,) and h.parents["tree"] == (ROOT,)
    assert set(h.leaves) == {"dog", "cat", "oak"}


def _dense_rows(h: Hierarchy) -> np.ndarray:
    """The leaf-by-node matrix written out from ``ancestors``, independently of the sparse table."""
    m = np.zeros((len(h.leaves), len(h.label_nodes)), dtype=bool)
    for i, leaf in enumerate(h.leaves):
        for n in h.ancestors(leaf) | {leaf}:
            if n != ROOT:
                m[i, h.label_index[n]] = True
    return m


def test_sparse_closure_agrees_with_the_dense_matrix(dag: Hierarchy, tree: Hierarchy) -> None:
    for h in (dag, tree):
        dense = _dense_rows(h)
        assert np.array_equal(h.leaf_label_matrix, dense)
        for n in h.nodes:
            col = np.ones(len(h.leaves), dtype=bool) if n == ROOT else dense[:, h.label_index[n]]
            assert np.array_equal(h.leaves_under(n), col), n
        w = np.arange(1, len(h.leaves) + 1)
        assert np.array_equal(h.leaf_column_sums(w), w @ dense.astype(np.int64))
        assert h.leaf_column_sums(w).dtype == np.int64
        assert h.leaf_column_sums(w / 7).dtype == np.float64
    indptr, indices = dag.ancestor_columns
    c = dag.label_index["terrier"]
    assert {dag.label_nodes[j] for j in indices[indptr[c]:indptr[c + 1]]} == {"terrier", "dog", "animal", "pet"}
    position, cols = dag.closure_entries(np.array([dag.label_index["tree"], dag.label_index["cat"]]))
    assert {(int(p), dag.label_nodes[j]) for p, j in zip(position, cols)} == {
        (0, "tree"), (0, "plant"), (1, "cat"), (1, "animal"), (1, "pet")}
    with pytest.raises(DataError, match="leaves"):
        dag.leaf_column_sums(np.ones(3))


def test_a_deep_wide_dag_never_builds_the_dense_matrix() -> None:
    """A chain of 40 levels with 3,000 leaves, each leaf with two parents: labels, counts, slices and
    expert domains come from the sparse table, and the dense leaf-by-node matrix stays unbuilt."""
    parents: dict[str, tuple[str, ...]] = {ROOT: (), "c0": (ROOT,)}
    for d in range(1, 40):
        parents[f"c{d}"] = (f"c{d - 1}",)
    for i in range(3000):
        parents[f"leaf{i}"] = (f"c{i % 40}", f"c{(i * 7) % 40}")
    h = Hierarchy(parents)
    counts = {f"leaf{i}": i % 5 for i in range(3000)}
    sub = h.subtree_counts(counts)
    assert sub[ROOT] == sub["c0"] == sum(counts.values())
    assert h.depth("c39") == 40 and h.depth("leaf39") == 41
    assert h.choose_expert_domains(counts, 3) == ["c0", "c1", "c2"]
    assert int(h.leaves_under("c39").sum()) == sum(1 for i in range(3000) if 39 in (i % 40, (i * 7) % 40))
    rows = h.label_matrix(np.array([0, 5]))
    assert rows.shape == (2, len(h.label_nodes)) and rows[0].sum() == 1 + len(h.ancestors(h.leaves[0])) - 1
    assert "leaf_label_matrix" not in h.__dict__  # the cached dense matrix was never computed


def test_read_parent_child_pairs_and_json(tmp_path, dag: Hierarchy) -> None:
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("parent,child\n# comment\nanimal,cat\npet\tcat\nanimal dog\npet,dog\npet,dog\n\ndog,poodle  # inline\n")
    h = Hierarchy.read(pairs)
    assert h.parents["cat"] == ("animal", "pet") and h.parents["dog"] == ("animal", "pet")  # the repeated pair is one edge
    assert h.parents["animal"] == (ROOT,) and set(h.leaves) == {"cat", "poodle"}
    dag.save(tmp_path / "h.json")
    assert Hierarchy.read(tmp_path / "h.json").nodes == dag.nodes
    pairs.write_text("# nothing\n")
    with pytest.raises(DataError, match="holds no parent-child pairs"):
        Hierarchy.read(pairs)
    with pytest.raises(DataError, match="no hierarchy file"):
        Hierarchy.read(tmp_path / "missing.txt")
    pairs.write_text("a,b\nb,a\n")
    with pytest.raises(DataError, match=r"pairs.csv: the hierarchy has a cycle: a -> b -> a; remove one of its edges"):
        Hierarchy.read(pairs)
