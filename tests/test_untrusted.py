"""What a library or an output folder carries beside its models is not believed unchecked:
embedding-cache entries and unit records are authenticated (expertise/tags.py) and recomputed when
forged; every JSON and TOML reader is bounded (size, depth, duplicate keys: expertise/reading.py);
names are matched whole; CSV cells cannot start a spreadsheet formula."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from expertise.cli import app
from expertise.errors import ConfigError, DataError, ExpertiseError, LibraryError
from expertise.library import Library
from expertise.reading import MAX_DEPTH, loads_json, loads_toml, nesting_depth
from expertise.select.embed import EmbeddingCache
from expertise.store import RecordStore, UnitResult, UntrustedWarning

runner = CliRunner()


def _select(lib: Library, task: str, out: Path) -> dict:
    res = runner.invoke(app, ["select", "--library", str(lib.path), "--task", task, "--out", str(out), "-q",
                              "--resamples", "0"])
    assert res.exit_code == 0, res.output
    return json.loads(next(out.glob(f"{task}.knn_loo.json")).read_text())


def test_a_forged_cache_entry_is_not_believed_and_the_pick_is_the_honest_one(tiny_library_copy, tmp_path):
    lib = tiny_library_copy
    honest = _select(lib, "count", tmp_path / "a")
    base = lib.names()[0]
    files = sorted((lib.path / "cache" / lib.verified_hash(base)).glob("*.safetensors"))
    assert files, "select filled the cache"
    for f in files:  # B's features replaced by one-hot labels, the file otherwise well formed (no valid tag)
        from safetensors.torch import load_file

        t = load_file(str(f))
        n = t["features"].shape[0]
        labels = torch.zeros(n, t["features"].shape[1])
        labels[torch.arange(n), torch.arange(n) % 3] = 1.0
        save_file({**t, "features": labels}, str(f))
    with pytest.warns(UntrustedWarning, match="had no valid tag"):
        forged = _select(lib, "count", tmp_path / "b")
    assert forged["ranking"] == honest["ranking"] and forged["picks"] == honest["picks"]
    assert forged["cached_members"] == len(lib.names()) - 2  # B embedded again (the EPN is not in the pool)
    res = runner.invoke(app, ["library", "verify", str(lib.path)])
    assert res.exit_code == 0 and "have no valid tag" not in res.output  # the entries were written again, tagged
    f = files[0]
    f.write_bytes(b"not safetensors at all")
    entries, bad = EmbeddingCache(lib.path / "cache").audit()
    assert bad == [f] and entries >= len(files)
    res = runner.invoke(app, ["library", "verify", str(lib.path)])
    assert "1 of" in res.output and "have no valid tag" in res.output


def test_a_cache_entry_is_bound_to_where_it_is_filed(tmp_path):
    cache = EmbeddingCache(tmp_path)
    t = {"features": torch.randn(4, 3)}
    cache.put("a" * 16, "task.prep", "trainval", t)
    assert torch.equal(cache.get("a" * 16, "task.prep", "trainval")["features"], t["features"])
    src = tmp_path / ("a" * 16) / "task.prep.trainval.v3.safetensors"
    dst = tmp_path / ("b" * 16) / "task.prep.trainval.v3.safetensors"
    dst.parent.mkdir()
    dst.write_bytes(src.read_bytes())  # a valid entry of another member, moved under this one
    assert cache.get("b" * 16, "task.prep", "trainval") is None and cache.rejected == [dst]


def test_a_forged_record_is_not_believed_and_its_unit_runs_again(tmp_path, monkeypatch):
    store = RecordStore(tmp_path)
    runs = []

    def unit():
        runs.append(1)
        return UnitResult({"accuracy": 0.5})

    store.run_unit("transfer_retrain", {"x": 1}, unit)
    path = store.path("transfer_retrain", {"x": 1})
    rec = json.loads(path.read_text())
    rec["metrics"]["accuracy"] = 0.99
    path.write_text(json.dumps(rec))
    with pytest.warns(UntrustedWarning, match="not believed"):
        done = store.run_unit("transfer_retrain", {"x": 1}, unit)
    assert runs == [1, 1] and done.metrics["accuracy"] == 0.5 and done.computed
    assert store.get("transfer_retrain", {"x": 1})["accuracy"] == 0.5  # the honest record replaced the forged one
    monkeypatch.setenv("EXPERTISE_KEY", "another machine's key")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrustedWarning)
        assert RecordStore(tmp_path).all() == [] and RecordStore(tmp_path).get("transfer_retrain", {"x": 1}) is None
    res = runner.invoke(app, ["records", "trust", str(tmp_path)])
    assert res.exit_code == 0 and "trusted 1 record" in res.output
    assert RecordStore(tmp_path).get("transfer_retrain", {"x": 1})["accuracy"] == 0.5


@pytest.mark.parametrize("value, says", [("high", "is not a fraction"), (7.5, "is not a fraction"),
                                         (float("inf"), "is not a fraction")])
def test_a_record_of_the_wrong_form_is_one_line_naming_the_file(tmp_path, value, says):
    store = RecordStore(tmp_path)
    store.put("protocol", {"x": 1}, {"test_accuracy": 0.5})
    path = store.path("protocol", {"x": 1})
    rec = json.loads(path.read_text())
    rec["metrics"]["test_accuracy"] = value
    path.write_text(json.dumps(rec).replace("Infinity", "1e999"))
    with pytest.raises(DataError, match=says) as e:
        store.get("protocol", {"x": 1})
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    res = runner.invoke(app, ["records", "trust", str(tmp_path)])
    assert res.exit_code == 1 and str(path) in res.output


def test_deep_nesting_and_duplicate_keys_are_one_line_in_every_reader(tiny_library_copy, tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    assert nesting_depth(deep.encode()) == 100_000
    with pytest.raises(ConfigError, match=f"nested 100000 levels deep, more than the {MAX_DEPTH}"):
        loads_json(deep, "x.json")
    with pytest.raises(ConfigError, match="nested"):
        loads_toml("a = " + "[" * 5000 + "]" * 5000, "p.toml")
    with pytest.raises(ConfigError, match="the key 'a' appears twice"):
        loads_json('{"a": 1, "a": 2}', "x.json")
    assert loads_json('{"s": "[[[[{{{{", "t": [1, [2]]}', "x") == {"s": "[[[[{{{{", "t": [1, [2]]}
    lib = tiny_library_copy
    member = lib.names()[0]
    for f in (lib.path / "library.json", lib.member_dir(member) / "config.json"):
        f.write_text(deep)
        with pytest.raises(LibraryError) as e:
            Library.open(lib.path).load(member)
        assert "nested" in str(e.value) and "\n" not in str(e.value)
        res = runner.invoke(app, ["library", "ls", str(lib.path)])
        assert res.exit_code == 2 and "nested" in res.output and "Traceback" not in res.output
        break  # library.json first: once it is refused nothing else is read
    pool = tmp_path / "pool.toml"
    pool.write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    res = runner.invoke(app, ["select", "--pool", str(pool), "--task", "sklearn_digits"])
    assert res.exit_code == 2 and "nested" in res.output and "Traceback" not in res.output


def test_a_name_with_a_trailing_newline_is_refused(tiny_library_copy, timm_checkpoint):
    res = runner.invoke(app, ["pool", "add", "--library", str(tiny_library_copy.path), "--timm", "test_resnet",
                              "--checkpoint", str(timm_checkpoint[1]), "--name", "evil\n", "--size", "32"])
    assert res.exit_code == 2 and "evil" in res.output
    assert not any("\n" in p.name for p in (tiny_library_copy.path / "members").iterdir())


def test_csv_cells_never_start_a_formula():
    from expertise.transfer.predict import Prediction, to_csv

    rows = to_csv([Prediction("=cmd|' /C calc'!A0.png", (("=HYPERLINK(\"http://x\")", 0.9), ("+1", 0.05),
                                                          ("-2", 0.03), ("@SUM(1)", 0.02)))], top_k=4)
    cells = [c for line in rows.splitlines()[1:] for c in line.split(",")]
    assert all(not c.lstrip('"').startswith(("=", "+", "-", "@")) for c in cells), cells
    assert "'=HYPERLINK" in rows and "'+1" in rows and "'@SUM(1)" in rows


def test_the_papers_are_named_once():
    from expertise.papers import PAPERS

    assert set(PAPERS) == {"000", "001", "002", "003"}
    assert "Scalable Transfer Learning with Expert Models" in PAPERS["000"].title
    assert all(p.authors and p.venue for p in PAPERS.values())


def test_unreadable_json_never_ends_in_a_traceback(tmp_path):
    for text in ("{", '{"a": NaN', "\x00\x01", "[" * 65 + "]" * 65):
        with pytest.raises(ExpertiseError):
            loads_json(text, "f.json")


def test_a_hierarchy_too_deep_is_refused_at_once(tmp_path):
    import time

    from expertise.data.hierarchy import MAX_LEVELS, Hierarchy

    chain = tmp_path / "chain.txt"
    chain.write_text("".join(f"n{i},n{i + 1}\n" for i in range(20_000)))
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=f"20,001 levels deep; at most {MAX_LEVELS}"):
        Hierarchy.read(chain)
    assert time.perf_counter() - t0 < 1.0
    many = tmp_path / "many.txt"
    many.write_bytes(b"a,b\n" * 9_000_000)
    t0 = time.perf_counter()
    with pytest.raises(DataError, match="at most 4,000,000 edges"):
        Hierarchy.read(many)
    assert time.perf_counter() - t0 < 2.0


def test_an_image_over_the_pixel_bound_is_not_decoded(tmp_path, monkeypatch):
    from PIL import Image

    from expertise.data import loaders

    Image.new("RGB", (40, 30)).save(tmp_path / "big.png")
    monkeypatch.setattr(loaders, "MAX_PIXELS", 1000)
    with pytest.raises(loaders.ImageTooLarge, match="40 x 30 pixels, more than the 1,000"):
        loaders.decode_image(tmp_path / "big.png", 16)
    with pytest.raises(DataError, match="40 x 30 pixels"):
        loaders.read_image(tmp_path / "big.png", 16)
    assert issubclass(loaders.ImageTooLarge, loaders.UNREADABLE)  # skipped and counted where unreadable images are


def test_a_tensor_relabelled_to_another_dtype_is_refused(tiny_library_copy):
    from expertise.io import sha256_file

    lib = tiny_library_copy
    name = lib.names()[0]
    f = lib.member_dir(name) / "model.safetensors"
    data = f.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = data[8:8 + n].replace(b'"dtype":"F32"', b'"dtype":"I32"', 1)
    f.write_bytes(data[:8] + header + data[8 + n:])
    manifest = json.loads((lib.path / "library.json").read_text())
    manifest["members"][name]["files"]["model.safetensors"] = sha256_file(f)  # the hash updated: only the dtype is wrong
    (lib.path / "library.json").write_text(json.dumps(manifest))
    problems = Library.open(lib.path).verify()
    assert any("is stored as I32, its config builds F32" in p for p in problems), problems


def test_replacing_a_member_whose_folder_is_a_link_leaves_no_link_behind(tiny_library_copy, tmp_path):
    import shutil

    lib = tiny_library_copy
    name = lib.names()[1]
    outside = tmp_path / "elsewhere"
    shutil.move(str(lib.member_dir(name)), outside)
    lib.member_dir(name).symlink_to(outside, target_is_directory=True)
    model = lib.load(name, verify=False)
    with pytest.raises(LibraryError, match="--overwrite on the command line"):
        lib.add(lib.info(name), model)
    lib.add(lib.info(name), model, overwrite=True)
    assert not any(p.name.startswith(".retired") for p in (lib.path / "members").iterdir())
    assert outside.is_dir() and Library.open(lib.path).verify() == []


def test_a_full_disk_says_how_this_command_resumes(monkeypatch, tmp_path):
    import errno

    from expertise.cli import common
    from expertise.errors import disk_error

    @common.user_errors
    @common.resumes("kept", "run the same command again with --resume to continue")
    def command():
        raise disk_error(OSError(errno.ENOSPC, "No space left on device"), tmp_path / "x")

    import typer

    messages = []
    monkeypatch.setattr(common.err, "print", lambda text, **kw: messages.append(text))
    with pytest.raises(typer.Exit):
        command()
    assert "then run the same command again with --resume to continue" in messages[0]
