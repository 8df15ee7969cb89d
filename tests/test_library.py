"""The model library: round trips, manifest, tamper detection, locking and atomic writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import expertise.library.member_files as member_files_module
import expertise.library.manifest as manifest_module
from expertise.data.hierarchy import Hierarchy
from expertise.errors import LibraryError
from expertise.library import Library, MemberInfo
from expertise.models.backbones import BACKBONES, ExpertModel, count_parameters, prepare, register_member_class


def _hierarchy() -> Hierarchy:
    return Hierarchy.from_edges([("animal", "root"), ("dog", "animal"), ("cat", "animal"), ("car", "root")])


def _model(seed: int = 0, outputs: int = 5) -> ExpertModel:
    torch.manual_seed(seed)
    model = ExpertModel(BACKBONES["bit_xs"], num_outputs=outputs)
    with torch.no_grad():  # zero_init_last leaves some weights zero; make every tensor distinctive
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model


def _info(name: str = "baseline", **kw) -> MemberInfo:
    base = dict(name=name, kind="baseline", parent=None, domain=None, upstream_images=1234, parameters=0,
                embedding_dim=0, upstream_accuracy=0.5, preprocessing={}, files={}, architecture="",
                extra={"steps": 10})
    return MemberInfo(**{**base, **kw})


def _images(n: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)


@pytest.fixture
def lib(tmp_path: Path) -> Library:
    return Library.create(tmp_path / "lib", _hierarchy())


def _files_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def test_round_trip_gives_identical_weights_and_embeddings(lib: Library) -> None:
    model = _model().eval()
    lib.add(_info(), model)
    loaded = Library.open(lib.path).load("baseline")
    assert not loaded.training
    want, got = model.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k
    x = prepare(_images(), model.preprocessing)
    with torch.inference_mode():
        assert torch.equal(model.embed(x), loaded.embed(x))
        assert torch.equal(model.upstream_logits(x), loaded.upstream_logits(x))


def test_manifest_fields_are_filled_and_stored(lib: Library) -> None:
    model = _model()
    stored = lib.add(_info("e1", kind="full_expert", parent="baseline", domain="animal"), model)
    assert stored.parameters == count_parameters(model)
    assert stored.embedding_dim == model.num_features == 128
    assert stored.preprocessing == model.preprocessing.to_json()
    assert stored.architecture == "bit_xs"
    assert set(stored.files) == {"config.json", "model.safetensors"}
    assert all(len(h) == 64 for h in stored.files.values())
    manifest = json.loads((lib.path / "library.json").read_text())
    assert manifest["format"] == 1
    assert manifest["members"]["e1"] == stored.to_json()
    reopened = Library.open(lib.path)
    assert reopened.info("e1") == stored
    assert MemberInfo.from_json(stored.to_json()) == stored
    assert reopened.names() == ["e1"] and "e1" in reopened and len(reopened) == 1
    assert reopened.members() == [stored]


def test_manifest_keeps_insertion_order(lib: Library) -> None:
    for name in ("zeta", "alpha", "mid"):
        lib.add(_info(name), _model())
    assert Library.open(lib.path).names() == ["zeta", "alpha", "mid"]


def test_hierarchy_round_trip(lib: Library) -> None:
    assert Library.open(lib.path).hierarchy.to_json() == _hierarchy().to_json()
    plain = Library.create(lib.path.parent / "external", None)
    assert Library.open(plain.path).hierarchy is None


def test_label_prior_round_trip(lib: Library) -> None:
    prior = torch.tensor([0.5, 0.25, 0.25, 0.5], dtype=torch.float32)
    stored = lib.add(_info("e1", kind="full_expert", domain="animal"), _model(), label_prior=prior)
    assert "label_prior.safetensors" in stored.files
    got = Library.open(lib.path).label_prior("e1")
    assert got.dtype == torch.float64 and torch.equal(got, prior.double())
    lib.add(_info("b"), _model())
    assert lib.label_prior("b") is None


def test_label_prior_must_match_hierarchy(lib: Library) -> None:
    with pytest.raises(LibraryError, match="4 label nodes"):
        lib.add(_info(), _model(), label_prior=torch.ones(3))


def test_member_hash_is_stable_and_tracks_content(lib: Library) -> None:
    lib.add(_info("a"), _model(0))
    lib.add(_info("b"), _model(1))
    h = lib.member_hash("a")
    assert len(h) == 16 and h == Library.open(lib.path).member_hash("a")
    assert h != lib.member_hash("b")
    lib.add(_info("a"), _model(2), overwrite=True)
    assert lib.member_hash("a") != h


def test_tampered_weights_are_detected(lib: Library) -> None:
    lib.add(_info(), _model())
    assert lib.verify() == []
    f = lib.path / "members" / "baseline" / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF  # a weight byte, so the file still parses
    f.write_bytes(bytes(data))
    problems = lib.verify()
    assert len(problems) == 1 and "model.safetensors" in problems[0]
    with pytest.raises(LibraryError, match="modified since it was written"):
        lib.load("baseline")
    lib.load("baseline", verify=False)  # the caller may opt out; the file still parses


def test_deleted_files_and_folders_are_reported(lib: Library) -> None:
    lib.add(_info("a"), _model(), label_prior=torch.ones(4))
    lib.add(_info("b"), _model())
    (lib.path / "members" / "a" / "label_prior.safetensors").unlink()
    (lib.path / "members" / "b" / "config.json").unlink()
    problems = lib.verify()
    assert any("label_prior.safetensors" in p and "missing" in p for p in problems)
    assert any("config.json" in p and "missing" in p for p in problems)
    with pytest.raises(LibraryError, match="modified since it was written"):
        lib.label_prior("a")
    with pytest.raises(LibraryError):
        lib.load("b")
    os.replace(lib.path / "members" / "b", lib.path / "members" / "stray")
    problems = lib.verify()
    assert any("folder" in p and "missing" in p and "'b'" in p for p in problems)
    assert any("stray" in p and "not a member" in p for p in problems)


def test_unreadable_config_is_reported(lib: Library) -> None:
    stored = lib.add(_info(), _model())
    cfg = lib.path / "members" / "baseline" / "config.json"
    cfg.write_text("{not json")
    # keep the hash consistent so only the parse fails
    manifest = json.loads((lib.path / "library.json").read_text())
    from expertise.io import sha256_file

    manifest["members"]["baseline"]["files"]["config.json"] = sha256_file(cfg)
    (lib.path / "library.json").write_text(json.dumps(manifest))
    problems = Library.open(lib.path).verify()
    assert len(problems) == 1 and "unreadable config" in problems[0]
    assert stored.files["config.json"] != sha256_file(cfg)


def test_weights_not_matching_config_fail_loudly(lib: Library) -> None:
    lib.add(_info(), _model())
    folder = lib.path / "members" / "baseline"
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_outputs"] = 7
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LibraryError, match="do not match its config"):
        lib.load("baseline", verify=False)


def test_unknown_member_suggests_a_name(lib: Library) -> None:
    lib.add(_info("bit_xs.expert_animal", kind="full_expert"), _model())
    with pytest.raises(LibraryError, match=r"did you mean 'bit_xs\.expert_animal'") as e:
        lib.info("bit_xs.expert_animals")
    assert "members: bit_xs.expert_animal" in str(e.value)
    with pytest.raises(LibraryError, match="did you mean"):
        lib.load("bit_xs.expert_anmal")


@pytest.mark.parametrize("bad", ["", "a/b", "../x", "..", ".hidden", "a b", "a\\b", "é", "x" * 200])
def test_bad_names_are_rejected(lib: Library, bad: str) -> None:
    with pytest.raises(LibraryError, match="invalid member name"):
        lib.add(_info(bad), _model())
    assert lib.names() == []
    assert not (lib.path / "members").exists() or list((lib.path / "members").iterdir()) == []


def test_bad_kind_and_domain_are_rejected(lib: Library) -> None:
    with pytest.raises(LibraryError, match="kind must be one of"):
        lib.add(_info(kind="expert"), _model())
    with pytest.raises(LibraryError, match="not a node"):
        lib.add(_info(kind="full_expert", domain="plant"), _model())


def test_held_lock_is_an_error_naming_the_lock_file(lib: Library, monkeypatch) -> None:
    from expertise.library import locking

    monkeypatch.setattr(locking, "LOCK_WAIT_S", 0.3)  # a writer waits for a live holder this long, then says so
    lock = lib.path / ".lock"
    lock.write_text(f"{os.getpid()}\n")  # this process is alive
    with pytest.raises(LibraryError, match=r"locked by another writer") as e:
        lib.add(_info(), _model())
    assert str(lock) in str(e.value)
    assert lock.exists() and lib.names() == []
    lock.unlink()
    lib.add(_info(), _model())
    assert not lock.exists()


def test_stale_lock_of_a_dead_process_is_taken_over(lib: Library) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    (lib.path / ".lock").write_text(f"{proc.pid}\n")
    lib.add(_info(), _model())
    assert lib.names() == ["baseline"] and not (lib.path / ".lock").exists()


def test_open_rejects_what_is_not_a_library(tmp_path: Path) -> None:
    with pytest.raises(LibraryError, match="no model library"):
        Library.open(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(LibraryError, match="not a model library"):
        Library.open(tmp_path / "plain")
    (tmp_path / "file").write_text("x")
    with pytest.raises(LibraryError, match="is a file"):
        Library.open(tmp_path / "file")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "library.json").write_text(json.dumps({"format": 99, "members": {}}))
    with pytest.raises(LibraryError, match="format 99"):
        Library.open(bad)
    (bad / "library.json").write_text("[1, 2")
    with pytest.raises(LibraryError, match="cannot be read"):
        Library.open(bad)


def test_create_twice(lib: Library) -> None:
    with pytest.raises(LibraryError, match="already a model library"):
        Library.create(lib.path, _hierarchy())
    assert Library.create(lib.path, _hierarchy(), exist_ok=True).path == lib.path
    with pytest.raises(LibraryError, match="different hierarchy"):
        Library.create(lib.path, Hierarchy.from_edges([("x", "root")]), exist_ok=True)


def test_overwrite_semantics(lib: Library) -> None:
    lib.add(_info("a"), _model(0))
    lib.add(_info("b"), _model(1))
    with pytest.raises(LibraryError, match="overwrite=True"):
        lib.add(_info("a"), _model(2))
    assert torch.equal(lib.load("a").state_dict()["head.bias"], _model(0).state_dict()["head.bias"])
    lib.add(_info("a", upstream_accuracy=0.9), _model(2), overwrite=True)
    reopened = Library.open(lib.path)
    assert reopened.names() == ["a", "b"]  # the replaced member keeps its place
    assert reopened.info("a").upstream_accuracy == 0.9
    assert torch.equal(reopened.load("a").state_dict()["head.bias"], _model(2).state_dict()["head.bias"])
    assert reopened.verify() == []


def test_remove(lib: Library) -> None:
    lib.add(_info("a"), _model())
    lib.add(_info("b"), _model())
    lib.remove("a")
    assert lib.names() == ["b"] and Library.open(lib.path).names() == ["b"]
    assert not (lib.path / "members" / "a").exists()
    assert lib.verify() == []
    with pytest.raises(LibraryError, match="no member 'a'"):
        lib.remove("a")


class _ExplodingStateDict(ExpertModel):
    def state_dict(self, *args, **kwargs):  # type: ignore[override]
        def items():
            yield "backbone.stem.0.weight", torch.zeros(1)
            raise RuntimeError("disk full, say")

        return dict(items())


def _snapshot(lib: Library) -> tuple[str, set[str]]:
    return (lib.path / "library.json").read_text(), _files_under(lib.path)


def test_failed_state_dict_leaves_library_unchanged(lib: Library) -> None:
    lib.add(_info("a"), _model())
    before = _snapshot(lib)
    bad = _ExplodingStateDict(BACKBONES["bit_xs"], num_outputs=5)
    with pytest.raises(RuntimeError, match="disk full"):
        lib.add(_info("b"), bad)
    assert _snapshot(lib) == before
    assert not (lib.path / "members" / "b").exists() and lib.verify() == []


def test_failed_write_midway_leaves_no_trace(lib: Library, monkeypatch: pytest.MonkeyPatch) -> None:
    lib.add(_info("a"), _model(0))
    before = _snapshot(lib)
    real_save = member_files_module.atomic_save_safetensors  # where Library.add writes a member's files

    def failing_save(path, tensors, metadata=None):
        real_save(path, tensors, metadata)  # the weights land in staging, then the prior fails
        if "prior" in tensors:
            raise OSError("no space left on device")

    monkeypatch.setattr(member_files_module, "atomic_save_safetensors", failing_save)
    with pytest.raises(OSError):
        lib.add(_info("b"), _model(1), label_prior=torch.ones(4))
    with pytest.raises(OSError):
        lib.add(_info("a"), _model(1), label_prior=torch.ones(4), overwrite=True)
    assert _snapshot(lib) == before and lib.verify() == []


def test_failed_manifest_write_restores_the_old_member(lib: Library, monkeypatch: pytest.MonkeyPatch) -> None:
    lib.add(_info("a"), _model(0))
    before = _snapshot(lib)
    real_write = manifest_module.atomic_write_json

    def failing_write(path, data):
        if Path(path).name == "library.json":  # the commit point, after the new folder is in place
            raise OSError("read-only file system")
        real_write(path, data)

    monkeypatch.setattr(manifest_module, "atomic_write_json", failing_write)
    with pytest.raises(OSError, match="read-only"):
        lib.add(_info("a"), _model(1), overwrite=True)
    with pytest.raises(OSError, match="read-only"):
        lib.add(_info("b"), _model(1))
    assert _snapshot(lib) == before
    assert torch.equal(lib.load("a").state_dict()["head.bias"], _model(0).state_dict()["head.bias"])


def test_model_without_member_config_is_refused(lib: Library) -> None:
    with pytest.raises(LibraryError, match="member_config"):
        lib.add(_info(), torch.nn.Linear(3, 3))


class _TiedModel(ExpertModel):
    """Two state_dict keys backed by one tensor, as with tied embeddings."""

    def __init__(self) -> None:
        super().__init__(BACKBONES["bit_xs"], num_outputs=5)
        self.head_alias = self.head

    def member_config(self) -> dict:
        return {**super().member_config(), "class": "_TiedTestModel"}


register_member_class("_TiedTestModel")(lambda cfg: _TiedModel())


def test_tied_weights_are_stored(lib: Library) -> None:
    """safetensors refuses tensors that share memory; the library stores independent copies."""
    model = _TiedModel()
    state = model.state_dict()
    assert state["head.weight"].data_ptr() == state["head_alias.weight"].data_ptr()
    lib.add(_info(), model)
    loaded = lib.load("baseline")
    assert torch.equal(loaded.state_dict()["head_alias.weight"], state["head.weight"])
    assert lib.verify() == []


def test_leftovers_of_a_crashed_writer_are_reported_then_cleaned(lib: Library) -> None:
    lib.add(_info("a"), _model())
    staging = lib.path / "members" / ".staging-b-deadbeef"
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"half")
    assert any(".staging-b" in p for p in lib.verify())
    lib.add(_info("b"), _model())  # a writer holds the lock, so no other write is in flight
    assert not staging.exists() and lib.verify() == []


def test_two_handles_do_not_lose_each_others_members(lib: Library) -> None:
    """A writer re-reads the manifest under the lock, so a stale handle never drops members."""
    other = Library.open(lib.path)
    lib.add(_info("a"), _model())
    other.add(_info("b"), _model())
    assert Library.open(lib.path).names() == ["a", "b"]
    lib.remove("b")
    assert Library.open(lib.path).names() == ["a"]


def test_malformed_manifest_entries_are_library_errors(lib: Library) -> None:
    lib.add(_info("a"), _model())
    f = lib.path / "library.json"
    manifest = json.loads(f.read_text())
    manifest["members"]["a"]["parameters"] = "many"
    f.write_text(json.dumps(manifest))
    with pytest.raises(LibraryError, match="malformed"):
        Library.open(lib.path)
    manifest["members"] = {"../escape": {**manifest["members"]["a"], "name": "../escape", "parameters": 1}}
    f.write_text(json.dumps(manifest))
    with pytest.raises(LibraryError, match="invalid member name"):
        Library.open(lib.path)


def test_numpy_scalars_are_stored_as_json_numbers(lib: Library) -> None:
    import numpy as np

    stored = lib.add(_info(upstream_accuracy=np.float32(0.25), upstream_images=np.int64(7)), _model())
    assert type(stored.upstream_accuracy) is float and type(stored.upstream_images) is int
    assert Library.open(lib.path).info("baseline").upstream_accuracy == 0.25
    with pytest.raises(LibraryError, match="not JSON-serialisable"):
        lib.add(_info("x", extra={"bad": object()}), _model())
