"""Small upstream datasets on disk for the tests: real JPEG and PNG files in ImageNet-21k folders
(with an empty class folder and a corrupt file), the same images in a CSV manifest and in two
WebDataset shards."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

DOG, CHIHUAHUA, KIT_FOX, TENCH = "n02084071", "n02085620", "n02119789", "n01440764"
CANINE, CARNIVORE, GOLDFISH = "n02083346", "n02075296", "n01443537"
# class -> number of images (dog is a class and an ancestor of chihuahua: an internal-node label)
COUNTS = {DOG: 3, CHIHUAHUA: 2, KIT_FOX: 4, TENCH: 1}
CORRUPT = (KIT_FOX, 3)  # this class's image number 3 is not an image


def image_bytes(seed: int, fmt: str, size: tuple[int, int] = (10, 12)) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def make_dataset(root: Path) -> dict:
    """The same 10 images three ways under ``root``: ``imagenet21k/`` folders (plus an empty class
    folder and a corrupt file), ``manifest.csv``, and ``shards/train-000{0,1}.tar``."""
    import webdataset as wds

    folders = root / "imagenet21k"
    samples = []  # (class, file name, bytes) in the folder layout's order
    seed = 0
    for wnid in sorted(COUNTS):
        (folders / wnid).mkdir(parents=True)
        for j in range(COUNTS[wnid]):
            fmt = "PNG" if j % 2 else "JPEG"
            name = f"{wnid}_{j}.{'png' if fmt == 'PNG' else 'JPEG'}"
            data = image_bytes(seed, fmt) if (wnid, j) != CORRUPT else b"not an image at all"
            (folders / wnid / name).write_bytes(data)
            samples.append((wnid, name, data))
            seed += 1
    (folders / GOLDFISH).mkdir()  # an empty class folder
    (folders / DOG / "README.txt").write_text("not an image file, ignored")
    manifest = root / "manifest.csv"
    manifest.write_text("path,labels\n" + "".join(f"imagenet21k/{w}/{n},{w}\n" for w, n, _ in samples))
    shards = root / "shards"
    shards.mkdir()
    for s, part in enumerate((samples[:6], samples[6:])):
        with wds.TarWriter(str(shards / f"train-{s:04d}.tar")) as sink:
            for i, (w, n, data) in enumerate(part):
                ext = "png" if n.endswith("png") else "jpg"
                sink.write({"__key__": f"s{s}_{i:05d}", ext: data, "cls": w})
    return {"root": root, "folders": folders, "manifest": manifest, "shards": shards, "samples": samples}
