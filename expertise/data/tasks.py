"""Downstream tasks in the VTAB-1k layout: 800 train, 200 val, and a test split.

Images are kept as uint8 tensors [N, 3, H, W] (RGB), or at their source sizes as
:class:`~expertise.data.ragged.RaggedImages` when they differ; each model's preprocessing turns them
into its own input. Built-in tasks come from the embedded world (``expertise.data.world``) and from
scikit-learn's bundled handwritten digits; any ImageFolder directory loads as a task too
(the readers live in ``expertise.data.loaders``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import torch

from expertise.data.ragged import Images, RaggedImages, cat_images, image_bytes
from expertise.errors import DataError

Group = Literal["natural", "specialized", "structured"]
GROUPS: tuple[Group, ...] = ("natural", "specialized", "structured")
TRAIN_SIZE, VAL_SIZE = 800, 200


@dataclass(frozen=True)
class Split:
    """Images uint8 [N, 3, H, W] (or ragged, at their source sizes) and integer labels int64 [N]
    in [0, num_classes)."""

    images: Images
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.images, RaggedImages) and (
                self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3):
            raise DataError(f"split images must be uint8 [N, 3, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        n = len(self.images)
        if self.labels.dtype != torch.int64 or self.labels.shape != (n,):
            raise DataError(f"split labels must be int64 [{n}], got {self.labels.dtype} {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @staticmethod
    def concat(*splits: Split) -> Split:
        return Split(cat_images([s.images for s in splits]), torch.cat([s.labels for s in splits]))


@dataclass(frozen=True)
class Task:
    """A downstream classification task: VTAB-1k splits, a group and class names. ``max_side`` is
    set when the images were read at their source resolution with the longer side capped there (an
    ImageFolder), so new images (``expertise predict``) are read the same way."""

    name: str
    group: Group
    classes: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    source: str = "world"
    max_side: int | None = None

    def __post_init__(self) -> None:
        if self.group not in GROUPS:
            raise DataError(f"task {self.name!r}: group must be one of {GROUPS}, got {self.group!r}")
        if len(self.classes) < 2:
            raise DataError(f"task {self.name!r} has {len(self.classes)} class; a classification task needs at least 2")
        for part in ("train", "val", "test"):
            s: Split = getattr(self, part)
            if len(s) and (int(s.labels.min()) < 0 or int(s.labels.max()) >= len(self.classes)):
                raise DataError(f"task {self.name!r}: {part} labels fall outside [0, {len(self.classes)})")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def trainval(self) -> Split:
        """The 1,000 images used for selection and for the final retrain (800 train + 200 val)."""
        return Split.concat(self.train, self.val)

    @property
    def resolution(self) -> int:
        """The side of its square images; for images of several sizes, the largest side."""
        return max(int(s) for s in self.train.images.shape[-2:])

    @property
    def source_sizes(self) -> bool:
        """Whether the images are kept at several source sizes (ragged) rather than one."""
        return any(isinstance(s.images, RaggedImages) for s in (self.train, self.val, self.test))

    def fingerprint(self) -> str:
        """sha256 over every split's images and labels: the task's key in the embedding cache
        (computed once per Task: the splits are immutable by contract)."""
        cached = self.__dict__.get("_fingerprint")
        if cached is not None:
            return cached
        h = hashlib.sha256(self.name.encode())
        for s in (self.train, self.val, self.test):
            for part in image_bytes(s.images):
                h.update(part)
            h.update(s.labels.contiguous().numpy().tobytes())
        self.__dict__["_fingerprint"] = h.hexdigest()[:16]
        return self.__dict__["_fingerprint"]
