"""The pool-member contract, executable (in the spirit of scikit-learn's ``check_estimator`` and
timm's registry-parametrised tests): every member class that a library can rebuild passes the same
checks, on members built by the real upstream code where there are such members.

A member class registered with ``register_member_class`` and no case here fails
``test_every_registered_member_class_has_a_contract_case``: add a case to ``CASES``.
"""

from __future__ import annotations

import copy
import importlib
import json
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import safetensors.torch
import torch

import expertise
from expertise.errors import ConfigError
from expertise.library import KINDS, Library, MemberInfo
from expertise.models import backbones
from expertise.models.backbones import Preprocessing, model_from_config, prepare
from expertise.models.external import ExternalSource, from_checkpoint
from expertise.pool import add_external

N = 5  # images per check


@dataclass
class Member:
    """One member under test and what the contract says about it."""

    model: torch.nn.Module
    embedding_dim: int  # from the manifest (library members) or timm (external members)
    upstream_outputs: int  # width of the upstream head; 0 when it has none
    preprocessing: dict | None = None  # the manifest's entry, when it came from a library


@dataclass(frozen=True)
class Case:
    member_class: str  # the name it is registered under (``register_member_class``)
    kind: str  # the library kind it is stored as
    make: Callable[[pytest.FixtureRequest], Member]


def _from_library(kind: str, upstream_outputs: Callable[[Library, MemberInfo], int]):
    """The first member of ``kind`` in the shared tiny library, loaded."""
    def make(request: pytest.FixtureRequest) -> Member:
        lib = request.getfixturevalue("tiny_library").library
        info = next(m for m in lib.members() if m.kind == kind)
        return Member(lib.load(info.name), info.embedding_dim, upstream_outputs(lib, info), info.preprocessing)
    return make


def _external(arch: str, num_classes: int, size: int | None):
    """timm's ``arch`` from a local safetensors checkpoint; a classifier becomes the upstream head."""
    def make(request: pytest.FixtureRequest) -> Member:
        net = request.getfixturevalue("make_timm_net")(arch, num_classes=num_classes, seed=5)
        path = request.getfixturevalue("tmp_path") / f"{arch}.safetensors"
        safetensors.torch.save_file(net.state_dict(), str(path))
        model, _ = from_checkpoint(arch, path, size=size)
        return Member(model.eval(), int(net.num_features), num_classes)
    return make


def _transformers(kind: str, labels: int, width: int):
    """A tiny transformers ``kind`` model written to a local folder (tests/hf_tiny.py) and read
    back as a member; its classifier, when it has one, becomes the upstream head."""
    def make(request: pytest.FixtureRequest) -> Member:
        pytest.importorskip("transformers")
        from hf_tiny import write_tiny

        from expertise.models.hf_transformers import from_folder

        folder = request.getfixturevalue("tmp_path") / kind
        write_tiny(folder, kind, labels, seed=5)
        model, _ = from_folder(folder)
        return Member(model, width, labels)
    return make


def _label_nodes(lib: Library, info: MemberInfo) -> int:
    return len(lib.hierarchy.label_nodes)


CASES = {
    "baseline": Case("ExpertModel", "baseline", _from_library("baseline", _label_nodes)),
    "full_expert": Case("ExpertModel", "full_expert", _from_library("full_expert", _label_nodes)),
    "adapter_expert": Case("AdapterExpert", "adapter_expert", _from_library("adapter_expert", _label_nodes)),
    "epn": Case("ExpertModel", "epn", _from_library("epn", lambda lib, info: len(info.extra["nodes"]))),
    "external_test_resnet": Case("ExternalModel", "external", _external("test_resnet", 7, 32)),
    "external_test_vit": Case("ExternalModel", "external", _external("test_vit", 0, None)),  # no classifier, no upstream head
    "transformers_vit": Case("TransformersModel", "external", _transformers("vit", 5, 32)),
    "transformers_convnext": Case("TransformersModel", "external", _transformers("convnext", 0, 16)),  # no head
}


@pytest.fixture(params=list(CASES))
def case(request) -> Case:
    return CASES[request.param]


@pytest.fixture
def member(case: Case, request) -> Member:
    return case.make(request)


def _images(size: int, n: int = N, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def _x(model: torch.nn.Module) -> torch.Tensor:
    return prepare(_images(model.preprocessing.size), model.preprocessing)


def _outputs(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Everything the contract lets a caller read from a member."""
    with torch.inference_mode():
        out = {"embed": model.embed(x)}
        if model.has_upstream_head:
            out["upstream_logits"] = model.upstream_logits(x)
        return out


def _registered_member_classes() -> set[str]:
    """Every member class the package registers (tests may register their own; those are left out).
    Every module of the package is imported first, so a class registered anywhere is seen."""
    for m in pkgutil.walk_packages(expertise.__path__, "expertise."):
        importlib.import_module(m.name)
    return {name for name, build in backbones._BUILDERS.items() if build.__module__.startswith("expertise.")}


def test_every_registered_member_class_has_a_contract_case() -> None:
    registered = _registered_member_classes()
    assert {"ExpertModel", "AdapterExpert", "ExternalModel", "TransformersModel"} <= registered
    missing = registered - {case.member_class for case in CASES.values()}
    assert not missing, f"member classes without a contract case: {sorted(missing)}; add them to CASES"


def test_every_library_kind_has_a_contract_case() -> None:
    assert {case.kind for case in CASES.values()} == set(KINDS)


def test_member_is_its_registered_class(case: Case, member: Member) -> None:
    cfg = member.model.member_config()
    assert cfg["class"] == case.member_class and type(member.model).__name__ == case.member_class
    assert type(model_from_config(cfg)) is type(member.model)


def test_embed_is_float32_n_by_d_and_deterministic(member: Member) -> None:
    model = member.model
    x = _x(model)
    assert x.dtype == torch.float32 and x.shape == (N, 3, model.preprocessing.size, model.preprocessing.size)
    with torch.inference_mode():
        first, second = model.embed(x), model.embed(x)
        alone = model.embed(x[:1])
    assert first.dtype == torch.float32 and first.shape == (N, member.embedding_dim)
    assert model.num_features == member.embedding_dim
    assert bool(torch.isfinite(first).all())
    assert torch.equal(first, second)  # eval mode: no dropout, no batch statistics
    torch.testing.assert_close(alone, first[:1], rtol=1e-4, atol=1e-5)  # each image embedded on its own


def test_upstream_logits_where_declared(member: Member) -> None:
    model = member.model
    x = _x(model)
    assert model.has_upstream_head == (member.upstream_outputs > 0)
    assert model.member_config()["num_outputs"] == member.upstream_outputs
    if not model.has_upstream_head:
        with pytest.raises(ConfigError, match="no upstream head"):
            model.upstream_logits(x)
        return
    with torch.inference_mode():
        logits = model.upstream_logits(x)
        assert logits.dtype == torch.float32 and logits.shape == (N, member.upstream_outputs)
        assert torch.equal(logits, model.upstream_logits(x))
        assert torch.equal(logits, model(x))  # before reset_head, forward is the upstream head


def test_preprocessing_round_trips_through_json(member: Member) -> None:
    prep = member.model.preprocessing
    assert isinstance(prep, Preprocessing)
    as_json = json.loads(json.dumps(prep.to_json()))
    assert Preprocessing.from_json(as_json) == prep
    assert member.model.member_config()["preprocessing"] == prep.to_json()
    if member.preprocessing is not None:
        assert member.preprocessing == prep.to_json()  # the manifest says what the weights need


def test_rebuilding_from_member_config_gives_identical_outputs(member: Member) -> None:
    model = member.model
    cfg = json.loads(json.dumps(model.member_config()))  # what config.json holds
    rebuilt = model_from_config(cfg)
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    rebuilt.eval()
    assert rebuilt.member_config() == model.member_config()
    x = _x(model)
    want, got = _outputs(model, x), _outputs(rebuilt, x)
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_storing_in_a_library_and_loading_back_gives_identical_outputs(case: Case, member: Member,
                                                                        tmp_path: Path) -> None:
    lib = Library.create(tmp_path / "lib", None)
    if case.kind == "external":
        source = ExternalSource("checkpoint", member.model.architecture, "test")
        info = add_external(lib, member.model, source, name="m")
    else:
        info = lib.add(MemberInfo("m", case.kind, None, None, 1, 0, 0, None, {}), member.model)
    assert info.embedding_dim == member.embedding_dim and info.preprocessing == member.model.preprocessing.to_json()
    loaded = Library.open(lib.path).load("m")
    assert type(loaded) is type(member.model) and not loaded.training  # a library hands out members in eval mode
    x = _x(member.model)
    want, got = _outputs(member.model, x), _outputs(loaded, x)
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert lib.verify() == []


@pytest.mark.parametrize("k", [1, 3])
def test_reset_head_gives_a_zero_task_head(member: Member, k: int, tmp_path: Path) -> None:
    model = copy.deepcopy(member.model)
    model.reset_head(k)
    assert model.head.weight.shape == (k, member.embedding_dim) and model.head.bias.shape == (k,)
    assert not model.head.weight.any() and not model.head.bias.any()
    assert not model.has_upstream_head
    cfg = model.member_config()
    assert cfg["num_outputs"] == k and cfg["head_kind"] == "task"
    x = _x(model)
    with torch.inference_mode():
        out = model(x)
    assert out.dtype == torch.float32 and out.shape == (N, k) and not out.any()
    with pytest.raises(ConfigError, match="no upstream head"):
        model.upstream_logits(x)
    with torch.inference_mode():  # the body is untouched
        assert torch.equal(model.embed(x), member.model.embed(x))
    # a member with a task head (a fine-tuned one) rebuilds from its config like any other
    rebuilt = model_from_config(json.loads(json.dumps(cfg)))
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    with torch.inference_mode():
        assert torch.equal(rebuilt.eval()(x), out)
