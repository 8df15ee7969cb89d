"""How a pool member turns uint8 task images into its input: :class:`Preprocessing` and :func:`prepare`.

Task images are kept at their source resolution (:mod:`expertise.data.ragged`); each member
resizes, crops and normalises them by its own pretrained data config, batch by batch, on the device
the forward runs on (images of one size in one call). Two ways:

* **whole image** (``resize == 0``: this project's own experts, and members stored before
  per-member preprocessing): the whole image resized to ``size`` x ``size`` (antialiased bilinear
  on floats, no crop), scaled to [0, 1] and normalised. At the member's own size nothing is
  resized, so the built-in 32-px tasks reach our 32-px experts exactly as they always have.
* **resize, then centre crop** (``resize > 0``: timm and transformers members), as the member's
  own library prepares an image: the shorter side resized to ``resize`` keeping the aspect ratio
  (``resize_mode = "shortest"``: timm's ``center`` crop mode, transformers' ``shortest_edge``) or
  the whole image to ``resize`` x ``resize`` (``"square"``: timm's ``squash``, transformers' height
  and width), with ``interpolation`` (antialiased), in uint8; the centre ``size`` x ``size`` crop
  (zero-padded when the image is smaller), its offset rounded as torchvision's ``CenterCrop``
  rounds it (``recipe = "timm"``) or truncated as transformers' processors do
  (``"transformers"``); then scaled to [0, 1] and normalised with ``mean`` and ``std``.

The resize is ``torchvision.transforms.v2.functional.resize`` on the uint8 batch, the function
transformers' (torchvision) image processors call: on the CPU its native uint8 kernels, which
reproduce PIL's resampling (what timm's ``create_transform`` applies to the PIL images of its
loaders) up to the rounding between their two passes (at most a few uint8 levels on a pixel, well
under one on average), and run several times faster than a float resize; on a GPU a float resize rounded back to uint8, as torchvision does there (a few levels from
PIL on some pixels). So a transformers member gets its processor's pixels exactly, and a timm
member what its eval transform makes of a PIL image up to that rounding (``tests/test_preprocess.py``
states the tolerances).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from expertise import schema
from expertise.data.ragged import Images, image_groups, num_images
from expertise.errors import ConfigError

MAX_INPUT_SIZE = 2048
RESIZE_MODES = ("square", "shortest")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "nearest-exact")
RECIPES = ("timm", "transformers")
# Filters the tensor backends lack everywhere (PIL's lanczos, box, hamming): approximated by bicubic
APPROXIMATED = {"lanczos": "bicubic", "box": "bicubic", "hamming": "bicubic", "bicubic": "bicubic",
                "bilinear": "bilinear", "nearest": "nearest", "nearest-exact": "nearest-exact"}
DEFAULT_CROP_PCT = 0.875  # timm's, when a data config gives none


@dataclass(frozen=True)
class Preprocessing:
    """How uint8 RGB images become a model's input (see the module docstring): resize, centre crop
    to ``size``, scale to [0, 1], normalise. ``resize == 0`` resizes the whole image to ``size``."""

    size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    resize: int = 0
    resize_mode: str = "square"
    interpolation: str = "bilinear"
    recipe: str = "timm"

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES or self.interpolation not in INTERPOLATIONS \
                or self.recipe not in RECIPES:
            raise ConfigError(f"preprocessing: resize_mode one of {RESIZE_MODES}, interpolation one of "
                              f"{INTERPOLATIONS}, recipe one of {RECIPES}; got {self.resize_mode!r}, "
                              f"{self.interpolation!r}, {self.recipe!r}")

    @property
    def whole_image(self) -> bool:
        return self.resize == 0

    def to_json(self) -> dict[str, Any]:
        """The stored form; a whole-image preprocessing keeps the three keys it always had."""
        d: dict[str, Any] = {"size": self.size, "mean": list(self.mean), "std": list(self.std)}
        if not self.whole_image:
            d.update(resize=self.resize, resize_mode=self.resize_mode, interpolation=self.interpolation,
                     recipe=self.recipe)
        return d

    def key(self) -> str:
        """16 hex digits identifying what this preprocessing does to an image (embedding cache keys)."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str = "preprocessing") -> Preprocessing:
        """Checked: ``size`` an integer in [8, 2048], ``mean`` and ``std`` three finite numbers each
        (``std`` positive); optionally ``resize`` (0, or [1, 4096]), ``resize_mode``,
        ``interpolation`` and ``recipe`` from their lists; nothing else."""
        d = schema.obj(d, where)
        schema.keys(d, where, ("size", "mean", "std"), ("resize", "resize_mode", "interpolation", "recipe"))
        return cls(schema.integer(d["size"], f"{where}.size", 8, MAX_INPUT_SIZE),
                   schema.number_list(d["mean"], f"{where}.mean", -10.0, 10.0, 3),  # type: ignore[arg-type]
                   schema.number_list(d["std"], f"{where}.std", 0.0, 10.0, 3, lo_open=True),  # type: ignore[arg-type]
                   schema.integer(d.get("resize", 0), f"{where}.resize", 0, 2 * MAX_INPUT_SIZE),
                   schema.string(d.get("resize_mode", "square"), f"{where}.resize_mode", choices=RESIZE_MODES),
                   schema.string(d.get("interpolation", "bilinear"), f"{where}.interpolation", choices=INTERPOLATIONS),
                   schema.string(d.get("recipe", "timm"), f"{where}.recipe", choices=RECIPES))


def timm_preprocessing(data: dict[str, Any], size: int | None = None) -> Preprocessing:
    """A timm data config (``timm.data.resolve_data_config``) as a Preprocessing, as
    ``create_transform(**data)`` evaluates it: ``size`` (default ``input_size``), the shorter side
    (``center`` crop mode) or the whole image (``squash``) resized to floor(size / crop_pct), the
    centre crop. Crop mode ``border`` (letterboxing) is refused."""
    input_size = int(size or data["input_size"][-1])
    if not 8 <= input_size <= MAX_INPUT_SIZE:
        raise ConfigError(f"input size must be between 8 and {MAX_INPUT_SIZE} pixels, got {input_size}")
    crop_pct = float(data.get("crop_pct") or DEFAULT_CROP_PCT)
    mode = data.get("crop_mode") or "center"
    if mode not in ("center", "squash"):
        raise ConfigError(f"timm crop mode {mode!r} (letterboxing) is not supported; pool members use 'center' or "
                          "'squash' (set crop_mode in the weights' pretrained_cfg)")
    interpolation = APPROXIMATED.get(str(data.get("interpolation", "bilinear")), "bicubic")
    return Preprocessing(input_size, tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
                         tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
                         math.floor(input_size / crop_pct), "shortest" if mode == "center" else "square",
                         interpolation, "timm")


def resized_size(h: int, w: int, prep: Preprocessing) -> tuple[int, int]:
    """The (height, width) an h x w image is resized to before the crop (torchvision's and
    transformers' rule for a shorter side: the longer one is int(resize * long / short))."""
    if prep.whole_image:
        return prep.size, prep.size
    if prep.resize_mode == "square":
        return prep.resize, prep.resize
    if min(h, w) == prep.resize:
        return h, w
    if h <= w:
        return prep.resize, int(prep.resize * w / h)
    return int(prep.resize * h / w), prep.resize


def _center_crop(x: torch.Tensor, size: int, recipe: str) -> torch.Tensor:
    h, w = x.shape[-2:]
    if size > h or size > w:  # zero padding, split as torchvision and transformers split it
        ph, pw = max(size - h, 0), max(size - w, 0)
        x = F.pad(x, [pw // 2, (pw + 1) // 2, ph // 2, (ph + 1) // 2])
        h, w = x.shape[-2:]
    if recipe == "timm":  # torchvision's CenterCrop
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    else:  # transformers' center_crop
        top, left = int((h - size) / 2.0), int((w - size) / 2.0)
    return x[..., top:top + size, left:left + size]


def _resize_uint8(x: torch.Tensor, out: tuple[int, int], prep: Preprocessing) -> torch.Tensor:
    """uint8 [n, 3, h, w] resized to ``out`` (torchvision's v2 resize: see the module docstring)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as tv2

    return tv2.resize(x, list(out), interpolation=InterpolationMode(prep.interpolation), antialias=True)


def _prepare_group(images: torch.Tensor, prep: Preprocessing, device: torch.device | None) -> torch.Tensor:
    x = images.to(device) if device is not None else images
    if prep.whole_image:
        x = x.float().div_(255.0)
        if x.shape[-1] != prep.size or x.shape[-2] != prep.size:
            x = F.interpolate(x, size=(prep.size, prep.size), mode="bilinear", antialias=True, align_corners=False)
    else:
        h, w = x.shape[-2:]
        out = resized_size(h, w, prep)
        if out != (h, w):
            x = _resize_uint8(x, out, prep)
        x = _center_crop(x, prep.size, prep.recipe).float().div_(255.0)
    mean = torch.tensor(prep.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def prepare(images: Images, prep: Preprocessing, device: torch.device | None = None) -> torch.Tensor:
    """uint8 images (a tensor [N, 3, H, W], or ragged at their source sizes) -> float32
    [N, 3, size, size] on ``device`` (default: where the images are), prepared by ``prep``. Images
    of one size are resized in one call."""
    groups = list(image_groups(images))
    if len(groups) == 1 and groups[0][0] is None:
        return _prepare_group(groups[0][1], prep, device)
    out = torch.empty(num_images(images), 3, prep.size, prep.size, device=device)
    for pos, group in groups:
        assert pos is not None
        out[pos.to(out.device)] = _prepare_group(group, prep, device)
    return out
