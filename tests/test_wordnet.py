"""The WordNet 3.0 noun hierarchy: real data.noun lines (a fixture), the packaged table against
timm's ImageNet class lists (21,843 and 1,000 classes), and the table's generator."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from expertise.data.hierarchy import ROOT
from expertise.data.wordnet import ENTITY, SYSTEM_DATA_NOUN, WordNet, build_table, timm_synsets
from expertise.errors import DataError

FIXTURE = Path(__file__).parent / "data" / "wordnet_fixture.noun"  # 29 real data.noun lines + the licence header

DOG, TENCH, KIT_FOX, SUN = "n02084071", "n01440764", "n02119789", "n09450163"


@pytest.fixture(scope="module")
def fixture_wn() -> WordNet:
    return WordNet.load(FIXTURE)


@pytest.fixture(scope="module")
def packaged() -> WordNet:
    return WordNet.load()


def test_real_lines_resolve_to_the_right_ancestors(fixture_wn: WordNet) -> None:
    assert fixture_wn.complete and len(fixture_wn.parents) == 29  # the header lines were skipped
    names = {w: fixture_wn.name(w) for w in fixture_wn.ancestors(DOG)}
    assert names == {
        "n02083346": "canine", "n01317541": "domestic_animal", "n02075296": "carnivore", "n01886756": "placental",
        "n01861778": "mammal", "n01471682": "vertebrate", "n01466257": "chordate", "n00015388": "animal",
        "n00004475": "organism", "n00004258": "living_thing", "n00003553": "whole", "n00002684": "object",
        "n00001930": "physical_entity", ENTITY: "entity"}
    assert fixture_wn.parents[DOG] == ("n02083346", "n01317541")  # two hypernyms: canine, domestic animal
    assert fixture_wn.name(TENCH) == "tench" and fixture_wn.parents[TENCH] == ("n01439121",)  # cyprinid
    assert {"n02512053", "n01473806", ENTITY} <= fixture_wn.ancestors(TENCH)  # fish, aquatic vertebrate
    assert fixture_wn.parents[KIT_FOX] == ("n02118333",)  # fox
    assert {"n02083346", "n02075296"} <= fixture_wn.ancestors(KIT_FOX)  # canine, carnivore
    assert fixture_wn.parents[SUN] == ("n09444100",)  # an instance (@i) of star: followed too
    assert ENTITY in fixture_wn.ancestors(SUN)
    assert fixture_wn.parents[ENTITY] == ()


def test_a_hierarchy_of_classes_that_are_ancestors_of_each_other(fixture_wn: WordNet) -> None:
    h = fixture_wn.hierarchy([DOG, KIT_FOX, TENCH, "n02083346"])  # canine is a class and an ancestor of both dogs
    assert h.parents[ENTITY] == (ROOT,) and h.parents[DOG] == ("n02083346", "n01317541")
    assert set(h.leaves) == {DOG, KIT_FOX, TENCH}  # canine is a class but not a leaf
    assert h.ancestors(KIT_FOX) == fixture_wn.ancestors(KIT_FOX) | {ROOT}
    counts = h.subtree_counts({DOG: 5, KIT_FOX: 2, TENCH: 4})
    assert counts[ENTITY] == counts[ROOT] == 11 and counts["n02083346"] == 7 and counts["n02512053"] == 4
    assert h.choose_expert_domains({DOG: 5, KIT_FOX: 2, TENCH: 4}, 1) == [ENTITY]
    labels = h.label_matrix(np.array([h.leaves.index(DOG)]))[0]
    assert {h.label_nodes[j] for j in np.flatnonzero(labels)} == fixture_wn.ancestors(DOG) | {DOG}


def test_unknown_and_malformed_wnids_are_reported(fixture_wn: WordNet, packaged: WordNet) -> None:
    with pytest.raises(DataError, match=r"1 wnid\(s\) not found .*n09999999; they are not WordNet 3.0 noun synsets"):
        fixture_wn.hierarchy([DOG, "n09999999"])
    with pytest.raises(DataError, match="packaged table holds only the synsets of timm's ImageNet class lists"):
        packaged.hierarchy(["n00000000"])
    with pytest.raises(DataError, match="is not a wnid"):
        fixture_wn.hierarchy(["dog"])
    assert fixture_wn.missing([DOG, "n12345678"]) == ["n12345678"]


def test_bad_wordnet_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no WordNet file at .*data.noun"):
        WordNet.load(tmp_path)
    bad = tmp_path / "data.noun"
    bad.write_text(FIXTURE.read_text(encoding="utf-8") + "00001740 03 n zz entity\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 59: not a WordNet 3.0 data.noun synset line"):
        WordNet.load(bad)
    bad.write_text("  1 only a header\n", encoding="utf-8")
    with pytest.raises(DataError, match="holds no noun synsets"):
        WordNet.load(bad)
    table = tmp_path / "table.txt.gz"
    table.write_bytes(b"not gzip")
    with pytest.raises(DataError, match="not a gzip-compressed WordNet table"):
        WordNet.load(table)


def test_imagenet21k_against_wordnet(packaged: WordNet) -> None:
    """timm's 21,843 ImageNet-21k wnids: all found; 1,704 ancestors that are not classes (the paper
    reports 1,741: docs/upstream_data.md says why they differ), 4,589 classes above other classes."""
    classes = timm_synsets("imagenet21k_goog")
    assert len(classes) == len(set(classes)) == 21_843
    assert packaged.missing(classes) == []
    h = packaged.hierarchy(classes)
    above = set(h.label_nodes) - set(classes)
    assert len(above) == 1_704
    assert len(h.label_nodes) == 21_843 + 1_704
    assert len(set(classes) - set(h.leaves)) == 4_589
    assert ENTITY in above and h.parents[ENTITY] == (ROOT,)
    assert "leaf_label_matrix" not in h.__dict__
    assert sum(len(ps) > 1 for ps in h.parents.values()) > 400  # a DAG, not a tree


def test_imagenet1k_and_the_other_timm_lists(packaged: WordNet) -> None:
    classes = timm_synsets("imagenet")
    assert len(classes) == 1_000
    h = packaged.hierarchy(classes)
    assert len(set(h.label_nodes) - set(classes)) == 860
    assert set(h.leaves) == set(classes)  # no ImageNet-1k class is an ancestor of another
    assert len(timm_synsets("imagenet22k")) == 21_841 and len(timm_synsets("imagenet21k_miil")) == 11_221
    with pytest.raises(DataError, match="timm has no class list"):
        timm_synsets("imagenet99k")


def test_the_packaged_table_carries_the_licence_and_matches_data_noun(tmp_path: Path, packaged: WordNet) -> None:
    header = gzip.decompress((Path(__file__).parents[1] / "expertise/data/wordnet_hypernyms.txt.gz").read_bytes())
    assert b"WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved." in header
    assert len((Path(__file__).parents[1] / "expertise/data/wordnet_hypernyms.txt.gz").read_bytes()) < 1_000_000
    # the fixture's synsets are in the packaged table with the same parents and names
    wn = WordNet.load(FIXTURE)
    for w in wn.parents:
        assert packaged.parents[w] == wn.parents[w] and packaged.name(w) == wn.name(w)
    if not SYSTEM_DATA_NOUN.exists():
        pytest.skip("WordNet 3.0 is not installed (apt-get install wordnet-base): the table's regeneration is not checked")
    out = tmp_path / "table.txt.gz"
    build_table(SYSTEM_DATA_NOUN, out)
    assert out.read_bytes() == (Path(__file__).parents[1] / "expertise/data/wordnet_hypernyms.txt.gz").read_bytes()
