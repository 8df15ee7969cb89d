"""`expertise upstream/experts --data`: a library built from an upstream dataset on disk in each of
the three layouts, recorded in the library so later commands find the same dataset, and refused
when another dataset is named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from disk_datasets import CHIHUAHUA, DOG, KIT_FOX, TENCH, make_dataset
from expertise.cli import app
from expertise.data.disk_layouts import read_upstream
from expertise.library import Library
from expertise.upstream.disk_data import default_holdout, split_rows

runner = CliRunner()
STEPS = {"baseline": 3, "expert": 2, "epn": 2, "adapter": 2}
SHORT = ["--preset", "tiny", "-q", "--holdout", "3", "--set", "num_experts=2",
         *[a for stage, n in STEPS.items() for a in ("--set", f"{stage}.steps={n}", "--set", f"{stage}.warmup_steps=1",
                                                     "--set", f"{stage}.batch_size=4")]]


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("upstream_data")
    d = make_dataset(root)
    # a JFT-like manifest: several labels per image, internal nodes among them, a hierarchy file (a DAG)
    (root / "hierarchy.txt").write_text("animal,dog\npet,dog\ndog,chihuahua\nanimal,fox\nanimal,fish\nfish,tench\n")
    names = {DOG: ["dog", "pet"], CHIHUAHUA: ["chihuahua", "pet"], KIT_FOX: ["fox", "animal"], TENCH: ["tench", "animal"]}
    lines = [{"path": f"imagenet21k/{w}/{n}", "labels": names[w]} for w, n, _ in d["samples"]]
    (root / "train.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    d["jsonl"] = root / "train.jsonl"
    d["hierarchy"] = root / "hierarchy.txt"
    return d


def specs(data: dict) -> dict[str, tuple[list[str], dict]]:
    """Each layout's options and the arguments that read the same index in Python."""
    shards = str(data["shards"] / "train-{0000..0001}.tar")
    return {
        "folders": ([ "--data", str(data["folders"])], {"spec": data["folders"]}),
        "manifest": (["--data", str(data["jsonl"]), "--hierarchy", str(data["hierarchy"])],
                     {"spec": data["jsonl"], "hierarchy": data["hierarchy"]}),
        "shards": (["--data", shards], {"spec": shards}),
    }


@pytest.mark.parametrize("layout", ["folders", "manifest", "shards"])
def test_upstream_from_each_layout_builds_a_library_verify_accepts(layout: str, data: dict, tmp_path: Path) -> None:
    options, read = specs(data)[layout]
    lib = tmp_path / "lib"
    code, text = run("upstream", "--library", lib, *options, *SHORT)
    assert code == 0, text
    code, text = run("library", "verify", lib)
    assert code == 0, text
    index = read_upstream(read.pop("spec"), **read)
    library = Library.open(lib)
    meta = library.read_meta("upstream.json")
    assert meta["data"]["layout"] == index.layout == layout
    assert meta["data"]["fingerprint"] == index.fingerprint() and meta["data"]["images"] == len(index) == 10
    assert "world" not in meta
    assert library.hierarchy.to_json() == index.hierarchy.to_json()
    base, epn = library.info("bit_xs.baseline"), library.info("bit_xs.epn")
    assert base.upstream_images == 7 and 0.0 <= base.upstream_accuracy <= 1.0
    # the expert domains are the nodes with the most images in their subtree, from the labels alone
    assert epn.extra["nodes"] == index.choose_expert_domains(2)
    counts = index.node_counts()
    assert min(counts[n] for n in epn.extra["nodes"]) >= max(c for n, c in counts.items()
                                                          if n not in epn.extra["nodes"] and n != "root")
    if layout == "manifest":
        assert epn.extra["nodes"] == ["animal", "pet"]  # 10 images, then a 5-5 tie with dog: the shallower pet
    prior = library.label_prior("bit_xs.baseline").numpy()
    assert prior.shape == (len(index.hierarchy.label_nodes),) and np.all((prior >= 0) & (prior <= 1))
    assert not (lib / ".checkpoints").exists()  # each member's checkpoint is deleted once it is stored


def test_experts_find_the_recorded_dataset_and_refuse_another(data: dict, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    code, text = run("upstream", "--library", lib, "--data", data["folders"], *SHORT)
    assert code == 0, text
    short = [a for a in SHORT if a != "--holdout" and a != "3"]  # the holdout is recorded
    code, text = run("experts", "--library", lib, "--kind", "both", *short)  # no --data: the recorded dataset
    assert code == 0, text
    library = Library.open(lib)
    index = read_upstream(data["folders"])
    domains = index.choose_expert_domains(2)
    kinds = {i.kind: [] for i in library.members()}
    for i in library.members():
        kinds[i.kind].append(i.domain)
    assert kinds["full_expert"] == domains and kinds["adapter_expert"] == domains
    expert = library.info(f"bit_xs.expert_{domains[1]}")
    assert expert.upstream_images == int(np.isin(split_rows(10, 3, 0)[0], index.slice(domains[1])).sum())
    assert run("library", "verify", lib)[0] == 0
    # another dataset on the same library: one line, nothing trained
    before = sorted(p.name for p in (lib / "members").iterdir())
    code, text = run("experts", "--library", lib, "--data", data["jsonl"], "--hierarchy", data["hierarchy"], *short)
    assert code == 2 and "is not the dataset the library" in text and str(data["folders"]) in text, text
    assert len(text.strip().splitlines()) <= 2 and "Traceback" not in text  # the tiny preset's warning and the error
    assert sorted(p.name for p in (lib / "members").iterdir()) == before
    code, text = run("experts", "--library", lib, "--data", data["folders"], "--holdout", "4", *short)
    assert code == 2 and "held out 3 upstream images, not 4" in text, text


def test_a_changed_dataset_and_a_world_library_are_refused(data: dict, tmp_path: Path) -> None:
    import shutil

    folders = tmp_path / "in21k"
    shutil.copytree(data["folders"], folders)
    lib = tmp_path / "lib"
    assert run("upstream", "--library", lib, "--data", folders, *SHORT)[0] == 0
    (folders / DOG / "extra.JPEG").write_bytes((folders / DOG / f"{DOG}_0.JPEG").read_bytes())
    code, text = run("upstream", "--library", lib, *[a for a in SHORT if a not in ("--holdout", "3")])
    assert code == 2 and f"the dataset at {folders} changed since the library" in text, text
    # --data on a library of the embedded world
    world_lib = tmp_path / "world_lib"
    code, text = run("upstream", "--library", world_lib, "--preset", "tiny", "--set", "world.upstream_size=64",
                     "--set", "world.holdout_size=8", "--set", "baseline.steps=1", "--set", "baseline.warmup_steps=0",
                     "--set", "epn.steps=1", "--set", "epn.warmup_steps=0", "--set", "num_experts=1", "-q")
    assert code == 0, text
    code, text = run("experts", "--library", world_lib, "--data", folders, "--preset", "tiny")
    assert code == 2 and "built on the embedded world, not on data from disk" in text, text
    # options that describe a dataset need --data
    code, text = run("upstream", "--library", tmp_path / "new", "--hierarchy", data["hierarchy"], "--preset", "tiny")
    assert code == 2 and "--hierarchy describes the upstream dataset on disk; give it with --data" in text, text


def test_bad_data_leaves_no_library_behind(data: dict, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    code, text = run("upstream", "--library", lib, "--data", tmp_path / "nowhere", "--preset", "tiny")
    assert code == 2 and "no dataset at" in text and not lib.exists(), text
    code, text = run("upstream", "--library", lib, "--data", data["folders"], "--holdout", "10", "--preset", "tiny")
    assert code == 2 and "--holdout must be between 1 and 9" in text and not lib.exists(), text
    broken = tmp_path / "broken"
    (broken / DOG).mkdir(parents=True)
    for i in range(3):
        (broken / DOG / f"{i}.jpg").write_bytes(b"not a jpeg")
    code, text = run("upstream", "--library", lib, "--data", broken, "--holdout", "1", "--preset", "tiny")
    assert code == 2 and "no image of the upstream holdout" in text and not lib.exists(), text
    # the embedded world's API (the demo) refuses a library built from data on disk
    assert run("upstream", "--library", lib, "--data", data["folders"], *SHORT)[0] == 0
    from expertise.config import get_preset
    from expertise.errors import LibraryError
    from expertise.runtime import RunContext
    from expertise.upstream.build import build_library

    with pytest.raises(LibraryError, match="built from the dataset on disk at .*, not the embedded world"):
        build_library(get_preset("tiny"), lib, RunContext(progress=False, log=lambda *a: None))


def test_the_holdout_split_is_seeded() -> None:
    train, hold = split_rows(100, 7, seed=0)
    assert hold.size == 7 and train.size == 93 and not np.intersect1d(train, hold).size
    assert np.array_equal(np.sort(np.concatenate([train, hold])), np.arange(100))
    assert np.array_equal(split_rows(100, 7, seed=0)[1], hold)
    assert not np.array_equal(split_rows(100, 7, seed=1)[1], hold)
    assert default_holdout(10) == 1 and default_holdout(5_000) == 100 and default_holdout(10**8) == 10_000
    from expertise.errors import ConfigError, DataError

    with pytest.raises(ConfigError, match="--holdout must be between 1 and 9"):
        split_rows(10, 10, 0)
    with pytest.raises(DataError, match="at least 2 images"):
        split_rows(1, 1, 0)


def test_dat_weights_and_samples_a_dataset_on_disk_by_its_labels(data: dict, tmp_path: Path) -> None:
    from expertise.dat.classes import upstream_classes
    from expertise.upstream.disk_data import DiskUpstream
    from disk_datasets import image_bytes

    index = read_upstream(data["jsonl"], hierarchy=data["hierarchy"])
    classes = upstream_classes(DiskUpstream(index, np.arange(len(index)), "all"))
    assert sorted(classes.names) == ["animal", "chihuahua", "dog", "fox", "pet", "tench"]  # every label used directly
    # each image is weighted by its rarest own label: dog (3 images) before pet (5), fox (4) before animal (5)
    primary = [classes.names[c] for c in classes.of_image]
    assert primary == [{DOG: "dog", CHIHUAHUA: "chihuahua", KIT_FOX: "fox", TENCH: "tench"}[w] for w, _, _ in data["samples"]]
    p_s = dict(zip(classes.names, classes.distribution()))
    assert p_s["pet"] == p_s["animal"] == 0 and p_s["fox"] == pytest.approx(0.4)
    assert sorted(n for n, on in zip(classes.names, classes.under("dog")) if on) == ["chihuahua", "dog"]
    assert classes.under("root").all()
    # the command: B of a library built from the manifest, DAT re-sampling that manifest's images
    lib = tmp_path / "lib"
    code, text = run("upstream", "--library", lib, "--data", data["jsonl"], "--hierarchy", data["hierarchy"], *SHORT)
    assert code == 0, text
    task = tmp_path / "task"
    for c in ("a", "b"):
        (task / c).mkdir(parents=True)
        for i in range(6):
            (task / c / f"{i}.png").write_bytes(image_bytes(100 + i + (50 if c == "b" else 0), "PNG"))
    out = tmp_path / "dat"
    code, text = run("dat", "--library", lib, "--task", task, "--size", "4", "--init", "baseline", "--out", out,
                     "--preset", "tiny", "-q", *[a for k in ("expert", "finetune") for a in
                                                 ("--set", f"{k}.steps=2", "--set", f"{k}.warmup_steps=1")])
    assert code == 0, text
    assert "DAT on task: test accuracy" in text and "the library records manifest" in text
    record = json.loads(next(out.glob("dat.task.*.json")).read_text())
    m = record["metrics"]
    assert m["sampled_size"] == 4 and 1 <= m["labels_selected"] <= 4  # pet and animal label no image alone
    assert record["config"]["upstream_images"] == 7 and "manifest" in record["config"]["upstream"]
    assert {t["label"] for t in m["label_summary"]["top"]} <= set(classes.names)


def _write_docs_files(root: Path) -> None:
    """The files the commands of docs/upstream_data.md name: a small ImageNet-21k folder (two WordNet
    subtrees: dogs and fish), a manifest of the same images with a hierarchy file, two shards with
    integer labels and their class list, two task folders, and the suite file the docs show."""
    import webdataset as wds

    from disk_datasets import image_bytes

    classes = {DOG: "dog", CHIHUAHUA: "chihuahua", TENCH: "tench", "n01443537": "goldfish"}
    rows = []
    for c, wnid in enumerate(classes):
        (root / "data" / "in21k" / wnid).mkdir(parents=True)
        for i in range(4):
            name = f"{wnid}_{i}.{'png' if i % 2 else 'JPEG'}"
            data = image_bytes(10 * c + i, "PNG" if i % 2 else "JPEG")
            (root / "data" / "in21k" / wnid / name).write_bytes(data)
            rows.append((wnid, name, data, c))
    (root / "data" / "hierarchy.txt").write_text("animal,dog\npet,dog\ndog,chihuahua\nanimal,fish\nfish,tench\nfish,goldfish\n")
    (root / "data" / "train.jsonl").write_text("".join(
        json.dumps({"path": f"in21k/{w}/{n}", "labels": [classes[w]] + (["pet"] if w == CHIHUAHUA else [])}) + "\n"
        for w, n, _, _ in rows))
    (root / "data" / "classes.txt").write_text("".join(f"{w}\n" for w in classes))
    (root / "data" / "shards").mkdir()
    for s in range(2):
        with wds.TarWriter(str(root / "data" / "shards" / f"train-{s:04d}.tar")) as sink:
            for i, (_, n, data, c) in enumerate(rows[s::2]):
                sink.write({"__key__": f"s{s}_{i:04d}", "png" if n.endswith("png") else "jpg": data, "cls": c})
    from test_bench_suite_file import task_folder

    task_folder(root / "tasks" / "leaves", seed=1)
    task_folder(root / "tasks" / "bark", seed=2)
    doc = (Path(__file__).parents[1] / "docs" / "upstream_data.md").read_text()
    (root / "suite.toml").write_text(doc.split("```toml\n")[1].split("```", 1)[0])


@pytest.mark.slow
def test_the_commands_of_docs_upstream_data_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every `expertise` line of the bash blocks of docs/upstream_data.md, in order, at the tiny scale:
    --preset becomes tiny with a few steps a stage, --workers 0 (nothing else is rewritten)."""
    import shlex

    _write_docs_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    doc = (Path(__file__).parents[1] / "docs" / "upstream_data.md").read_text()
    lines = [line.split(" #")[0] for block in doc.split("```bash\n")[1:] for line in block.split("```", 1)[0].splitlines()
             if line.startswith("expertise ")]
    assert len(lines) >= 8
    fast = ["--set", "num_experts=2", *[a for k in ("baseline", "expert", "epn", "adapter", "finetune")
                                        for a in ("--set", f"{k}.steps=2", "--set", f"{k}.warmup_steps=1",
                                                  "--set", f"{k}.batch_size=4")]]
    for line in lines:
        args = shlex.split(line)[1:]
        for option, value in (("--preset", "tiny"), ("--workers", "0")):
            if option in args:
                args[args.index(option) + 1] = value
        args += fast if "--preset" in args else []
        code, text = run(*args, *(["-q"] if "--preset" in args else []))
        assert code == 0, f"{line}\n{text}"
    meta = Library.open(tmp_path / "lib_22k").read_meta("upstream.json")["data"]
    assert meta["layout"] == "shards" and meta["classes"] == str(tmp_path / "data" / "classes.txt")
    assert {json.loads(r)["config"]["task"] for r in (tmp_path / "runs" / "suite" / "records.jsonl").read_text().splitlines()
            if json.loads(r)["kind"] == "protocol"} == {"leaves", "bark_texture"}
