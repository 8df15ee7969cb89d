"""Task loaders beyond the embedded world: scikit-learn's bundled digits and any ImageFolder.

Every loader returns a :class:`~expertise.data.tasks.Task` with uint8 RGB images and a seeded,
stratified VTAB-1k style split (800 train / 200 val / the rest test), so the same files and seed
always give the same task. A folder's images are kept at their source resolution, the longer side
capped at ``max_side`` (default :data:`DEFAULT_MAX_SIDE`), so each pool member resizes and crops
them by its own preprocessing; with ``resolution`` they are all resized to R x R instead. Bad input raises :class:`DataError` with a one-line
message that says what to do.
"""

from __future__ import annotations

import math
import os
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from expertise.data.ragged import Images, stack_images, take
from expertise.data.tasks import TRAIN_SIZE, VAL_SIZE, GROUPS, Split, Task
from expertise.errors import ConfigError, DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
BUILTIN_TASKS = ("sklearn_digits",)
TRAINVAL_SIZE = TRAIN_SIZE + VAL_SIZE
DEFAULT_TEST_FRACTION = 0.2  # share of a small folder kept for test when it cannot fill VTAB-1k
# Longer side, in pixels, that a folder's images are kept at (larger ones are shrunk, keeping their
# aspect ratio): above the input of common pre-trained models (224-384 px, with their resize before
# the crop), and ~0.8 MB per image in memory at most
DEFAULT_MAX_SIDE = 512
MIN_SIDE, MAX_SIDE = 8, 2048  # at most the largest input size a member may have
DIGITS_RESOLUTION = 32  # scikit-learn's digits without a resolution: the world's and our experts' size


# -- splitting ---------------------------------------------------------------------------------
def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A seeded permutation int64 [N] of ``labels`` [N] in which every prefix is (nearly) stratified.

    Each class's members are shuffled and placed at evenly spaced fractional ranks
    (j + 0.5) / n_class; sorting all items by rank (a random key breaking equal ranks) interleaves
    the classes, so the first m items hold each class within one of its share m * n_class / N.
    Taking consecutive slices of this order gives stratified train / val / test splits; a class
    with n >= 2 members has its first member within the first 1/(2n) <= 25% of the order.
    """
    rng = np.random.default_rng(seed)
    rank = np.empty(len(labels), dtype=np.float64)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        rank[members] = (np.arange(members.size) + 0.5) / members.size
    return np.lexsort((rng.random(len(labels)), rank))


def _split_by_sizes(labels: np.ndarray, sizes: Sequence[int], seed: int) -> list[np.ndarray]:
    """Stratified index sets int64 of the given sizes (summing to at most N), in a seeded order."""
    order = stratified_order(labels, seed)
    bounds = np.cumsum([0, *sizes])
    return [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _train_val_sizes(n_trainval: int) -> tuple[int, int]:
    """VTAB-1k's 800/200 when there are 1,000 images, else the same 80/20 proportion (and at
    least one image in each)."""
    if n_trainval >= TRAINVAL_SIZE:
        return TRAIN_SIZE, VAL_SIZE
    if n_trainval < 2:
        raise DataError(f"only {n_trainval} image(s) left for train and val; add images or lower test_fraction")
    n_train = min(round(0.8 * n_trainval), n_trainval - 1)
    return n_train, n_trainval - n_train


def _warn_small(name: str, n_train: int, n_val: int) -> None:
    if n_train + n_val < TRAINVAL_SIZE:
        warnings.warn(
            f"task {name!r}: only {n_train + n_val} images for train/val, so the splits ({n_train} train / {n_val} val) "
            f"are smaller than VTAB-1k's {TRAIN_SIZE}/{VAL_SIZE}; scores are not comparable with VTAB-1k numbers",
            stacklevel=4,  # the caller of load_image_folder
        )


# -- scikit-learn digits -----------------------------------------------------------------------
def load_sklearn_digits(resolution: int = 32, seed: int = 0) -> Task:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 real images, 10 classes; no download).

    Images are upsampled to ``resolution`` (bilinear, antialiased), the gray level copied to 3
    channels, uint8 [N, 3, R, R]. A seeded stratified shuffle gives 800 train, 200 val and the
    remaining 797 test images: fewer test images than VTAB-1k's usual thousands, since the whole
    dataset has only 1,797.
    """
    from sklearn.datasets import load_digits

    _check_resolution(resolution)
    digits = load_digits()
    gray = torch.from_numpy(digits.images.astype(np.float32) * (255.0 / 16.0))[:, None]  # [N, 1, 8, 8], 0..255
    up = F.interpolate(gray, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    images = up.round_().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = digits.target.astype(np.int64)
    parts = _split_by_sizes(labels, (TRAIN_SIZE, VAL_SIZE, len(labels) - TRAINVAL_SIZE), seed)
    train, val, test = (_subset(images, labels, idx) for idx in parts)
    return Task("sklearn_digits", "natural", tuple(str(c) for c in range(10)), train, val, test, source="sklearn")


def _subset(images: Images, labels: np.ndarray, idx: np.ndarray) -> Split:
    return Split(take(images, torch.from_numpy(idx)), torch.from_numpy(labels[idx]).to(torch.int64))


def _check_resolution(resolution: int) -> None:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ConfigError(f"resolution must be a positive integer number of pixels, got {resolution!r}")


def check_max_side(max_side: int) -> int:
    """The cap on a source image's longer side, checked ([8, 4096] pixels)."""
    if isinstance(max_side, bool) or not isinstance(max_side, int) or not MIN_SIDE <= max_side <= MAX_SIDE:
        raise ConfigError(f"--max-side must be a whole number of pixels between {MIN_SIDE} and {MAX_SIDE}, got {max_side!r}")
    return max_side


# -- reading images ----------------------------------------------------------------------------
def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: transparency composited over white, 16-bit and float gray scaled
    to 8 bits (Pillow's own convert would clip them), everything else via Image.convert."""
    mode = img.mode
    if mode.startswith("I") or mode == "F":
        a = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16") or (mode == "I" and a.max(initial=0) > 255):
            a = a / 257.0  # 16-bit range 0..65535 -> 0..255
        elif mode == "F" and a.max(initial=0) <= 1.0:
            a = a * 255.0  # float images in [0, 1]
        img = Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8), mode="L")
        return img.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


# What Pillow raises on broken or hostile files (its decoders are not uniform about it).
MAX_PIXELS_ENV = "EXPERTISE_MAX_PIXELS"
# An image larger than this (read from its header, before any decoding) is not decoded: a 144-Mpx PNG
# takes seconds and gigabytes each time, and no member sees more than 2,048 px a side.
MAX_PIXELS = int(os.environ.get(MAX_PIXELS_ENV, "") or 64_000_000)


class ImageTooLarge(ValueError):
    """An image over ``MAX_PIXELS``: unreadable here, like a corrupt one (skipped and counted where that is asked)."""


UNREADABLE = (OSError, SyntaxError, ValueError, TypeError, IndexError, EOFError, struct.error, Image.DecompressionBombError)


def _bounded(img: Image.Image) -> None:
    """An image larger than ``MAX_PIXELS`` (from its header, before decoding) is unreadable here."""
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise ImageTooLarge(f"{w} x {h} pixels, more than the {MAX_PIXELS:,} this reader decodes "
                            f"(set {MAX_PIXELS_ENV} to allow more)")


def decode_image(source: Path | BinaryIO, resolution: int, draft: bool = False) -> np.ndarray:
    """One image (a file, or its bytes as a file object) -> uint8 [3, R, R]: EXIF orientation
    applied, converted to RGB, the whole image resized (no crop) with antialiased bilinear. Raises
    one of ``UNREADABLE`` if it cannot be decoded. ``draft`` lets a JPEG be decoded at 1/2, 1/4 or
    1/8 scale (libjpeg's DCT scaling, never below ``resolution``) before the resize: several times
    faster for large images, and slightly different pixels, so streaming uses it and tasks do not."""
    with Image.open(source) as img:
        _bounded(img)
        if draft:
            img.draft(None, (resolution, resolution))
        img.load()
        img = ImageOps.exif_transpose(img)
        rgb = _to_rgb(img).resize((resolution, resolution), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def decode_source(source: Path | BinaryIO, max_side: int = DEFAULT_MAX_SIDE) -> np.ndarray:
    """One image -> uint8 [3, h, w] at its own size: EXIF orientation applied, converted to RGB,
    and, when its longer side exceeds ``max_side``, shrunk to it keeping the aspect ratio (Pillow's
    antialiased bicubic; the shorter side at least 1 pixel). Raises one of ``UNREADABLE``."""
    with Image.open(source) as img:
        _bounded(img)
        img.load()
        img = ImageOps.exif_transpose(img)
        rgb = _to_rgb(img)
        w, h = rgb.size
        if max(w, h) > max_side:
            scale = max_side / max(w, h)
            rgb = rgb.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def read_image(path: Path, resolution: int | None, max_side: int = DEFAULT_MAX_SIDE) -> np.ndarray:
    """:func:`decode_image` of one file at ``resolution``, or :func:`decode_source` (its own size,
    capped at ``max_side``) when ``resolution`` is None; raises DataError naming the file if unreadable."""
    try:
        return decode_source(path, max_side) if resolution is None else decode_image(path, resolution)
    except UNREADABLE as e:
        raise DataError(f"cannot read image {path} ({type(e).__name__}: {e}); remove or replace the file, or skip unreadable files (--skip-corrupt; skip_corrupt=True in Python)") from None


def _is_hidden(p: Path) -> bool:
    return p.name.startswith(".")


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, like torchvision's ImageFolder), sorted; hidden
    files and folders and other extensions are ignored."""
    found = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).parts
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not any(part.startswith(".") for part in rel):
            found.append(p)
    return found


def _class_folders(root: Path) -> list[Path]:
    return sorted((p for p in root.iterdir() if p.is_dir() and not _is_hidden(p)), key=lambda p: p.name)


def _scan(root: Path, require_two: bool) -> dict[str, list[Path]]:
    """Class name -> sorted image files for an ImageFolder ``root``; checks the layout."""
    folders = _class_folders(root)
    if not folders:
        loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        hint = f" ({len(loose)} images lie directly in it)" if loose else ""
        raise DataError(f"{root} has no class folders{hint}; put each class's images in {root}/<class_name>/")
    files = {f.name: _image_files(f) for f in folders}
    if not any(files.values()):
        raise DataError(f"no image files in the class folders of {root}; supported extensions: {' '.join(IMAGE_EXTENSIONS)}")
    if require_two:
        _check_class_sizes(root, files)
    return files


def _check_class_sizes(root: Path, files: dict[str, list[Path]]) -> None:
    if len(files) < 2:
        only = next(iter(files))
        raise DataError(f"{root} has a single class folder {only!r}; a classification task needs at least 2 classes")
    for cls, fs in files.items():
        if len(fs) < 2:
            raise DataError(
                f"class {cls!r} in {root} has {len(fs)} image{'s' if len(fs) != 1 else ''}; each class needs >= 2 images "
                "so it can be split: add images or remove the folder"
            )


def _read_all(files: dict[str, list[Path]], classes: Sequence[str], resolution: int | None,
              skip_corrupt: bool, max_side: int = DEFAULT_MAX_SIDE) -> tuple[Images, np.ndarray, dict[str, list[Path]]]:
    """uint8 images (at ``resolution``, else at their source sizes) and int64 [N] labels (index
    into ``classes``), plus the readable files per class. Corrupt files raise, or with
    ``skip_corrupt`` are dropped with one warning."""
    index = {c: i for i, c in enumerate(classes)}
    arrays, labels, kept, bad = [], [], {}, []
    for cls, fs in files.items():
        kept[cls] = []
        for f in fs:
            try:
                arrays.append(read_image(f, resolution, max_side))
            except DataError:
                if not skip_corrupt:
                    raise
                bad.append(f)
                continue
            labels.append(index[cls])
            kept[cls].append(f)
    if bad:
        shown = ", ".join(str(b) for b in bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        warnings.warn(f"skipped {len(bad)} unreadable image file(s): {shown}", stacklevel=4)
    if not arrays:
        raise DataError(f"none of the image files could be read (e.g. {bad[0] if bad else '?'}); check that they are images")
    return stack_images(arrays), np.asarray(labels, dtype=np.int64), kept


# -- ImageFolder -------------------------------------------------------------------------------
def _split_layout(path: Path) -> bool:
    return (path / "train").is_dir() and (path / "test").is_dir()


def load_image_folder(path: Path, resolution: int | None = None, seed: int = 0, group: str = "natural",
                      test_fraction: float | None = None, name: str | None = None,
                      skip_corrupt: bool = False, max_side: int = DEFAULT_MAX_SIDE) -> Task:
    """A task from an ImageFolder directory: ``path/<class_name>/<images>``.

    Class names are the sorted folder names; images (.png .jpg .jpeg .bmp .gif .webp .tif .tiff,
    any case, searched recursively; hidden and other files ignored) of any mode become uint8 RGB,
    transparency composited over white: at their source size, the longer side capped at
    ``max_side`` (one tensor [N, 3, H, W] when they share a size, else ragged), or with
    ``resolution`` each whole image resized to R x R.

    Splits are seeded and stratified. With ``path/train/<class>/`` and ``path/test/<class>/``,
    test is the test folder and train/val (800/200, or 80/20 of fewer) come from the train
    folder. Otherwise the test split is ``test_fraction`` of the images if given, else all that
    is left after 800 train + 200 val, but at least 20%; when fewer than 1,000 images remain for
    train/val they are split 80/20 and a warning says the splits are smaller than VTAB-1k. With an
    explicit ``test_fraction`` on a large folder, images beyond test + 1,000 are left unused.

    Unreadable images raise DataError naming the file; ``skip_corrupt=True`` drops them with a
    warning listing them.
    """
    path = Path(path)
    if resolution is not None:
        _check_resolution(resolution)
    check_max_side(max_side)
    if group not in GROUPS:
        raise ConfigError(f"group must be one of {GROUPS}, got {group!r}")
    if test_fraction is not None and not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")
    if not path.exists():
        raise DataError(f"no such folder {path}; pass an ImageFolder directory (one sub-folder of images per class)")
    if not path.is_dir():
        raise DataError(f"{path} is a file, not a folder; pass an ImageFolder directory (one sub-folder of images per class)")
    name = name or path.resolve().name
    if _split_layout(path):
        train, val, test, classes = _load_split_layout(path, resolution, seed, skip_corrupt, name, max_side)
    else:
        train, val, test, classes = _load_single_layout(path, resolution, seed, test_fraction, skip_corrupt, name,
                                                        max_side)
    return Task(name, group, tuple(classes), train, val, test, source=str(path),  # type: ignore[arg-type]
                max_side=max_side if resolution is None else None)


def _load_single_layout(path: Path, resolution: int | None, seed: int, test_fraction: float | None,
                        skip_corrupt: bool, name: str, max_side: int) -> tuple[Split, Split, Split, list[str]]:
    files = _scan(path, require_two=True)
    classes = list(files)
    images, labels, kept = _read_all(files, classes, resolution, skip_corrupt, max_side)
    _check_class_sizes(path, kept)  # skipping corrupt files may have emptied a class
    n = len(labels)
    n_test = max(1, math.ceil((test_fraction or DEFAULT_TEST_FRACTION) * n))
    n_trainval = min(TRAINVAL_SIZE, n - n_test)
    if test_fraction is None:
        n_test = n - n_trainval  # VTAB: everything not used for train/val is test
    n_train, n_val = _train_val_sizes(n_trainval)
    _warn_small(name, n_train, n_val)
    parts = _split_by_sizes(labels, (n_train, n_val, n_test), seed)
    train, val, test = (_subset(images, labels, idx) for idx in parts)
    return train, val, test, classes


def _load_split_layout(path: Path, resolution: int | None, seed: int, skip_corrupt: bool,
                       name: str, max_side: int) -> tuple[Split, Split, Split, list[str]]:
    if (path / "val").is_dir() or (path / "validation").is_dir():
        warnings.warn(f"{path}: the val folder is ignored; as in VTAB-1k, val is drawn from the train folder", stacklevel=3)
    train_files = _scan(path / "train", require_two=True)
    classes = list(train_files)
    test_files = _scan(path / "test", require_two=False)
    unknown = sorted(set(test_files) - set(classes))
    if unknown:
        raise DataError(f"{path / 'test'} has class folders {unknown} that {path / 'train'} lacks; the two must name the same classes")
    images, labels, kept = _read_all(train_files, classes, resolution, skip_corrupt, max_side)
    _check_class_sizes(path / "train", kept)
    n_train, n_val = _train_val_sizes(len(labels))
    _warn_small(name, n_train, n_val)
    train_idx, val_idx = _split_by_sizes(labels, (n_train, n_val), seed)
    test_images, test_labels, _ = _read_all(test_files, classes, resolution, skip_corrupt, max_side)
    test = Split(test_images, torch.from_numpy(test_labels))
    return _subset(images, labels, train_idx), _subset(images, labels, val_idx), test, classes


# -- dispatch ----------------------------------------------------------------------------------
def load_task(spec: str, resolution: int | None = None, seed: int = 0, world: Any = None, skip_corrupt: bool = False,
              max_side: int = DEFAULT_MAX_SIDE, builtin_resolution: int = DIGITS_RESOLUTION) -> Task:
    """A task by name or path: a built-in name ("sklearn_digits", rendered at ``resolution``, else
    at ``builtin_resolution``), an existing ImageFolder directory (at its source resolution capped
    at ``max_side``, or every image resized to ``resolution``; ``skip_corrupt`` drops unreadable
    images there), or a task of ``world`` (anything with ``task_names`` and ``task(name)``)."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"a task must be named: a built-in task ({', '.join(BUILTIN_TASKS)}) or an ImageFolder directory")
    if spec == "sklearn_digits":
        return load_sklearn_digits(resolution or builtin_resolution, seed)
    if Path(spec).is_dir():
        return load_image_folder(Path(spec), resolution, seed, skip_corrupt=skip_corrupt, max_side=max_side)
    world_names = list(getattr(world, "all_task_names", getattr(world, "task_names", ()))) if world is not None else []
    if spec in world_names:
        return world.task(spec)
    known = ", ".join([*BUILTIN_TASKS, *world_names])
    where = f"{spec} is a file; " if Path(spec).exists() else ""
    raise DataError(f"unknown task {spec!r}: {where}use a built-in task ({known}) or the path of an existing ImageFolder directory")
