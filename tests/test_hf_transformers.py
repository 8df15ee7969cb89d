"""Hugging Face transformers image models as pool members, on tiny randomly initialised models
written locally (tests/hf_tiny.py): each family's embedding and upstream head against transformers'
own forward, preprocessing against its image processor, storing and reloading, selection, and
the folders and ids that must be refused in one line."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("transformers")

from hf_tiny import write_tiny  # noqa: E402

from expertise.cli import app  # noqa: E402
from expertise.errors import ConfigError  # noqa: E402
from expertise.library import Library  # noqa: E402
from expertise.models.backbones import model_from_config, prepare  # noqa: E402
from expertise.models.hf_config import read_processor  # noqa: E402
from expertise.models.hf_transformers import TransformersModel, from_folder  # noqa: E402
from expertise.pool import PoolMetadata, add_external, load_external  # noqa: E402

runner = CliRunner()


def _images(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def _reference(ref: torch.nn.Module, kind: str, x: torch.Tensor) -> torch.Tensor:
    """What transformers itself computes for the member's ``embed`` (base models) or upstream
    logits (classifiers)."""
    if kind in ("clip", "siglip"):
        return ref.vision_model(pixel_values=x).pooler_output
    out = ref(pixel_values=x)
    if hasattr(out, "logits"):
        return out.logits
    if kind == "vit":
        return out.last_hidden_state[:, 0]
    return out.pooler_output.flatten(1)


# (family, classifier width, pooling the member uses, embedding width)
FAMILIES = [("vit", 5, "cls", 32), ("vit", 0, "cls", 32), ("deit", 3, "cls", 32), ("beit", 3, "pooler", 32),
            ("dinov2", 0, "pooler", 32), ("dinov2", 3, "cls_mean", 64), ("convnext", 3, "pooler", 16),
            ("swin", 3, "pooler", 16), ("resnet", 3, "pooler", 16),
            ("clip", 0, "pooler", 32), ("siglip", 0, "pooler", 32)]


@pytest.mark.parametrize("kind,labels,pooling,width", FAMILIES, ids=[f"{k}-{n}" for k, n, _, _ in FAMILIES])
def test_each_family_is_a_member_computing_what_transformers_computes(tmp_path, kind, labels, pooling, width):
    ref = write_tiny(tmp_path / kind, kind, labels)
    model, source = from_folder(tmp_path / kind)
    assert isinstance(model, TransformersModel) and not model.training
    assert (model.family, model.pooling, model.num_features) == (kind, pooling, width)
    assert source.kind == "hf" and source.format == "transformers" and source.architecture == kind
    assert model.has_upstream_head == (labels > 0)
    x = prepare(_images(size=model.preprocessing.size), model.preprocessing)
    with torch.inference_mode():
        got = model.upstream_logits(x) if labels else model.embed(x)
        torch.testing.assert_close(got, _reference(ref, kind, x), rtol=1e-5, atol=1e-6)
        assert model.embed(x).shape == (4, width)
        rebuilt = model_from_config(json.loads(json.dumps(model.member_config())))
        rebuilt.load_state_dict(model.state_dict(), strict=True)
        assert torch.equal(rebuilt.eval().embed(x), model.embed(x))


def test_preprocessing_is_the_image_processors(tmp_path):
    """At the processor's own size (no resize), prepare() gives exactly its pixel values; its
    rescale factor and normalisation are folded into mean and std."""
    import transformers

    images = _images(3, 32, seed=2)
    arrays = [im.permute(1, 2, 0).numpy() for im in images]
    processors = [transformers.ViTImageProcessor(size={"height": 32, "width": 32}),
                  transformers.ViTImageProcessor(size={"height": 32, "width": 32}, rescale_factor=1 / 127.5,
                                                 image_mean=[1.0, 1.0, 1.0], image_std=[1.0, 1.0, 1.0]),
                  transformers.ViTImageProcessor(size={"height": 32, "width": 32}, do_normalize=False),
                  transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})]
    for p in processors:
        prep, summary = read_processor(p.to_dict() | {"resample": int(p.resample)}, "test")
        want = p(arrays, return_tensors="pt").pixel_values
        torch.testing.assert_close(prepare(images, prep), want, rtol=1e-5, atol=1e-5)
        assert prep.size == 32 and summary["interpolation"] in ("bilinear", "bicubic")
    # ConvNeXt's crop_pct: the shorter side resized to size / crop_pct, then a centre crop of size
    convnext = transformers.ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=0.875).to_dict()
    prep, summary = read_processor(convnext | {"resample": 3}, "test")
    assert prep.size == 224 and summary == {"resize": 256, "resize_mode": "shortest_edge", "crop": 224,
                                            "interpolation": "bicubic"}
    prep, summary = read_processor(convnext | {"resample": 3}, "test", size=112)  # --size scales resize and crop
    assert prep.size == 112 and (summary["resize"], summary["crop"]) == (128, 112)


@pytest.mark.parametrize("legacy,family,want", [
    # preprocessor_config.json files as older releases wrote them: a bare number for the size
    ({"feature_extractor_type": "CLIPFeatureExtractor", "size": 224, "crop_size": 224, "do_center_crop": True},
     "clip", ("CLIPImageProcessor", "shortest_edge", 224, 224)),
    ({"feature_extractor_type": "ConvNextFeatureExtractor", "size": 224, "crop_pct": 0.875},
     "convnext", ("ConvNextImageProcessor", "shortest_edge", 256, 224)),
    ({"image_processor_type": "ConvNextImageProcessor", "size": {"shortest_edge": 384}, "crop_pct": 0.875},
     "convnext", ("ConvNextImageProcessor", "square", 384, 0)),
    ({"feature_extractor_type": "DeiTFeatureExtractor", "size": 256, "crop_size": 224, "do_center_crop": True},
     "deit", ("DeiTImageProcessor", "square", 256, 224)),
    ({"feature_extractor_type": "ViTFeatureExtractor", "size": 224}, "vit", ("ViTImageProcessor", "square", 224, 0)),
    ({"size": 256, "crop_size": 224, "do_center_crop": True}, "dinov2", ("BitImageProcessor", "shortest_edge", 256, 224)),
])
def test_a_bare_number_size_means_what_transformers_reads_it_as(legacy, family, want):
    import transformers

    cls, mode, resize, crop = want
    d = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, **legacy}
    prep, summary = read_processor(d, "test", family=family)
    assert (summary["resize_mode"], summary["resize"], summary["crop"]) == (mode, resize, crop)
    assert prep.size == (crop or resize)
    kwargs = {k: v for k, v in d.items() if k in ("size", "crop_size", "crop_pct")}
    size = getattr(transformers, cls)(**kwargs).size  # transformers' own reading of the number
    assert ("shortest_edge" in size) == (mode == "shortest_edge" or "crop_pct" in d and resize >= 384)


def test_pool_add_hf_folder_stores_it_and_a_library_gives_it_back_identical(tmp_path):
    write_tiny(tmp_path / "vit", "vit", 5)
    lib = tmp_path / "lib"
    r = runner.invoke(app, ["pool", "add", "--library", str(lib), "--hf", str(tmp_path / "vit"), "--imagenet-top1", "81.5"])
    assert r.exit_code == 0, r.output
    assert "added ext.vit: vit from" in r.output and "upstream head of 5 classes" in r.output
    info = Library.open(lib).info("ext.vit")
    assert info.kind == "external" and info.architecture == "vit" and info.upstream_accuracy == pytest.approx(0.815)
    assert info.extra["format"] == "transformers" and info.extra["upstream_classes"] == 5
    original, _ = load_external(hf=str(tmp_path / "vit"))
    loaded = Library.open(lib).load("ext.vit")
    assert isinstance(loaded, TransformersModel) and not loaded.training
    x = prepare(_images(), loaded.preprocessing)
    with torch.inference_mode():
        assert torch.equal(loaded.embed(x), original.embed(x))
        assert torch.equal(loaded.upstream_logits(x), original.upstream_logits(x))
    assert Library.open(lib).verify() == []
    config = json.loads((lib / "members" / "ext.vit" / "config.json").read_text())
    assert config["processor"] == {"resize": 32, "resize_mode": "square", "crop": 0, "interpolation": "bilinear"}


@pytest.mark.slow
def test_select_ranks_a_pool_with_a_transformers_member(tiny_library_copy, tmp_path):
    lib = tiny_library_copy
    write_tiny(tmp_path / "convnext", "convnext", 4)
    member = add_external(lib, *load_external(hf=str(tmp_path / "convnext")), metadata=PoolMetadata(imagenet_top1=82.1)).name
    out = tmp_path / "out"
    for strategy, proxy, label in (("proxy", "leep", "leep"), ("task_agnostic", "knn_loo", "task_agnostic")):
        # LEEP reads the ConvNeXt classifier's softmax over its own 4 upstream classes
        r = runner.invoke(app, ["select", "--library", str(lib.path), "--task", "count", "--strategy", strategy,
                                "--proxy", proxy, "--budget", "2", "--out", str(out), "-q"])
        assert r.exit_code == 0, r.output
        ranked = [name for name, _ in json.loads((out / f"count.{label}.json").read_text())["ranking"]]
        assert member in ranked and len(ranked) == len(set(ranked)) >= 5 and member in r.output
    assert ranked[0] == member  # 82.1% ImageNet top-1 ranks above every upstream holdout accuracy of the tiny library


def test_a_folder_with_only_pickled_weights_is_refused_never_unpickled(tmp_path, monkeypatch):
    folder = tmp_path / "vit"
    write_tiny(folder, "vit", 5)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "PAYLOAD_RAN"

    class Payload:
        def __reduce__(self):
            import os
            return (os.makedirs, (str(marker),))

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"w": Payload()}))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    r = runner.invoke(app, ["pool", "add", "--library", str(tmp_path / "lib"), "--hf", str(folder)])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "pytorch_model.bin: pickled weights are never loaded" in r.output and "safetensors only" in r.output
    assert not marker.exists()


def test_an_id_neither_cached_nor_a_folder_names_what_to_download_and_where(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    r = runner.invoke(app, ["pool", "add", "--library", str(tmp_path / "lib"), "--hf", "google/vit-base-patch16-224"])
    text = r.output.strip()
    assert r.exit_code == 2 and len(text.splitlines()) == 1, text
    assert "not in the local Hugging Face cache" in text and str(tmp_path / "hf-cache") in text
    assert "hf download google/vit-base-patch16-224" in text and not (tmp_path / "lib").exists()


def test_an_id_in_the_local_cache_loads_offline(tmp_path, monkeypatch):
    """A Hub id is read from the local Hugging Face cache (the layout hf download leaves), with
    no network."""
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    repo = cache / "models--tiny--vit"
    commit = "0123456789abcdef0123456789abcdef01234567"
    write_tiny(repo / "snapshots" / commit, "vit", 5)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    model, source = load_external(hf="tiny/vit")
    assert isinstance(model, TransformersModel) and source.location == "tiny/vit"
    from expertise.pool import external_name
    assert external_name(source) == "ext.vit"


def _edit(folder: Path, name: str, change) -> None:
    f = folder / name
    d = json.loads(f.read_text())
    change(d)
    f.write_text(json.dumps(d))


@pytest.mark.parametrize("fault,match", [
    (lambda d: d.update(model_type="gpt2"), "model_type 'gpt2' is not a supported image model"),
    (lambda d: d.update(auto_map={"AutoModel": "evil.Model"}), "custom model code"),
    (lambda d: d.update(hidden_size=64), "do not load as its 'vit' config.json describes"),
    (lambda d: d.update(num_hidden_layers=3), "do not fit its config.json: missing"),
    (lambda d: d.update(num_channels=1), "3 channels"),
    (lambda d: d.update(hidden_size="/etc/passwd"), "plain name"),
    (lambda d: d.update(hidden_size=1 << 20), "outside"),
    (lambda d: d.update(pooler_act="tanh", out_indices=[1], layer_norm_eps=1e-6), None),  # passes: ignored or allowed
])
def test_config_json_is_checked_before_transformers_sees_it(tmp_path, fault, match):
    write_tiny(tmp_path / "vit", "vit", 5)
    _edit(tmp_path / "vit", "config.json", fault)
    if match is None:
        assert from_folder(tmp_path / "vit")[0].arch_args["layer_norm_eps"] == 1e-6
        return
    with pytest.raises(ConfigError, match=match) as e:
        from_folder(tmp_path / "vit")
    assert "\n" not in str(e.value)


def test_processor_configs_that_cannot_be_reproduced_are_refused(tmp_path):
    write_tiny(tmp_path / "vit", "vit", 5)
    for change, match in ((lambda d: d.update(do_pad=True), "unknown image processor key"),
                          (lambda d: d.update(size={"height": 32, "width": 48}), "not square"),
                          (lambda d: d.update(image_std=[0, 1, 1]), "image_std"),
                          (lambda d: d.update(auto_map={"AutoImageProcessor": "x.P"}), "custom image processor")):
        original = (tmp_path / "vit" / "preprocessor_config.json").read_text()
        _edit(tmp_path / "vit", "preprocessor_config.json", change)
        with pytest.raises(ConfigError, match=match):
            from_folder(tmp_path / "vit")
        (tmp_path / "vit" / "preprocessor_config.json").write_text(original)
    (tmp_path / "vit" / "preprocessor_config.json").unlink()
    with pytest.raises(ConfigError, match="has no preprocessor_config.json"):
        from_folder(tmp_path / "vit")


def test_a_stored_member_config_outside_the_allowlist_is_refused():
    cfg = {"class": "TransformersModel", "family": "vit", "config": {"hidden_size": 32, "attn_implementation": "x"},
           "pooling": "cls", "num_outputs": 0, "preprocessing": {"size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}}
    with pytest.raises(ConfigError, match="'attn_implementation' not allowed"):
        model_from_config(cfg)
    with pytest.raises(ConfigError, match="family"):
        model_from_config({**cfg, "family": "gpt2", "config": {}})
