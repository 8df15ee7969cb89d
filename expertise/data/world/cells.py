"""The ``cell`` domain: microscopy-like fields of stained cells, all of one morphology per image.

A bank of intensity sprites (one row per class variant, built once per seed and size with numpy)
holds each morphology: round nuclei, rings, rods, chains, lobed and irregular cells. An image shows
one to four of them at random places, glowing on a dark ground (fluorescence) or dark on a light one
(bright field), among debris, blurred and noisy. Rendering only reads the bank through
``Canvas.sprite``, so an image's bytes do not depend on its batch.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

from expertise.data.world.canvas import F32, Canvas, Style, make_pose
from expertise.data.world.catalogue import CELL_FAMILIES
from expertise.data.world.rng import Draw, angle_index, colour_of, stable_code

_VARIANTS = 6
MAX_CELLS = 4
CELL_STYLE = Style(scale=(0.42, 0.62), aspect=0.15, rotation=(-180, 180), shear=0.15, shift=0.55, clutter_behind=0.5,
                   clutter_front=0.0, dots=1.0, noise=(0.02, 0.09), blur=(0.3, 0.9), blur_passes=2,
                   contrast=(0.7, 1.1), brightness=0.05)

Fn = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]


def _disc(x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float, soft: float = 0.08) -> np.ndarray:
    """A filled disc with a soft rim, values in [0, 1]."""
    return np.clip((r - np.hypot(x - cx, y - cy)) / soft, 0, 1)


def _segment(x: np.ndarray, y: np.ndarray, p: tuple[float, float], q: tuple[float, float]) -> np.ndarray:
    dx, dy = q[0] - p[0], q[1] - p[1]
    t = np.clip(((x - p[0]) * dx + (y - p[1]) * dy) / max(dx * dx + dy * dy, 1e-9), 0, 1)
    return np.hypot(x - p[0] - t * dx, y - p[1] - t * dy)


def _radial(x: np.ndarray, y: np.ndarray, radius: np.ndarray, soft: float = 0.06) -> np.ndarray:
    """A star-shaped cell: inside where the distance from the centre is below ``radius(angle)``."""
    return np.clip((radius - np.hypot(x, y)) / soft, 0, 1)


def _cell_fns() -> dict[str, Fn]:
    u = lambda g, lo, hi: float(g.uniform(lo, hi))  # noqa: E731
    ang = lambda x, y: np.arctan2(y, x)  # noqa: E731

    def speckled(x, y, g):
        out = 0.35 * _disc(x, y, 0, 0, 0.75)
        for cx, cy in g.uniform(-0.45, 0.45, (int(g.integers(6, 11)), 2)):
            out = np.maximum(out, _disc(x, y, cx, cy, u(g, 0.07, 0.11), 0.04))
        return out

    def chain(x, y, g):
        n, r = int(g.integers(3, 5)), u(g, 0.17, 0.22)
        xs = (np.arange(n) - (n - 1) / 2) * 2 * r * 0.95
        return np.max([_disc(x, y, cx, u(g, -0.05, 0.05), r) for cx in xs], axis=0)

    def filament(x, y, g):
        f, a = u(g, 1.0, 1.8), u(g, 0.15, 0.3)
        return np.clip(1 - np.abs(y - a * np.sin(np.pi * f * x)) / 0.08, 0, 1) * (np.abs(x) < 0.85)

    def lobes(x, y, g, n, d, r):
        a0 = u(g, 0, 2 * np.pi)
        return np.max([_disc(x, y, d * np.cos(a0 + 2 * np.pi * k / n), d * np.sin(a0 + 2 * np.pi * k / n), r)
                       for k in range(n)], axis=0)

    def amoeboid(x, y, g):
        a, rad = ang(x, y), 0.6
        for k in (2, 3, 4):
            rad = rad + u(g, 0.05, 0.12) * np.cos(k * a + u(g, 0, 2 * np.pi))
        return _radial(x, y, rad)

    def stellate(x, y, g):
        out = _disc(x, y, 0, 0, 0.3)
        a0 = u(g, 0, 2 * np.pi)
        for k in range(int(g.integers(4, 7))):
            a = a0 + 2 * np.pi * k / 6 + u(g, -0.3, 0.3)
            out = np.maximum(out, np.clip(1 - _segment(x, y, (0, 0), (0.85 * np.cos(a), 0.85 * np.sin(a))) / 0.06, 0, 1))
        return out

    def fragmented(x, y, g):
        out = np.zeros_like(x)
        for cx, cy in g.uniform(-0.5, 0.5, (int(g.integers(4, 7)), 2)):
            out = np.maximum(out, _disc(x, y, cx, cy, u(g, 0.1, 0.2)) * u(g, 0.6, 1.0))
        return out

    return {
        "nucleus": lambda x, y, g: _disc(x, y, 0, 0, u(g, 0.65, 0.8)) * (0.75 + 0.25 * np.clip(1 - np.hypot(x, y), 0, 1)),
        "ring": lambda x, y, g: np.clip(1 - np.abs(np.hypot(x, y) - u(g, 0.6, 0.72)) / u(g, 0.07, 0.11), 0, 1),
        "target": lambda x, y, g: np.maximum(0.35 * _disc(x, y, 0, 0, 0.78), _disc(x, y, u(g, -0.1, 0.1), 0, u(g, 0.25, 0.32))),
        "speckled": speckled,
        "halo": lambda x, y, g: np.maximum(_disc(x, y, 0, 0, u(g, 0.18, 0.25)), 0.5 * np.exp(-(np.hypot(x, y) / 0.55) ** 2)),
        "rod": lambda x, y, g: np.clip((u(g, 0.2, 0.26) - _segment(x, y, (-0.6, 0), (0.6, 0))) / 0.07, 0, 1),
        "spindle": lambda x, y, g: _disc(x, y, 0, u(g, 0.5, 0.6), 0.9) * _disc(x, y, 0, -u(g, 0.5, 0.6), 0.9),
        "chain": chain,
        "curved": lambda x, y, g: np.clip(1 - np.abs(np.hypot(x, y + 0.3) - 0.65) / 0.16, 0, 1) * (y > -0.15),
        "filament": filament,
        "bilobed": lambda x, y, g: lobes(x, y, g, 2, u(g, 0.3, 0.38), 0.42),
        "trilobed": lambda x, y, g: lobes(x, y, g, 3, u(g, 0.33, 0.4), 0.36),
        "multilobed": lambda x, y, g: _radial(x, y, 0.55 + u(g, 0.15, 0.22) * np.cos(5 * ang(x, y) + u(g, 0, 6.3))),
        "budding": lambda x, y, g: np.maximum(_disc(x, y, -0.2, 0, 0.55), _disc(x, y, u(g, 0.48, 0.58), 0, u(g, 0.2, 0.28))),
        "amoeboid": amoeboid,
        "stellate": stellate,
        "crenated": lambda x, y, g: _radial(x, y, 0.65 + 0.09 * np.cos(int(g.integers(12, 17)) * ang(x, y)), 0.04),
        "fragmented": fragmented,
    }


@lru_cache(maxsize=4)
def cell_bank(seed: int, size: int) -> tuple[np.ndarray, dict[str, tuple[int, int]]]:
    """Cell sprites float32 [M, size+2, size+2] (intensity in [0, 1], zero border), ``_VARIANTS`` rows
    per class, and each class's (start, count)."""
    fns = _cell_fns()
    g2 = (np.arange(size * 2) + 0.5) / (size * 2) * 2 - 1
    x, y = np.meshgrid(g2, -g2)
    rows, index = [], {}
    for family, names in CELL_FAMILIES.items():
        for name in names:
            index[f"cell/{family}/{name}"] = (len(rows), _VARIANTS)
            for v in range(_VARIANTS):
                g = np.random.default_rng([seed, stable_code("cell/" + name) & 0xFFFFFFFF, v])
                a = g.uniform(0.9, 1.1)
                img = np.clip(fns[name](x * a, y / a, g), 0, 1)
                rows.append(img.reshape(size, 2, size, 2).mean(axis=(1, 3)).astype(np.float32))
    bank = np.pad(np.stack(rows), ((0, 0), (1, 1), (1, 1)))
    bank.flags.writeable = False
    return bank, index


def draw_cells(c: Canvas, d: Draw, bank: np.ndarray, start: np.ndarray, count: np.ndarray,
               style: Style = CELL_STYLE) -> np.ndarray:
    """float32 [B, 3, R, R]: 1-4 cells of each image's class (bank rows ``start`` + a variant below
    ``count``, drawn per cell) under fluorescence or bright-field imaging, with debris."""
    b = len(d)
    fluo = d.bernoulli("fluo", 0.65)
    ground = np.where(fluo[:, None], colour_of(d.uniform("g.dark", 0.0, 0.12), d.uniform("g.dc", 0, 0.05),
                                               d.integers("g.dh", 3600)),
                      colour_of(d.uniform("g.light", 0.72, 0.95), d.uniform("g.lc", 0.02, 0.12),
                                angle_index(d.uniform("g.lh", 280, 360))))
    hue = np.where(fluo, np.array([0.0, 120.0, 240.0, 300.0, 180.0])[d.integers("stain.k", 5)],
                   d.uniform("stain.bh", 260, 320)) + d.uniform("stain.dh", -20, 20)
    stain = np.where(fluo[:, None], colour_of(d.uniform("stain.l", 0.5, 0.8), d.uniform("stain.c", 0.3, 0.5), angle_index(hue)),
                     colour_of(d.uniform("stain.bl", 0.15, 0.4), d.uniform("stain.bc", 0.15, 0.35), angle_index(hue)))
    img = np.broadcast_to(ground.astype(F32)[:, :, None, None], (b, 3, c.r, c.r)).copy()
    debris = ground + (stain - ground) * d.uniform("debris.k", 0.2, 0.5)[:, None]
    c.clutter(img, d, "clutter.behind", style.clutter_behind, style, debris)
    n = 1 + d.integers("cells", MAX_CELLS)
    for k in range(MAX_CELLS):
        on = n > k
        s = d.sub(on)
        rows = start[on] + s.integers(f"c{k}.v", count[on])
        centre = np.zeros((int(on.sum()), 2)) if k == 0 else None  # the first cell near the centre
        pose = make_pose(s, f"c{k}", style, None if centre is None else centre + s.uniform(f"c{k}.j", -0.15, 0.15)[:, None])
        alpha = c.sprite(bank, rows, pose) * s.uniform(f"c{k}.op", 0.7, 1.0).astype(F32)[:, None, None]
        sub = img[on]
        c.paint(sub, alpha, stain[on])
        img[on] = sub
    return img
