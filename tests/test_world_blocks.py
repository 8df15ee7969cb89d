"""Structured tasks on block pieces, art that no upstream domain has (``expertise.data.world.blocks``):
the pieces, the tasks' determinism and batch independence, and that they are the built-in suite's
structured tasks while the earlier ones (count, orientation, location) still load by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from expertise.bench.runner import suite_tasks
from expertise.data.loaders import load_task
from expertise.data.world import World, WorldConfig
from expertise.data.world.blocks import PIECES, blocks_bank
from expertise.data.world.rng import Draw, image_keys
from expertise.errors import DataError

BLOCKS = ("blocks_count", "blocks_orientation", "blocks_location")
EARLIER = ("count", "orientation", "location")  # the structured tasks of the suite before blocks
CFG = WorldConfig(seed=0, resolution=16, upstream_size=200, holdout_size=10, test_size=40)


@pytest.fixture(scope="module")
def world() -> World:
    return World(CFG)


def test_pieces_fit_any_rotation_and_their_head_is_on_top() -> None:
    bank = blocks_bank(3, 32)
    assert bank.shape == (2 * PIECES, 34, 34) and not bank.flags.writeable
    n = bank.shape[-1]
    g = (np.arange(n) - (n - 1) / 2) / ((n - 2) / 2)  # sprite-canvas coordinates, [-1, 1] inside the border
    x, y = np.meshgrid(g, -g)
    for body, head in zip(bank[:PIECES], bank[PIECES:]):
        assert body.sum() > 2 * head.sum() > 0  # a spine and side blocks under one head block
        assert (body + head).max() <= 1.0
        inked = (body + head) > 0
        assert np.hypot(x, y)[inked].max() <= 0.95  # a full turn never leaves the canvas
        head_y = (head * y).sum() / head.sum()
        head_x = (head * x).sum() / head.sum()
        body_y = (body * y).sum() / body.sum()
        assert head_y > body_y + 0.2 and abs(head_x) < 0.35  # the head points up
    assert not np.array_equal(bank, blocks_bank(4, 32))  # the pieces are drawn from the seed
    assert np.array_equal(bank, blocks_bank.__wrapped__(3, 32))


def test_blocks_are_the_structured_suite_and_earlier_tasks_load_by_name(world: World) -> None:
    assert [t.name for t in suite_tasks("structured", world, 16)] == list(BLOCKS)
    assert set(BLOCKS) <= set(world.task_names)
    assert world.extra_task_names == EARLIER
    assert not set(EARLIER) & {t.name for t in suite_tasks("builtin", world, 16)}
    tasks = suite_tasks(",".join(BLOCKS + EARLIER), world, 16)
    assert [t.name for t in tasks] == list(BLOCKS + EARLIER)
    assert [world.domain_of_task(t.name) for t in tasks[3:]] == ["shape", "glyph", None]
    for t in tasks:
        assert t.group == "structured" and (t.name in EARLIER or world.domain_of_task(t.name) is None)
        assert torch.equal(load_task(t.name, world=world).train.images, t.train.images)
        per_class = torch.bincount(t.train.labels, minlength=t.num_classes)
        assert per_class.min() >= 1 and per_class.max() - per_class.min() <= 1
        assert t.train.images.float().flatten(1).std(dim=1).min() > 3  # every image shows its pieces
    with pytest.raises(DataError, match="blocks_orientation"):
        world.task("blocks_nope")


@pytest.mark.parametrize("name", BLOCKS)
def test_blocks_images_do_not_depend_on_batch_or_instance(world: World, name: str) -> None:
    spec = world._spec(name)
    keys = image_keys(CFG.seed, f"task/{name}/train", np.arange(24))
    labels = np.arange(24) % len(spec.classes)
    ref = spec.render(world, Draw(keys), labels)
    singles = np.concatenate([spec.render(world, Draw(keys[i: i + 1]), labels[i: i + 1]) for i in range(24)])
    assert np.array_equal(ref, singles)
    assert np.array_equal(ref, spec.render(World(CFG), Draw(keys), labels))
    assert world.task(name).fingerprint() == World(CFG).task(name).fingerprint()


def test_orientation_label_turns_the_piece(world: World) -> None:
    """The same image keys with labels half a turn apart draw the same scene (ground, colours, noise)
    with the piece pointing the other way: the images differ only where the piece is."""
    spec = world._spec("blocks_orientation")
    keys = image_keys(CFG.seed, "task/blocks_orientation/train", np.arange(32))
    up = spec.render(world, Draw(keys), np.zeros(32, dtype=np.int64)).astype(np.int64)
    down = spec.render(world, Draw(keys), np.full(32, 4, dtype=np.int64)).astype(np.int64)
    changed = (np.abs(up - down) > 10).any(axis=1).reshape(32, -1).mean(axis=1)  # fraction of pixels per image
    assert (np.abs(up - down).reshape(32, -1).max(axis=1) > 40).all()
    assert (changed > 0.02).all() and (changed < 0.6).all()
