"""Per-member preprocessing from the source resolution: task images kept at their own sizes, each
member fed exactly what its own library's eval transform makes of them (timm's create_transform,
transformers' image processor), through the one forward path; our own experts unchanged.

Tolerance: against transformers' image processors (torchvision backend) the inputs are equal up to
float32 rounding (atol 1e-5). timm's transform resamples its loader's PIL images with PIL; ours
resizes with torchvision's uint8 kernels, which reproduce PIL's up to the rounding between the two
passes: the inputs differ by at most 4 uint8 levels on a pixel with bicubic (1 with bilinear), and
by under 0.35 levels on average (0.01 for most images; ~0.25 where the two round in another order).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from PIL import Image

from expertise.data.loaders import DEFAULT_MAX_SIDE, load_image_folder
from expertise.data.ragged import RaggedImages, cat_images, image_bytes, take
from expertise.data.tasks import Split, Task
from expertise.errors import ConfigError
from expertise.models.backbones import Preprocessing, prepare
from expertise.models.external import from_hf_folder
from expertise.models.forward import forward_batches
from expertise.models.preprocess import timm_preprocessing
from expertise.select.embed import EmbeddingCache, cache_key, embed_pool

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth, photo-like uint8 image [3, h, w] (low-frequency colour plus some grain)."""
    rng = np.random.default_rng(seed)
    low = torch.from_numpy(rng.integers(0, 256, (1, 3, h // 8 + 2, w // 8 + 2)).astype(np.float32))
    up = F.interpolate(low, size=(h, w), mode="bicubic", align_corners=False)[0].numpy()
    return np.clip(up + rng.normal(0, 12, (3, h, w)), 0, 255).round().astype(np.uint8)


SOURCES = [_photo(300, 200, 0), _photo(181, 263, 1), _photo(350, 350, 2), _photo(97, 141, 3)]


def _timm_folder(folder: Path, arch: str, pretrained_cfg: dict, make_timm_net) -> Path:
    """A Hugging Face folder in timm's layout whose pretrained_cfg sets the data config."""
    folder.mkdir(parents=True)
    net = make_timm_net(arch, num_classes=5, seed=3)
    safetensors.torch.save_file(net.state_dict(), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architecture": arch, "num_classes": 5,
                                                    "pretrained_cfg": pretrained_cfg}))
    return folder


def _received(model: torch.nn.Module, images) -> torch.Tensor:
    """What the member's ``embed`` is given when it embeds ``images`` through the one forward path."""
    seen: list[torch.Tensor] = []
    embed = model.embed
    model.embed = lambda x: (seen.append(x.clone()), embed(x))[1]  # type: ignore[method-assign]
    try:
        forward_batches(model, images, ("features",), batch_size=3)
    finally:
        del model.embed
    return torch.cat(seen)


TIMM_MEMBERS = [  # a ResNet-50-like 224-px config and an Inception-v3-like 299-px one
    ("test_resnet", {"input_size": [3, 224, 224], "crop_pct": 0.875, "interpolation": "bicubic", **IMAGENET}),
    ("test_efficientnet", {"input_size": [3, 299, 299], "crop_pct": 0.875, "interpolation": "bilinear",
                           "mean": [0.5] * 3, "std": [0.5] * 3}),
    ("test_resnet", {"input_size": [3, 224, 224], "crop_pct": 0.9, "crop_mode": "squash", "interpolation": "bicubic",
                     **IMAGENET}),
]


@pytest.mark.parametrize("arch,cfg", TIMM_MEMBERS, ids=["224-center", "299-center", "224-squash"])
def test_a_timm_member_receives_what_its_own_timm_transform_makes_of_the_source(tmp_path, make_timm_net, arch, cfg):
    model, _ = from_hf_folder(_timm_folder(tmp_path / "m", arch, cfg, make_timm_net))
    size = cfg["input_size"][-1]
    assert model.preprocessing.size == size and model.preprocessing.resize == int(size / cfg["crop_pct"])
    got = _received(model, RaggedImages.from_arrays(SOURCES))
    assert got.shape == (len(SOURCES), 3, size, size)
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model.net))
    std = torch.tensor(cfg["std"]).view(3, 1, 1)
    for i, src in enumerate(SOURCES):
        want = transform(Image.fromarray(src.transpose(1, 2, 0)))  # what timm's eval transform makes of the image
        levels = (got[i] - want).abs() * std * 255
        assert levels.max() <= (4.01 if cfg["interpolation"] == "bicubic" else 1.01) and levels.mean() < 0.35


def test_a_transformers_member_receives_what_its_image_processor_makes_of_the_source(tmp_path):
    T = pytest.importorskip("transformers")
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=224,
                  patch_size=32)
    text = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=64,
                bos_token_id=0, eos_token_id=1, pad_token_id=1)
    torch.manual_seed(0)
    T.CLIPModel(T.CLIPConfig(text_config=text, vision_config=vision)).save_pretrained(tmp_path / "clip")
    processor = T.CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    processor.save_pretrained(tmp_path / "clip")
    from expertise.models.hf_transformers import from_folder

    model, _ = from_folder(tmp_path / "clip")
    assert (model.preprocessing.resize_mode, model.preprocessing.recipe) == ("shortest", "transformers")
    got = _received(model, RaggedImages.from_arrays(SOURCES))
    for i, src in enumerate(SOURCES):
        want = processor(images=Image.fromarray(src.transpose(1, 2, 0)), return_tensors="pt")["pixel_values"][0]
        torch.testing.assert_close(got[i], want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family,processor", [
    ("vit", {"image_processor_type": "ViTImageProcessor", "size": {"height": 299, "width": 299}, "resample": 2}),
    ("convnext", {"image_processor_type": "ConvNextImageProcessor", "size": {"shortest_edge": 224}, "crop_pct": 0.875,
                  "resample": 3}),
    ("dinov2", {"image_processor_type": "BitImageProcessor", "size": {"shortest_edge": 299}, "do_center_crop": True,
                "crop_size": {"height": 299, "width": 299}, "resample": 3}),
    ("deit", {"image_processor_type": "DeiTImageProcessor", "size": {"height": 256, "width": 256}, "do_center_crop": True,
              "crop_size": {"height": 224, "width": 224}, "resample": 3})])
def test_each_processor_kind_is_reproduced(family, processor):
    T = pytest.importorskip("transformers")
    from expertise.models.hf_config import read_processor

    d = {"do_normalize": True, "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3], **processor}
    prep, _ = read_processor(d, "test", family=family)
    proc = getattr(T, processor["image_processor_type"])(**{k: v for k, v in d.items() if k != "image_processor_type"})
    got = prepare(RaggedImages.from_arrays(SOURCES), prep)
    for i, src in enumerate(SOURCES):
        want = proc(images=torch.from_numpy(src), return_tensors="pt")["pixel_values"][0]
        torch.testing.assert_close(got[i], want, rtol=0, atol=1e-5)


def test_our_whole_image_preprocessing_is_unchanged():
    """Our experts' preprocessing keeps its stored form and its arithmetic: at the member's size the
    images are only scaled and normalised; at another size the whole image is resized (bilinear,
    antialiased), as before per-member preprocessing."""
    prep = Preprocessing(32, (0.5,) * 3, (0.25,) * 3)
    assert prep.to_json() == {"size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}
    x = torch.from_numpy(np.stack([_photo(32, 32, s) for s in range(3)]))
    torch.testing.assert_close(prepare(x, prep), (x.float() / 255 - 0.5) / 0.25, rtol=0, atol=0)
    big = torch.from_numpy(np.stack([_photo(48, 48, s) for s in range(2)]))
    want = (F.interpolate(big.float() / 255, size=(32, 32), mode="bilinear", antialias=True, align_corners=False) - 0.5) / 0.25
    torch.testing.assert_close(prepare(big, prep), want, rtol=0, atol=0)
    assert Preprocessing.from_json(prep.to_json()) == prep


def test_stored_preprocessing_round_trips_and_bad_values_are_refused():
    prep = timm_preprocessing({"input_size": (3, 299, 299), "crop_pct": 0.875, "interpolation": "bicubic",
                               "mean": (0.5,) * 3, "std": (0.5,) * 3})
    assert (prep.size, prep.resize, prep.resize_mode, prep.interpolation) == (299, 341, "shortest", "bicubic")
    assert Preprocessing.from_json(json.loads(json.dumps(prep.to_json()))) == prep
    assert len({prep.key(), Preprocessing(299).key(), timm_preprocessing({**_TIMM, "crop_pct": 1.0}).key()}) == 3
    with pytest.raises(ConfigError, match="interpolation"):
        Preprocessing.from_json({**prep.to_json(), "interpolation": "sinc"})
    with pytest.raises(ConfigError, match="letterboxing"):
        timm_preprocessing({**_TIMM, "crop_mode": "border"})
    lanczos = timm_preprocessing({**_TIMM, "interpolation": "lanczos"})
    assert lanczos.interpolation == "bicubic"  # what the tensor backends have; documented


_TIMM = {"input_size": (3, 224, 224), "crop_pct": 0.875, "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3}


def test_ragged_images_slice_take_concatenate_and_prepare_like_single_images():
    ragged = RaggedImages.from_arrays(SOURCES)
    assert len(ragged) == 4 and ragged.shape == (4, 3, 350, 350)
    assert torch.equal(ragged[1:3].image(0), torch.from_numpy(SOURCES[1]))
    picked = take(ragged, torch.tensor([3, 0]))
    assert torch.equal(picked.image(1), torch.from_numpy(SOURCES[0]))
    both = cat_images([ragged[:2], ragged[2:]])
    assert torch.equal(both.sizes, ragged.sizes) and torch.equal(both.data, ragged.data)
    assert image_bytes(ragged) != image_bytes(RaggedImages.from_arrays(SOURCES[::-1]))
    prep = timm_preprocessing(_TIMM)
    one_by_one = torch.cat([prepare(torch.from_numpy(s)[None], prep) for s in SOURCES])
    torch.testing.assert_close(prepare(ragged, prep), one_by_one, rtol=0, atol=0)
    mixed = cat_images([torch.from_numpy(np.stack([SOURCES[2]] * 2)), ragged[:1]])
    assert isinstance(mixed, RaggedImages) and len(mixed) == 3


def test_a_folder_task_keeps_its_source_sizes_capped_at_max_side(tmp_path):
    sizes = {"a": [(300, 200), (64, 48), (900, 300)], "b": [(48, 64), (200, 300), (50, 50)]}
    for cls, whs in sizes.items():
        (tmp_path / "d" / cls).mkdir(parents=True)
        for i, (w, h) in enumerate(whs):
            Image.fromarray(_photo(h, w, i).transpose(1, 2, 0)).save(tmp_path / "d" / cls / f"{i}.png")
    with pytest.warns(UserWarning, match="smaller than VTAB-1k"):
        task = load_image_folder(tmp_path / "d", test_fraction=0.3, max_side=256)
    images = [task.trainval.images, task.test.images]
    got = sorted(tuple(int(v) for v in s) for im in images for s in (im.sizes if isinstance(im, RaggedImages)
                                                                      else [im.shape[-2:]] * len(im)))
    # (h, w): 900x300 and 300x200 and 200x300 shrunk to a longer side of 256, the rest as they are
    assert got == sorted([(171, 256), (48, 64), (85, 256), (64, 48), (256, 171), (50, 50)])
    assert task.max_side == 256 and load_image_folder(tmp_path / "d", resolution=16, test_fraction=0.3).max_side is None
    assert DEFAULT_MAX_SIDE == 512
    with pytest.raises(ConfigError, match="--max-side"):
        load_image_folder(tmp_path / "d", max_side=4)


def test_the_cache_key_names_the_preprocessing(tmp_path):
    """Two members with the same hash but another preprocessing never share a cache entry."""
    g = torch.Generator().manual_seed(0)
    images = RaggedImages.from_arrays([torch.randint(0, 256, (3, 20 + i, 30), dtype=torch.uint8, generator=g)
                                       for i in range(8)])
    labels = torch.arange(8) % 2
    task = Task("toy", "natural", ("a", "b"), Split(take(images, torch.arange(4)), labels[:4]),
                Split(take(images, torch.arange(4, 6)), labels[4:6]), Split(take(images, torch.arange(6, 8)), labels[6:]))
    a, b = Preprocessing(16), timm_preprocessing({**_TIMM, "input_size": (3, 16, 16)})
    assert cache_key(task, a) != cache_key(task, b) and cache_key(task, a.to_json()) == cache_key(task, a)

    class Mean(torch.nn.Module):
        def __init__(self, prep):
            super().__init__()
            self.preprocessing = prep

        def embed(self, x):
            return x.mean(dim=(2, 3))

    cache = EmbeddingCache(tmp_path / "cache")
    models = {"a": Mean(a), "b": Mean(b)}
    first = embed_pool(["a"], models.__getitem__, lambda n: "samehash", task, cache, progress=False)
    second = embed_pool(["b"], models.__getitem__, lambda n: "samehash", task, cache, progress=False,
                        preprocessing=lambda n: models[n].preprocessing.to_json())
    assert second.stats.cached == 0 and second.stats.images == len(task.trainval)
    assert not torch.equal(first.features["a"], second.features["b"])
    again = embed_pool(["a"], models.__getitem__, lambda n: "samehash", task, cache, progress=False)
    assert again.stats.cached == 1


def test_a_model_tuned_on_source_images_predicts_from_source_images(tmp_path, make_timm_net):
    """model.json records max_side; predict reads new images at their own size (capped there) and
    the member's preprocessing resizes them, as in training."""
    from expertise.data.loaders import decode_source
    from expertise.transfer.predict import predict
    from expertise.transfer.saved import load_model, save_model

    model, _ = from_hf_folder(_timm_folder(tmp_path / "m", *TIMM_MEMBERS[0], make_timm_net))
    model.reset_head(2)
    files = []
    for i, (h, w) in enumerate([(300, 200), (90, 700), (64, 64)]):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(_photo(h, w, i).transpose(1, 2, 0)).save(files[-1])
    save_model(tmp_path / "kept", model, ("a", "b"), 300, "m", "photos", {"kind": "test"}, max_side=256)
    saved = load_model(tmp_path / "kept")
    assert saved.max_side == 256 and saved.preprocessing == model.preprocessing
    got = predict(saved, files, top_k=2, batch_size=2)
    sources = [decode_source(f, 256) for f in files]
    assert [s.shape[1:] for s in sources] == [(256, 171), (33, 256), (64, 64)]
    logits = forward_batches(saved.model, RaggedImages.from_arrays(sources), ("logits",))["logits"]
    probs = torch.softmax(logits.double(), 1)
    for p, row in zip(got, probs):
        assert p.top[0][1] == pytest.approx(float(row.max()), abs=1e-6)
