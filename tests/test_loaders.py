"""Task loaders: scikit-learn digits, ImageFolder directories (both layouts) and dispatch."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from expertise.data.loaders import load_image_folder, load_sklearn_digits, load_task, read_image, stratified_order
from expertise.data.tasks import Split, Task
from expertise.errors import ConfigError, DataError

R = 8  # tiny resolution keeps the folder tests fast


@pytest.fixture(scope="module")
def digits() -> Task:
    return load_sklearn_digits(resolution=16, seed=0)


def test_digits_splits(digits: Task) -> None:
    assert (len(digits.train), len(digits.val), len(digits.test)) == (800, 200, 797)
    assert digits.name == "sklearn_digits" and digits.group == "natural" and digits.num_classes == 10
    assert digits.train.images.dtype == torch.uint8 and digits.train.images.shape == (800, 3, 16, 16)
    assert set(digits.train.labels.tolist()) == set(range(10))
    assert set(digits.val.labels.tolist()) == set(range(10))
    counts = torch.bincount(digits.train.labels, minlength=10)
    assert counts.min() >= 75 and counts.max() <= 85  # stratified: ~80 per class
    img = digits.train.images
    assert torch.equal(img[:, 0], img[:, 1]) and torch.equal(img[:, 0], img[:, 2])  # gray
    assert int(img.max()) >= 250 and int(img.min()) == 0


def test_digits_are_deterministic_and_disjoint(digits: Task) -> None:
    again = load_sklearn_digits(resolution=16, seed=0)
    assert again.fingerprint() == digits.fingerprint()
    assert load_sklearn_digits(resolution=16, seed=1).fingerprint() != digits.fingerprint()
    rows = torch.cat([digits.train.images, digits.val.images, digits.test.images]).flatten(1)
    from sklearn.datasets import load_digits

    # every original image appears exactly once (the dataset has a few exact duplicate digits)
    assert len(rows) == 1797
    assert len(torch.unique(rows, dim=0)) == len(np.unique(load_digits().images.reshape(1797, -1), axis=0))


def test_stratified_order_prefixes_are_stratified() -> None:
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    order = stratified_order(labels, seed=3)
    assert sorted(order.tolist()) == list(range(100))
    for m in (10, 50, 80):
        counts = np.bincount(labels[order[:m]], minlength=4)
        assert np.all(np.abs(counts - m * np.array([10, 20, 30, 40]) / 100) <= 1)


# -- image folders -----------------------------------------------------------------------------
def _save(path: Path, mode: str, size: tuple[int, int], value: int, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "RGBA":
        img = Image.new("RGBA", size, (value, 0, 0, 255))
    elif mode == "P":
        img = Image.new("RGB", size, (0, value, 0)).convert("P")
    elif mode == "I;16":
        img = Image.fromarray(np.full(size[::-1], value * 257, dtype=np.uint16))
    elif mode == "CMYK":
        img = Image.new("CMYK", size, (0, 0, 0, 255 - value))
    else:
        img = Image.new(mode, size, value if mode == "L" else (value, value, 0))
    img.save(path, format=fmt)


def _make_folder(root: Path, per_class: dict[str, int]) -> Path:
    modes = ["RGB", "L", "RGBA", "P"]
    for c, (cls, n) in enumerate(per_class.items()):
        for i in range(n):
            mode = modes[i % len(modes)]
            size = (6 + i % 5, 9 + (i * 3) % 7)  # unequal sizes
            _save(root / cls / f"img_{i:03d}.png", mode, size, value=40 * c + i % 7)
    return root


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def test_image_folder_round_trip_mixed_modes_and_sizes(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "shapes", {"b_class": 12, "a_class": 10, "c_class": 8})
    (root / "a_class" / "notes.txt").write_text("not an image")
    (root / "a_class" / ".hidden.png").write_bytes(b"junk")
    (root / ".git").mkdir()
    with pytest.warns(UserWarning, match="smaller than VTAB-1k"):
        task = load_image_folder(root, resolution=R, seed=0)
    assert task.classes == ("a_class", "b_class", "c_class")
    assert task.name == "shapes" and task.group == "natural"
    n = len(task.train) + len(task.val) + len(task.test)
    assert n == 30
    assert len(task.test) == 6 and len(task.train) == 19 and len(task.val) == 5  # 20% test, 80/20 of the rest
    for s in (task.train, task.val, task.test):
        assert s.images.dtype == torch.uint8 and s.images.shape[1:] == (3, R, R)
    assert set(task.train.labels.tolist()) == {0, 1, 2}
    again = _quiet(load_image_folder, root, resolution=R, seed=0)
    assert again.fingerprint() == task.fingerprint()


def test_modes_convert_to_rgb(tmp_path: Path) -> None:
    cases = {"L": (100, 100, 100), "RGB": (100, 100, 0), "P": (0, 100, 0), "I;16": (100, 100, 100),
             "CMYK": (100, 100, 100)}
    for mode, want in cases.items():
        f = tmp_path / f"{mode.replace(';', '')}.{'jpg' if mode == 'CMYK' else 'png' if mode != 'I;16' else 'tif'}"
        _save(f, mode, (5, 7), 100)
        got = read_image(f, 4)
        assert got.shape == (3, 4, 4) and got.dtype == np.uint8
        assert np.abs(got.reshape(3, -1).mean(1) - np.array(want)).max() <= 3, (mode, got[:, 0, 0])
    # transparency is composited over white
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert (read_image(tmp_path / "clear.png", 4) == 255).all()
    Image.new("RGBA", (4, 4), (0, 0, 0, 255)).save(tmp_path / "opaque.png")
    assert (read_image(tmp_path / "opaque.png", 4) == 0).all()


def test_large_folder_uses_vtab_sizes(tmp_path: Path) -> None:
    root = tmp_path / "big"
    for cls, n in (("x", 700), ("y", 600)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (2, 2), i % 256).save(root / cls / f"{i}.bmp")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no small-split warning
        task = load_image_folder(root, resolution=2)
    assert (len(task.train), len(task.val), len(task.test)) == (800, 200, 300)
    assert abs(int((task.train.labels == 0).sum()) - 800 * 7 / 13) <= 1
    task = load_image_folder(root, resolution=2, test_fraction=0.2)  # 260 test, 1,000 train/val, 40 unused
    assert (len(task.train), len(task.val), len(task.test)) == (800, 200, 260)
    with pytest.warns(UserWarning, match="smaller than VTAB-1k"):
        task = load_image_folder(root, resolution=2, test_fraction=0.5)
    assert (len(task.train), len(task.val), len(task.test)) == (520, 130, 650)
    task = load_image_folder(root, resolution=2, test_fraction=0.1)  # 130 test, 1,000 train/val, 170 unused
    assert (len(task.train), len(task.val), len(task.test)) == (800, 200, 130)


def test_test_part_is_at_least_a_fifth(tmp_path: Path) -> None:
    """1,100 images would leave VTAB-1k only 100 test images; the test part keeps 20% instead."""
    root = tmp_path / "mid"
    for cls, n in (("x", 600), ("y", 500)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (2, 2), i % 256).save(root / cls / f"{i}.bmp")
    with pytest.warns(UserWarning, match="880 images for train/val"):
        task = load_image_folder(root, resolution=2)
    assert (len(task.train), len(task.val), len(task.test)) == (704, 176, 220)


def test_train_test_layout(tmp_path: Path) -> None:
    _make_folder(tmp_path / "ds" / "train", {"cat": 6, "dog": 5})
    _make_folder(tmp_path / "ds" / "test", {"cat": 2, "dog": 3})
    task = _quiet(load_image_folder, tmp_path / "ds", resolution=R, name="pets", group="specialized")
    assert task.name == "pets" and task.group == "specialized" and task.classes == ("cat", "dog")
    assert len(task.test) == 5 and sorted(task.test.labels.tolist()) == [0, 0, 1, 1, 1]
    assert len(task.train) + len(task.val) == 11 and len(task.val) == 2


def test_train_test_layout_rejects_unknown_test_class(tmp_path: Path) -> None:
    _make_folder(tmp_path / "ds" / "train", {"cat": 3, "dog": 3})
    _make_folder(tmp_path / "ds" / "test", {"cat": 1, "eel": 1})
    with pytest.raises(DataError, match="eel"):
        _quiet(load_image_folder, tmp_path / "ds", resolution=R)


def test_missing_path_and_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such folder .*nowhere"):
        load_image_folder(tmp_path / "nowhere")
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(DataError, match="is a file"):
        load_image_folder(tmp_path / "f.png")


def test_no_class_folders(tmp_path: Path) -> None:
    _save(tmp_path / "flat" / "a.png", "RGB", (4, 4), 1)
    with pytest.raises(DataError, match=r"no class folders \(1 images lie directly in it\)"):
        load_image_folder(tmp_path / "flat")


def test_no_images(tmp_path: Path) -> None:
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir()
    (tmp_path / "empty" / "b" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match="no image files"):
        load_image_folder(tmp_path / "empty")


def test_single_class(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "one", {"only_cls": 4})
    with pytest.raises(DataError, match="single class folder 'only_cls'"):
        load_image_folder(root)


def test_class_with_one_image(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "d", {"many": 4, "lonely": 1})
    with pytest.raises(DataError, match=r"class 'lonely' .* has 1 image; each class needs >= 2 images"):
        load_image_folder(root)


def test_corrupt_image_raises_or_is_skipped(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "d", {"a": 4, "b": 4})
    (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(DataError, match=r"broken\.jpg"):
        _quiet(load_image_folder, root, resolution=R)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        task = load_image_folder(root, resolution=R, skip_corrupt=True)
    skipped = [str(w.message) for w in caught if "unreadable" in str(w.message)]
    assert len(skipped) == 1 and "skipped 1 unreadable image file(s)" in skipped[0] and "broken.jpg" in skipped[0]
    assert len(task.train) + len(task.val) + len(task.test) == 8


def test_skipping_may_leave_a_class_too_small(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "d", {"a": 4, "b": 1})
    (root / "b" / "broken.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="class 'b'"):
        _quiet(load_image_folder, root, resolution=R, skip_corrupt=True)


def test_truncated_image_is_reported(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "d", {"a": 3, "b": 3})
    good = root / "a" / "img_000.png"
    good.write_bytes(good.read_bytes()[:40])
    with pytest.raises(DataError, match=r"img_000\.png"):
        _quiet(load_image_folder, root, resolution=R)


def test_bad_arguments(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "d", {"a": 3, "b": 3})
    with pytest.raises(ConfigError, match="group"):
        load_image_folder(root, group="weird")
    with pytest.raises(ConfigError, match="test_fraction"):
        load_image_folder(root, test_fraction=1.0)
    with pytest.raises(ConfigError, match="resolution"):
        load_image_folder(root, resolution=0)
    with pytest.raises(DataError, match="left for train and val"):
        load_image_folder(root, resolution=R, test_fraction=0.9)
    task = _quiet(load_image_folder, root, resolution=R, test_fraction=0.5)
    assert (len(task.train), len(task.val), len(task.test)) == (2, 1, 3)


# -- dispatch ----------------------------------------------------------------------------------
def test_load_task_dispatch(tmp_path: Path, digits: Task) -> None:
    assert load_task("sklearn_digits", resolution=16).fingerprint() == digits.fingerprint()
    root = _make_folder(tmp_path / "folder_task", {"a": 3, "b": 3})
    assert _quiet(load_task, str(root), resolution=R).classes == ("a", "b")
    tiny = Task("tiny", "structured", ("x", "y"), *(Split(torch.zeros(2, 3, 4, 4, dtype=torch.uint8),
                                                           torch.tensor([0, 1])) for _ in range(3)))
    world = SimpleNamespace(task_names=("tiny",), task=lambda name: tiny)
    assert load_task("tiny", world=world) is tiny


def test_load_task_unknown(tmp_path: Path) -> None:
    world = SimpleNamespace(task_names=("clevr_count",), task=lambda name: None)
    with pytest.raises(DataError, match=r"unknown task 'nope'.*sklearn_digits, clevr_count.*existing ImageFolder directory"):
        load_task("nope", world=world)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        load_task(str(tmp_path / "file.txt"))
    with pytest.raises(DataError, match="must be named"):
        load_task("")  # not the current directory


def test_load_task_passes_skip_corrupt_and_the_error_names_the_flag(tmp_path: Path) -> None:
    from expertise.data.loaders import load_task

    root = _make_folder(tmp_path / "d", {"a": 4, "b": 4})
    (root / "b" / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match="--skip-corrupt"):
        _quiet(load_task, str(root), resolution=R)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task = load_task(str(root), resolution=R, skip_corrupt=True)
    assert len(task.train) + len(task.val) + len(task.test) == 8
