"""Task images at their source resolution: uint8 RGB images of differing sizes.

A task whose images share one size keeps them as one uint8 tensor [N, 3, H, W] (the world's tasks,
scikit-learn's digits, a folder of same-size images). A folder of photos of several sizes keeps
each at its own size (the longer side capped when it is read, :mod:`expertise.data.loaders`) in a
:class:`RaggedImages`: one flat uint8 buffer and each image's (height, width). Every pool member
resizes and crops them by its own preprocessing (:func:`expertise.models.preprocess.prepare`).

``Images`` is either kind; the helpers below (:func:`num_images`, :func:`take`, :func:`cat_images`,
:func:`image_groups`, :func:`image_bytes`) treat both alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Union

import numpy as np
import torch

from expertise.errors import DataError


class RaggedImages:
    """N uint8 RGB images, image i of shape [3, sizes[i, 0], sizes[i, 1]], stored back to back in
    ``data`` (uint8 [sum of 3 h w]). Immutable by contract, like a task's tensors."""

    dtype = torch.uint8

    def __init__(self, data: torch.Tensor, sizes: torch.Tensor) -> None:
        sizes = torch.as_tensor(sizes, dtype=torch.int64)
        if data.dtype != torch.uint8 or data.ndim != 1:
            raise DataError(f"ragged image data must be a flat uint8 tensor, got {data.dtype} {tuple(data.shape)}")
        if sizes.ndim != 2 or sizes.shape[1] != 2 or (sizes.numel() and int(sizes.min()) < 1):
            raise DataError(f"ragged image sizes must be positive (height, width) pairs [N, 2], got {tuple(sizes.shape)}")
        lengths = 3 * sizes[:, 0] * sizes[:, 1]
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
        if int(self.offsets[-1]) != data.numel():
            raise DataError(f"ragged image data holds {data.numel()} bytes, its sizes say {int(self.offsets[-1])}")
        self.data, self.sizes = data, sizes

    @classmethod
    def from_arrays(cls, arrays: Sequence[np.ndarray | torch.Tensor]) -> RaggedImages:
        parts = [a if isinstance(a, torch.Tensor) else torch.from_numpy(np.array(a, dtype=np.uint8)) for a in arrays]
        sizes = torch.tensor([[int(p.shape[1]), int(p.shape[2])] for p in parts], dtype=torch.int64).view(-1, 2)
        data = torch.cat([p.reshape(-1) for p in parts]) if parts else torch.zeros(0, dtype=torch.uint8)
        return cls(data.to(torch.uint8), sizes)

    def __len__(self) -> int:
        return int(self.sizes.shape[0])

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(N, 3, largest height, largest width): the bounding shape, for messages and counts."""
        if not len(self):
            return (0, 3, 0, 0)
        return (len(self), 3, int(self.sizes[:, 0].max()), int(self.sizes[:, 1].max()))

    def image(self, i: int) -> torch.Tensor:
        """Image ``i`` as uint8 [3, h, w] (a view of the buffer)."""
        h, w = (int(v) for v in self.sizes[i])
        a = int(self.offsets[i])
        return self.data[a:a + 3 * h * w].view(3, h, w)

    def __getitem__(self, index: slice | torch.Tensor | np.ndarray | Sequence[int]) -> RaggedImages:
        if isinstance(index, slice):
            idx = range(len(self))[index]
            if idx.step == 1 and len(idx):  # a contiguous run: one view of the buffer
                a, b = int(self.offsets[idx.start]), int(self.offsets[idx.stop])
                return RaggedImages(self.data[a:b], self.sizes[idx.start:idx.stop])
            index = list(idx)
        ids = torch.as_tensor(np.asarray(index), dtype=torch.int64).view(-1)
        return RaggedImages.from_arrays([self.image(int(i)) for i in ids])

    def same_size(self) -> bool:
        return len(self) > 0 and bool((self.sizes == self.sizes[0]).all())

    def __repr__(self) -> str:
        return f"RaggedImages({len(self)} images, up to {self.shape[2]}x{self.shape[3]} px)"


Images = Union[torch.Tensor, RaggedImages]


def stack_images(arrays: Sequence[np.ndarray | torch.Tensor]) -> Images:
    """uint8 [3, h, w] images as one tensor [N, 3, H, W] when they share a size, else ragged."""
    if arrays and len({tuple(a.shape) for a in arrays}) == 1:
        return torch.from_numpy(np.stack([np.asarray(a) for a in arrays]))
    return RaggedImages.from_arrays(arrays)


def num_images(images: Images) -> int:
    return len(images)


def take(images: Images, idx: torch.Tensor | np.ndarray) -> Images:
    """The images at ``idx`` (int64 [M]), in that order, of the same kind."""
    if isinstance(images, RaggedImages):
        return images[torch.as_tensor(idx)]
    return images[torch.as_tensor(idx)].contiguous()


def cat_images(parts: Sequence[Images]) -> Images:
    """Concatenation; ragged when the parts are of more than one size."""
    if all(isinstance(p, torch.Tensor) for p in parts) and len({tuple(p.shape[1:]) for p in parts}) <= 1:
        return torch.cat(list(parts))  # type: ignore[arg-type]
    ragged = [p if isinstance(p, RaggedImages) else RaggedImages.from_arrays(list(p)) for p in parts]
    return RaggedImages(torch.cat([r.data for r in ragged]), torch.cat([r.sizes for r in ragged]))


def image_groups(images: Images) -> Iterator[tuple[torch.Tensor | None, torch.Tensor]]:
    """(positions int64 [n] or None for all, uint8 [n, 3, h, w]) for each size the images have, so
    each group is resized in one call. A tensor is one group."""
    if isinstance(images, torch.Tensor):
        yield None, images
        return
    if images.same_size():
        h, w = (int(v) for v in images.sizes[0])
        yield None, images.data.view(len(images), 3, h, w)
        return
    keys = images.sizes[:, 0] * (1 << 20) + images.sizes[:, 1]
    for key in torch.unique(keys):
        pos = torch.nonzero(keys == key).view(-1)
        yield pos, torch.stack([images.image(int(i)) for i in pos])


def image_bytes(images: Images) -> list[bytes]:
    """What identifies the images (a task's fingerprint): a tensor's bytes as before; for ragged
    images their sizes and then their pixels."""
    if isinstance(images, RaggedImages):
        return [b"ragged", images.sizes.numpy().tobytes(), images.data.numpy().tobytes()]
    return [images.contiguous().numpy().tobytes()]


def check_images(images: Images, what: str = "this") -> Images:
    """uint8 [N, 3, H, W] or ragged uint8 images, or a DataError that says what was given."""
    if isinstance(images, RaggedImages):
        return images
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
        raise DataError(f"{what} takes uint8 images [N, 3, H, W] (prepared inside, with the model's own "
                        f"preprocessing), got {x.dtype} {tuple(x.shape)}")
    return x
