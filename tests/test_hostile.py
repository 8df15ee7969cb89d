"""A library, a Hugging Face folder or a checkpoint from someone else is data, never code.

Every case injects one fault into a copy of a small, valid library (hashes updated where the fault
is meant to get past them) or into a model source, and asserts that the user gets one clear line
(an ExpertiseError, or exit status 2 and one line from the CLI), that nothing is unpickled, and
that no payload ran. docs/security.md records the counts; ``pytest tests/test_hostile.py -v``
regenerates them.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
from typer.testing import CliRunner

from expertise.cli import app
from expertise.data.hierarchy import Hierarchy
from expertise.errors import ExpertiseError
from expertise.io import sha256_file
from expertise.library import Library, MemberInfo
from expertise.models.backbones import BACKBONES, ExpertModel
from expertise.models.external import from_hf_folder
from expertise.pool import add_external, load_external

runner = CliRunner()


class _Payload:
    """Unpickling this creates the marker folder: the proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PAYLOAD_RAN"


@pytest.fixture
def evil(tmp_path: Path, marker: Path) -> Path:
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}))
    return path


@pytest.fixture(autouse=True)
def _never_unpickle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any call of torch.load or pickle.load fails the test: nothing may be unpickled."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"something was unpickled: {args[:1]}")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)


def _hierarchy() -> Hierarchy:
    return Hierarchy.from_edges([("animal", "root"), ("dog", "animal"), ("cat", "animal"), ("car", "root")])


def _expert(outputs: int = 5) -> ExpertModel:
    torch.manual_seed(0)
    return ExpertModel(BACKBONES["bit_xs"], num_outputs=outputs)


def _info(name: str, kind: str = "baseline", **kw) -> MemberInfo:
    return MemberInfo(name=name, kind=kind, parent=None, domain=None, upstream_images=10, parameters=0,
                      embedding_dim=0, upstream_accuracy=0.5, preprocessing={}, **kw)


@pytest.fixture(scope="module")
def clean_library(tmp_path_factory) -> Path:
    """B (an ExpertModel with a label prior), an external timm member, and upstream.json."""
    path = tmp_path_factory.mktemp("clean") / "lib"
    lib = Library.create(path, _hierarchy())
    lib.add(_info("b"), _expert(), label_prior=torch.full((4,), 0.25))
    torch.manual_seed(1)
    net = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    ckpt = path.parent / "test_resnet.safetensors"
    safetensors.torch.save_file(net.state_dict(), str(ckpt))
    add_external(lib, *load_external("test_resnet", checkpoint=ckpt, size=32), name="ext")
    world = {"seed": 0, "resolution": 16, "upstream_size": 100, "holdout_size": 10, "test_size": 20,
             "imbalance": 1.0, "domain_weights": [0.3, 1.0, 1.0]}
    lib.write_meta("upstream.json", {"preset": "tiny", "world": world,
                                     "settings": {"world": world, "world_version": 2, "seed": 0}})
    return path


@pytest.fixture
def lib_path(clean_library: Path, tmp_path: Path) -> Path:
    path = tmp_path / "lib"
    shutil.copytree(clean_library, path)
    return path


def _rehash(path: Path) -> None:
    """Update the manifest's hashes to the files as they are now: the fault gets past the hashes."""
    manifest = json.loads((path / "library.json").read_text())
    for fname in manifest["files"]:
        manifest["files"][fname] = sha256_file(path / fname)
    for name, entry in manifest["members"].items():
        for fname in entry["files"]:
            f = path / fname if fname.startswith("adapters/") else path / "members" / name / fname
            if f.exists():
                entry["files"][fname] = sha256_file(f)
    (path / "library.json").write_text(json.dumps(manifest))


def _edit_json(f: Path, edit) -> None:
    data = json.loads(f.read_text())
    edit(data)
    f.write_text(json.dumps(data))


def _one_line_error(args: list[str]) -> str:
    result = runner.invoke(app, args)
    text = result.output.strip()
    assert result.exit_code in (1, 2), text
    assert "Traceback" not in text, text
    assert result.exception is None or isinstance(result.exception, SystemExit), text
    if args[:2] != ["library", "verify"]:  # verify prints one line per problem; the others one error line
        assert len(text.splitlines()) == 1 and text.startswith("error:"), text
    return text


def _use(path: Path, member: str) -> None:
    """Everything a command does with a member: open, verify, load, read its prior."""
    lib = Library.open(path)
    lib.verified_hash(member)
    lib.load(member)
    lib.label_prior(member)


# -- faults in a member's config.json (hash updated) ---------------------------------------------
def _ext_config(edit):
    def fault(path: Path, evil: Path) -> str:
        _edit_json(path / "members" / "ext" / "config.json", lambda c: edit(c, evil))
        return "ext"
    return fault


def _tf_config(edit):
    """A tiny transformers member added to the library copy, then its config edited."""
    def fault(path: Path, evil: Path) -> str:
        pytest.importorskip("transformers")
        from hf_tiny import write_tiny

        write_tiny(path.parent / "tf_source", "vit", 3)
        add_external(Library.open(path), *load_external(hf=str(path.parent / "tf_source")), name="tf")
        _edit_json(path / "members" / "tf" / "config.json", edit)
        return "tf"
    return fault


def _b_config(edit):
    def fault(path: Path, evil: Path) -> str:
        _edit_json(path / "members" / "b" / "config.json", edit)
        return "b"
    return fault


CONFIG_FAULTS = {
    "timm checkpoint_path to a pickle": _ext_config(lambda c, e: c["model_args"].update(checkpoint_path=str(e))),
    "timm checkpoint_path to /etc/passwd": _ext_config(lambda c, e: c["model_args"].update(checkpoint_path="/etc/passwd")),
    "timm pretrained true": _ext_config(lambda c, e: c["model_args"].update(pretrained=True)),
    "timm pretrained_cfg_overlay file": _ext_config(lambda c, e: c["model_args"].update(pretrained_cfg_overlay={"file": str(e)})),
    "timm cache_dir": _ext_config(lambda c, e: c["model_args"].update(cache_dir=str(e.parent))),
    "timm path as a value": _ext_config(lambda c, e: c["model_args"].update(global_pool=str(e))),
    "timm architecture from the Hub": _ext_config(lambda c, e: c.update(architecture="hf-hub:evil/model")),
    "timm architecture as a path": _ext_config(lambda c, e: c.update(architecture="../../evil")),
    "timm in_chans 1": _ext_config(lambda c, e: c["model_args"].update(in_chans=1)),
    "transformers key outside the allowlist": _tf_config(lambda c: c["config"].update(attn_implementation="flash")),
    "transformers custom code": _tf_config(lambda c: c["config"].update(auto_map={"AutoModel": "evil.Model"})),
    "transformers unknown family": _tf_config(lambda c: c.update(family="gpt2")),
    "transformers hidden_size 2^20": _tf_config(lambda c: c["config"].update(hidden_size=1 << 20)),
    "transformers path as a value": _tf_config(lambda c: c["config"].update(hidden_act="/tmp/evil.py")),
    "transformers num_channels 1": _tf_config(lambda c: c["config"].update(num_channels=1)),
    "channels 16384": _b_config(lambda c: c["backbone"].update(channels=[16384, 32, 64, 128])),
    "num_outputs -5": _b_config(lambda c: c.update(num_outputs=-5)),
    "num_outputs 1e9": _b_config(lambda c: c.update(num_outputs=1e9)),
    "layers 10000": _b_config(lambda c: c["backbone"].update(layers=[10000, 1, 1, 1])),
    "preprocessing size abc": _b_config(lambda c: c["preprocessing"].update(size="abc")),
    "preprocessing std 0": _b_config(lambda c: c["preprocessing"].update(std=[0, 1, 1])),
    "unknown class": _b_config(lambda c: c.update({"class": "os.system"})),
    "unknown key": _b_config(lambda c: c.update(load_from="/tmp/x")),
    "config not an object": _b_config(lambda c: c.clear()),
}


@pytest.mark.parametrize("fault", CONFIG_FAULTS.values(), ids=CONFIG_FAULTS.keys())
def test_hostile_member_configs_are_refused_before_use(lib_path: Path, evil: Path, marker: Path, fault) -> None:
    member = fault(lib_path, evil)
    _rehash(lib_path)
    with pytest.raises(ExpertiseError) as e:
        _use(lib_path, member)
    assert "\n" not in str(e.value)
    problems = Library.open(lib_path).verify()
    assert problems and any(member in p for p in problems)  # verify says so too: no ✓ for it
    assert not marker.exists()


# -- faults in other files --------------------------------------------------------------------------
def _weights_pickle(path: Path, evil: Path) -> str:
    shutil.copy(evil, path / "members" / "b" / "model.safetensors")
    return "b"


def _weights_bad_header(path: Path, evil: Path) -> str:
    f = path / "members" / "b" / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:20] = b"{garbage!!!!"
    f.write_bytes(bytes(data))
    return "b"


def _weights_huge_header(path: Path, evil: Path) -> str:
    f = path / "members" / "b" / "model.safetensors"
    f.write_bytes((1 << 60).to_bytes(8, "little") + f.read_bytes()[8:])
    return "b"


def _weights_wrong_shapes(path: Path, evil: Path) -> str:
    safetensors.torch.save_file(_expert(outputs=7).state_dict(), str(path / "members" / "b" / "model.safetensors"))
    return "b"


def _weights_symlink_outside(path: Path, evil: Path) -> str:
    f = path / "members" / "b" / "model.safetensors"
    outside = path.parent / "outside.safetensors"
    shutil.move(f, outside)
    f.symlink_to(outside)
    return "b"


def _prior_wrong_length(path: Path, evil: Path) -> str:
    safetensors.torch.save_file({"prior": torch.ones(9, dtype=torch.float64)}, str(path / "members" / "b" / "label_prior.safetensors"))
    return "b"


def _manifest_preprocessing(path: Path, evil: Path) -> str:
    _edit_json(path / "library.json", lambda m: m["members"]["b"]["preprocessing"].update(size="abc"))
    return "b"


def _manifest_accuracy(path: Path, evil: Path) -> str:
    _edit_json(path / "library.json", lambda m: m["members"]["b"].update(upstream_accuracy="high"))
    return "b"


def _hierarchy_non_utf8(path: Path, evil: Path) -> str:
    (path / "hierarchy.json").write_bytes(b'{"parents": {"root": [], "\xff\xfe": ["root"]}}')
    return "b"


def _hierarchy_int_parents(path: Path, evil: Path) -> str:
    _edit_json(path / "hierarchy.json", lambda h: h["parents"].update(dog=[1, 2]))
    return "b"


def _hierarchy_cycle(path: Path, evil: Path) -> str:
    _edit_json(path / "hierarchy.json", lambda h: h["parents"].update(animal=["dog"]))
    return "b"


def _upstream_truncated(path: Path, evil: Path) -> str:
    f = path / "upstream.json"
    f.write_text(f.read_text()[:40])
    return "b"


def _upstream_extra_key(path: Path, evil: Path) -> str:
    _edit_json(path / "upstream.json", lambda u: u["world"].update(evil=1))
    return "b"


def _upstream_huge_world(path: Path, evil: Path) -> str:
    _edit_json(path / "upstream.json", lambda u: u["world"].update(test_size=1e9))
    return "b"


FILE_FAULTS = {
    "pickle stored as model.safetensors": _weights_pickle,
    "corrupted safetensors header": _weights_bad_header,
    "huge safetensors header": _weights_huge_header,
    "weights of another shape": _weights_wrong_shapes,
    "weights symlinked outside": _weights_symlink_outside,
    "label prior of another length": _prior_wrong_length,
    "manifest preprocessing size abc": _manifest_preprocessing,
    "manifest accuracy a string": _manifest_accuracy,
    "hierarchy not UTF-8": _hierarchy_non_utf8,
    "hierarchy parents not names": _hierarchy_int_parents,
    "hierarchy with a cycle": _hierarchy_cycle,
    "upstream.json truncated": _upstream_truncated,
    "upstream.json extra key": _upstream_extra_key,
    "upstream.json test_size 1e9": _upstream_huge_world,
}


@pytest.mark.parametrize("rehash", [True, False], ids=["hash updated", "hash stale"])
@pytest.mark.parametrize("fault", FILE_FAULTS.values(), ids=FILE_FAULTS.keys())
def test_hostile_files_are_one_line_errors(lib_path: Path, evil: Path, marker: Path, fault, rehash: bool) -> None:
    from expertise.library.upstream_meta import world_of_library

    member = fault(lib_path, evil)
    if rehash:
        _rehash(lib_path)
    with pytest.raises(ExpertiseError) as e:
        _use(lib_path, member)
        world_of_library(Library.open(lib_path))
    assert "\n" not in str(e.value)
    text = _one_line_error(["library", "verify", str(lib_path)])
    assert "✓" not in text
    for command in (["library", "ls", str(lib_path)], ["select", "--library", str(lib_path), "--task", "sklearn_digits",
                                                       "--proxy", "knn_loo", "-q"]):
        result = runner.invoke(app, command)
        if result.exit_code:  # ls may list a library whose member files are broken; select must not use them
            assert result.exit_code == 2 and "Traceback" not in result.output and result.output.count("error:") == 1
        else:
            assert command[0] == "library"
    assert not marker.exists()


# -- model sources: a Hugging Face folder, a checkpoint -------------------------------------------
def _hf_folder(tmp_path: Path, **config) -> Path:
    from timm.models._hub import save_for_hf

    torch.manual_seed(0)
    net = timm.create_model("test_vit", pretrained=False, num_classes=config.pop("num_classes", 4))
    folder = tmp_path / "hf"
    save_for_hf(net, str(folder), safe_serialization=True)
    _edit_json(folder / "config.json", lambda c: c.update(config))
    return folder


def test_hf_folder_with_checkpoint_path_is_refused(tmp_path: Path, evil: Path, marker: Path) -> None:
    folder = _hf_folder(tmp_path, model_args={"checkpoint_path": str(evil)})
    text = _one_line_error(["pool", "add", "--library", str(tmp_path / "lib"), "--hf", str(folder)])
    assert "checkpoint_path" in text and "not allowed" in text and not marker.exists()


def test_hf_folder_pretrained_cfg_cannot_name_the_weights(tmp_path: Path, evil: Path, marker: Path) -> None:
    """``file``, ``url``, ``hf_hub_id`` and ``custom_load`` in a folder's pretrained_cfg are dropped: the
    weights always come from the folder's model.safetensors."""
    folder = _hf_folder(tmp_path)
    _edit_json(folder / "config.json", lambda c: c["pretrained_cfg"].update(
        file=str(evil), url="file://" + str(evil), hf_hub_id="evil/model", custom_load=True, state_dict="x"))
    model, _ = from_hf_folder(folder)
    assert model.head is not None and not marker.exists()


def test_hf_folder_with_hub_architecture_is_refused(tmp_path: Path, marker: Path) -> None:
    folder = _hf_folder(tmp_path, architecture="hf-hub:evil/model")
    text = _one_line_error(["pool", "add", "--library", str(tmp_path / "lib"), "--hf", str(folder)])
    assert "plain name" in text


def test_hf_folder_without_classifier_is_a_member_without_upstream_head(tmp_path: Path) -> None:
    folder = _hf_folder(tmp_path, num_classes=0)
    model, _ = from_hf_folder(folder)
    assert model.head is None and model.embed(torch.zeros(1, 3, 32, 32)).shape[0] == 1


def _tf_folder(tmp_path: Path) -> Path:
    pytest.importorskip("transformers")
    from hf_tiny import write_tiny

    write_tiny(tmp_path / "tf", "vit", 3)
    return tmp_path / "tf"


def test_transformers_folder_asking_for_custom_code_is_refused(tmp_path: Path, marker: Path) -> None:
    folder = _tf_folder(tmp_path)
    _edit_json(folder / "config.json", lambda c: c.update(auto_map={"AutoModel": "modeling_evil.Model"}))
    (folder / "modeling_evil.py").write_text(f"import os; os.makedirs({str(marker)!r})\n")
    text = _one_line_error(["pool", "add", "--library", str(tmp_path / "lib"), "--hf", str(folder)])
    assert "custom model code" in text and not marker.exists()


def test_transformers_folder_with_a_pickle_as_weights_is_refused(tmp_path: Path, evil: Path, marker: Path) -> None:
    folder = _tf_folder(tmp_path)
    shutil.copy(evil, folder / "model.safetensors")
    text = _one_line_error(["pool", "add", "--library", str(tmp_path / "lib"), "--hf", str(folder)])
    assert "is not a readable safetensors file" in text and not marker.exists()


def test_transformers_index_naming_a_pickle_shard_is_refused(tmp_path: Path, evil: Path, marker: Path) -> None:
    folder = _tf_folder(tmp_path)
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../evil.pth"}}))
    text = _one_line_error(["pool", "add", "--library", str(tmp_path / "lib"), "--hf", str(folder)])
    assert "not safetensors files in the folder" in text and not marker.exists()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_pickled_checkpoints_are_refused(tmp_path: Path, evil: Path, marker: Path, suffix: str) -> None:
    path = tmp_path / f"checkpoint{suffix}"
    shutil.copy(evil, path)
    text = _one_line_error(["pool", "add", "--library", str(tmp_path / "lib"), "--timm", "test_resnet",
                            "--checkpoint", str(path)])
    assert "error:" in text and not marker.exists()


def test_a_tampered_member_is_not_ranked_from_a_warm_cache(lib_path: Path, tmp_path: Path) -> None:
    """Cached embeddings are keyed by the member's hash, verified once per process: after a weight
    file changes, a warm cache is no way around verification."""
    from expertise.data.loaders import load_task
    from expertise.select.embed import EmbeddingCache
    from expertise.runtime import RunContext
    from expertise.select.run import run_selection

    task = load_task("sklearn_digits", resolution=16, seed=0)
    cache = EmbeddingCache(tmp_path / "cache")
    warm = run_selection(Library.open(lib_path), task, "proxy", proxy="knn_loo", ctx=RunContext(progress=False, cache=cache))
    assert {name for name, _ in warm.selection.ranking} == {"b", "ext"}
    _weights_wrong_shapes(lib_path, lib_path)  # the manifest's hash is now stale
    with pytest.raises(ExpertiseError, match="modified since it was written"):
        run_selection(Library.open(lib_path), task, "proxy", proxy="knn_loo", ctx=RunContext(progress=False, cache=cache))
