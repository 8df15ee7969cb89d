"""Upstream datasets on disk, labels only: ImageNet-21k folders, manifests and WebDataset shards
of real JPEG and PNG files give the same labelled index; subtree counts and expert domains from
labels; every kind of bad input is one line that says what to fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from disk_datasets import (
    CANINE,
    CARNIVORE,
    CHIHUAHUA,
    COUNTS,
    DOG,
    GOLDFISH,
    KIT_FOX,
    TENCH,
    image_bytes,
    make_dataset,
)

from expertise.data.disk_index import DiskIndex, Strings
from expertise.data.disk_layouts import (
    read_folders,
    read_manifest,
    read_shards,
    read_upstream,
)
from expertise.data.hierarchy import ROOT, Hierarchy
from expertise.data.wordnet import ENTITY, WordNet, timm_synsets
from expertise.errors import DataError


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    return make_dataset(tmp_path_factory.mktemp("disk"))


def test_folders_manifest_and_shards_give_the_same_label_matrix(dataset: dict) -> None:
    with pytest.warns(UserWarning, match=f"skipped 1 empty class folder.*{GOLDFISH}"):
        folders = read_folders(dataset["folders"])
    manifest = read_manifest(dataset["manifest"])
    shards = read_upstream(str(dataset["shards"] / "train-{0000..0001}.tar"))
    assert [folders.layout, manifest.layout, shards.layout] == ["folders", "manifest", "shards"]
    assert len(folders) == len(manifest) == len(shards) == sum(COUNTS.values())
    assert folders.notes == (f"skipped 1 empty class folder(s): {GOLDFISH}",)
    for other in (manifest, shards):
        assert other.hierarchy.label_nodes == folders.hierarchy.label_nodes
        assert np.array_equal(other.label_matrix(), folders.label_matrix())
    # every image carries its class and all the class's WordNet ancestors, nothing else
    wn = WordNet.load()
    m = folders.label_matrix()
    nodes = folders.hierarchy.label_nodes
    for i, (wnid, name, data) in enumerate(dataset["samples"]):
        assert {nodes[j] for j in np.flatnonzero(m[i])} == wn.ancestors(wnid) | {wnid}
        assert Path(folders.location(i)).read_bytes() == data
        assert Path(manifest.location(i)).resolve() == Path(folders.location(i)).resolve()
        assert shards.location(i).split("#")[0].endswith(".tar") and folders.labels(i) == (wnid,)
    assert GOLDFISH not in folders.hierarchy.parents  # the empty folder is no class
    assert set(folders.hierarchy.leaves) == {CHIHUAHUA, KIT_FOX, TENCH}  # dog is a class above chihuahua
    t = folders.targets(np.array([0, 4]))
    assert t.dtype.is_floating_point and np.array_equal(t.numpy(), m[[0, 4]].astype(np.float32))


def test_counts_and_expert_domains_from_labels(dataset: dict) -> None:
    idx = read_manifest(dataset["manifest"])
    counts = idx.node_counts()
    assert counts[ROOT] == counts[ENTITY] == 10
    assert counts[DOG] == 5 and counts[CANINE] == 9 and counts[CARNIVORE] == 9 and counts[TENCH] == 1
    assert idx.class_counts() == COUNTS
    assert idx.choose_expert_domains(1) == [ENTITY]
    assert idx.slice(DOG).tolist() == [i for i, (w, _, _) in enumerate(dataset["samples"]) if w in (DOG, CHIHUAHUA)]
    assert idx.slice(ROOT).tolist() == list(range(10))
    with pytest.raises(DataError, match="unknown hierarchy node"):
        idx.slice("n00000000")


def test_multi_label_internal_node_manifest_with_a_hierarchy_file(tmp_path: Path, dataset: dict) -> None:
    """JSON lines, several labels per image, labels on internal nodes, a DAG hierarchy file."""
    (tmp_path / "hierarchy.txt").write_text(
        "parent,child\n# a DAG: dog is an animal and a pet\nanimal,dog\npet,dog\nanimal,fox\ndog,chihuahua\nfish,tench\n")
    files = [p for p in dataset["folders"].rglob("*") if p.suffix in (".png", ".JPEG")]
    lines = [{"path": str(files[0]), "labels": ["chihuahua", "fox"]}, {"path": str(files[1]), "label": "dog"},
             {"path": str(files[2]), "labels": ["animal"]}, {"path": str(files[3]), "labels": ["tench", "chihuahua", "dog"]}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    idx = read_manifest(manifest, hierarchy=tmp_path / "hierarchy.txt")
    assert idx.hierarchy.parents["dog"] == ("animal", "pet")
    assert idx.labels(0) == tuple(sorted(("chihuahua", "fox"), key=idx.hierarchy.label_index.get))
    sets = [{idx.hierarchy.label_nodes[j] for j in np.flatnonzero(row)} for row in idx.label_matrix()]
    assert sets == [{"chihuahua", "dog", "animal", "pet", "fox"}, {"dog", "animal", "pet"}, {"animal"},
                    {"tench", "fish", "chihuahua", "dog", "animal", "pet"}]
    counts = idx.node_counts()  # each image once per node, however many of its labels lie below it
    assert counts == {ROOT: 4, "animal": 4, "pet": 3, "fish": 1, "dog": 3, "fox": 1, "tench": 1, "chihuahua": 2}
    assert counts == {n: int(c) for n, c in zip((ROOT, *idx.hierarchy.label_nodes),
                                                (4, *idx.label_matrix().sum(0)))}
    assert idx.choose_expert_domains(3) == ["animal", "pet", "dog"]  # 4, then a 3-3 tie: the shallower pet first
    assert idx.slice("fox").tolist() == [0] and idx.slice("pet").tolist() == [0, 1, 3]


def test_shards_with_class_indices_and_json_labels(tmp_path: Path) -> None:
    import webdataset as wds

    classes = tmp_path / "classes.txt"
    classes.write_text(f"{TENCH}\n{DOG}\n{KIT_FOX}\n")
    with wds.TarWriter(str(tmp_path / "a.tar")) as sink:
        sink.write({"__key__": "x0", "jpg": image_bytes(1, "JPEG"), "cls": 2})
        sink.write({"__key__": "x1", "png": image_bytes(2, "PNG"), "json": {"labels": [DOG, TENCH]}})
        sink.write({"__key__": "x2", "jpeg": image_bytes(3, "JPEG"), "json": {"label": 0}, "txt": "a caption"})
    idx = read_shards(tmp_path / "a.tar", classes=classes)
    assert [idx.labels(i) for i in range(3)] == [
        (KIT_FOX,), tuple(sorted((DOG, TENCH), key=idx.hierarchy.label_index.get)), (TENCH,)]
    assert idx.location(1) == f"{tmp_path / 'a.tar'}#x1.png"
    with pytest.raises(DataError, match="class index; pass classes="):
        read_shards(tmp_path / "a.tar")
    with pytest.raises(DataError, match="outside the 2 classes"):
        read_shards([tmp_path / "a.tar"], classes=[TENCH, DOG])


def test_imagenet21k_shaped_folder_expert_domains_are_the_biggest_subtrees(tmp_path: Path) -> None:
    """300 real ImageNet-21k wnids with Zipf-like image counts: the top-10 domains are the nodes
    with the most images below them, counted independently from WordNet's ancestor sets."""
    wn = WordNet.load()
    rng = np.random.default_rng(0)
    classes = sorted(rng.choice(timm_synsets("imagenet21k_goog"), 300, replace=False).tolist())
    sizes = np.maximum(1, (40 / (1 + np.arange(300)) ** 0.8).astype(int))[rng.permutation(300)]
    png = image_bytes(0, "PNG")
    for wnid, n in zip(classes, sizes):
        (tmp_path / wnid).mkdir()
        for j in range(n):
            (tmp_path / wnid / f"{j}.png").write_bytes(png)
    idx = read_folders(tmp_path)
    assert len(idx) == int(sizes.sum()) and len(idx.class_counts()) == 300
    brute: dict[str, int] = {}
    for wnid, n in zip(classes, sizes):
        for node in wn.ancestors(wnid) | {wnid}:
            brute[node] = brute.get(node, 0) + int(n)
    assert {k: v for k, v in idx.node_counts().items() if k != ROOT} == brute
    h = idx.hierarchy
    expected = sorted(brute, key=lambda n: (-brute[n], h.depth(n), n))[:10]
    assert idx.choose_expert_domains(10) == expected
    assert expected[0] == ENTITY and brute[expected[-1]] >= max(v for k, v in brute.items() if k not in expected)


def test_bad_input_is_one_line_that_says_what_to_fix(tmp_path: Path, dataset: dict) -> None:
    with pytest.raises(DataError, match="no dataset folder at") as e:
        read_folders(tmp_path / "nowhere")
    one_line(e)
    with pytest.raises(DataError, match="no dataset at"):
        read_upstream(tmp_path / "nowhere.txt")
    with pytest.raises(DataError, match="no shard at"):
        read_upstream(str(tmp_path / "s-{0..3}.tar"))
    # a wnid missing from WordNet: an error naming it, or skipped on request
    bad = tmp_path / "withmissing"
    shutil.copytree(dataset["folders"], bad)
    (bad / GOLDFISH).rmdir()  # its own warning is checked elsewhere
    (bad / "n99999999").mkdir()
    (bad / "n99999999" / "x.png").write_bytes(image_bytes(0, "PNG"))
    with pytest.raises(DataError, match="class folder.* missing from the hierarchy: 1 wnid.*n99999999") as e:
        read_folders(bad)
    one_line(e)
    with pytest.warns(UserWarning, match="missing from the hierarchy: n99999999"):
        assert len(read_folders(bad, skip_unknown=True)) == 10
    (bad / "cats").mkdir()
    with pytest.raises(DataError, match="cats are not wnids"):
        read_folders(bad)
    # manifests: a malformed line, with its number; a label not in the hierarchy; a missing file
    m = tmp_path / "m.csv"
    m.write_text(f"path,labels\nimagenet21k/{DOG}/{DOG}_0.JPEG,{DOG}\nimagenet21k/x.jpg,{DOG},extra\n")
    with pytest.raises(DataError, match=r"m.csv, line 3: 3 fields where the header has 2") as e:
        read_manifest(m, root=dataset["root"])
    one_line(e)
    m.write_text("file,labels\n")
    with pytest.raises(DataError, match="line 1: the header needs a 'path'"):
        read_manifest(m)
    j = tmp_path / "m.jsonl"
    (tmp_path / "a.jpg").write_bytes(image_bytes(0, "JPEG"))
    j.write_text('{"path": "a.jpg", "labels": ["x"]}\n{"path": "b.jpg", "labels": [\n')
    with pytest.raises(DataError, match=r"m.jsonl, line 1: label 'x' is not a node of the hierarchy"):
        read_manifest(j, hierarchy=Hierarchy.from_edges([("y", "z")]))
    with pytest.raises(DataError, match=r"line 2: not valid JSON"):
        read_manifest(j, hierarchy=Hierarchy.from_edges([("x", "z")]))
    j.write_text(json.dumps({"path": "nothere.jpg", "labels": [DOG]}) + "\n")
    with pytest.raises(DataError, match=r"line 1: no image at .*nothere.jpg"):
        read_manifest(j)
    j.write_text(json.dumps({"path": str(dataset["samples"] and next(dataset["folders"].rglob("*.png"))),
                             "labels": ["n00000001"]}) + "\n")
    with pytest.raises(DataError, match=r"line 1: 1 wnid\(s\) not found in the packaged"):
        read_manifest(j)
    # a cyclic hierarchy file names the cycle
    cyc = tmp_path / "cyc.txt"
    cyc.write_text("a,b\nb,c\nc,a\nroot,d\n")
    with pytest.raises(DataError, match=r"cyc.txt: the hierarchy has a cycle: a -> c -> b -> a") as e:
        read_manifest(dataset["manifest"], hierarchy=cyc)
    one_line(e)
    cyc.write_text("a b c\n")
    with pytest.raises(DataError, match=r"cyc.txt, line 1: expected 'parent,child'"):
        Hierarchy.read(cyc)


def test_bad_shards(tmp_path: Path) -> None:
    import webdataset as wds

    with wds.TarWriter(str(tmp_path / "nolabel.tar")) as sink:
        sink.write({"__key__": "k0", "jpg": image_bytes(0, "JPEG"), "txt": "a caption, no label"})
    with pytest.raises(DataError, match=r"sample 'k0': no label \(a .cls or .json member\)") as e:
        read_shards(tmp_path / "nolabel.tar")
    one_line(e)
    with wds.TarWriter(str(tmp_path / "noimage.tar")) as sink:
        sink.write({"__key__": "k0", "cls": DOG})
    with pytest.raises(DataError, match="a label but no image"):
        read_shards(tmp_path / "noimage.tar")
    (tmp_path / "broken.tar").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(DataError, match="not a readable tar file"):
        read_shards(tmp_path / "broken.tar")


def test_strings_and_index_checks() -> None:
    s = Strings(["a", "ü/b.jpg", ""])
    assert list(s) == ["a", "ü/b.jpg", ""] and s[-2] == "ü/b.jpg" and len(s) == 3
    with pytest.raises(IndexError):
        s[3]
    h = Hierarchy.from_edges([("b", "a")])
    with pytest.raises(DataError, match="at least one label"):
        DiskIndex(h, "", Strings(["x"]), np.array([0, 0]), np.zeros(0, dtype=np.int32), "manifest", "m")
    idx = DiskIndex.from_labels(h, "/data", ["x.jpg", "/abs/y.jpg"], [["b"], ["a", "b"]], "manifest", "m")
    assert idx.location(0) == "/data/x.jpg" and idx.location(1) == "/abs/y.jpg"
    assert idx.node_counts() == {ROOT: 2, "a": 2, "b": 2}
    with pytest.raises(DataError, match="indices must lie"):
        idx.targets(np.array([2]))


def test_the_examples_of_docs_upstream_data_run(capsys) -> None:
    import torch

    doc = (Path(__file__).parents[1] / "docs" / "upstream_data.md").read_text()
    blocks = [b.split("```", 1)[0] for b in doc.split("```python\n")[1:]]
    assert len(blocks) == 3
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the third trains a 16-px model: a second thread only contends
    try:
        with pytest.warns(UserWarning, match="skipped 1 unreadable image"):
            for block in blocks:
                exec(compile(block, "docs/upstream_data.md", "exec"), {})
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert out.rstrip().endswith("30 1")
    assert "1704\n" in out and "[('n02119789',), ('n02084071',)]" in out
    assert "{'root': 2, 'animal': 2, 'pet': 2, 'fox': 1, 'dog': 2, 'chihuahua': 1}" in out
