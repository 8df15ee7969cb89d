"""`expertise select --task DIR --pool pool.toml`: the practitioner's two commands, with no library
built by hand: the pool file's members go into a library in a cache folder keyed by the file's
content, which a second run reuses (members and embeddings)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
from PIL import Image
from typer.testing import CliRunner

from expertise.cli import app
from expertise.library import Library
from expertise.pool_cache import pool_key
from expertise.pool_file import read

runner = CliRunner()


@pytest.fixture
def practitioner(tmp_path: Path, make_timm_net, monkeypatch) -> Path:
    """A folder of photos of several sizes (two classes) and a pool file of two tiny timm
    checkpoints at their own input sizes; the pool cache under tmp_path."""
    monkeypatch.setenv("EXPERTISE_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for c, cls in enumerate(("cats", "dogs")):
        (tmp_path / "photos" / cls).mkdir(parents=True)
        for i in range(10):
            h, w = 30 + 7 * i, 60 - 3 * i
            a = np.clip(rng.integers(0, 120, (h, w, 3)) + 120 * c, 0, 255).astype(np.uint8)
            Image.fromarray(a).save(tmp_path / "photos" / cls / f"{i}.png")
    for arch in ("test_resnet", "test_efficientnet"):
        net = make_timm_net(arch, num_classes=4, seed=1)
        safetensors.torch.save_file(net.state_dict(), str(tmp_path / f"{arch}.safetensors"))
    (tmp_path / "pool.toml").write_text(
        '[[member]]\nname = "resnet"\ntimm = "test_resnet"\ncheckpoint = "test_resnet.safetensors"\nsize = 32\n\n'
        '[[member]]\nname = "effnet"\ntimm = "test_efficientnet"\ncheckpoint = "test_efficientnet.safetensors"\n'
        'size = 40\nimagenet_top1 = 70.0\n')
    return tmp_path


def _select(root: Path, *extra: str):
    return runner.invoke(app, ["select", "--task", str(root / "photos"), "--pool", str(root / "pool.toml"),
                               "--out", str(root / "out"), "--resamples", "20", "-q", "--threads", "1", *extra])


def test_select_ranks_a_pool_file_without_a_library_built_by_hand(practitioner):
    r = _select(practitioner)
    assert r.exit_code == 0, r.output
    assert "added resnet" in r.output and "added effnet" in r.output
    assert "resnet" in r.output and "effnet" in r.output and "picked:" in r.output
    folder = practitioner / "cache" / "pools" / pool_key(read(practitioner / "pool.toml"))
    lib = Library.open(folder / "library")
    assert sorted(lib.names()) == ["effnet", "resnet"]
    assert [lib.info(n).preprocessing["size"] for n in ("resnet", "effnet")] == [32, 40]
    assert (folder / "pool.toml").read_text() == (practitioner / "pool.toml").read_text()
    written = sorted(p.name for p in (practitioner / "out").iterdir())
    assert any(n.endswith(".json") for n in written) and any(n.endswith(".png") for n in written)
    ranking = json.loads(next((practitioner / "out").glob("*.json")).read_text())
    assert {m for m, _ in ranking["ranking"]} == {"resnet", "effnet"}

    again = _select(practitioner)  # the same pool file: its library and embeddings are reused
    assert again.exit_code == 0, again.output
    assert "added" not in again.output and "(2 read from the cache)" in again.output

    with (practitioner / "pool.toml").open("a") as f:  # another pool file: a library of its own
        f.write('\n[[member]]\nname = "resnet48"\ntimm = "test_resnet"\ncheckpoint = "test_resnet.safetensors"\n'
                'size = 48\n')
    third = _select(practitioner)
    assert third.exit_code == 0, third.output
    assert len(list((practitioner / "cache" / "pools").iterdir())) == 2 and "3 member(s)" in third.output


@pytest.mark.parametrize("args,match", [
    (["--library", "somewhere"], "not both"),
    (["--budget", "3"], "between 1 and the pool size 2"),
])
def test_select_with_a_pool_file_checks_its_options_first(practitioner, args, match):
    r = _select(practitioner, *args)
    assert r.exit_code == 2 and match in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (practitioner / "cache").exists()


def test_a_bad_pool_file_or_none_at_all_is_one_line(practitioner):
    r = runner.invoke(app, ["select", "--task", str(practitioner / "photos"), "-q"])
    assert r.exit_code == 2 and "give --library LIB (a library) or --pool FILE" in r.output
    (practitioner / "pool.toml").write_text('[[member]]\nname = "a"\nhf = "org/m"\n\n[[member]]\nname = "a"\nhf = "org/n"\n')
    r = _select(practitioner)
    assert r.exit_code == 2 and "both give the name 'a'" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (practitioner / "cache").exists()
