"""Adapter experts: identity at initialisation, isolation between experts, frozen backbone during
training, storage as one bank beside the backbone, shared-stem embedding, and fine-tuning."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import expertise.library.manifest as library_module
from expertise.runtime import RunContext
from expertise.upstream.adapter_bank import adapter_expert_name, train_adapter_bank
from expertise.upstream.units import build_adapter_experts
from expertise.data.tasks import Split
from expertise.data.world import World, WorldConfig
from expertise.errors import ConfigError, LibraryError
from expertise.library import Library, MemberInfo
from expertise.models.adapters import (
    Adapter, AdapterBank, AdapterExpert, AdapterStack, adapter_channels, adapter_overhead, adapter_parameter_count,
    backbone_parameters, bottleneck_width, embed_images_with_experts, expert_adapter_parameters, expert_key, group_count,
)
from expertise.models.backbones import BACKBONES, ExpertModel, Preprocessing, count_parameters, model_from_config, prepare
from expertise.train import TrainConfig
from expertise.transfer.finetune import finetune

NODES = ["shape", "texture"]
CFG = TrainConfig(steps=3, batch_size=8, lr=0.5, warmup_steps=0)


@pytest.fixture(scope="module")
def world() -> World:
    return World(WorldConfig(seed=0, resolution=16, upstream_size=600, holdout_size=100, test_size=50))


@pytest.fixture(scope="module")
def train(world: World):
    return world.upstream("train").materialize()


@pytest.fixture(scope="module")
def holdout(world: World):
    return world.upstream("holdout").materialize()


def _baseline(num_outputs: int, seed: int = 0) -> ExpertModel:
    torch.manual_seed(seed)
    model = ExpertModel(BACKBONES["bit_xs"], num_outputs=num_outputs)
    with torch.no_grad():  # zero_init_last leaves residual branches at zero; make every stage matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _randomise(module: torch.nn.Module, seed: int, scale: float = 0.1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def _x(n: int = 6, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)
    return prepare(images, Preprocessing(16))


@pytest.fixture(scope="module")
def trained(train) -> tuple[ExpertModel, AdapterBank, object]:
    baseline = _baseline(len(train.hierarchy.label_nodes))
    before = copy.deepcopy(baseline.state_dict())
    bank, stats = train_adapter_bank(baseline, train, NODES, CFG, seed=0, progress=False)
    assert all(torch.equal(before[k], v) for k, v in baseline.state_dict().items())  # the caller's B is untouched
    return baseline, bank, stats


@pytest.fixture(scope="module")
def stored_once(tmp_path_factory, train, holdout) -> tuple[Path, list[str]]:
    """B and a bank of adapter experts on it, built once; tests change copies (``stored``)."""
    lib = Library.create(tmp_path_factory.mktemp("adapters") / "lib", train.hierarchy)
    baseline = _baseline(len(train.hierarchy.label_nodes))
    lib.add(MemberInfo("bit_xs.baseline", "baseline", None, "root", len(train), 0, 0, 0.1, {}), baseline)
    logs: list[str] = []
    names = build_adapter_experts(lib, train, holdout, "bit_xs.baseline", NODES, CFG, RunContext(seed=0, progress=False, log=logs.append))
    return lib.path, names


@pytest.fixture
def stored(stored_once, tmp_path: Path) -> tuple[Library, list[str]]:
    """A fresh copy of ``stored_once`` for one test to read or change."""
    path, names = stored_once
    shutil.copytree(path, tmp_path / "lib")
    return Library.open(tmp_path / "lib"), list(names)


# -- the adapter and its placement ---------------------------------------------------------------
def test_adapter_shape_and_groups() -> None:
    assert group_count(16) == 16 and group_count(64) == 32 and group_count(48) == 24 and group_count(7) == 7
    a = Adapter(64)
    kinds = [type(m).__name__ for m in a.branch]
    assert kinds == ["GroupNorm", "ReLU", "Conv2d", "GroupNorm", "ReLU", "Conv2d"]
    assert a.branch[2].out_channels == 32 and a.branch[5].out_channels == 64  # k = c / 2, then back to c
    assert a.branch[5].weight.abs().sum() == 0 and a.branch[5].bias.abs().sum() == 0
    x = torch.randn(2, 64, 5, 5)
    assert torch.equal(a(x), x)  # a new adapter is the identity


def test_new_adapter_expert_equals_the_baseline() -> None:
    base = _baseline(7)
    bank = AdapterBank(base, NODES)
    x = _x()
    with torch.inference_mode():
        want_e, want_l = base.embed(x), base.upstream_logits(x)
        for node in NODES:
            expert = bank.expert(node)
            assert torch.equal(expert.embed(x), want_e)
            assert torch.equal(expert.upstream_logits(x), want_l)
            assert torch.equal(bank(x, node), want_l)


def test_expert_output_ignores_other_experts_adapters() -> None:
    bank = AdapterBank(_baseline(7), NODES)
    _randomise(bank.adapters, seed=3)
    x = _x()
    with torch.inference_mode():
        before = bank.embed(x, "shape")
        _randomise(bank.stack("texture"), seed=4, scale=1.0)
        assert torch.equal(bank.embed(x, "shape"), before)
        _randomise(bank.stack("shape"), seed=5, scale=1.0)
        assert not torch.allclose(bank.embed(x, "shape"), before)  # its own adapters do matter


def test_parameter_overhead_formula() -> None:
    for name in ("bit_xs", "bit_s", "bit_r50x1"):
        cfg = BACKBONES[name]
        with torch.device("meta"):
            stack = AdapterStack(adapter_channels(cfg))
        assert count_parameters(stack) == expert_adapter_parameters(cfg)
    # by hand, one adapter with c = 64, k = 32: GroupNorm 2c, conv c*k, GroupNorm 2k, conv k*c + bias c
    assert adapter_parameter_count(64) == 128 + 64 * 32 + 64 + 32 * 64 + 64 == count_parameters(Adapter(64))
    assert bottleneck_width(64) == 32
    r50 = BACKBONES["bit_r50x1"]
    assert adapter_channels(r50) == (64, 256, 512, 1024)  # stem, then stages 1-3 outputs
    assert backbone_parameters(r50) == 23_500_352
    overhead = adapter_overhead(r50)
    print(f"per-expert adapter overhead: bit_r50x1 {overhead:.4f}, bit_s {adapter_overhead(BACKBONES['bit_s']):.4f}")
    assert 0.05 < overhead < 0.07  # the paper: "about 6%" on R50


def test_adapters_fit_every_backbone_stage() -> None:
    for name in ("bit_xs", "bit_s", "bit_m"):
        bank = AdapterBank(ExpertModel(BACKBONES[name], 3), ["a"])
        _randomise(bank.adapters, seed=0)
        res = BACKBONES[name].resolution
        with torch.inference_mode():
            assert bank.embed(torch.randn(1, 3, res, res), "a").shape == (1, bank.num_features)


def test_expert_keys_escape_dots_and_reject_duplicates() -> None:
    assert expert_key("glyph/latin") == "glyph/latin" and expert_key("a.b") == "a%2Eb" and expert_key("a%2Eb") == "a%252Eb"
    bank = AdapterBank(_baseline(3), ["a.b", "a%2Eb"])
    assert bank.experts == ["a.b", "a%2Eb"]
    with pytest.raises(ConfigError, match="distinct"):
        AdapterBank(_baseline(3), ["x", "x"])
    with pytest.raises(ConfigError, match="no expert 'zzz'"):
        bank.stack("zzz")


def test_shared_stem_embedding_equals_per_expert_embedding() -> None:
    bank = AdapterBank(_baseline(7), ["shape", "texture", "glyph"])
    _randomise(bank.adapters, seed=1)
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (11, 3, 16, 16), dtype=torch.uint8, generator=g)
    many = embed_images_with_experts(bank, images, batch_size=4)
    assert list(many) == bank.experts
    x = prepare(images, bank.preprocessing)
    with torch.inference_mode():
        for e in bank.experts:
            assert torch.allclose(many[e], bank.expert(e).embed(x), atol=1e-6)
            assert torch.allclose(many[e], bank.embed(x, e), atol=1e-6)


def test_chunk_logits_route_each_chunk_through_its_own_expert() -> None:
    bank = AdapterBank(_baseline(7), ["shape", "texture", "glyph"])
    _randomise(bank.adapters, seed=1)
    x = torch.randn(9, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    sizes, experts = [2, 4, 3], ["glyph", "shape", "texture"]
    with torch.inference_mode():
        got = bank.upstream_logits_of_chunks(x, sizes, experts)
        want = torch.cat([bank.upstream_logits(c, e) for c, e in zip(x.split(sizes), experts)])
    assert got.shape == (9, bank.base.head.out_features)
    assert torch.allclose(got, want, atol=1e-6)
    headless = AdapterBank(ExpertModel(BACKBONES["bit_xs"], num_outputs=0), ["shape"])
    with pytest.raises(ConfigError, match="no upstream head"):
        headless.upstream_logits_of_chunks(x[:2], [2], ["shape"])


def test_adapter_expert_is_a_pool_member() -> None:
    expert = AdapterExpert(BACKBONES["bit_xs"], 5, node="shape")
    cfg = expert.member_config()
    assert cfg["class"] == "AdapterExpert" and cfg["node"] == "shape" and json.dumps(cfg)
    rebuilt = model_from_config(cfg)
    assert isinstance(rebuilt, AdapterExpert) and rebuilt.state_dict().keys() == expert.state_dict().keys()
    assert expert.has_upstream_head and expert.num_features == 128
    expert.reset_head(3)
    assert not expert.has_upstream_head and expert.head.weight.abs().sum() == 0
    with pytest.raises(ConfigError, match="no upstream head"):
        expert.upstream_logits(_x())


# -- training ------------------------------------------------------------------------------------
def test_training_moves_only_adapters(trained) -> None:
    baseline, bank, stats = trained
    want = baseline.state_dict()
    for k, v in bank.base.state_dict().items():
        assert torch.equal(v, want[k]), k  # backbone and upstream head bit-identical
    assert not any(p.requires_grad for p in bank.base.parameters())
    for node in NODES:
        last = bank.stack(node)[-1].branch[-1]
        assert last.weight.abs().sum() > 0  # every expert's adapters learned
    assert stats.steps == CFG.steps and stats.images == CFG.steps * CFG.batch_size * len(NODES)
    assert set(stats.expert_losses) == set(NODES) and all(len(v) == CFG.steps for v in stats.expert_losses.values())
    assert np.allclose(stats.losses, np.sum([stats.expert_losses[n] for n in NODES], axis=0), rtol=1e-5)
    assert "expert_final_loss" in stats.to_json()


def test_an_expert_trains_as_if_alone(train, trained) -> None:
    """The joint job equals separate trainings: the first expert (same initialisation stream, same
    batches) ends where it ends when trained alone, gradient clipping included."""
    baseline, bank, _ = trained
    alone, _ = train_adapter_bank(baseline, train, ["shape"], CFG, seed=0, progress=False)
    for (k, a), b in zip(alone.stack("shape").state_dict().items(), bank.stack("shape").state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), k
    assert not any(p._post_accumulate_grad_hooks for p in bank.adapters.parameters())  # clipping hooks removed


def test_empty_or_unknown_domains_are_refused(train) -> None:
    baseline = _baseline(len(train.hierarchy.label_nodes))
    with pytest.raises(ConfigError, match="at least one"):
        train_adapter_bank(baseline, train, [], CFG, seed=0, progress=False)
    with pytest.raises(Exception, match="not a node"):
        train_adapter_bank(baseline, train, ["nope"], CFG, seed=0, progress=False)
    with pytest.raises(ConfigError, match="upstream head"):
        train_adapter_bank(ExpertModel(BACKBONES["bit_xs"]), train, NODES, CFG, seed=0, progress=False)


# -- the library ---------------------------------------------------------------------------------
def test_bank_is_stored_once_beside_the_backbone(stored, train) -> None:
    lib, names = stored
    assert names == [adapter_expert_name("bit_xs", n) for n in NODES] == ["bit_xs.adapter_shape", "bit_xs.adapter_texture"]
    assert sorted(p.name for p in (lib.path / "adapters").iterdir()) == ["bank.json", "bank.safetensors"]
    for name, node in zip(names, NODES):
        info = Library.open(lib.path).info(name)
        assert info.kind == "adapter_expert" and info.parent == "bit_xs.baseline" and info.domain == node
        assert info.upstream_images == len(train.slice(node)) and info.embedding_dim == 128
        assert info.extra["bank"] == "adapters/bank.safetensors" and info.extra["node"] == node
        assert set(info.files) == {"config.json", "label_prior.safetensors", "adapters/bank.safetensors", "adapters/bank.json"}
        assert info.parameters == count_parameters(ExpertModel(BACKBONES["bit_xs"], len(train.hierarchy.label_nodes))) \
            + expert_adapter_parameters(BACKBONES["bit_xs"])
        assert 0.0 <= info.upstream_accuracy <= 1.0
        assert sorted(p.name for p in lib.member_dir(name).iterdir()) == ["config.json", "label_prior.safetensors"]
        assert torch.allclose(lib.label_prior(name), torch.from_numpy(train.label_distribution(train.slice(node))))
    assert lib.verify() == []


def test_library_load_round_trip_and_resumption(stored) -> None:
    lib, names = stored
    bank = lib.load_adapter_bank()
    assert bank.experts == NODES
    x = _x()
    for name, node in zip(names, NODES):
        expert = Library.open(lib.path).load(name)
        assert isinstance(expert, AdapterExpert) and not expert.training
        with torch.inference_mode():
            assert torch.equal(expert.embed(x), bank.embed(x, node))
            assert torch.equal(expert.upstream_logits(x), bank.upstream_logits(x, node))
    base = lib.load("bit_xs.baseline")
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in bank.base.state_dict().items())
    digest = lib.info(names[0]).files["adapters/bank.safetensors"]
    logs: list[str] = []
    again = build_adapter_experts(lib, None, None, "bit_xs.baseline", NODES, CFG, RunContext(seed=0, progress=False, log=logs.append))
    assert again == names and "reusing" in logs[0]  # nothing retrained: it never touched the (None) data
    assert lib.info(names[0]).files["adapters/bank.safetensors"] == digest


def test_tampered_bank_is_detected(stored) -> None:
    lib, names = stored
    f = lib.path / "adapters" / "bank.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    problems = lib.verify()
    assert len(problems) == 2 and all("bank.safetensors" in p and "modified" in p for p in problems)
    with pytest.raises(LibraryError, match="modified since it was written"):
        lib.load(names[0])
    with pytest.raises(LibraryError, match="modified since it was written"):
        lib.load_adapter_bank()
    lib.load(names[0], verify=False)  # still parses
    (lib.path / "adapters" / "bank.json").write_text("{}")
    assert any("bank.json" in p for p in lib.verify())


def test_member_hash_separates_experts_and_tracks_the_backbone(stored, train, holdout) -> None:
    lib, names = stored
    hashes = {n: lib.member_hash(n) for n in [*names, "bit_xs.baseline"]}
    assert len(set(hashes.values())) == 3 and all(len(h) == 16 for h in hashes.values())
    assert Library.open(lib.path).member_hash(names[0]) == hashes[names[0]]
    # a new backbone under the same name: caches of its adapter experts must go stale, verify must object
    lib.add(MemberInfo("bit_xs.baseline", "baseline", None, "root", len(train), 0, 0, 0.1, {}),
            _baseline(len(train.hierarchy.label_nodes), seed=9), overwrite=True)
    assert lib.member_hash(names[0]) != hashes[names[0]]
    assert any("changed since the adapters were trained" in p for p in lib.verify())
    with pytest.raises(LibraryError, match="changed since the adapters were trained"):
        lib.load(names[0])
    logs: list[str] = []  # resuming retrains them on the new backbone instead of reusing stale adapters
    build_adapter_experts(lib, train, holdout, "bit_xs.baseline", NODES, CFG, RunContext(seed=0, progress=False, log=logs.append))
    assert "training them again" in logs[0] and lib.verify() == []


def test_remove_adapter_experts(stored) -> None:
    lib, names = stored
    with pytest.raises(LibraryError, match="remove them first"):
        lib.remove("bit_xs.baseline")
    lib.remove(names[0])
    assert lib.verify() == [] and (lib.path / "adapters" / "bank.safetensors").exists()
    assert lib.load_adapter_bank().experts == [NODES[1]]
    lib.load(names[1])
    lib.remove(names[1])
    assert lib.verify() == [] and list((lib.path / "adapters").iterdir()) == []
    lib.remove("bit_xs.baseline")
    assert lib.names() == []


def test_bank_must_sit_on_the_stored_backbone(stored, train) -> None:
    lib, _ = stored
    bank = AdapterBank(_baseline(len(train.hierarchy.label_nodes), seed=5), ["shape"])  # another backbone
    info = MemberInfo("x.adapter", "adapter_expert", None, "shape", 1, 0, 0, None, {})
    with pytest.raises(LibraryError, match="not the stored"):
        lib.add_adapter_bank(bank, "bit_xs.baseline", {"shape": info}, bank_name="other")
    stored_bank = lib.load_adapter_bank()
    with pytest.raises(LibraryError, match="already has an adapter bank"):
        lib.add_adapter_bank(stored_bank, "bit_xs.baseline", {"shape": info})
    assert lib.verify() == []


def test_failed_bank_commit_leaves_library_unchanged(stored, monkeypatch: pytest.MonkeyPatch) -> None:
    lib, names = stored
    bank = lib.load_adapter_bank()
    _randomise(bank.adapters, seed=7)
    before = ((lib.path / "library.json").read_text(), {str(p) for p in lib.path.rglob("*")},
              (lib.path / "adapters" / "bank.safetensors").read_bytes())
    real_write = library_module.atomic_write_json

    def failing_write(path, data):
        if Path(path).name == "library.json":
            raise OSError("read-only file system")
        real_write(path, data)

    monkeypatch.setattr(library_module, "atomic_write_json", failing_write)
    infos = {n: lib.info(name) for n, name in zip(NODES, names)}
    with pytest.raises(OSError, match="read-only"):
        lib.add_adapter_bank(bank, "bit_xs.baseline", infos, overwrite=True)
    after = ((lib.path / "library.json").read_text(), {str(p) for p in lib.path.rglob("*")},
             (lib.path / "adapters" / "bank.safetensors").read_bytes())
    assert after == before and lib.verify() == []


def test_finetuning_an_adapter_expert_tunes_its_adapters(stored) -> None:
    lib, names = stored
    expert = lib.load(names[0])
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (24, 3, 16, 16), dtype=torch.uint8, generator=g), torch.arange(24) % 3)
    tuned, stats = finetune(expert, split, 3, TrainConfig(steps=2, batch_size=8, lr=0.1), seed=0, progress=False)
    assert isinstance(tuned, AdapterExpert) and tuned.head.out_features == 3 and stats["images"] == 16
    for (k, a), b in zip(tuned.adapters.state_dict().items(), expert.adapters.state_dict().values()):
        if k.endswith("branch.2.weight"):
            assert not torch.equal(a, b), k  # the adapters are tuned downstream, not frozen
    assert all(p.requires_grad for p in tuned.parameters())
    # a fine-tuned expert is an ordinary member: it can be stored whole and loads back exactly
    from dataclasses import replace

    stored_info = lib.add(replace(lib.info(names[0]), name="tuned"), tuned)  # info copied from the bank's expert
    assert "bank" not in stored_info.extra and "model.safetensors" in stored_info.files
    again = lib.load("tuned")
    x = _x()
    with torch.inference_mode():
        assert torch.equal(again(x), tuned.eval()(x))


def test_finetuning_a_bank_expert_leaves_the_bank_alone(trained) -> None:
    _, bank, _ = trained
    before = {k: v.clone() for k, v in bank.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    split = Split(torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8, generator=g), torch.arange(16) % 2)
    tuned, _ = finetune(bank.expert("texture"), split, 2, TrainConfig(steps=2, batch_size=8, lr=0.1), seed=0, progress=False)
    assert all(torch.equal(v, before[k]) for k, v in bank.state_dict().items())
    assert not any(p.requires_grad for p in bank.base.parameters())  # still frozen
    assert not torch.equal(tuned.backbone.stem[0].weight, bank.base.backbone.stem[0].weight)  # the copy's backbone learned
