"""Pool files: `expertise pool add --from pool.toml` and `expertise pool export`, on a pool of
locally written tiny timm checkpoints and a tiny transformers folder (tests/hf_tiny.py)."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import pytest
import safetensors.torch
from typer.testing import CliRunner

from expertise.cli import app
from expertise.errors import ConfigError
from expertise.library import Library
from expertise.pool_file import add_from_file, dump, export, parse, read, toml_value
from expertise.runtime import RunContext
from expertise.select.registry import STRATEGIES

runner = CliRunner()
DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture
def pool_dir(tmp_path: Path, make_timm_net) -> Path:
    """A folder with two timm checkpoints and (when transformers is installed) a transformers
    model, and a pool file listing them with relative paths."""
    for arch, classes in (("test_resnet", 7), ("test_vit", 0)):
        net = make_timm_net(arch, num_classes=classes, seed=1)
        safetensors.torch.save_file(net.state_dict(), str(tmp_path / f"{arch}.safetensors"))
    text = """description = "a tiny pool for the tests"

[[member]]
name = "resnet"
timm = "test_resnet"
checkpoint = "test_resnet.safetensors"
size = 32
upstream_dataset = "imagenet-1k"
upstream_images = 1281167
imagenet_top1 = 76.13

[[member]]
timm = "test_vit"
checkpoint = "./test_vit.safetensors"
upstream_dataset = "imagenet-21k"
upstream_images = 14197122
notes = "no ImageNet top-1: ranked after those with one"
"""
    try:
        from hf_tiny import write_tiny

        write_tiny(tmp_path / "vit_hf", "vit", 5)
        text += '\n[[member]]\nname = "hf_vit"\nhf = "./vit_hf"\nimagenet_top1 = 81.0\n'
    except ImportError:
        pass
    (tmp_path / "pool.toml").write_text(text)
    return tmp_path


def test_toml_writer_round_trips_through_tomllib():
    tricky = ['plain', 'with "quotes"', "back\\slash", "new\nline\ttab\r", "\x01\x7f control", "ünïcødé ✓", "", "#[x] = 1"]
    numbers = [0, -3, 1 << 50, 76.13, 1e-05, 1e20, 0.1 + 0.2, -0.0]
    entries = [{"name": "a", "notes": s, "upstream_images": 5} for s in tricky]
    entries += [{"name": "b", "imagenet_top1": v, "pretrained": v == 0} for v in numbers]
    text = dump(entries, ["a header", "over two\nlines"])
    back = tomllib.loads(text)["member"]
    assert back == entries and text.startswith("# a header\n# over two\n# lines\n")
    assert all(math.copysign(1, b["imagenet_top1"]) == math.copysign(1, e["imagenet_top1"])
               for b, e in zip(back[len(tricky):], entries[len(tricky):]))
    for bad in (math.inf, math.nan):
        with pytest.raises(ValueError):
            toml_value(bad)
    with pytest.raises(TypeError):
        toml_value([1, 2])
    with pytest.raises(ValueError, match="not pool file keys"):
        dump([{"evil": 1}])


@pytest.mark.parametrize("text,match", [
    ('[[member]]\nname = "a"\ntimm = "test_resnet\n', r"not valid TOML: .*line 3"),
    ('[[member]]\nname = "a"\ntimm = "test_resnet"\npretrained = true\n\n[[member]]\ntimm = "resnet50"\nweights = "x"\n',
     r"member 2 \(line 6\): unknown key\(s\) 'weights'"),
    ('[[member]]\nname = "a"\n', r"member 1 \(line 1\): name a model"),
    ('[[member]]\ntimm = "resnet50"\n', "needs exactly one of checkpoint"),
    ('[[member]]\ntimm = "resnet50"\npretrained = true\ncheckpoint = "x.safetensors"\n', "needs exactly one of checkpoint"),
    ('[[member]]\nhf = "google/vit-base-patch16-224"\ntimm = "vit"\n', "do not combine it with timm"),
    ('[[member]]\nname = "../escape"\ntimm = "resnet50"\npretrained = true\n', "invalid member name"),
    ('[[member]]\ntimm = "hf-hub:evil/x"\npretrained = true\n', "plain name"),
    ('[[member]]\ntimm = "resnet50"\npretrained = true\nimagenet_top1 = 0.76\n', "a percentage"),
    ('[[member]]\ntimm = "resnet50"\npretrained = true\nimagenet_top1 = 176\n', "outside"),
    ('[[member]]\ntimm = "resnet50"\npretrained = true\nupstream_images = -1\n', "upstream_images"),
    ('[[member]]\ntimm = "resnet50"\npretrained = true\nsize = 4\n', "size"),
    ('[[member]]\nname = "a"\ntimm = "resnet50"\npretrained = true\n\n[[member]]\nname = "a"\ntimm = "resnet18"\npretrained = true\n',
     r"member 1 \(line 1\) and member 2 \(line 6\) both give the name 'a'; list each member once \(nothing was added\)"),
    ('[[member]]\nhf = "org/m"\n\n[[member]]\nname = "b"\nhf = "org/m"\nsize = 224\n', "both give the same model"),
    ('members = []\n', "unknown top-level key"),
    ('description = "empty"\n', "lists no members"),
])
def test_a_malformed_pool_file_is_one_line_naming_the_entry(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match) as e:
        parse(text, tmp_path / "pool.toml")
    assert "\n" not in str(e.value) and "pool.toml" in str(e.value)


def test_the_same_model_at_two_sizes_is_two_members(tmp_path):
    text = '[[member]]\nhf = "org/m"\nsize = 224\n\n[[member]]\nname = "m384"\nhf = "org/m"\nsize = 384\n'
    entries = parse(text, tmp_path / "pool.toml")
    assert [e.size for e in entries] == [224, 384] and entries[0].source == ("hf", "org/m")


def test_adding_a_pool_file_is_idempotent_and_keeps_the_metadata(pool_dir, tmp_path):
    lib_path = tmp_path / "lib"
    reported = []
    outcomes = add_from_file(lib_path, pool_dir / "pool.toml", report=reported.append)
    assert [o.added for o in outcomes] == [True] * len(outcomes) and reported == outcomes
    lib = Library.open(lib_path)
    names = lib.names()
    assert names[:2] == ["resnet", "ext.test_vit"]
    resnet = lib.info("resnet")
    assert resnet.upstream_images == 1281167 and resnet.upstream_accuracy == pytest.approx(0.7613)
    assert resnet.extra["upstream_dataset"] == "imagenet-1k" and resnet.extra["imagenet_top1"] == 76.13
    assert resnet.extra["location"] == str(pool_dir / "test_resnet.safetensors") and resnet.preprocessing["size"] == 32
    assert lib.info("ext.test_vit").upstream_accuracy is None and "ranked after" in lib.info("ext.test_vit").extra["notes"]
    manifest = (lib_path / "library.json").read_bytes()
    again = add_from_file(lib_path, pool_dir / "pool.toml")
    assert [o.added for o in again] == [False] * len(outcomes) and [o.info.name for o in again] == names
    assert (lib_path / "library.json").read_bytes() == manifest  # nothing rewritten
    assert lib.verify() == []


def test_task_agnostic_ranks_a_pool_file_by_imagenet_top1_then_upstream_images(pool_dir, tmp_path):
    """Paper 002's task-agnostic rule: the best ImageNet model, then the largest upstream data."""
    from expertise.data.tasks import Split, Task

    add_from_file(tmp_path / "lib", pool_dir / "pool.toml")
    lib = Library.open(tmp_path / "lib")
    import torch

    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    task = Task("t", "natural", ("a", "b"), *[Split(images, torch.tensor([0, 1, 0, 1]))] * 3, source="test")
    from expertise.select.run import run_selection

    assert "task_agnostic" in STRATEGIES
    run = run_selection(lib, task, "task_agnostic", 1, ctx=RunContext(progress=False))
    order = [name for name, _ in run.selection.ranking]
    with_top1 = ["hf_vit", "resnet"] if "hf_vit" in order else ["resnet"]
    assert order == with_top1 + ["ext.test_vit"] and run.images_per_member == 0


def test_a_failing_entry_stops_there_naming_its_line_and_keeps_the_members_before_it(pool_dir, tmp_path):
    text = (pool_dir / "pool.toml").read_text()
    lines = text.splitlines()
    second = lines.index('checkpoint = "./test_vit.safetensors"')
    lines[second] = 'checkpoint = "./missing.safetensors"'
    (pool_dir / "bad.toml").write_text("\n".join(lines) + "\n")
    r = runner.invoke(app, ["pool", "add", "--library", str(tmp_path / "lib"), "--from", str(pool_dir / "bad.toml")])
    assert r.exit_code == 2, r.output
    assert "added resnet: test_resnet" in r.output
    error = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "bad.toml: member 2 (line 12): no checkpoint file at" in error[0]
    assert "1 member(s) added before it stay" in error[0] and "Traceback" not in r.output
    assert Library.open(tmp_path / "lib").names() == ["resnet"]
    # the fixed file adds the rest and skips the member already there
    r = runner.invoke(app, ["pool", "add", "--library", str(tmp_path / "lib"), "--from", str(pool_dir / "pool.toml")])
    assert r.exit_code == 0, r.output
    assert "present resnet: already in the library" in r.output and "added ext.test_vit" in r.output
    assert "1 already present" in r.output


def test_a_member_of_the_same_name_from_another_source_is_an_error(pool_dir, tmp_path):
    add_from_file(tmp_path / "lib", pool_dir / "pool.toml")
    other = pool_dir / "other.toml"
    other.write_text('[[member]]\nname = "resnet"\ntimm = "test_vit"\ncheckpoint = "test_vit.safetensors"\n')
    with pytest.raises(ConfigError, match=r"other.toml: member 1 \(line 1\): the library already has a member 'resnet' "
                                          "from another source"):
        add_from_file(tmp_path / "lib", other)


def test_export_then_add_round_trips(pool_dir, tmp_path):
    add_from_file(tmp_path / "a", pool_dir / "pool.toml")
    r = runner.invoke(app, ["pool", "export", "--library", str(tmp_path / "a"), "--out", str(tmp_path / "exported.toml")])
    assert r.exit_code == 0, r.output
    first = read(tmp_path / "exported.toml")
    a = Library.open(tmp_path / "a")
    assert [e.name for e in first] == a.names()
    r = runner.invoke(app, ["pool", "add", "--library", str(tmp_path / "b"), "--from", str(tmp_path / "exported.toml")])
    assert r.exit_code == 0, r.output
    b = Library.open(tmp_path / "b")
    for name in a.names():
        ia, ib = a.info(name), b.info(name)
        assert (ia.files, ia.extra, ia.upstream_accuracy, ia.upstream_images, ia.preprocessing) == \
               (ib.files, ib.extra, ib.upstream_accuracy, ib.upstream_images, ib.preprocessing)
    text_b, left = export(b)
    assert text_b.split("\n", 1)[1] == (tmp_path / "exported.toml").read_text().split("\n", 1)[1] and left == 0
    # printed to stdout without --out
    r = runner.invoke(app, ["pool", "export", "--library", str(tmp_path / "b")])
    assert r.exit_code == 0 and tomllib.loads(r.output)["member"][0]["name"] == "resnet"


def test_export_leaves_out_built_members_and_says_so(tiny_library, tmp_path):
    text, left = export(tiny_library.library)
    assert left == len(tiny_library.library.names()) and "[[member]]" not in text and f"{left} other member(s)" in text


def test_the_cli_refuses_mixing_a_pool_file_with_model_options(pool_dir, tmp_path):
    r = runner.invoke(app, ["pool", "add", "--library", str(tmp_path / "lib"), "--from", str(pool_dir / "pool.toml"),
                            "--timm", "test_resnet"])
    assert r.exit_code == 2 and "pass no other model options" in r.output
    r = runner.invoke(app, ["pool", "add", "--library", str(tmp_path / "lib"), "--from", str(tmp_path / "none.toml")])
    assert r.exit_code == 2 and "no pool file at" in r.output and not (tmp_path / "lib").exists()


def test_the_documented_example_pool_file_is_valid():
    """docs/pool_example.toml mirrors paper 002's pool kinds with real model names; it needs a
    network (or a warm cache) to add, but every entry must pass the checks."""
    entries = read(DOCS / "pool_example.toml")
    assert len(entries) >= 20 and len({e.name for e in entries}) == len(entries)
    assert {e.source[0] for e in entries} == {"hf"}  # Hub ids: safetensors only, from the local cache
    assert sum(e.metadata.imagenet_top1 is not None for e in entries) >= 7
    assert all(e.metadata.upstream_dataset for e in entries)
    doc = (DOCS / "pools.md").read_text()
    assert "pool_example.toml" in doc and "imagenet_top1" in doc
    json.dumps([e.metadata.extra() for e in entries])
