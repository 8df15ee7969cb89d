"""The expert prediction network on a tiny two-domain upstream world whose images differ clearly."""

import numpy as np
import pytest
import torch

from expertise.data.hierarchy import Hierarchy
from expertise.data.upstream_data import UpstreamData
from expertise.errors import ConfigError, DataError
from expertise.upstream.epn import epn_probabilities, routing_targets, train_epn
from expertise.select.strategies import domain_prediction
from expertise.train import TrainConfig

torch.set_num_threads(1)

NODES = ("warm", "cool")
# Domains differ clearly: a warm, bright palette vs a cool, dark one, plus pixel noise (margins
# of the right domain's probability over the other were >= 0.97 across seeds 0-2).
PALETTE = {"warm": (220, 150, 40), "cool": (30, 60, 120)}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # after conftest's fixture: the model is tiny, threads only add overhead
    yield


def hierarchy() -> Hierarchy:
    return Hierarchy(parents={"root": (), "warm": ("root",), "cool": ("root",), "warm/a": ("warm",),
                              "warm/b": ("warm",), "cool/a": ("cool",), "cool/b": ("cool",)})


def images_of(domain: str, n: int, rng: np.random.Generator, res: int = 16) -> torch.Tensor:
    base = np.array(PALETTE[domain], dtype=np.float64).reshape(1, 3, 1, 1)
    x = base + rng.normal(0, 20, size=(n, 3, res, res))
    return torch.from_numpy(np.clip(x, 0, 255).astype(np.uint8))


def world(n_per_leaf: int = 12, seed: int = 0) -> UpstreamData:
    h = hierarchy()
    rng = np.random.default_rng(seed)
    leaf_ids = np.repeat(np.arange(len(h.leaves)), n_per_leaf)
    imgs = torch.cat([images_of(h.leaves[i].split("/")[0], n_per_leaf, rng) for i in range(len(h.leaves))])
    return UpstreamData.from_arrays(h, imgs, leaf_ids, "tiny")


def test_routing_targets_follow_slices():
    data = world(n_per_leaf=3)
    t = routing_targets(data, ("warm", "cool", "root", "warm/a"))
    assert t.dtype == torch.float32 and t.shape == (len(data), 4)
    for e, node in enumerate(("warm", "cool", "root", "warm/a")):
        assert np.array_equal(np.flatnonzero(t[:, e].numpy()), data.slice(node))
    assert torch.equal(routing_targets(data, NODES, np.array([0, 11])), t[[0, 11], :2])
    with pytest.raises(DataError, match="indices"):
        routing_targets(data, NODES, np.array([len(data)]))
    with pytest.raises(DataError, match="not nodes"):
        routing_targets(data, ("warm", "nowhere"))
    with pytest.raises(ConfigError, match="repeat"):
        routing_targets(data, ("warm", "warm"))
    with pytest.raises(ConfigError, match="at least one"):
        routing_targets(data, ())


def test_epn_routes_each_domain_to_its_expert():
    data = world()
    cfg = TrainConfig(steps=40, batch_size=16, lr=0.05, warmup_steps=2)
    model = train_epn(data, NODES, "bit_xs", cfg, seed=0, progress=False)
    assert model.epn_nodes == NODES and model.epn_stats.steps == 40
    assert model.epn_stats.final_loss < model.epn_stats.losses[0]

    rng = np.random.default_rng(1)  # fresh images, not the training ones
    for e, domain in enumerate(NODES):
        probs = epn_probabilities(model, images_of(domain, 10, rng), batch_size=4)
        assert probs.shape == (10, 2) and probs.dtype == np.float64
        assert ((probs >= 0) & (probs <= 1)).all()
        assert (probs.argmax(1) == e).all(), probs
        assert domain_prediction(probs, [f"expert_{n}" for n in NODES]).best == f"expert_{domain}"


def test_epn_validates_inputs():
    data = world(n_per_leaf=2)
    with pytest.raises(ConfigError, match="unknown backbone"):
        train_epn(data, NODES, "nope", TrainConfig(steps=1, batch_size=2, lr=0.1), seed=0, progress=False)
    model = train_epn(data, NODES, "bit_xs", TrainConfig(steps=1, batch_size=2, lr=0.01), seed=0, progress=False)
    with pytest.raises(DataError, match="uint8"):
        epn_probabilities(model, torch.zeros(2, 3, 16, 16))
    assert epn_probabilities(model, torch.zeros(0, 3, 16, 16, dtype=torch.uint8)).shape == (0, 2)
