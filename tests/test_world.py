"""The embedded world and upstream datasets: determinism, speed, hierarchy shape, imbalance,
splits, downstream tasks, and the UpstreamData API."""

from __future__ import annotations

import hashlib
import json
import pickle
import time

import numpy as np
import pytest
import torch

from expertise.data.hierarchy import ROOT
from expertise.data.tasks import GROUPS, TRAIN_SIZE, VAL_SIZE
from expertise.data.upstream_data import UpstreamData
from expertise.data.world import WORLD_VERSION, World, WorldConfig, save_preview
from expertise.errors import ConfigError, DataError

SMALL = WorldConfig(seed=0, upstream_size=3000, holdout_size=500, test_size=150)


@pytest.fixture(scope="module")
def world() -> World:
    return World(SMALL)


@pytest.fixture(scope="module")
def train(world: World) -> UpstreamData:
    return world.upstream("train")


# -- determinism ------------------------------------------------------------------------------


def test_images_do_not_depend_on_batching_order_or_instance(train: UpstreamData) -> None:
    ref = train.images(np.arange(64))
    chunks = torch.cat([train.images(np.arange(s, min(s + 13, 64))) for s in range(0, 64, 13)])
    singles = torch.cat([train.images(np.array([i])) for i in range(64)])
    perm = np.random.default_rng(3).permutation(64)
    mixed = train.images(np.concatenate([perm, np.arange(1000, 1700)]))[:64]  # inside a bigger batch
    assert torch.equal(ref, chunks) and torch.equal(ref, singles)
    assert torch.equal(ref[perm], mixed)
    other = World(SMALL).upstream("train")
    assert torch.equal(ref, other.images(np.arange(64)))
    assert np.array_equal(train.leaf_ids, other.leaf_ids)


def test_seeds_and_splits_differ(world: World, train: UpstreamData) -> None:
    a = train.images(np.arange(32))
    b = World(WorldConfig(seed=1, upstream_size=100, holdout_size=10)).upstream("train").images(np.arange(32))
    assert (a != b).float().mean() > 0.5
    holdout = world.upstream("holdout")
    assert len(holdout) == SMALL.holdout_size
    assert (holdout.images(np.arange(32)) != a).float().mean() > 0.5
    assert not np.array_equal(holdout.leaf_ids[:200], train.leaf_ids[:200])


def test_image_i_does_not_depend_on_split_size() -> None:
    small = World(WorldConfig(upstream_size=50, holdout_size=5)).upstream("train")
    big = World(WorldConfig(upstream_size=5000, holdout_size=5)).upstream("train")
    assert np.array_equal(small.leaf_ids, big.leaf_ids[:50])
    assert torch.equal(small.images(np.arange(50)), big.images(np.arange(50)))


def test_render_rate(train: UpstreamData) -> None:
    torch.set_num_threads(2)
    idx = np.arange(3000)
    train.images(idx[:500])  # warm-up
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        train.images(idx)
        best = max(best, idx.size / (time.perf_counter() - start))
    assert best >= 5000, f"rendered {best:.0f} images/s at 32 px; need 5,000"


# sha256 prefixes of what a small world renders, taken at WORLD_VERSION 2 (numpy 2, matplotlib's
# bundled fonts, x86-64). A change here means the same WorldConfig now renders other pixels: bump
# WORLD_VERSION (libraries of the old world are then refused) and take the new values.
PINNED_V2 = {
    "hierarchy": "738f7c6fb71d2a65",
    "upstream/train": "7fa16b94153725ca",
    "upstream/holdout": "1f7653a602e7deef",
    "glyph_digits": "fc883b7ec6acbf72",
    "glyph_unseen": "69f879abed324a58",
    "glyph_fonts": "6bb2ff44851354e2",
    "shape_unseen": "8f787245c89619f2",
    "texture_unseen": "398220c2f5f05b27",
    "shape_microscopy": "feed5a1f26f2dee6",
    "texture_sensor": "8582fe22165c2822",
    "count": "03125126d8c9f7fc",
    "orientation": "c693a8fa89f8fd74",
    "location": "c5e3e58ba144c100",
    # the built-in suite's structured tasks since 2026-12 (new names: version 3 renders every earlier name as before)
    "blocks_count": "316f234c35006ff1",
    "blocks_orientation": "fa3fcedf50bcd8bc",
    "blocks_location": "5644dee22966c8d1",
}


def test_world_renders_the_pinned_bytes() -> None:
    w = World(WorldConfig(seed=0, resolution=16, upstream_size=200, holdout_size=50, test_size=8))
    got = {"hierarchy": hashlib.sha256(json.dumps(w.hierarchy.to_json(), sort_keys=True).encode()).hexdigest()[:16]}
    for split in ("train", "holdout"):
        data = w.upstream(split)
        h = hashlib.sha256(data.images(np.arange(len(data))).numpy().tobytes())
        h.update(np.ascontiguousarray(data.leaf_ids).tobytes())
        got[f"upstream/{split}"] = h.hexdigest()[:16]
    got.update({name: w.task(name).fingerprint() for name in (*w.task_names, *w.extra_task_names)})
    assert WORLD_VERSION == 3  # version 3 added optional domains; the default ones render as in version 2
    changed = [k for k in PINNED_V2.keys() | got.keys() if PINNED_V2.get(k) != got.get(k)]
    assert not changed, f"the world renders other bytes for {sorted(changed)}: bump WORLD_VERSION"


# -- images -----------------------------------------------------------------------------------


def test_images_are_uint8_and_not_constant(train: UpstreamData) -> None:
    x = train.images(np.arange(200))
    assert x.dtype == torch.uint8 and x.shape == (200, 3, 32, 32)
    per_image_std = x.float().flatten(1).std(dim=1)
    assert per_image_std.min() > 3  # every image has some structure
    assert x.float().mean(dim=(0, 2, 3)).std() < 40  # no colour channel dominates overall


def test_other_resolution() -> None:
    w = World(WorldConfig(resolution=16, upstream_size=100, holdout_size=10, test_size=20))
    x = w.upstream("train").images(np.arange(40))
    assert x.shape == (40, 3, 16, 16) and x.float().std() > 10
    for name in ("count", "texture_sensor", "glyph_digits"):
        t = w.task(name)
        assert t.train.images.shape == (TRAIN_SIZE, 3, 16, 16) and t.resolution == 16


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ConfigError):
        WorldConfig(resolution=4)
    with pytest.raises(ConfigError):
        WorldConfig(upstream_size=0)


# -- hierarchy and class frequencies ----------------------------------------------------------


def test_hierarchy_shape(world: World) -> None:
    h = world.hierarchy
    domains = h.children(ROOT)
    assert len(domains) >= 3 and set(domains) == set(world.domains)
    assert len(h.leaves) >= 100
    assert {h.depth(leaf) for leaf in h.leaves} == {3}
    assert len(set(h.nodes)) == len(h.nodes)
    for leaf in h.leaves:
        dom, fam, _ = leaf.split("/")
        assert h.parents[leaf] == (f"{dom}/{fam}",) and h.parents[f"{dom}/{fam}"] == (dom,)


def test_default_world_covers_every_leaf_with_imbalance() -> None:
    w = World(WorldConfig())
    ids = w.leaf_ids("train")
    assert ids.shape == (60_000,)
    counts = np.bincount(ids, minlength=len(w.hierarchy.leaves))
    assert counts.min() >= 1
    assert counts.max() / counts.min() >= 3
    top = w.hierarchy.choose_expert_domains(dict(zip(w.hierarchy.leaves, counts.tolist())), 8)
    depths = {w.hierarchy.depth(n) for n in top}
    assert depths == {1, 2}  # the biggest nodes mix domains and families
    holdout = np.bincount(w.leaf_ids("holdout"), minlength=len(w.hierarchy.leaves)) / w.cfg.holdout_size
    assert np.abs(holdout - counts / counts.sum()).max() < 0.02  # same class distribution


def test_slice_agrees_with_targets(world: World, train: UpstreamData) -> None:
    h = world.hierarchy
    idx = np.arange(len(train))
    y = train.targets(idx).numpy()
    assert y.shape == (len(train), len(h.label_nodes)) and y.dtype == np.float32
    for node in ("glyph", "shape/star", "texture/periodic", h.leaves[0], h.leaves[-1]):
        s = train.slice(node)
        assert s.dtype == np.int64 and np.all(np.diff(s) > 0)
        assert np.array_equal(s, np.flatnonzero(y[:, h.label_index[node]]))
    assert np.array_equal(train.slice(ROOT), idx)
    counts = train.node_counts()
    assert counts[ROOT] == len(train) == sum(train.leaf_counts().values())
    assert sum(counts[d] for d in world.domains) == len(train)
    assert counts["glyph"] == train.slice("glyph").size
    with pytest.raises(DataError):
        train.slice("no/such/node")


def test_label_distribution(world: World, train: UpstreamData) -> None:
    y = train.targets(np.arange(len(train))).numpy().astype(np.float64)
    assert np.allclose(train.label_distribution(), y.mean(axis=0))
    glyphs = train.slice("glyph")
    dist = train.label_distribution(glyphs)
    assert dist.dtype == np.float64 and dist[world.hierarchy.label_index["glyph"]] == 1.0
    assert dist[world.hierarchy.label_index["shape"]] == 0.0
    assert np.allclose(dist, y[glyphs].mean(axis=0))
    assert np.all(train.label_distribution(np.zeros(0, dtype=np.int64)) == 0)


# -- UpstreamData API -------------------------------------------------------------------------


def test_index_validation(train: UpstreamData) -> None:
    for bad in (np.array([-1]), np.array([len(train)]), np.array([0.5]), np.zeros((2, 2), dtype=np.int64)):
        with pytest.raises(DataError):
            train.images(bad)
    with pytest.raises(DataError):
        train.targets(np.array([len(train)]))
    assert train.images(np.zeros(0, dtype=np.int64)).shape == (0, 3, 32, 32)


def test_materialize_and_from_arrays(world: World) -> None:
    small = World(WorldConfig(upstream_size=300, holdout_size=10)).upstream("train")
    mem = small.materialize()
    assert mem is not small and len(mem) == len(small)
    idx = np.array([5, 0, 299, 5])
    assert torch.equal(mem.images(idx), small.images(idx))
    assert mem.materialize() is mem
    assert small.materialize(max_bytes=10) is small
    arr = UpstreamData.from_arrays(small.hierarchy, small.images(np.arange(300)).numpy(), small.leaf_ids, "disk")
    assert arr.resolution == 32 and torch.equal(arr.images(idx), small.images(idx))
    assert torch.equal(arr.targets(idx), small.targets(idx))
    with pytest.raises(DataError):
        UpstreamData.from_arrays(small.hierarchy, torch.zeros((3, 3, 8, 8)), np.zeros(3, dtype=np.int64), "f")
    with pytest.raises(DataError):
        UpstreamData.from_arrays(small.hierarchy, torch.zeros((3, 3, 8, 8), dtype=torch.uint8), np.zeros(2, dtype=np.int64), "n")
    with pytest.raises(DataError):
        UpstreamData(small.hierarchy, np.array([len(small.hierarchy.leaves)]), lambda i: None, 8, "bad")


def test_upstream_pickles(train: UpstreamData) -> None:
    back = pickle.loads(pickle.dumps(train))  # e.g. into DataLoader workers; carries only the config
    assert len(pickle.dumps(train)) < 2_000_000
    assert torch.equal(back.images(np.arange(8)), train.images(np.arange(8)))


def test_unknown_split(world: World) -> None:
    with pytest.raises(DataError, match="train"):
        world.upstream("validation")  # type: ignore[arg-type]


# -- downstream tasks -------------------------------------------------------------------------


def test_task_suite(world: World) -> None:
    assert len(world.task_names) >= 8
    groups = {}
    for name in world.task_names:
        t = world.task(name)
        groups.setdefault(t.group, []).append(name)
        assert t.name == name and t.group in GROUPS
        assert (len(t.train), len(t.val), len(t.test)) == (TRAIN_SIZE, VAL_SIZE, SMALL.test_size)
        assert t.train.images.shape[1:] == (3, 32, 32) and t.train.images.dtype == torch.uint8
        for part in (t.train, t.val, t.test):
            assert int(part.labels.min()) >= 0 and int(part.labels.max()) < t.num_classes
        per_class = torch.bincount(t.train.labels, minlength=t.num_classes)
        assert per_class.min() >= 1 and per_class.max() - per_class.min() <= 1, name  # near-balanced
        assert t.train.images.float().flatten(1).std(dim=1).min() > 2
        dom = world.domain_of_task(name)
        assert dom is None or dom in world.hierarchy.children(ROOT)
    assert set(groups) == set(GROUPS)


def test_task_classes_are_held_out_of_upstream(world: World) -> None:
    upstream = set(world.hierarchy.nodes)
    for name in world.task_names:
        assert not upstream & set(world.task(name).classes), name
    digits = world.task("glyph_digits").classes
    assert len(digits) == 10 and all(c.startswith("glyph/digit/") for c in digits)


def test_tasks_are_deterministic_and_distinct(world: World) -> None:
    again = World(SMALL).task("count")
    t = world.task("count")
    assert t.fingerprint() == again.fingerprint()
    assert not torch.equal(t.train.images[:50], t.test.images[:50])
    assert t.fingerprint() != world.task("location").fingerprint()


def test_unknown_task_lists_the_names(world: World) -> None:
    with pytest.raises(DataError, match="glyph_digits"):
        world.task("imagenet")
    with pytest.raises(DataError):
        world.domain_of_task("imagenet")


def test_sample_grid_and_preview(world: World, tmp_path) -> None:
    leaves = world.hierarchy.leaves[:3] + ("glyph/digit/7",)
    grid = world.sample_grid(2, leaves)
    assert grid.shape == (8, 3, 32, 32) and grid.dtype == torch.uint8
    with pytest.raises(DataError):
        world.sample_grid(1, ["no/such/class"])
    path = save_preview(world, tmp_path / "preview.png", per_row=4)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
