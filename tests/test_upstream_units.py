"""The upstream build as units (expertise.upstream.units, expertise.library.staging): each full expert,
the EPN and the adapter bank run from their specs, are staged by the worker and committed by the
coordinator to the library the one-process build makes, tensor for tensor; a unit staged by a run
whose coordinator died is committed by the next run without training again; a staged member that is
not what the worker wrote is refused. (On Ray: tests/test_ray_executor.py.)"""

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from expertise.cli import app
from expertise.errors import LibraryError
from expertise.library import Library
from expertise.library import staging
from expertise.runtime import RunContext
from expertise.units import LocalExecutor
from expertise.upstream.build import build_library


def without_experts(tiny_library, dest: Path) -> Library:
    """A copy of the shared library with B alone: its experts, EPN and adapter bank removed."""
    lib = tiny_library.copy_to(dest)
    for m in reversed(lib.members()):
        if m.kind != "baseline":
            lib.remove(m.name)
    assert lib.names() == [tiny_library.names[0]]
    return lib


def assert_same_library(built: Path, reference: Library) -> None:
    """The same members in the same order, and every tensor of every file equal to the reference's."""
    lib = Library.open(built)
    assert lib.names() == reference.names()
    files = sorted(p.relative_to(reference.path) for p in reference.path.rglob("*.safetensors"))
    assert files == sorted(p.relative_to(built) for p in built.rglob("*.safetensors"))
    for rel in files:
        a, b = load_file(reference.path / rel), load_file(built / rel)
        assert a.keys() == b.keys(), rel
        assert all(torch.equal(a[k], b[k]) for k in a), rel
    assert lib.verify() == []
    assert not (built / staging.STAGED).exists()


class Counting(LocalExecutor):
    def __init__(self) -> None:
        super().__init__()
        self.kinds: list[str] = []

    def submit(self, token, spec, ctx) -> None:
        self.kinds.append(spec.kind)
        super().submit(token, spec, ctx)


def test_experts_as_units_match_the_local_build_and_a_staged_unit_is_never_trained_twice(tiny_library, tmp_path, monkeypatch):
    torch.set_num_threads(1)  # as the shared library was built
    lib = without_experts(tiny_library, tmp_path / "lib")
    ctx = RunContext(progress=False, log=lambda *a: None)

    def coordinator_dies(*a, **k):
        raise KeyboardInterrupt

    first = Counting()
    monkeypatch.setattr(staging, "commit", coordinator_dies)
    with pytest.raises(KeyboardInterrupt):  # every unit ran and was staged; nothing was committed
        build_library(tiny_library.preset, lib.path, ctx, executor=first)
    monkeypatch.undo()
    # handed out the longest first (tiny: the EPN trains on 1,280 images, the bank on 576, an expert on 512)
    assert first.kinds == ["epn", "adapter_bank"] + ["full_expert"] * 3
    assert Library.open(lib.path).names() == [tiny_library.names[0]]  # workers never write the manifest
    assert len(list((lib.path / staging.STAGED).glob("*/" + staging.STAGED_FILE))) == 5
    assert not (lib.path / ".claims").exists() or not any((lib.path / ".claims").iterdir())

    again = Counting()
    _, _, names = build_library(tiny_library.preset, lib.path, ctx, executor=again)
    assert again.kinds == []  # every unit was recorded: committed from what the first run staged
    assert names == tiny_library.names
    assert_same_library(lib.path, tiny_library.library)


def test_a_staged_member_that_is_not_what_the_worker_wrote_is_refused(tiny_library, tmp_path):
    lib = without_experts(tiny_library, tmp_path / "lib")
    name = tiny_library.names[1]
    source = tiny_library.library
    unit = staging.folder(lib.path, "full_expert.0123456789abcdef")
    with staging.writing(unit) as into:
        staging.stage_member(lib, into, source.info(name), source.load(name), source.label_prior(name))
    assert name not in Library.open(lib.path)  # staged, not in the manifest
    killed = staging.folder(lib.path, ".epn.feedface.1234abcd.writing")
    unfinished = staging.folder(lib.path, "epn.0123456789abcdef")
    killed.mkdir(), unfinished.mkdir()
    (lib.path / staging.STAGED / "units").mkdir()  # the finished units' records: not a unit
    result = CliRunner().invoke(app, ["library", "verify", str(lib.path)])
    assert result.exit_code == 0, result.output  # staged units are not damage: verify says what waits
    lines = [line for line in result.output.splitlines() if line.startswith("staged, not in the library")]
    assert len(lines) == 3
    assert any(unit.name in line and f"members {name}," in line for line in lines)
    assert any(unfinished.name in line and "unfinished" in line for line in lines)
    assert any(killed.name in line and "killed" in line for line in lines)
    killed.rmdir(), unfinished.rmdir(), (lib.path / staging.STAGED / "units").rmdir()
    weights = unit / "members" / name / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(LibraryError, match="not the file the worker wrote") as e:
        staging.commit(lib, unit)
    assert "\n" not in str(e.value) and name not in Library.open(lib.path)
    weights.write_bytes(good)
    staging.commit(lib, unit)
    assert not unit.exists() and Library.open(lib.path).verify() == []
    for k, v in source.load(name).state_dict().items():
        assert torch.equal(v, lib.load(name).state_dict()[k]), k


def test_executor_options_of_experts_and_select_are_one_line_errors(tiny_library, tmp_path):
    runner = CliRunner()
    lib = str(tiny_library.library.path)
    out = ["--out", str(tmp_path / "out")]
    cases = [(["experts", "--library", str(tmp_path / "lib"), "--preset", "tiny", "--executor", "slurm"], "--executor"),
             (["experts", "--library", str(tmp_path / "lib"), "--preset", "tiny", "--ray-cpus", "2"],
              "--ray-cpus is an option of --executor ray"),
             (["select", "--library", lib, "--task", "count", *out, "--ray-address", "localhost:1"],
              "--ray-address is an option of --executor ray"),
             (["select", "--library", lib, "--task", "count", *out, "--executor", "ray", "--search", "halving"],
              "--search halving embeds only the members that survive")]
    for args, expected in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert expected in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "lib").exists() and not (tmp_path / "out").exists()


def test_a_scaled_adapter_bank_as_a_unit_matches_the_local_build(tiny_library, tmp_path):
    """``adapter_scaled`` travels in the unit's spec: the worker trains the same scaled bank the
    local build does, and the library records its form."""
    torch.set_num_threads(1)
    preset = dataclasses.replace(tiny_library.preset, adapter_scaled=True)
    ctx = RunContext(progress=False, log=lambda *a: None)
    local = without_experts(tiny_library, tmp_path / "local")
    build_library(preset, local.path, ctx, kinds=("adapter",))
    units = without_experts(tiny_library, tmp_path / "units")
    ran = Counting()
    build_library(preset, units.path, ctx, kinds=("adapter",), executor=ran)
    assert ran.kinds == ["epn", "adapter_bank"]
    assert_same_library(units.path, Library.open(local.path))
    lib = Library.open(units.path)
    experts = [m for m in lib.members() if m.kind == "adapter_expert"]
    assert experts and all(m.extra["scaled"] is True for m in experts)
    assert lib.load_adapter_bank().scaled
