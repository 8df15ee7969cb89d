"""Scaled adapter experts (``adapter_scaled``): ``x + rms(x) A2(A1(x))``, the identity at
initialisation, equivariant to the scale of the stream they join, stored and loaded with their
form, and never mistaken for a plain bank of the same training settings."""

from __future__ import annotations

import json

import pytest
import torch

from expertise.config import get_preset
from expertise.data.world import World, WorldConfig
from expertise.errors import ConfigError, LibraryError
from expertise.library import Library, MemberInfo
from expertise.models.adapters import Adapter, AdapterBank, AdapterExpert
from expertise.models.backbones import BACKBONES, ExpertModel, model_from_config
from expertise.runtime import RunContext
from expertise.train import TrainConfig
from expertise.upstream.units import build_adapter_experts

NODES = ["shape", "texture"]
CFG = TrainConfig(steps=3, batch_size=8, lr=0.5, warmup_steps=0)


def _randomised(a: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in a.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return a


def test_scaled_adapter_starts_as_identity_and_follows_the_stream_scale() -> None:
    x = torch.randn(3, 64, 5, 5)
    scaled = Adapter(64, scaled=True)
    assert torch.equal(scaled(x), x)  # the last convolution starts at zero, as a plain adapter's
    plain = _randomised(Adapter(64))
    scaled.load_state_dict(plain.state_dict())  # the same parameters: only the form differs
    with torch.no_grad():
        c = 8.0
        assert torch.allclose(scaled(c * x), c * scaled(x), rtol=1e-4, atol=1e-4)  # a(cx) = c a(x)
        assert not torch.allclose(plain(c * x), c * plain(x), rtol=1e-2, atol=1e-2)  # a plain adapter's is not
        rms = x.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
        assert torch.allclose(scaled(x) - x, rms * (plain(x) - x), rtol=1e-5, atol=1e-6)


def test_cpu_and_gpu_presets_build_scaled_adapters_and_the_setting_overrides() -> None:
    assert get_preset("cpu").adapter_scaled is True and get_preset("gpu").adapter_scaled is True
    assert get_preset("tiny").adapter_scaled is False  # the tests' preset keeps the plain form
    assert get_preset("cpu", {"adapter_scaled": "no"}).adapter_scaled is False
    assert get_preset("tiny", {"adapter_scaled": "true"}).adapter_scaled is True
    with pytest.raises(ConfigError, match="adapter_scaled"):  # a typo is refused, not read as false
        get_preset("cpu", {"adapter_scaled": "ture"})


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> tuple[Library, list[str]]:
    world = World(WorldConfig(seed=0, resolution=16, upstream_size=600, holdout_size=100, test_size=50))
    train, holdout = world.upstream("train").materialize(), world.upstream("holdout").materialize()
    lib = Library.create(tmp_path_factory.mktemp("scaled") / "lib", train.hierarchy)
    torch.manual_seed(0)
    base = ExpertModel(BACKBONES["bit_xs"], num_outputs=len(train.hierarchy.label_nodes))
    lib.add(MemberInfo("bit_xs.baseline", "baseline", None, "root", len(train), 0, 0, 0.1, {}), base)
    ctx = RunContext(seed=0, progress=False, log=lambda _: None)
    names = build_adapter_experts(lib, train, holdout, "bit_xs.baseline", NODES, CFG, ctx, scaled=True)
    return lib, names


def test_a_scaled_bank_round_trips_with_its_form(library) -> None:
    lib, names = library
    assert json.loads((lib.path / "adapters" / "bank.json").read_text())["scaled"] is True
    bank = Library.open(lib.path).load_adapter_bank()
    assert isinstance(bank, AdapterBank) and bank.scaled
    x = torch.randn(4, 3, 16, 16)
    for name, node in zip(names, NODES):
        info = lib.info(name)
        assert info.extra["scaled"] is True
        assert json.loads((lib.member_dir(name) / "config.json").read_text())["scaled"] is True
        expert = Library.open(lib.path).load(name)
        assert isinstance(expert, AdapterExpert) and expert.adapters.scaled
        with torch.inference_mode():
            assert torch.equal(expert.embed(x), bank.embed(x, node))
            # the trained adapters do something, and the form matters: the same weights read as plain differ
            plain = model_from_config({k: v for k, v in expert.member_config().items() if k != "scaled"})
            plain.load_state_dict(expert.state_dict())
            assert not plain.adapters.scaled
            assert not torch.allclose(plain.embed(x), expert.embed(x))


def test_a_bank_of_the_other_form_is_refused_not_reused(library) -> None:
    lib, _ = library
    ctx = RunContext(seed=0, progress=False, log=lambda _: None)
    with pytest.raises(LibraryError, match="other settings .to reuse them: --set adapter_scaled=true."):
        build_adapter_experts(lib, None, None, "bit_xs.baseline", NODES, CFG, ctx, scaled=False)  # type: ignore[arg-type]
    logs: list[str] = []
    again = build_adapter_experts(lib, None, None, "bit_xs.baseline", NODES, CFG,  # type: ignore[arg-type]
                                  RunContext(seed=0, progress=False, log=logs.append), scaled=True)
    assert "reusing" in logs[0] and len(again) == len(NODES)
