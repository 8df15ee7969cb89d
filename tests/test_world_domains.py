"""The optional domains of world version 3 (scene, cell, solid): determinism, batch independence,
held-out natural tasks, the config that selects them and its stored form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from expertise.data.hierarchy import ROOT
from expertise.data.world import World, WorldConfig
from expertise.data.world.catalogue import ALL_DOMAINS, HELD_OUT
from expertise.errors import ConfigError
from expertise.library.upstream_meta import world_config

ALL = WorldConfig(seed=0, resolution=16, upstream_size=1500, holdout_size=50, test_size=40, domains=ALL_DOMAINS,
                  domain_weights=(0.3, 1.0, 1.0, 1.0, 1.0, 1.0))
NEW = ("scene", "cell", "solid")


@pytest.fixture(scope="module")
def world() -> World:
    return World(ALL)


def _indices_of(world: World, domain: str, n: int) -> np.ndarray:
    ids = world.leaf_ids("train")
    return np.nonzero([world.leaf_classes[i].domain == domain for i in ids])[0][:n]


@pytest.mark.parametrize("domain", NEW)
def test_new_domain_images_do_not_depend_on_batch_or_instance(world: World, domain: str) -> None:
    train = world.upstream("train")
    idx = _indices_of(world, domain, 24)
    assert len(idx) == 24
    ref = train.images(idx)
    singles = torch.cat([train.images(idx[i: i + 1]) for i in range(len(idx))])
    perm = np.random.default_rng(1).permutation(len(idx))
    mixed = train.images(np.concatenate([idx[perm], np.arange(300)]))[: len(idx)]  # among other domains
    assert torch.equal(ref, singles) and torch.equal(ref[perm], mixed)
    assert torch.equal(ref, World(ALL).upstream("train").images(idx))
    assert ref.float().flatten(1).std(dim=1).min() > 3  # every image has structure


def test_hierarchy_and_tasks_of_every_domain(world: World) -> None:
    assert set(world.hierarchy.children(ROOT)) == set(ALL_DOMAINS) == set(world.domains)
    for task, domain in (("scene_unseen", "scene"), ("cell_unseen", "cell"), ("solid_unseen", "solid")):
        assert task in world.task_names and world.domain_of_task(task) == domain
        t = world.task(task)
        assert t.group == "natural" and t.classes == HELD_OUT[task]
        assert not set(t.classes) & set(world.hierarchy.nodes)  # held out of upstream
        assert t.fingerprint() == World(ALL).task(task).fingerprint()
        per_class = torch.bincount(t.train.labels, minlength=t.num_classes)
        assert per_class.min() >= 1 and per_class.max() - per_class.min() <= 1


def test_domains_select_classes_and_tasks() -> None:
    w = World(WorldConfig(resolution=16, upstream_size=200, holdout_size=10, test_size=10, domains=("scene", "solid"),
                          domain_weights=(1.0, 2.0)))
    assert set(w.hierarchy.children(ROOT)) == {"scene", "solid"}
    # the blocks tasks need no upstream domain; every other built-in task needs a missing one
    assert w.task_names == ("blocks_count", "blocks_orientation", "blocks_location", "scene_unseen", "solid_unseen")
    share = np.mean([w.leaf_classes[i].domain == "solid" for i in w.leaf_ids("train")])
    assert share > 0.5  # the weight counts


def test_default_world_has_the_three_domains() -> None:
    w = World(WorldConfig(resolution=16, upstream_size=50, holdout_size=5, test_size=5))
    assert w.domains == ("glyph", "shape", "texture")
    assert not any(n.startswith(("scene_", "cell_", "solid_")) for n in w.task_names)


def test_bad_domains_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="distinct names"):
        WorldConfig(domains=("glyph", "sky"), domain_weights=(1.0, 1.0))
    with pytest.raises(ConfigError, match="distinct names"):
        WorldConfig(domains=("glyph", "glyph"), domain_weights=(1.0, 1.0))
    with pytest.raises(ConfigError, match="one positive weight per domain"):
        WorldConfig(domains=ALL_DOMAINS)  # weights left at the three-domain default


def test_stored_world_config_round_trips_and_is_checked() -> None:
    stored = {"seed": 0, "resolution": 16, "upstream_size": 100, "holdout_size": 10, "test_size": 20,
              "imbalance": 1.0, "domain_weights": [1.0, 1.0], "domains": ["cell", "glyph"]}
    cfg = world_config(stored, "upstream.json:world")
    assert cfg.domains == ("cell", "glyph") and cfg.domain_weights == (1.0, 1.0)
    with pytest.raises(ConfigError, match="domain_weights"):
        world_config({**stored, "domain_weights": [1.0, 1.0, 1.0]}, "w")
    with pytest.raises(ConfigError, match="expected one of"):
        world_config({**stored, "domains": ["cell", "/etc/passwd"]}, "w")
    legacy = {k: v for k, v in stored.items() if k != "domains"}  # a version-2 library names no domains
    with pytest.raises(ConfigError, match="domain_weights"):
        world_config(legacy, "w")
    assert world_config({**legacy, "domain_weights": [0.3, 1.0, 1.0]}, "w").domains == ("glyph", "shape", "texture")
