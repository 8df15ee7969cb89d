import numpy as np
import pytest
import torch

from expertise.errors import ConfigError
from expertise.models.backbones import BACKBONES, ExpertModel
from expertise.train import EpochSampler, TrainConfig, fit, multilabel_loss, softmax_loss


def test_trainer_overfits_a_tiny_batch():
    torch.manual_seed(0)
    model = ExpertModel(BACKBONES["bit_xs"], num_outputs=4)
    x = torch.randn(16, 3, 16, 16)
    y = torch.arange(16) % 4
    cfg = TrainConfig(steps=60, batch_size=16, lr=0.05, warmup_steps=5, decay_at=(0.8,))
    stats = fit(model, lambda step: (x, y), cfg, softmax_loss)
    assert stats.losses[0] > 1.0
    assert stats.final_loss < 0.1
    assert (model(x).argmax(1) == y).all()
    assert stats.images == 60 * 16 and stats.steps == 60


def test_multilabel_loss_trains_and_params_restrict_learning():
    torch.manual_seed(0)
    model = ExpertModel(BACKBONES["bit_xs"], num_outputs=6)
    x = torch.randn(8, 3, 16, 16)
    y = (torch.rand(8, 6) > 0.5).float()
    frozen = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    stats = fit(model, lambda s: (x, y), TrainConfig(steps=30, batch_size=8, lr=0.5), multilabel_loss,
                params=model.head.parameters())
    assert stats.final_loss < stats.losses[0]
    for n, p in model.backbone.named_parameters():
        assert torch.equal(p, frozen[n]), n


def test_schedule_warms_up_then_decays():
    cfg = TrainConfig(steps=100, batch_size=1, lr=1.0, warmup_steps=10, decay_at=(0.3, 0.6, 0.9), decay_factor=0.1)
    assert cfg.lr_at(0) == pytest.approx(0.1)
    assert cfg.lr_at(9) == pytest.approx(1.0)
    assert cfg.lr_at(29) == pytest.approx(1.0)
    assert cfg.lr_at(30) == pytest.approx(0.1)
    assert cfg.lr_at(60) == pytest.approx(0.01)
    assert cfg.lr_at(99) == pytest.approx(0.001)


def test_bad_train_config_is_rejected():
    with pytest.raises(ConfigError):
        TrainConfig(steps=0, batch_size=1, lr=0.1)
    with pytest.raises(ConfigError):
        TrainConfig(steps=10, batch_size=1, lr=0.1, warmup_steps=11)


def test_epoch_sampler_covers_each_epoch_and_is_a_pure_function_of_step():
    idx = np.arange(10, 20)
    s = EpochSampler(idx, batch_size=4, seed=3)
    seq = np.concatenate([s.batch(i) for i in range(5)])  # 20 draws = 2 epochs
    assert sorted(seq[:10]) == list(idx) and sorted(seq[10:]) == list(idx)
    again = EpochSampler(idx, batch_size=4, seed=3)
    assert np.array_equal(again.batch(3), s.batch(3))  # out of order access gives the same batch
    assert not np.array_equal(EpochSampler(idx, 4, seed=4).batch(0), s.batch(0))
