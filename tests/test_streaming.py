"""Streaming images from disk into the one training loop: the same tiny run from folders, a
manifest and shards; decoding in worker processes; corrupt files skipped, counted and reported,
or an error with ``strict``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from disk_datasets import CORRUPT, DOG, make_dataset

from expertise.data.disk_layouts import read_folders, read_manifest, read_shards
from expertise.upstream.streaming import DecodeImages, DiskBatches
from expertise.errors import ConfigError, DataError
from expertise.models.backbones import BACKBONES, ExpertModel
from expertise.train import TrainConfig, fit, multilabel_loss


@pytest.fixture(autouse=True)
def _one_thread():
    """A 16-px model gains nothing from a second thread and, on a busy machine, loses a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def indexes(tmp_path_factory) -> dict:
    d = make_dataset(tmp_path_factory.mktemp("stream"))
    with pytest.warns(UserWarning, match="empty class folder"):
        folders = read_folders(d["folders"])
    return {"folders": folders, "manifest": read_manifest(d["manifest"]),
            "shards": read_shards(sorted(d["shards"].glob("*.tar"))), "samples": d["samples"]}


def corrupt_position(samples: list) -> int:
    return next(i for i, (w, n, _) in enumerate(samples) if (w, n.split("_")[-1].split(".")[0]) == (CORRUPT[0], str(CORRUPT[1])))


def test_the_same_tiny_training_run_from_folders_manifest_and_shards(indexes: dict) -> None:
    cfg = TrainConfig(steps=2, batch_size=5, lr=0.05, warmup_steps=0)  # one epoch: every image drawn once
    weights, reports = {}, {}
    for layout in ("folders", "manifest", "shards"):
        index = indexes[layout]
        torch.manual_seed(0)
        model = ExpertModel(BACKBONES["bit_xs"], num_outputs=len(index.hierarchy.label_nodes))
        with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\): .*(n02119789_3|s1_00003)"):
            with DiskBatches(index, cfg.batch_size, model.preprocessing, seed=7, steps=cfg.steps) as batches:
                stats = fit(model, batches, cfg, multilabel_loss, show_progress=False)
        assert stats.images == 9  # the corrupt one skipped
        reports[layout] = batches.report()
        weights[layout] = {k: v.clone() for k, v in model.state_dict().items()}
    bad = corrupt_position(indexes["samples"])
    assert reports["folders"]["skipped"] == 1 and reports["folders"]["files"][0]["path"] == indexes["folders"].location(bad)
    assert reports["shards"]["files"][0]["path"].endswith(".tar#s1_00003.png")
    assert "UnidentifiedImageError" in reports["manifest"]["files"][0]["error"]
    for layout in ("manifest", "shards"):
        assert weights[layout].keys() == weights["folders"].keys()
        for k, v in weights["folders"].items():
            assert torch.equal(weights[layout][k], v), (layout, k)


def test_batches_follow_the_sampler_and_restart_at_any_step(indexes: dict) -> None:
    index = indexes["manifest"]
    prep = ExpertModel(BACKBONES["bit_xs"], num_outputs=1).preprocessing
    b = DiskBatches(index, 3, prep, seed=1, steps=6)
    first = [b(s) for s in range(4)]
    x, y = first[0]
    assert x.dtype == torch.float32 and x.shape[1:] == (3, prep.size, prep.size)
    assert y.shape[1] == len(index.hierarchy.label_nodes)
    x2, y2 = b(2)  # out of order: the workers restart there and give the same batch
    assert torch.equal(x2, first[2][0]) and torch.equal(y2, first[2][1])
    idx = b.sampler.batch(0)
    kept = [i for i in idx if i != corrupt_position(indexes["samples"])]
    assert torch.equal(first[0][1], index.targets(np.asarray(kept)))
    with pytest.raises(ConfigError, match="outside the 6 steps"):
        b(6)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        b.close()


def test_workers_decode_the_same_batches(indexes: dict) -> None:
    index = indexes["shards"]
    prep = ExpertModel(BACKBONES["bit_xs"], num_outputs=1).preprocessing
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        with (DiskBatches(index, 4, prep, seed=3, steps=4) as inline,
              DiskBatches(index, 4, prep, seed=3, steps=4, workers=2) as pool):
            for s in range(4):
                a, b = inline(s), pool(s)
                assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert pool.report() == inline.report()


def test_strict_makes_an_unreadable_image_an_error_and_slices_stream_one_node(indexes: dict) -> None:
    index = indexes["folders"]
    prep = ExpertModel(BACKBONES["bit_xs"], num_outputs=1).preprocessing
    with pytest.raises(DataError, match=r"cannot read image .*n02119789_3.png \(UnidentifiedImageError") as e:
        with DiskBatches(index, 10, prep, seed=0, steps=1, strict=True) as b:
            b(0)
    assert "\n" not in str(e.value)
    dogs = index.slice(DOG)
    with DiskBatches(index, 4, prep, seed=0, steps=2, indices=dogs) as b:
        for s in range(2):
            _, y = b(s)
            assert y[:, index.hierarchy.label_index[DOG]].eq(1).all()
    with pytest.raises(ConfigError, match="workers >= 0"):
        DiskBatches(index, 4, prep, seed=0, steps=1, workers=-1)


def test_a_batch_with_no_readable_image(tmp_path: Path, indexes: dict) -> None:
    index = indexes["folders"]
    bad = corrupt_position(indexes["samples"])
    prep = ExpertModel(BACKBONES["bit_xs"], num_outputs=1).preprocessing
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        with DiskBatches(index, 1, prep, seed=0, steps=1, indices=np.array([bad])) as b:
            with pytest.raises(DataError, match="no image of the batch of step 0 could be read"):
                b(0)
    decode = DecodeImages(str(tmp_path), index.names, 8)
    i, img, why = decode[0]
    assert img is None and "FileNotFoundError" in why  # a file that went missing is skipped like a corrupt one


def test_routing_targets_of_the_expert_domains(indexes: dict) -> None:
    from expertise.data.hierarchy import ROOT

    index = indexes["manifest"]
    nodes = [ROOT, *index.choose_expert_domains(3), DOG]
    idx = np.arange(len(index))
    routes = index.node_targets(idx, nodes)
    assert routes.shape == (len(index), len(nodes)) and routes[:, 0].eq(1).all()
    for e, n in enumerate(nodes[1:], 1):
        assert np.flatnonzero(routes[:, e].numpy()).tolist() == index.slice(n).tolist()
    with pytest.raises(DataError, match="unknown hierarchy node"):
        index.node_targets(idx, ["n00000000"])


def test_large_jpegs_are_decoded_at_reduced_scale_to_nearly_the_same_pixels(tmp_path: Path) -> None:
    from PIL import Image

    from expertise.data.loaders import decode_image

    yy, xx = np.mgrid[0:300, 0:240].astype(np.float32)
    smooth = np.stack([xx / 240 * 255, yy / 300 * 255, (xx + yy) / 540 * 255], -1).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "big.jpg", quality=95)
    full = decode_image(tmp_path / "big.jpg", 32).astype(np.int16)
    fast = decode_image(tmp_path / "big.jpg", 32, draft=True).astype(np.int16)
    assert fast.shape == full.shape == (3, 32, 32)
    assert np.abs(fast - full).mean() < 3 and not np.array_equal(fast, full)  # another path, nearly the same image
