"""Procedural art banks: every pixel source of a world, built once per (seed, resolution).

Glyph bitmaps (matplotlib's bundled fonts), shape and distractor sprites (supersampled masks, box
filtered), and, from ``textures.py``, texture and noise tiles. Rendering only reads these banks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from expertise.data.world.catalogue import GLYPH_FAMILIES, LATIN_FONTS, SHAPE_FAMILIES, UNICODE_FONTS, family_fonts
from expertise.data.world.rng import stable_code
from expertise.data.world.textures import noise_bank, texture_bank
from expertise.errors import DataError


@dataclass(frozen=True)
class Banks:
    """Every pixel source of a world at one resolution."""

    glyphs: np.ndarray  # float32 [G, S+2, S+2]
    shapes: np.ndarray  # float32 [P, S+2, S+2]
    clutter: np.ndarray  # float32 [C, S+2, S+2]
    textures: np.ndarray  # float32 [T, 2R, 2R]
    noise: np.ndarray  # float32 [16, 3, N, N]
    rows: dict[str, tuple[int, int]]  # class name -> (start, count) in its domain's bank


def build_banks(seed: int, resolution: int) -> Banks:
    """The banks of a world (each cached per (seed, size), so a second ``World`` of one config is cheap)."""
    size = 2 * resolution  # sprites are minified ~2x when drawn, which anti-aliases them
    glyphs, glyph_rows = _glyph_bank(size)
    shapes, shape_rows = _shape_bank(seed, size)
    textures, texture_rows = texture_bank(seed, size)
    noise = noise_bank(seed, max(64, resolution))
    return Banks(glyphs, shapes, _clutter_bank(seed, size), textures, noise,
                 {**glyph_rows, **shape_rows, **texture_rows})


# -- glyphs -----------------------------------------------------------------------------------


def _font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _render_glyph(font, char: str, em: int, size: int) -> np.ndarray:
    """float32 [size, size] coverage of ``char`` at ``em`` pixels per em, centred on its bounding box."""
    from matplotlib.ft2font import LoadFlags

    font.clear()
    font.set_size(em, 72)
    font.set_text(char, 0.0, flags=LoadFlags.NO_HINTING)
    font.draw_glyphs_to_bitmap(antialiased=True)
    img = np.asarray(font.get_image(), dtype=np.float32) / 255.0
    ys, xs = np.nonzero(img > 0)
    out = np.zeros((size, size), dtype=np.float32)
    if ys.size == 0:
        raise DataError(f"font {font.fname} rendered nothing for {char!r}")
    img = img[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1][:size, :size]
    h, w = img.shape
    y0, x0 = (size - h) // 2, (size - w) // 2
    out[y0: y0 + h, x0: x0 + w] = img
    return out


@lru_cache(maxsize=4)
def _glyph_bank(size: int) -> tuple[np.ndarray, dict[str, tuple[int, int]]]:
    """Glyph bitmaps float32 [M, size+2, size+2] (zero border) and, per glyph class, its (start, count)
    rows: one row per font, in ``UNICODE_FONTS + LATIN_FONTS`` order. Seed-independent."""
    from matplotlib.ft2font import FT2Font

    fonts = {name: FT2Font(str(_font_dir() / f"{name}.ttf")) for name in UNICODE_FONTS + LATIN_FONTS}
    em = max(8, round(0.75 * size))  # capitals fill about half the canvas, wide letters most of it
    rows: list[np.ndarray] = []
    index: dict[str, tuple[int, int]] = {}
    for family, chars in GLYPH_FAMILIES.items():
        names = family_fonts(family)
        for cname, char in chars.items():
            index[f"glyph/{family}/{cname}"] = (len(rows), len(names))
            for fname in names:
                if fonts[fname].get_char_index(ord(char)) == 0:
                    raise DataError(f"font {fname} lacks {char!r}; matplotlib's bundled fonts changed")
                rows.append(_render_glyph(fonts[fname], char, em, size))
    bank = np.pad(np.stack(rows), ((0, 0), (1, 1), (1, 1)))
    bank.flags.writeable = False
    return bank, index


def _supersampled(size: int, factor: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates X, Y float64 [size*factor]^2 in [-1, 1], Y pointing up (shapes are drawn upright)."""
    g = (np.arange(size * factor) + 0.5) / (size * factor) * 2 - 1
    x, y = np.meshgrid(g, -g)
    return x, y


def _box_down(mask: np.ndarray, factor: int) -> np.ndarray:
    """Anti-aliased coverage: mean over factor x factor blocks of a bool mask [n*f, n*f] -> float32 [n, n]."""
    n = mask.shape[0] // factor
    return mask.reshape(n, factor, n, factor).mean(axis=(1, 3), dtype=np.float64).astype(np.float32)


# -- shapes -----------------------------------------------------------------------------------
# Each shape is a function (X, Y, rng) -> bool mask on the supersampled grid, fitting the disc of
# radius ~0.9 so a full rotation never clips it. rng varies a few parameters per variant.


def _poly(x: np.ndarray, y: np.ndarray, verts: np.ndarray) -> np.ndarray:
    from matplotlib.path import Path as MplPath

    return MplPath(np.asarray(verts)).contains_points(np.c_[x.ravel(), y.ravel()]).reshape(x.shape)


def _ngon(n: int, r: float = 0.85, phase: float = np.pi / 2) -> np.ndarray:
    a = phase + 2 * np.pi * np.arange(n) / n
    return np.c_[r * np.cos(a), r * np.sin(a)]


def _star(n: int, inner: float, r: float = 0.88) -> np.ndarray:
    a = np.pi / 2 + np.pi * np.arange(2 * n) / n
    rad = np.where(np.arange(2 * n) % 2 == 0, r, r * inner)
    return np.c_[rad * np.cos(a), rad * np.sin(a)]


def _bar(x: np.ndarray, y: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)


def _disc(x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    return (x - cx) ** 2 + (y - cy) ** 2 <= r * r


def _polar(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.hypot(x, y), np.arctan2(y, x)


def _shape_fns() -> dict[str, Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]]:
    u = lambda g, lo, hi: float(g.uniform(lo, hi))  # noqa: E731
    j = lambda g, v, s=0.03: v + g.uniform(-s, s, np.shape(v))  # noqa: E731  vertex jitter
    fns: dict[str, Callable] = {
        "triangle": lambda x, y, g: _poly(x, y, j(g, _ngon(3, 0.9))),
        "square": lambda x, y, g: _poly(x, y, j(g, _ngon(4, 0.85, np.pi / 4))),
        "pentagon": lambda x, y, g: _poly(x, y, j(g, _ngon(5))),
        "hexagon": lambda x, y, g: _poly(x, y, j(g, _ngon(6))),
        "heptagon": lambda x, y, g: _poly(x, y, j(g, _ngon(7))),
        "octagon": lambda x, y, g: _poly(x, y, j(g, _ngon(8))),
        "rectangle": lambda x, y, g: _bar(x, y, -0.82, -0.82 / u(g, 1.6, 2.2), 0.82, 0.82 / u(g, 1.6, 2.2)),
        "rhombus": lambda x, y, g: _poly(x, y, j(g, [[0, 0.88], [u(g, 0.4, 0.55), 0], [0, -0.88], [-u(g, 0.4, 0.55), 0]])),
        "parallelogram": lambda x, y, g: _poly(x, y, j(g, [[-0.85, -0.4], [0.35, -0.4], [0.85, 0.4], [-0.35, 0.4]])),
        "trapezoid": lambda x, y, g: _poly(x, y, j(g, [[-0.85, -0.5], [0.85, -0.5], [0.4, 0.5], [-0.4, 0.5]])),
        "right_triangle": lambda x, y, g: _poly(x, y, j(g, [[-0.65, -0.6], [0.7, -0.6], [-0.65, 0.7]])),
        "kite": lambda x, y, g: _poly(x, y, j(g, [[0, 0.88], [0.55, 0.3], [0, -0.88], [-0.55, 0.3]])),
        "star4": lambda x, y, g: _poly(x, y, _star(4, u(g, 0.3, 0.4))),
        "star5": lambda x, y, g: _poly(x, y, _star(5, u(g, 0.4, 0.5))),
        "star6": lambda x, y, g: _poly(x, y, _star(6, u(g, 0.45, 0.55))),
        "star7": lambda x, y, g: _poly(x, y, _star(7, u(g, 0.45, 0.55))),
        "star8": lambda x, y, g: _poly(x, y, _star(8, u(g, 0.45, 0.55))),
        "star5_thin": lambda x, y, g: _poly(x, y, _star(5, u(g, 0.2, 0.27))),
        "star12": lambda x, y, g: _poly(x, y, _star(12, u(g, 0.66, 0.74))),
        "gear": lambda x, y, g: _gear(x, y, u(g, 0.18, 0.28)),
        "flower5": lambda x, y, g: _flower(x, y, 5, u(g, 0.25, 0.35)),
        "flower8": lambda x, y, g: _flower(x, y, 8, u(g, 0.2, 0.3)),
        "asterisk": lambda x, y, g: _asterisk(x, y, u(g, 0.07, 0.1)),
        "circle": lambda x, y, g: _disc(x, y, 0, 0, u(g, 0.75, 0.85)),
        "ellipse": lambda x, y, g: (x / 0.88) ** 2 + (y / u(g, 0.4, 0.55)) ** 2 <= 1,
        "ring": lambda x, y, g: _disc(x, y, 0, 0, 0.82) & ~_disc(x, y, 0, 0, u(g, 0.55, 0.62)),
        "donut": lambda x, y, g: _disc(x, y, 0, 0, 0.82) & ~_disc(x, y, 0, 0, u(g, 0.2, 0.3)),
        "crescent": lambda x, y, g: _disc(x, y, 0, 0, 0.82) & ~_disc(x, y, u(g, 0.3, 0.45), 0.1, 0.7),
        "semicircle": lambda x, y, g: _disc(x, y, 0, -0.4, 0.88) & (y >= -0.4),
        "pie": lambda x, y, g: _disc(x, y, 0, 0, 0.82) & (np.abs(_polar(x, y)[1]) >= np.radians(u(g, 25, 40))),
        "lens": lambda x, y, g: _disc(x, y, 0, u(g, 0.35, 0.5), 0.95) & _disc(x, y, 0, -u(g, 0.35, 0.5), 0.95),
        "drop": lambda x, y, g: _disc(x, y, 0, -0.3, 0.55) | _poly(x, y, [[-0.5, -0.15], [0, 0.88], [0.5, -0.15]]),
        "heart": lambda x, y, g: _heart(x, y),
        "egg": lambda x, y, g: (x / (0.6 * (1 - 0.25 * y))) ** 2 + (y / 0.85) ** 2 <= 1,
        "cloud": lambda x, y, g: _any_disc(x, y, [(-0.45, -0.15, 0.38), (0.45, -0.15, 0.38), (0, 0.2, 0.5), (0, -0.3, 0.35)], g),
        "blob_pair": lambda x, y, g: _any_disc(x, y, [(-0.38, 0, 0.45), (0.38, 0, 0.45)], g),
        "plus": lambda x, y, g: _plus(x, y, u(g, 0.16, 0.24)),
        "arrow": lambda x, y, g: _poly(x, y, j(g, [[-0.85, -0.15], [0.2, -0.15], [0.2, -0.5], [0.88, 0], [0.2, 0.5], [0.2, 0.15], [-0.85, 0.15]])),
        "double_arrow": lambda x, y, g: _poly(x, y, j(g, [[-0.88, 0], [-0.4, 0.45], [-0.4, 0.14], [0.4, 0.14], [0.4, 0.45], [0.88, 0], [0.4, -0.45], [0.4, -0.14], [-0.4, -0.14], [-0.4, -0.45]])),
        "chevron": lambda x, y, g: _poly(x, y, j(g, [[-0.8, -0.6], [0, 0.2], [0.8, -0.6], [0.8, -0.1], [0, 0.7], [-0.8, -0.1]])),
        "L": lambda x, y, g: _bar(x, y, -0.6, -0.8, -0.25, 0.8) | _bar(x, y, -0.6, -0.8, 0.6, -0.45),
        "T": lambda x, y, g: _bar(x, y, -0.75, 0.45, 0.75, 0.8) | _bar(x, y, -0.18, -0.8, 0.18, 0.8),
        "H": lambda x, y, g: _bar(x, y, -0.7, -0.8, -0.38, 0.8) | _bar(x, y, 0.38, -0.8, 0.7, 0.8) | _bar(x, y, -0.7, -0.15, 0.7, 0.15),
        "frame": lambda x, y, g: _bar(x, y, -0.7, -0.7, 0.7, 0.7) & ~_bar(x, y, *(np.array([-1, -1, 1, 1]) * u(g, 0.38, 0.48))),
        "hollow_triangle": lambda x, y, g: _poly(x, y, _ngon(3, 0.9)) & ~_poly(x, y, _ngon(3, u(g, 0.4, 0.5))),
        "bowtie": lambda x, y, g: _poly(x, y, j(g, [[-0.85, 0.6], [0, 0.08], [0.85, 0.6], [0.85, -0.6], [0, -0.08], [-0.85, -0.6]])),
        "keyhole": lambda x, y, g: _disc(x, y, 0, 0.3, 0.42) | _poly(x, y, [[-0.18, 0.2], [0.18, 0.2], [0.4, -0.85], [-0.4, -0.85]]),
        "horseshoe": lambda x, y, g: (_disc(x, y, 0, 0.05, 0.75) & ~_disc(x, y, 0, 0.05, 0.4) & (y >= 0.05))
        | _bar(x, y, -0.75, -0.75, -0.4, 0.05) | _bar(x, y, 0.4, -0.75, 0.75, 0.05),
        "lightning": lambda x, y, g: _poly(x, y, j(g, [[0.2, 0.88], [-0.45, 0.0], [-0.02, 0.0], [-0.25, -0.88], [0.5, 0.15], [0.05, 0.15], [0.45, 0.88]])),
        "trefoil": lambda x, y, g: _any_disc(x, y, [(0.42 * np.cos(a), 0.42 * np.sin(a), 0.42) for a in np.pi / 2 + 2 * np.pi * np.arange(3) / 3], g),
    }
    return fns


def _gear(x: np.ndarray, y: np.ndarray, hole: float) -> np.ndarray:
    r, a = _polar(x, y)
    teeth = (np.cos(8 * a) > 0).astype(float)
    return (r <= 0.65 + 0.2 * teeth) & (r >= hole)


def _flower(x: np.ndarray, y: np.ndarray, n: int, depth: float) -> np.ndarray:
    r, a = _polar(x, y)
    return r <= (0.88 - depth) + depth * np.cos(n * a)


def _asterisk(x: np.ndarray, y: np.ndarray, half: float) -> np.ndarray:
    out = np.zeros_like(x, dtype=bool)
    for a in np.pi / 2 + np.pi * np.arange(3) / 3:  # three bars through the centre
        along, across = x * np.cos(a) + y * np.sin(a), -x * np.sin(a) + y * np.cos(a)
        out |= (np.abs(along) <= 0.85) & (np.abs(across) <= half)
    return out


def _plus(x: np.ndarray, y: np.ndarray, half: float) -> np.ndarray:
    return _bar(x, y, -0.82, -half, 0.82, half) | _bar(x, y, -half, -0.82, half, 0.82)


def _heart(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 200)
    hx, hy = 16 * np.sin(t) ** 3, 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return _poly(x, y, np.c_[hx, hy + 2.5] * 0.052)


def _any_disc(x: np.ndarray, y: np.ndarray, discs: list, g: np.random.Generator) -> np.ndarray:
    out = np.zeros_like(x, dtype=bool)
    for cx, cy, r in discs:
        out |= _disc(x, y, cx + g.uniform(-0.03, 0.03), cy + g.uniform(-0.03, 0.03), r * g.uniform(0.93, 1.05))
    return out


_SHAPE_VARIANTS = 6

CLUTTER_STROKES, CLUTTER_DOTS = 32, 16


@lru_cache(maxsize=4)
def _shape_bank(seed: int, size: int) -> tuple[np.ndarray, dict[str, tuple[int, int]]]:
    """Shape sprites float32 [M, size+2, size+2], ``_SHAPE_VARIANTS`` rows per shape class, and each
    class's (start, count). Variants jitter vertices, aspect and shape parameters (drawn from the seed)."""
    fns = _shape_fns()
    x, y = _supersampled(size)
    rows, index = [], {}
    for family, names in SHAPE_FAMILIES.items():
        for name in names:
            index[f"shape/{family}/{name}"] = (len(rows), _SHAPE_VARIANTS)
            for v in range(_SHAPE_VARIANTS):
                g = np.random.default_rng([seed, stable_code(name) & 0xFFFFFFFF, v])
                a = g.uniform(0.9, 1.1)  # a mild aspect change per variant
                rows.append(_box_down(fns[name](x * a, y / a, g), 4))
    bank = np.pad(np.stack(rows), ((0, 0), (1, 1), (1, 1)))
    bank.flags.writeable = False
    return bank, index


def _segment_distance(x: np.ndarray, y: np.ndarray, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Distance from each point to the segment p-q."""
    d = q - p
    t = np.clip(((x - p[0]) * d[0] + (y - p[1]) * d[1]) / max(float(d @ d), 1e-9), 0, 1)
    return np.hypot(x - p[0] - t * d[0], y - p[1] - t * d[1])


@lru_cache(maxsize=4)
def _clutter_bank(seed: int, size: int) -> np.ndarray:
    """Distractor sprites float32 [strokes + dot clusters, size+2, size+2]: random polylines and arcs
    first (``CLUTTER_STROKES`` rows), then clusters of small dots (``CLUTTER_DOTS`` rows)."""
    g = np.random.default_rng([seed, 0xC1077E5])
    x, y = _supersampled(size, 2)
    rows = []
    for _ in range(CLUTTER_STROKES):
        pts = g.uniform(-0.85, 0.85, (g.integers(2, 5), 2))
        width = g.uniform(0.03, 0.08)
        dist = np.min([_segment_distance(x, y, pts[k], pts[k + 1]) for k in range(len(pts) - 1)], axis=0)
        if g.random() < 0.3:  # an arc instead of a polyline
            cx, cy, r = g.uniform(-0.4, 0.4), g.uniform(-0.4, 0.4), g.uniform(0.3, 0.6)
            ang = np.arctan2(y - cy, x - cx)
            dist = np.where(np.cos(ang - g.uniform(-np.pi, np.pi)) > -0.2, np.abs(np.hypot(x - cx, y - cy) - r), 9.0)
        rows.append(_box_down(dist <= width, 2))
    for _ in range(CLUTTER_DOTS):
        m = np.zeros_like(x, dtype=bool)
        for cx, cy in g.uniform(-0.8, 0.8, (g.integers(3, 8), 2)):
            m |= _disc(x, y, cx, cy, g.uniform(0.05, 0.14))
        rows.append(_box_down(m, 2))
    bank = np.pad(np.stack(rows), ((0, 0), (1, 1), (1, 1)))
    bank.flags.writeable = False
    return bank
