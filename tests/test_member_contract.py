"""The pool-member contract, executable (``expertise.testing.check_member``, in the spirit of
scikit-learn's ``check_estimator`` and timm's registry-parametrised tests): every member class that a
library can rebuild passes the same checks, on members built by the real upstream code where there
are such members, and the check names the rule a broken member breaks.

A member class registered with ``register_member_class`` and no case here fails
``test_every_registered_member_class_has_a_contract_case``: add a case to ``CASES``.
"""

from __future__ import annotations

import copy
import importlib
import pkgutil
import types
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import safetensors.torch
import torch

import expertise
from expertise.library import KINDS, Library, MemberInfo
from expertise.models import backbones
from expertise.models.backbones import model_from_config
from expertise.models.external import from_checkpoint
from expertise.testing import ContractError, check_member


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


def _registered_member_classes() -> set[str]:
    """Every member class the package registers (tests may register their own; those are left out).
    Every module of the package is imported first, so a class registered anywhere is seen."""
    for m in pkgutil.walk_packages(expertise.__path__, "expertise."):
        importlib.import_module(m.name)
    return {name for name, build in backbones.MEMBER_CLASSES.items() if build.__module__.startswith("expertise.")}


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


def test_member_passes_the_contract(case: Case, member: Member) -> None:
    """expertise.testing.check_member: embed, the upstream head, preprocessing, rebuilding from the
    config, storing and loading, a task head (its module docstring lists the rules)."""
    check_member(member.model, member.embedding_dim, member.upstream_outputs, member.preprocessing, case.kind)


def _broken(request, how: str) -> torch.nn.Module:
    model = copy.deepcopy(CASES["full_expert"].make(request).model)
    if how == "noisy":
        embed = model.embed
        model.embed = lambda x: embed(x) + torch.rand(x.shape[0], model.num_features)  # type: ignore[method-assign]
    elif how == "head":
        def reset_head(self: torch.nn.Module, k: int) -> None:  # bound to each copy the check makes
            type(self).reset_head(self, k)
            torch.nn.init.normal_(self.head.weight)
        model.reset_head = types.MethodType(reset_head, model)  # type: ignore[method-assign]
    elif how == "width":
        pass
    return model


@pytest.mark.parametrize("how, rule", [("noisy", "embed is not deterministic"), ("head", "reset_head must give a zero head"),
                                       ("width", r"embed gives torch.float32 \(5, \d+\), not float32 \(5, 7\)")])
def test_the_contract_check_names_the_rule_a_member_breaks(request, how: str, rule: str) -> None:
    model = _broken(request, how)
    with pytest.raises(ContractError, match=rule):
        check_member(model, embedding_dim=7 if how == "width" else None, kind="full_expert")
