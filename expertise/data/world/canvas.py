"""Compositing: styles, poses and ``Canvas``, the float32 rendering operations on a batch.

Only exactly rounded float32 ops (add, multiply, floor, clip, gathers) are applied element-wise, with
no reduction across pixels or images, so an image's bytes do not depend on its batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from expertise.data.world.banks import CLUTTER_DOTS, CLUTTER_STROKES, Banks
from expertise.data.world.rng import COS, NUM_ANGLES, SIN, Draw, angle_index

F32 = np.float32


@dataclass(frozen=True)
class Style:
    """Nuisance knobs of one rendering recipe; ranges are (low, high), drawn uniformly per image."""

    scale: tuple[float, float] = (0.8, 1.15)  # sprite canvas half-width, in frame half-widths
    aspect: float = 0.1  # x/y stretch up to 1 +- aspect
    rotation: tuple[float, float] = (-15.0, 15.0)  # degrees
    shear: float = 0.2
    shift: float = 0.15  # max |translation| of the object centre, frame half-widths
    neighbours: float = 0.0  # probability of a neighbouring glyph on each side
    clutter_behind: float = 0.3  # probability of a distractor under the object
    clutter_front: float = 0.2  # probability of a distractor over the object
    dots: float = 0.3  # fraction of distractors that are dot clusters rather than strokes
    noise: tuple[float, float] = (0.0, 0.07)  # sensor noise standard deviation
    blur: tuple[float, float] = (0.0, 0.9)  # blend weight of a 3x3 binomial blur
    blur_passes: int = 1
    contrast: tuple[float, float] = (0.6, 1.1)
    brightness: float = 0.08
    cast: float = 0.0  # max per-channel colour offset
    lowres: int = 1  # render at resolution / lowres, then upsample (a coarse sensor)


_CLUTTER_POSE = Style(scale=(0.5, 1.0), rotation=(-180, 180), shear=0.3, shift=0.6)  # distractors go anywhere
GLYPH_STYLE = Style(scale=(0.75, 1.15), aspect=0.12, rotation=(-15, 15), shear=0.25, shift=0.15, neighbours=0.35,
                    clutter_behind=0.3, clutter_front=0.25, dots=0.2)
SHAPE_STYLE = Style(scale=(0.7, 1.1), aspect=0.1, rotation=(-180, 180), shear=0.15, shift=0.2,
                    clutter_behind=0.5, clutter_front=0.3, dots=0.4)
TEXTURE_STYLE = Style(scale=(0.87, 1.15), aspect=0.05, rotation=(-10, 10), shear=0.05, clutter_behind=0.0,
                      clutter_front=0.15, blur=(0.0, 0.7))


@dataclass(frozen=True)
class Pose:
    """Where a sprite goes: ``m`` float64 [B, 4] maps frame offsets from the centre ``t`` float64
    [B, 2] (normalised coords, x right, y down) to sprite-canvas coords (a, b; c, d), row-major."""

    m: np.ndarray
    t: np.ndarray
    angle: np.ndarray  # int64 [B] table index of the rotation
    scale: np.ndarray  # float64 [B] along the object's x axis

    def moved(self, t: np.ndarray) -> Pose:
        return Pose(self.m, t, self.angle, self.scale)


def make_pose(d: Draw, name: str, style: Style, centre: np.ndarray | None = None,
              angle_deg: np.ndarray | None = None, scale: np.ndarray | None = None) -> Pose:
    """A random pose: rotation, shear, aspect and scale from ``style`` unless given explicitly."""
    ang = angle_index(d.uniform(name + ".rot", *style.rotation) if angle_deg is None else angle_deg)
    sc = d.uniform(name + ".scale", *style.scale) if scale is None else scale
    asp = d.uniform(name + ".aspect", 1 - style.aspect, 1 + style.aspect)
    h = d.uniform(name + ".shear", -style.shear, style.shear)
    c, s = COS[ang], SIN[ang]
    sx, sy = sc * asp, sc / asp
    # inverse of  p = t + Rot(angle) @ [[1, h], [0, 1]] @ diag(sx, sy) @ q
    m = np.stack([(c + h * s) / sx, (s - h * c) / sx, -s / sy, c / sy], axis=1)
    if centre is None:
        centre = np.stack([d.uniform(name + ".tx", -style.shift, style.shift),
                           d.uniform(name + ".ty", -style.shift, style.shift)], axis=1)
    return Pose(m, centre, ang, sx)


def grid_slots(d: Draw, count: np.ndarray, most: int) -> Iterator[tuple[int, np.ndarray, Draw, np.ndarray]]:
    """The objects of counting images: for k < ``most``, the images with more than k objects (``on``),
    their sub-draw, and the k-th object's centre [n, 2], each object in its own cell of a 3x3 grid
    (cells in a random order per image), jittered by up to 0.06."""
    cells = np.argsort(np.stack([d.u(f"cell{k}") for k in range(9)], axis=1), axis=1)  # [B, 9] random order
    for k in range(most):
        on = count > k
        if not on.any():
            continue
        s = d.sub(on)
        cell = cells[on, k]
        centre = np.stack([(cell % 3 - 1) * 0.64, (cell // 3 - 1) * 0.64], axis=1) + \
            np.stack([s.uniform(f"o{k}.jx", -0.06, 0.06), s.uniform(f"o{k}.jy", -0.06, 0.06)], axis=1)
        yield k, on, s, centre


def _bilinear(flat: np.ndarray, x: np.ndarray, y: np.ndarray, base: np.ndarray, width: int,
              wrap: int = 0) -> np.ndarray:
    """Bilinear lookup in row-major images stored in ``flat``: image ``base`` [B] (as a flat offset),
    pixel coords x, y float32 [B, R, R]. ``wrap`` > 0 wraps coordinates modulo it (tiles); otherwise
    coordinates are clipped into a zero border one pixel wide (sprites)."""
    if wrap:
        x0, y0 = np.floor(x), np.floor(y)
    else:  # clip into the border; x == width-1 reads the last pair with all weight on the zero border
        np.clip(x, 0, width - 1, out=x)
        np.clip(y, 0, width - 1, out=y)
        x0, y0 = np.minimum(np.floor(x), F32(width - 2)), np.minimum(np.floor(y), F32(width - 2))
    fx, fy = x - x0, y - y0
    xi, yi = x0.astype(np.int64), y0.astype(np.int64)
    if wrap:
        xi %= wrap
        yi %= wrap
        xj, yj = (xi + 1) % wrap, (yi + 1) % wrap
    else:
        xj, yj = xi + 1, yi + 1
    b = base[:, None, None]
    r0, r1 = b + yi * width, b + yj * width
    v00, v01, v10, v11 = flat[r0 + xi], flat[r0 + xj], flat[r1 + xi], flat[r1 + xj]
    top = v00 + fx * (v01 - v00)
    bot = v10 + fx * (v11 - v10)
    return top + fy * (bot - top)


class Canvas:
    """Rendering operations on a batch at one resolution; images are float32 [B, 3, R, R] in ~[0, 1]."""

    def __init__(self, banks: Banks, resolution: int) -> None:
        self.banks = banks
        self.r = resolution
        self.grid = ((np.arange(resolution) + 0.5) / resolution * 2 - 1).astype(F32)  # pixel centres

    def sprite(self, bank: np.ndarray, rows: np.ndarray, pose: Pose) -> np.ndarray:
        """Coverage float32 [B, R, R] of sprites ``rows`` of ``bank`` drawn at ``pose``."""
        width = bank.shape[-1]
        half = (width - 2) / 2
        m = (pose.m * half).astype(F32)
        t = pose.t.astype(F32)
        dx = self.grid[None, None, :] - t[:, 0, None, None]  # [B, 1, R]
        dy = self.grid[None, :, None] - t[:, 1, None, None]  # [B, R, 1]
        x = m[:, 0, None, None] * dx + m[:, 1, None, None] * dy + F32(half + 0.5)
        y = m[:, 2, None, None] * dx + m[:, 3, None, None] * dy + F32(half + 0.5)
        return _bilinear(bank.reshape(-1), x, y, rows.astype(np.int64) * width * width, width)

    def texture(self, rows: np.ndarray, pose: Pose) -> np.ndarray:
        """Texture float32 [B, R, R] in [0, 1]: tiles ``rows`` under ``pose``; ``pose.t`` is the tile
        offset in tile pixels. At scale 1 a frame pixel covers a tile pixel at resolution R."""
        bank = self.banks.textures
        tile = bank.shape[-1]
        m = (pose.m * (tile / 4)).astype(F32)
        t = pose.t.astype(F32)
        gx, gy = self.grid[None, None, :], self.grid[None, :, None]
        x = m[:, 0, None, None] * gx + m[:, 1, None, None] * gy + t[:, 0, None, None]
        y = m[:, 2, None, None] * gx + m[:, 3, None, None] * gy + t[:, 1, None, None]
        return _bilinear(bank.reshape(-1), x, y, rows.astype(np.int64) * tile * tile, tile, wrap=tile)

    def gradient(self, d: Draw, name: str, c0: np.ndarray, c1: np.ndarray, strength: tuple[float, float]) -> np.ndarray:
        """float32 [B, 3, R, R]: colour c0 [B, 3] shading towards c1 along a random direction."""
        ang = d.integers(name + ".dir", NUM_ANGLES)
        k = d.uniform(name + ".k", *strength)
        gx, gy = (COS[ang] * k / 2).astype(F32), (SIN[ang] * k / 2).astype(F32)
        w = gx[:, None, None] * self.grid[None, None, :] + gy[:, None, None] * self.grid[None, :, None] + F32(0.5)
        c0, c1 = c0.astype(F32), c1.astype(F32)
        return c0[:, :, None, None] + w[:, None] * (c1 - c0)[:, :, None, None]

    @staticmethod
    def paint(img: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
        """In place: img [B, 3, R, R] <- img + alpha [B, R, R] * (colour [B, 3] - img)."""
        img += alpha[:, None] * (colour.astype(F32)[:, :, None, None] - img)

    def clutter(self, img: np.ndarray, d: Draw, name: str, p: float, style: Style, colour: np.ndarray) -> None:
        """In place: with probability ``p`` per image, a distractor stroke or dot cluster."""
        on = d.bernoulli(name, p)
        if not on.any():
            return
        s = d.sub(on)
        dots = s.bernoulli(name + ".dots", style.dots)
        rows = np.where(dots, CLUTTER_STROKES + s.integers(name + ".rd", CLUTTER_DOTS),
                        s.integers(name + ".rs", CLUTTER_STROKES))
        pose = make_pose(s, name, _CLUTTER_POSE)
        opacity = s.uniform(name + ".op", 0.5, 1.0).astype(F32)[:, None, None]
        alpha = self.sprite(self.banks.clutter, rows, pose) * opacity
        sub = img[on]
        self.paint(sub, alpha, colour[on])
        img[on] = sub

    def blur(self, img: np.ndarray) -> np.ndarray:
        """3x3 binomial blur with replicated edges, as two separable passes of (1, 2, 1) / 4."""
        p = np.concatenate([img[..., :1], img, img[..., -1:]], axis=-1)
        h = (p[..., :-2] + p[..., 2:]) * F32(0.25) + p[..., 1:-1] * F32(0.5)
        p = np.concatenate([h[..., :1, :], h, h[..., -1:, :]], axis=-2)
        return (p[..., :-2, :] + p[..., 2:, :]) * F32(0.25) + p[..., 1:-1, :] * F32(0.5)

    def finish(self, img: np.ndarray, d: Draw, style: Style) -> np.ndarray:
        """Global nuisances (contrast, brightness, colour cast, blur, sensor noise), then uint8 [B, 3, R, R]."""
        b = len(d)
        con = d.uniform("post.contrast", *style.contrast).astype(F32)[:, None, None, None]
        shift = (0.5 + d.uniform("post.bright", -style.brightness, style.brightness)).astype(F32)[:, None, None, None]
        img = (img - F32(0.5)) * con + shift
        if style.cast:
            cast = np.stack([d.uniform(f"post.cast{c}", -style.cast, style.cast) for c in range(3)], axis=1)
            img += cast.astype(F32)[:, :, None, None]
        w = d.uniform("post.blur", *style.blur).astype(F32)[:, None, None, None]
        for _ in range(style.blur_passes):
            img += w * (self.blur(img) - img)
        sigma = d.uniform("post.noise", *style.noise).astype(F32)[:, None, None, None]
        img += sigma * self.noise(d, b, img.shape[-1])
        return np.clip(img * F32(255) + F32(0.5), 0, 255).astype(np.uint8)

    def noise(self, d: Draw, b: int, r: int) -> np.ndarray:
        """float32 [B, 3, r, r] standard-normal noise: a window of a random tile at a random offset."""
        bank = self.banks.noise
        n = bank.shape[-1]
        tile = d.integers("noise.tile", bank.shape[0])
        ox, oy = d.integers("noise.x", n), d.integers("noise.y", n)
        ar = np.arange(r)
        xs = (ox[:, None] + ar) % n  # [B, r]
        ys = (oy[:, None] + ar) % n
        base = (tile[:, None] * 3 + np.arange(3)) * n * n  # [B, 3]
        idx = base[:, :, None, None] + ys[:, None, :, None] * n + xs[:, None, None, :]
        return bank.reshape(-1)[idx]


def lowres_render(canvas_at: Callable[[int], Canvas], resolution: int, factor: int,
                  draw: Callable[[Canvas], np.ndarray]) -> tuple[np.ndarray, Canvas]:
    """Render with ``draw`` at resolution / factor, then upsample by pixel repetition to ``resolution``."""
    if factor <= 1:
        c = canvas_at(resolution)
        return draw(c), c
    low = canvas_at(-(-resolution // factor))
    img = draw(low)
    img = np.repeat(np.repeat(img, factor, axis=-1), factor, axis=-2)[..., :resolution, :resolution]
    return np.ascontiguousarray(img), canvas_at(resolution)
