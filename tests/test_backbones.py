import pytest
import torch

from expertise.errors import ConfigError
from expertise.models.backbones import (
    BACKBONES, BackboneConfig, ExpertModel, Preprocessing, count_parameters, model_from_config, prepare,
)

SMALL = [n for n, c in BACKBONES.items() if c.resolution <= 32]


@pytest.mark.parametrize("name", SMALL)
def test_forward_backward_every_parameter_gets_a_gradient(name):
    cfg = BACKBONES[name]
    torch.manual_seed(0)
    model = ExpertModel(cfg, num_outputs=7)
    x = torch.randn(4, 3, cfg.resolution, cfg.resolution)
    assert model.embed(x).shape == (4, model.num_features)
    # Each residual branch ends in a zero-initialised conv (BiT's zero_init_last), so its inner
    # weights get no gradient at step 0; after one step every parameter must receive one.
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(x).pow(2).sum().backward()
    opt.step()
    opt.zero_grad()
    model(x).pow(2).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, missing


@pytest.mark.parametrize("name", list(BACKBONES))
def test_config_round_trip_rebuilds_identical_module(name):
    cfg = BACKBONES[name]
    assert BackboneConfig.from_json(cfg.to_json()) == cfg
    if cfg.resolution > 32:
        return  # building R50 is slow; the config round trip is what matters here
    model = ExpertModel(cfg, num_outputs=3)
    clone = model_from_config(model.member_config())
    clone.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, cfg.resolution, cfg.resolution)
    torch.testing.assert_close(clone.embed(x), model.embed(x))


def test_r50x1_matches_bit_parameter_count():
    model = ExpertModel(BACKBONES["bit_r50x1"], num_outputs=0)
    # BiT-M R50x1 without its head has 23.5M parameters (timm's resnetv2_50x1_bit minus the 21k head).
    assert 23.4e6 < count_parameters(model) < 23.6e6
    assert model.num_features == 2048


def test_reset_head_is_zero_initialised_and_task_sized():
    model = ExpertModel(BACKBONES["bit_xs"], num_outputs=11)
    assert model.has_upstream_head
    model.reset_head(4)
    x = torch.randn(3, 3, 16, 16)
    assert model(x).shape == (3, 4)
    assert torch.all(model(x) == 0)
    assert not model.has_upstream_head
    with pytest.raises(ConfigError):
        model.upstream_logits(x)


def test_prepare_resizes_and_normalises():
    img = torch.full((2, 3, 8, 8), 255, dtype=torch.uint8)
    x = prepare(img, Preprocessing(16, (0.5,) * 3, (0.25,) * 3))
    assert x.shape == (2, 3, 16, 16)
    torch.testing.assert_close(x, torch.full_like(x, 2.0))


def test_bad_backbone_config_is_rejected():
    with pytest.raises(ConfigError, match="divisible"):
        BackboneConfig("x", channels=(12, 24, 48, 96), groups=8)
    with pytest.raises(ConfigError, match="stage depths"):
        BackboneConfig("x", channels=(16, 32), layers=(1,))
    with pytest.raises(ConfigError, match="unknown member class"):
        model_from_config({"class": "Nope"})
