"""The transfer protocol (expertise.transfer.protocol; paper 000, section 6.3): the sweep picks the
best validation setting, the retrain uses it on train+val, a killed run resumes without repeating
a unit, and a tiny real run works end to end."""

import numpy as np
import pytest
import torch
from torch import nn

from expertise.runtime import RunContext
from expertise.transfer.protocol import RETRAIN_KIND, SWEEP_KIND, SweepConfig, transfer_protocol
from expertise.store import RecordStore
from expertise.data.tasks import Split, Task
from expertise.errors import ConfigError
from expertise.train import TrainConfig

BASE = TrainConfig(steps=10, batch_size=4, lr=0.1, warmup_steps=2)
TRAIN, VAL, TEST = 8, 4, 6


def split(n, seed):
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8, generator=g), torch.arange(n) % 2)


TASK = Task("toy", "natural", ("a", "b"), split(TRAIN, 0), split(VAL, 1), split(TEST, 2))


class Tuned(nn.Module):
    def __init__(self, cfg, seed, n_train):
        super().__init__()
        self.cfg, self.seed, self.n_train = cfg, seed, n_train


class Fake:
    """A fine-tune whose validation accuracy is a known function of the learning rate, and whose
    test accuracy depends on the lr and the seed. Counts calls; can be told to die after N."""

    def __init__(self, val_by_lr, die_after=None, diverge_lr=None):
        self.val_by_lr, self.die_after, self.diverge_lr = val_by_lr, die_after, diverge_lr
        self.calls = []

    def finetune(self, member, train, num_classes, cfg, seed, device, progress, desc):
        if self.die_after is not None and len(self.calls) >= self.die_after:
            raise RuntimeError("killed")
        self.calls.append((round(cfg.lr, 6), cfg.steps, seed, len(train)))
        if self.diverge_lr is not None and abs(cfg.lr - self.diverge_lr) < 1e-9:
            raise FloatingPointError("loss became nan")
        return Tuned(cfg, seed, len(train)), {"images": cfg.steps * cfg.batch_size, "final_loss": 0.1, "steps": cfg.steps}

    def evaluate(self, model, s, device):
        if len(s) == VAL:
            assert model.n_train == TRAIN  # the sweep trains on the 800, scores on the 200
            return self.val_by_lr[round(model.cfg.lr, 6)]
        assert len(s) == TEST and model.n_train == TRAIN + VAL  # the retrain uses all 1,000
        return round(0.5 + model.cfg.lr + (model.seed % 7) / 100, 6)


def run(fake, store, sweep, loads=None, seed=0):
    def load():
        if loads is not None:
            loads.append(1)
        return nn.Linear(1, 1)

    return transfer_protocol("m", load, "hash0", TASK, BASE, sweep, RunContext(seed=seed, progress=False, store=store),
                             finetune_fn=fake.finetune, evaluate_fn=fake.evaluate)


def test_sweep_picks_the_best_validation_setting(tmp_path):
    fake = Fake({0.1: 0.6, 0.03: 0.5, 0.3: 0.8})
    sweep = SweepConfig(lr_factors=(1.0, 0.3, 3.0), sweeps=2, retrains=3)
    res = run(fake, RecordStore(tmp_path), sweep)
    assert [c["lr_factor"] for c in res.chosen] == [3.0, 3.0]
    assert res.chosen[0]["val_accuracy"] == 0.8 and res.chosen[0]["val_accuracies"] == [0.6, 0.5, 0.8]
    retrains = [c for c in fake.calls if c[3] == TRAIN + VAL]
    assert len(retrains) == 6 and all(c[0] == 0.3 for c in retrains)
    assert len(fake.calls) == sweep.num_finetunes == 12
    assert len(res.test_accuracies) == 6
    assert res.test_accuracy == pytest.approx(float(np.median(res.test_accuracies)))
    assert len(set(res.test_accuracies)) > 1  # the retrain seeds differ
    # one seed per sweep shared by its grid points; distinct seeds across sweeps and retrains
    sweep_seeds = [c[2] for c in fake.calls if c[3] == TRAIN]
    assert len(set(sweep_seeds[:3])) == 1 and sweep_seeds[0] != sweep_seeds[3]
    assert len({c[2] for c in retrains}) == 6
    assert res.units_computed == 12 and res.units_reused == 0
    assert res.images == 12 * 40 + 6 * VAL + 6 * TEST
    assert res.phase_images["retrain"] == 6 * 40 + 6 * TEST


def test_ties_go_to_the_first_grid_point(tmp_path):
    res = run(Fake({0.1: 0.7, 0.03: 0.7, 0.3: 0.7}), RecordStore(tmp_path / "a"), SweepConfig())
    assert res.chosen[0]["lr_factor"] == 1.0
    res = run(Fake({0.1: 0.6, 0.03: 0.7, 0.3: 0.7}), RecordStore(tmp_path / "b"), SweepConfig(lr_factors=(1.0, 3.0, 0.3)))
    assert res.chosen[0]["lr_factor"] == 3.0


def test_step_factors_scale_steps_and_warmup():
    grid = SweepConfig(lr_factors=(1.0,), step_factors=(0.5, 2.0)).grid(BASE)
    assert [(p.cfg.steps, p.cfg.warmup_steps, p.cfg.lr) for p in grid] == [(5, 1, 0.1), (20, 4, 0.1)]
    assert SweepConfig.paper().num_finetunes == 10 * (3 + 3)
    sweep = SweepConfig(lr_factors=(0.3, 1.0), sweeps=2)
    assert SweepConfig.from_json(sweep.to_json()) == sweep
    with pytest.raises(ConfigError, match="unknown sweep settings"):
        SweepConfig.from_json({"lr": 1})


def test_resume_after_a_kill_repeats_no_unit(tmp_path):
    sweep = SweepConfig(lr_factors=(1.0, 0.3, 3.0), sweeps=2, retrains=2)
    table = {0.1: 0.6, 0.03: 0.65, 0.3: 0.55}
    reference = run(Fake(table), RecordStore(tmp_path / "ref"), sweep)

    store = RecordStore(tmp_path / "run")
    first = Fake(table, die_after=5)
    with pytest.raises(RuntimeError, match="killed"):
        run(first, store, sweep)
    assert len(store.all()) == 5
    second = Fake(table)
    resumed = run(second, store, sweep)
    assert len(first.calls) + len(second.calls) == sweep.num_finetunes  # every unit ran exactly once
    assert not set(first.calls) & set(second.calls)
    assert resumed.units_computed == len(second.calls) and resumed.units_reused == 5
    assert resumed.test_accuracies == reference.test_accuracies and resumed.chosen == reference.chosen
    assert resumed.test_accuracy == reference.test_accuracy and resumed.images == reference.images

    loads = []
    third = Fake(table)
    again = run(third, store, sweep, loads=loads)
    assert third.calls == [] and loads == []  # nothing recomputed, the member never loaded
    assert again.units_reused == sweep.num_finetunes and again.test_accuracies == reference.test_accuracies
    assert len(store.all(SWEEP_KIND)) == 6 and len(store.all(RETRAIN_KIND)) == 4
    # another seed is another set of units
    assert run(Fake(table), store, sweep, seed=1).units_computed == sweep.num_finetunes


def test_diverged_settings_lose_and_are_not_rerun(tmp_path):
    store = RecordStore(tmp_path)
    fake = Fake({0.1: 0.6, 0.03: 0.5}, diverge_lr=0.3)
    res = run(fake, store, SweepConfig())
    assert res.chosen[0]["lr_factor"] == 1.0 and res.chosen[0]["val_accuracies"] == [0.6, 0.5, None]
    again = Fake({0.1: 0.6, 0.03: 0.5}, diverge_lr=0.3)
    assert run(again, store, SweepConfig()).units_computed == 0 and again.calls == []
    with pytest.raises(ConfigError, match="diverged"):
        run(Fake({}, diverge_lr=0.1), RecordStore(tmp_path / "x"), SweepConfig(lr_factors=(1.0,)))


def test_sweep_config_validation():
    for bad in ({"lr_factors": ()}, {"lr_factors": (1.0, -1.0)}, {"step_factors": (1.0, 1.0)},
                {"sweeps": 0}, {"retrains": 1.5}):
        with pytest.raises(ConfigError):
            SweepConfig(**bad)


def test_tiny_real_protocol(tmp_path):
    from expertise.data.world import World, WorldConfig
    from expertise.models.backbones import BACKBONES, ExpertModel

    task = World(WorldConfig(seed=0, resolution=16, upstream_size=600, holdout_size=100, test_size=50)).task("count")
    loads = []

    def load():
        loads.append(1)
        torch.manual_seed(0)
        return ExpertModel(BACKBONES["bit_xs"])

    cfg = TrainConfig(steps=3, batch_size=16, lr=0.01, warmup_steps=1)
    sweep = SweepConfig(lr_factors=(1.0, 3.0))
    store = RecordStore(tmp_path)
    res = transfer_protocol("bit_xs.rand", load, "h", task, cfg, sweep, RunContext(seed=0, progress=False, store=store))
    assert loads == [1] and res.units_computed == 3
    assert 0.0 <= res.test_accuracy <= 1.0 and len(res.test_accuracies) == 1
    assert res.images == 3 * 3 * 16 + 2 * 200 + 50 and res.seconds > 0
    rec = store.all(RETRAIN_KIND)[0]
    assert rec["config"]["task_fingerprint"] == task.fingerprint() and "versions" in rec and "git" in rec
    again = transfer_protocol("bit_xs.rand", load, "h", task, cfg, sweep, RunContext(seed=0, progress=False, store=store))
    assert loads == [1] and again.units_reused == 3
    drop = ("units_computed", "units_reused")
    assert {k: v for k, v in again.to_json().items() if k not in drop} == {k: v for k, v in res.to_json().items() if k not in drop}


def test_a_single_grid_point_skips_the_sweep(tmp_path):
    fake = Fake({0.1: 0.5})
    res = run(fake, RecordStore(tmp_path), SweepConfig(lr_factors=(1.0,), retrains=2))
    assert [c[3] for c in fake.calls] == [TRAIN + VAL, TRAIN + VAL]  # retrains only, on all 1,000
    assert res.units_computed == 2 and res.chosen[0]["val_accuracy"] is None
    assert SweepConfig(lr_factors=(1.0,), retrains=2).num_finetunes == 2
    assert SweepConfig(retrains=2).num_finetunes == 3 + 2
