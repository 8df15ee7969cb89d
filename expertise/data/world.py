"""The embedded procedural world: an upstream dataset standing in for ImageNet-21k and a
VTAB-1k-like downstream suite, rendered on demand and never stored.

Three visual domains with different statistics make experts matter:

* ``glyph``: letters from the fonts matplotlib ships (Latin, Greek, Cyrillic, Armenian and
  Georgian scripts), dark ink on paper, thin strokes, neighbouring characters cut by the frame;
* ``shape``: procedural silhouettes (polygons, stars, round shapes, symbols), flat saturated
  colours on gradients, full rotation, distractor strokes and dots;
* ``texture``: full-frame periodic and stochastic patterns in two colours with shading.

The label hierarchy is root -> domain -> family -> leaf, e.g. ``glyph/latin_upper/A``. Leaf
frequencies are imbalanced (log-normal domain, family and leaf weights drawn from the seed), so
the top nodes by image count mix domains and large families. Some classes of every domain (the
digits, fourteen letters, fourteen shapes, fourteen textures) and some factors (font, count,
orientation, location) never appear upstream: the downstream tasks are built from them.

Determinism: image ``i`` of a split is a pure function of (seed, split, i). Per-image parameters
come from a counter-based hash (splitmix64 on uint64 arrays) of that triple and a stream name;
pixels come from fixed banks (glyph bitmaps, shape and clutter sprites, texture tiles, noise
tiles) built once per (seed, resolution). The hot path uses only exactly rounded float32 ops
(add, multiply, floor, clip, gathers) applied element-wise, no reduction across pixels or images
and no transcendental per pixel (angles and hues come from lookup tables), so an image's bytes do
not depend on the batch it is rendered in.
"""

from __future__ import annotations

import hashlib
import os
import zlib
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from expertise.data.hierarchy import ROOT, Hierarchy
from expertise.data.tasks import TRAIN_SIZE, VAL_SIZE, Group, Split, Task
from expertise.data.upstream import UpstreamData
from expertise.errors import ConfigError, DataError

F32 = np.float32
_MASK64 = (1 << 64) - 1
# Bumped whenever the same WorldConfig renders other pixels or another hierarchy, so that a library
# trained on an earlier world is refused rather than silently paired with the new one's tasks.
# 2: Armenian and Georgian glyph families upstream.
WORLD_VERSION = 2
_CHUNK = 512  # images rendered at once: big enough to amortise numpy overhead, small enough for cache

# =============================================================================================
# Counter-based randomness
# =============================================================================================


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 [...] (arithmetic wraps mod 2**64)."""
    z = np.atleast_1d(np.asarray(x, dtype=np.uint64))
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _code(text: str) -> int:
    """A stable 64-bit code for a name (split, task part, stream); Python's hash() is salted."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def image_keys(seed: int, split: str, indices: np.ndarray) -> np.ndarray:
    """uint64 [B]: one key per image, a pure function of (seed, split name, index)."""
    base = _mix(np.array([seed & _MASK64], dtype=np.uint64) ^ _mix(np.array([_code(split)], dtype=np.uint64)))
    return _mix(base ^ _mix(np.asarray(indices, dtype=np.int64).astype(np.uint64)))


class Draw:
    """Per-image random numbers: stream ``name`` of image b is a hash of (keys[b], name)."""

    def __init__(self, keys: np.ndarray) -> None:
        self.keys = keys

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def bits(self, name: str) -> np.ndarray:
        return _mix(self.keys ^ np.uint64(zlib.crc32(name.encode()) * 0xD1B54A32D192ED03 & _MASK64))

    def u(self, name: str) -> np.ndarray:
        """float64 [B], uniform in [0, 1)."""
        return (self.bits(name) >> np.uint64(11)).astype(np.float64) * 2.0**-53

    def uniform(self, name: str, lo: float, hi: float) -> np.ndarray:
        return lo + (hi - lo) * self.u(name)

    def integers(self, name: str, n: int | np.ndarray) -> np.ndarray:
        """int64 [B] uniform in [0, n) (n a scalar or one bound per image)."""
        n = np.asarray(n, dtype=np.int64)
        return np.minimum((self.u(name) * n).astype(np.int64), n - 1)

    def bernoulli(self, name: str, p: float) -> np.ndarray:
        return self.u(name) < p

    def sign(self, name: str) -> np.ndarray:
        return np.where(self.bernoulli(name, 0.5), 1.0, -1.0)

    def sub(self, mask: np.ndarray) -> Draw:
        return Draw(self.keys[mask])


# Angles and hues come from tables: an angle is an integer in tenths of a degree, so no per-image
# transcendental (whose last bit may depend on SIMD lane position) enters the pixels.
_NA = 3600
_COS = np.cos(2 * np.pi * np.arange(_NA) / _NA)
_SIN = np.sin(2 * np.pi * np.arange(_NA) / _NA)


def _angle(deg: np.ndarray) -> np.ndarray:
    """int64 [B] table index for angles in degrees (rounded to 0.1 degree)."""
    return np.floor(np.asarray(deg) * (_NA / 360) + 0.5).astype(np.int64) % _NA


def _colour(lum: np.ndarray, chroma: np.ndarray, hue: np.ndarray) -> np.ndarray:
    """float64 [B, 3] RGB in [0, 1]: grey level ``lum`` plus ``chroma`` along hue table index ``hue``."""
    h = np.stack([_COS[hue], _COS[(hue - _NA // 3) % _NA], _COS[(hue + _NA // 3) % _NA]], axis=1)
    return np.clip(lum[:, None] + chroma[:, None] * h, 0.0, 1.0)


def _random_colour(d: Draw, name: str, lum: np.ndarray, chroma: tuple[float, float]) -> np.ndarray:
    return _colour(lum, d.uniform(name + ".c", *chroma), d.integers(name + ".h", _NA))


def _contrasting(d: Draw, name: str, lum: np.ndarray, gap: tuple[float, float]) -> np.ndarray:
    """float64 [B]: a grey level at distance ``gap`` from ``lum``, on whichever side stays in [0, 1]."""
    delta = d.uniform(name, *gap)
    up = d.bernoulli(name + ".up", 0.5)
    out = np.where(up, lum + delta, lum - delta)
    out = np.where((out > 1) | (out < 0), np.where(up, lum - delta, lum + delta), out)
    return np.clip(out, 0.0, 1.0)


# =============================================================================================
# The class catalogue: every class of the world, seen upstream or held out for tasks
# =============================================================================================

GLYPH_FAMILIES: dict[str, dict[str, str]] = {
    "latin_upper": {c: c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"},
    "latin_lower": {c: c for c in "abdefghijkmnqrty"},  # letters whose shape differs from the capital
    "greek_upper": dict(Gamma="Γ", Delta="Δ", Theta="Θ", Lambda="Λ", Xi="Ξ", Pi="Π", Sigma="Σ", Phi="Φ",
                        Psi="Ψ", Omega="Ω"),
    "greek_lower": dict(alpha="α", beta="β", gamma="γ", delta="δ", epsilon="ε", zeta="ζ", eta="η", theta="θ",
                        **{"lambda": "λ"}, mu="μ", xi="ξ", pi="π", rho="ρ", sigma="σ", phi="φ", psi="ψ",
                        omega="ω"),
    "cyrillic": dict(Be="Б", De="Д", Zhe="Ж", Ze="З", I="И", Short_I="Й", El="Л", Tse="Ц", Che="Ч", Sha="Ш",
                     Shcha="Щ", Hard="Ъ", Yery="Ы", Soft="Ь", E="Э", Yu="Ю", Ya="Я"),
    "digit": {c: c for c in "0123456789"},
    # Two more scripts (set in the twelve DejaVu faces only): they make the glyph domain wide enough
    # that a small generalist cannot cover it as well as a specialist does.
    "armenian": {unicodedata.name(chr(c)).split()[-1].lower(): chr(c) for c in range(0x561, 0x587)},
    "georgian": {unicodedata.name(chr(c)).split()[-1].lower(): chr(c) for c in range(0x10D0, 0x10F1)},
}
SHAPE_FAMILIES: dict[str, tuple[str, ...]] = {
    "polygon": ("triangle", "square", "pentagon", "hexagon", "heptagon", "octagon", "rectangle", "rhombus",
                "parallelogram", "trapezoid", "right_triangle", "kite"),
    "star": ("star4", "star5", "star6", "star7", "star8", "star5_thin", "star12", "gear", "flower5", "flower8",
             "asterisk"),
    "round": ("circle", "ellipse", "ring", "donut", "crescent", "semicircle", "pie", "lens", "drop", "heart",
              "egg", "cloud", "blob_pair"),
    "symbol": ("plus", "arrow", "double_arrow", "chevron", "L", "T", "H", "frame", "hollow_triangle", "bowtie",
               "keyhole", "horseshoe", "lightning", "trefoil"),
}
TEXTURE_FAMILIES: dict[str, tuple[str, ...]] = {
    "periodic": ("stripes_h", "stripes_v", "stripes_diag", "stripes_anti", "stripes_fine", "checker",
                 "checker_diag", "dots_square", "dots_hex", "grid", "waves", "zigzag", "brick", "plaid",
                 "herringbone", "weave", "scales", "targets", "triangles"),
    "stochastic": ("blobs_large", "blobs_small", "clouds", "labyrinth_coarse", "labyrinth_fine", "grain_h",
                   "grain_v", "grain_diag", "cells", "crackle", "speckle", "fibers", "marble", "leopard", "sand"),
}
# Held out of upstream, by task: unseen classes (natural) and classes under degraded imaging (specialized).
HELD_OUT: dict[str, tuple[str, ...]] = {
    # with near-twins inside the task (h, n, eta; Sha, Shcha; K, R) so that it is not saturated
    "glyph_unseen": ("glyph/latin_upper/G", "glyph/latin_upper/K", "glyph/latin_upper/R", "glyph/latin_lower/e",
                     "glyph/latin_lower/h", "glyph/latin_lower/n", "glyph/greek_upper/Xi", "glyph/greek_lower/eta",
                     "glyph/greek_lower/psi", "glyph/greek_lower/omega", "glyph/cyrillic/Zhe", "glyph/cyrillic/Ya",
                     "glyph/cyrillic/Sha", "glyph/cyrillic/Shcha"),
    "glyph_digits": tuple(f"glyph/digit/{c}" for c in "0123456789"),
    "shape_unseen": ("shape/polygon/heptagon", "shape/polygon/kite", "shape/star/star7", "shape/star/flower8",
                     "shape/round/heart", "shape/round/crescent", "shape/symbol/double_arrow", "shape/symbol/H"),
    "shape_microscopy": ("shape/round/ring", "shape/round/pie", "shape/round/blob_pair", "shape/round/cloud",
                         "shape/star/star4", "shape/symbol/trefoil"),
    "texture_unseen": ("texture/periodic/dots_hex", "texture/periodic/herringbone", "texture/periodic/brick",
                       "texture/periodic/zigzag", "texture/stochastic/crackle", "texture/stochastic/marble",
                       "texture/stochastic/fibers", "texture/stochastic/grain_diag"),
    "texture_sensor": ("texture/periodic/checker_diag", "texture/periodic/targets", "texture/periodic/weave",
                       "texture/stochastic/leopard", "texture/stochastic/labyrinth_coarse",
                       "texture/stochastic/clouds"),
}
DOMAINS: tuple[str, ...] = ("glyph", "shape", "texture")

# Fonts: all cover Latin, Greek and Cyrillic except the Computer Modern ones (Latin and digits only),
# which come last so a glyph's bank rows for the first 16 fonts line up across scripts.
UNICODE_FONTS: tuple[str, ...] = (
    "DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSans-BoldOblique",
    "DejaVuSerif", "DejaVuSerif-Bold", "DejaVuSerif-Italic", "DejaVuSerif-BoldItalic",
    "DejaVuSansMono", "DejaVuSansMono-Bold", "DejaVuSansMono-Oblique", "DejaVuSansMono-BoldOblique",
    "STIXGeneral", "STIXGeneralBol", "STIXGeneralItalic", "STIXGeneralBolIta",
)
LATIN_FONTS: tuple[str, ...] = ("cmr10", "cmb10", "cmss10", "cmti10", "cmtt10")
DEJAVU_FONTS: tuple[str, ...] = UNICODE_FONTS[:12]


def family_fonts(family: str) -> tuple[str, ...]:
    """The fonts a glyph family is set in, in bank-row order (shared prefix: the DejaVu faces)."""
    if family in ("armenian", "georgian"):
        return DEJAVU_FONTS
    return UNICODE_FONTS + (LATIN_FONTS if family in ("latin_upper", "latin_lower", "digit") else ())
FONT_TASK_FONTS: tuple[str, ...] = ("DejaVuSans", "DejaVuSans-Bold", "DejaVuSerif", "DejaVuSansMono",
                                    "STIXGeneral", "STIXGeneralItalic", "cmss10", "cmtt10")


@dataclass(frozen=True)
class WorldClass:
    """One class of the world: ``name`` like ``shape/star/star5``; its sprites or texture tiles are
    rows ``start .. start + count - 1`` of its domain's bank."""

    name: str
    domain: str
    family: str
    start: int
    count: int


def _catalogue() -> list[tuple[str, str, str]]:
    """(name, domain, family) of every class in a fixed order."""
    out = [(f"glyph/{f}/{n}", "glyph", f) for f, chars in GLYPH_FAMILIES.items() for n in chars]
    out += [(f"shape/{f}/{n}", "shape", f) for f, names in SHAPE_FAMILIES.items() for n in names]
    out += [(f"texture/{f}/{n}", "texture", f) for f, names in TEXTURE_FAMILIES.items() for n in names]
    return out


# =============================================================================================
# Banks: pixels built once per (seed, resolution)
# =============================================================================================


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
_TEXTURE_VARIANTS = 6
_CLUTTER_STROKES, _CLUTTER_DOTS = 32, 16


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
                g = np.random.default_rng([seed, _code(name) & 0xFFFFFFFF, v])
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
    first (``_CLUTTER_STROKES`` rows), then clusters of small dots (``_CLUTTER_DOTS`` rows)."""
    g = np.random.default_rng([seed, 0xC1077E5])
    x, y = _supersampled(size, 2)
    rows = []
    for _ in range(_CLUTTER_STROKES):
        pts = g.uniform(-0.85, 0.85, (g.integers(2, 5), 2))
        width = g.uniform(0.03, 0.08)
        dist = np.min([_segment_distance(x, y, pts[k], pts[k + 1]) for k in range(len(pts) - 1)], axis=0)
        if g.random() < 0.3:  # an arc instead of a polyline
            cx, cy, r = g.uniform(-0.4, 0.4), g.uniform(-0.4, 0.4), g.uniform(0.3, 0.6)
            ang = np.arctan2(y - cy, x - cx)
            dist = np.where(np.cos(ang - g.uniform(-np.pi, np.pi)) > -0.2, np.abs(np.hypot(x - cx, y - cy) - r), 9.0)
        rows.append(_box_down(dist <= width, 2))
    for _ in range(_CLUTTER_DOTS):
        m = np.zeros_like(x, dtype=bool)
        for cx, cy in g.uniform(-0.8, 0.8, (g.integers(3, 8), 2)):
            m |= _disc(x, y, cx, cy, g.uniform(0.05, 0.14))
        rows.append(_box_down(m, 2))
    bank = np.pad(np.stack(rows), ((0, 0), (1, 1), (1, 1)))
    bank.flags.writeable = False
    return bank


# -- textures ---------------------------------------------------------------------------------
# A texture is a tileable float [T, T] in [0, 1] from (X, Y, rng, T): X, Y in [0, 1) tile units,
# frequencies in whole cycles per tile so the tile wraps seamlessly.


def _band(v: np.ndarray, duty: float = 0.5, soft: float = 4.0) -> np.ndarray:
    """A soft square wave in [0, 1] of phase ``v`` (cycles): 1 on a fraction ``duty`` of each cycle."""
    return np.clip((np.cos(2 * np.pi * v) - np.cos(np.pi * duty)) * soft + 0.5, 0, 1)


def _fft_field(g: np.random.Generator, t: int, spectrum: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """A periodic Gaussian field [t, t] with unit standard deviation and amplitude ``spectrum(kx, ky)``
    (frequencies in cycles per tile)."""
    k = np.fft.fftfreq(t) * t
    kx, ky = np.meshgrid(k, k)
    f = np.real(np.fft.ifft2(np.fft.fft2(g.standard_normal((t, t))) * spectrum(kx, ky)))
    return (f - f.mean()) / (f.std() + 1e-9)


def _worley(x: np.ndarray, y: np.ndarray, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Toroidal distances to the nearest and second-nearest of ``pts`` [n, 2] (tile units)."""
    dx = np.abs(x[..., None] - pts[:, 0])
    dy = np.abs(y[..., None] - pts[:, 1])
    d = np.sort(np.hypot(np.minimum(dx, 1 - dx), np.minimum(dy, 1 - dy)), axis=-1)
    return d[..., 0], d[..., 1]


def _fibers(x: np.ndarray, y: np.ndarray, g: np.random.Generator, t: int) -> np.ndarray:
    out = np.zeros_like(x)
    for _ in range(int(g.integers(25, 40))):
        p, a, length = g.uniform(0, 1, 2), g.uniform(0, np.pi), g.uniform(0.15, 0.3)
        dx, dy = (x - p[0] + 0.5) % 1 - 0.5, (y - p[1] + 0.5) % 1 - 0.5  # wrapped offsets
        s = np.clip(dx * np.cos(a) + dy * np.sin(a), -length / 2, length / 2)
        dist = np.hypot(dx - s * np.cos(a), dy - s * np.sin(a)) * t
        out = np.maximum(out, np.clip(1.2 - dist, 0, 1))
    return out


def _texture_fns() -> dict[str, Callable[[np.ndarray, np.ndarray, np.random.Generator, int], np.ndarray]]:
    ph = lambda g: g.uniform(0, 1)  # noqa: E731
    pick = lambda g, *v: float(g.choice(v))  # noqa: E731

    def cell(v: np.ndarray) -> np.ndarray:
        return v % 1 - 0.5

    def blobs(k0: float) -> Callable:
        return lambda x, y, g, t: np.clip(_fft_field(g, t, lambda kx, ky: np.exp(-(kx**2 + ky**2) / k0**2)) * 1.5 + 0.5, 0, 1)

    def ring(k0: float, w: float) -> Callable:
        return lambda x, y, g, t: np.clip(_fft_field(g, t, lambda kx, ky: np.exp(-((np.hypot(kx, ky) - k0) / w) ** 2)) * 3 + 0.5, 0, 1)

    def grain(rotate: float) -> Callable:
        def spec(kx: np.ndarray, ky: np.ndarray) -> np.ndarray:
            a = kx * np.cos(rotate) + ky * np.sin(rotate)
            b = -kx * np.sin(rotate) + ky * np.cos(rotate)
            return np.exp(-(a / 1.2) ** 2 - (b / 10) ** 2)
        return lambda x, y, g, t: np.clip(_fft_field(g, t, spec) * 1.2 + 0.5, 0, 1)

    def clouds(x, y, g, t):
        return _fft_field(g, t, lambda kx, ky: 1 / (np.hypot(kx, ky) ** 1.7 + 1))

    def hex_dots(x, y, g, t):
        n, m = 5, 6
        r = np.floor(m * y)
        u, v = cell(n * x + 0.5 * (r % 2)), cell(m * y)
        return np.clip((pick(g, 0.27, 0.32) - np.hypot(u, v * n / m)) * 12 + 0.5, 0, 1)

    def brick(x, y, g, t):
        m = 6
        r = np.floor(m * y)
        u, v = (m / 2 * x + 0.5 * (r % 2)) % 1, (m * y) % 1
        return 1.0 - ((u < 0.08) | (v < 0.16)) * g.uniform(0.7, 1.0)

    def herringbone(x, y, g, t):
        n = int(pick(g, 4, 5))
        col = np.floor(n * x) % 2
        return _band(np.where(col == 0, 2 * n * (x + y), 2 * n * (x - y)), 0.5)

    def weave(x, y, g, t):
        n = 4
        par = (np.floor(n * x) + np.floor(n * y)) % 2
        return np.where(par == 0, _band(3 * n * y, 0.55), _band(3 * n * x, 0.55))

    def scales(x, y, g, t):
        m = int(pick(g, 4, 6))
        r = np.floor(m * y)
        u, v = (m * x + 0.5 * (r % 2)) % 1 - 0.5, (m * y) % 1
        return _band(np.hypot(u, v) * 2.2, 0.35)

    def targets(x, y, g, t):
        f = int(pick(g, 2, 3))
        return _band(np.hypot(cell(f * x), cell(f * y)) * 4 + ph(g), 0.5)

    def cells(x, y, g, t):
        n = int(g.integers(10, 18))
        f1, _ = _worley(x, y, g.uniform(0, 1, (n, 2)))
        return 1 - np.clip(f1 * np.sqrt(n) * 1.2, 0, 1)

    def crackle(x, y, g, t):
        n = int(g.integers(10, 18))
        f1, f2 = _worley(x, y, g.uniform(0, 1, (n, 2)))
        return np.clip((f2 - f1) * np.sqrt(n) * 6, 0, 1)

    def speckle(x, y, g, t):
        f1, _ = _worley(x, y, g.uniform(0, 1, (int(g.integers(40, 70)), 2)))
        return np.clip((1.6 - f1 * t) * 0.8, 0, 1)

    def marble(x, y, g, t):
        z = _fft_field(g, t, lambda kx, ky: 1 / (np.hypot(kx, ky) ** 2 + 1))
        return _band(pick(g, 3, 4) * x + 0.6 * z, 0.5, 2.0)

    def leopard(x, y, g, t):
        z = _fft_field(g, t, lambda kx, ky: np.exp(-(kx**2 + ky**2) / 16))
        return np.maximum(np.clip(1 - np.abs(z - 0.9) * 3, 0, 1), 0.5 * np.clip((z - 1.6) * 3, 0, 1))

    return {
        "stripes_h": lambda x, y, g, t: _band(pick(g, 5, 6) * y + ph(g), g.uniform(0.35, 0.6)),
        "stripes_v": lambda x, y, g, t: _band(pick(g, 5, 6) * x + ph(g), g.uniform(0.35, 0.6)),
        "stripes_diag": lambda x, y, g, t: _band(4 * (x + y) + ph(g), g.uniform(0.35, 0.6)),
        "stripes_anti": lambda x, y, g, t: _band(4 * (x - y) + ph(g), g.uniform(0.35, 0.6)),
        "stripes_fine": lambda x, y, g, t: _band(pick(g, 11, 13) * (x if g.random() < 0.5 else y) + ph(g), 0.5),
        "checker": lambda x, y, g, t: 0.5 + 0.5 * np.clip(6 * np.sin(2 * np.pi * 4 * x) * np.sin(2 * np.pi * 4 * y), -1, 1),
        "checker_diag": lambda x, y, g, t: 0.5 + 0.5 * np.clip(6 * np.sin(2 * np.pi * 3 * (x + y)) * np.sin(2 * np.pi * 3 * (x - y)), -1, 1),
        "dots_square": lambda x, y, g, t: np.clip((g.uniform(0.22, 0.32) - np.hypot(cell(5 * x), cell(5 * y))) * 12 + 0.5, 0, 1),
        "dots_hex": hex_dots,
        "grid": lambda x, y, g, t: np.maximum(_band(pick(g, 4, 5) * x, 0.2), _band(pick(g, 4, 5) * y, 0.2)),
        "waves": lambda x, y, g, t: _band(5 * y + g.uniform(0.5, 0.9) * np.sin(2 * np.pi * (pick(g, 2, 3) * x + ph(g))), 0.5),
        "zigzag": lambda x, y, g, t: _band(5 * y + g.uniform(0.5, 0.8) * np.abs(2 * ((pick(g, 3, 4) * x) % 1) - 1), 0.5),
        "brick": brick,
        "plaid": lambda x, y, g, t: 0.45 * _band(3 * x, 0.4) + 0.45 * _band(3 * y, 0.4) + 0.1 * _band(12 * (x + y), 0.5),
        "herringbone": herringbone,
        "weave": weave,
        "scales": scales,
        "targets": targets,
        "triangles": lambda x, y, g, t: 1 - np.maximum.reduce([_band(3 * y, 0.12), _band(3 * (x + y), 0.12), _band(3 * (x - y), 0.12)]),
        "blobs_large": blobs(2.5),
        "blobs_small": blobs(6.0),
        "clouds": clouds,
        "labyrinth_coarse": ring(4.0, 1.0),
        "labyrinth_fine": ring(9.0, 1.5),
        "grain_h": grain(np.pi / 2),
        "grain_v": grain(0.0),
        "grain_diag": grain(np.pi / 4),
        "cells": cells,
        "crackle": crackle,
        "speckle": speckle,
        "fibers": lambda x, y, g, t: _fibers(x, y, g, t),
        "marble": marble,
        "leopard": leopard,
        "sand": lambda x, y, g, t: np.clip(_fft_field(g, t, lambda kx, ky: np.exp(-(kx**2 + ky**2) / 20**2)) * 0.25 + 0.5, 0, 1),
    }


@lru_cache(maxsize=4)
def _texture_bank(seed: int, tile: int) -> tuple[np.ndarray, dict[str, tuple[int, int]]]:
    """Texture tiles float32 [M, tile, tile] in [0, 1], ``_TEXTURE_VARIANTS`` per class, and each
    class's (start, count). Each tile is stretched to the full [0, 1] range."""
    fns = _texture_fns()
    g1 = np.arange(tile) / tile
    x, y = np.meshgrid(g1, g1)
    rows, index = [], {}
    for family, names in TEXTURE_FAMILIES.items():
        for name in names:
            index[f"texture/{family}/{name}"] = (len(rows), _TEXTURE_VARIANTS)
            for v in range(_TEXTURE_VARIANTS):
                g = np.random.default_rng([seed, _code(name) & 0xFFFFFFFF, v, 7])
                t = np.asarray(fns[name](x, y, g, tile), dtype=np.float64)
                rows.append(((t - t.min()) / max(t.max() - t.min(), 1e-9)).astype(np.float32))
    bank = np.stack(rows)
    bank.flags.writeable = False
    return bank, index


@lru_cache(maxsize=4)
def _noise_bank(seed: int, tile: int) -> np.ndarray:
    """Sensor-noise tiles float32 [16, 3, tile, tile], standard normal."""
    bank = np.random.default_rng([seed, 0x5E4502]).standard_normal((16, 3, tile, tile)).astype(np.float32)
    bank.flags.writeable = False
    return bank


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
    size = 2 * resolution  # sprites are minified ~2x when drawn, which anti-aliases them
    glyphs, glyph_rows = _glyph_bank(size)
    shapes, shape_rows = _shape_bank(seed, size)
    textures, texture_rows = _texture_bank(seed, size)
    noise = _noise_bank(seed, max(64, resolution))
    return Banks(glyphs, shapes, _clutter_bank(seed, size), textures, noise,
                 {**glyph_rows, **shape_rows, **texture_rows})


# =============================================================================================
# Rendering primitives (float32, element-wise, batch-independent)
# =============================================================================================


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
    ang = _angle(d.uniform(name + ".rot", *style.rotation) if angle_deg is None else angle_deg)
    sc = d.uniform(name + ".scale", *style.scale) if scale is None else scale
    asp = d.uniform(name + ".aspect", 1 - style.aspect, 1 + style.aspect)
    h = d.uniform(name + ".shear", -style.shear, style.shear)
    c, s = _COS[ang], _SIN[ang]
    sx, sy = sc * asp, sc / asp
    # inverse of  p = t + Rot(angle) @ [[1, h], [0, 1]] @ diag(sx, sy) @ q
    m = np.stack([(c + h * s) / sx, (s - h * c) / sx, -s / sy, c / sy], axis=1)
    if centre is None:
        centre = np.stack([d.uniform(name + ".tx", -style.shift, style.shift),
                           d.uniform(name + ".ty", -style.shift, style.shift)], axis=1)
    return Pose(m, centre, ang, sx)


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
        ang = d.integers(name + ".dir", _NA)
        k = d.uniform(name + ".k", *strength)
        gx, gy = (_COS[ang] * k / 2).astype(F32), (_SIN[ang] * k / 2).astype(F32)
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
        rows = np.where(dots, _CLUTTER_STROKES + s.integers(name + ".rd", _CLUTTER_DOTS),
                        s.integers(name + ".rs", _CLUTTER_STROKES))
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


# =============================================================================================
# Domain recipes: float32 [B, 3, R, R] before the global nuisances of Canvas.finish
# =============================================================================================


def _unit(angle: np.ndarray) -> np.ndarray:
    """float64 [B, 2]: the frame direction of table angle ``angle`` (x right, y down)."""
    return np.stack([_COS[angle], _SIN[angle]], axis=1)


def draw_glyphs(c: Canvas, d: Draw, rows: np.ndarray, style: Style, neighbours: tuple[np.ndarray, np.ndarray],
                pose: Pose | None = None) -> np.ndarray:
    """Ink on paper: glyph ``rows`` of the glyph bank, with neighbouring glyphs ``neighbours`` (left,
    right; int64 [B] rows each, shown with probability ``style.neighbours``) cut by the frame as in
    a crop from a line of text, and pen strokes as clutter."""
    dark = d.bernoulli("paper.dark", 0.25)  # a quarter of the pages are light ink on a dark ground
    paper = np.where(dark, d.uniform("paper.lo", 0.05, 0.35), d.uniform("paper.hi", 0.6, 0.97))
    ink = _random_colour(d, "ink", _contrasting(d, "ink.l", paper, (0.3, 0.7)), (0.0, 0.3))
    stain = np.clip(paper + d.uniform("paper.d", -0.12, 0.12), 0, 1)
    img = c.gradient(d, "paper.grad", _random_colour(d, "paper", paper, (0.0, 0.08)),
                     _random_colour(d, "paper2", stain, (0.0, 0.08)), (0.0, 1.0))
    c.clutter(img, d, "clutter.behind", style.clutter_behind, style, ink)
    pose = make_pose(d, "obj", style) if pose is None else pose
    for side, nrows in zip((-1.0, 1.0), neighbours):
        on = d.bernoulli(f"nb{side}", style.neighbours)
        if on.any():
            gap = d.sub(on).uniform(f"nb{side}.gap", 1.15, 1.5) * pose.scale[on]
            t = pose.t[on] + side * gap[:, None] * _unit(pose.angle[on])
            alpha = c.sprite(c.banks.glyphs, nrows[on], Pose(pose.m[on], t, pose.angle[on], pose.scale[on]))
            sub = img[on]
            c.paint(sub, alpha, ink[on])
            img[on] = sub
    c.paint(img, c.sprite(c.banks.glyphs, rows, pose), ink)
    scribble = _random_colour(d, "scribble", d.uniform("scribble.l", 0.0, 1.0), (0.0, 0.4))
    c.clutter(img, d, "clutter.front", style.clutter_front, style, scribble)
    return img


def _vivid_scene(c: Canvas, d: Draw, style: Style) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A two-colour gradient ground with distractors behind, and a foreground colour that stands out:
    (image float32 [B, 3, R, R], foreground float64 [B, 3], ground grey level float64 [B])."""
    lum = d.uniform("bg.l", 0.15, 0.85)
    img = c.gradient(d, "bg.grad", _random_colour(d, "bg0", lum, (0.0, 0.3)),
                     _random_colour(d, "bg1", np.clip(lum + d.uniform("bg.d", -0.2, 0.2), 0, 1), (0.0, 0.3)),
                     (0.3, 1.5))
    fg = _random_colour(d, "fg", _contrasting(d, "fg.l", lum, (0.2, 0.6)), (0.1, 0.4))
    clutter = _random_colour(d, "cl", d.uniform("cl.l", 0.1, 0.9), (0.0, 0.4))
    c.clutter(img, d, "clutter.behind", style.clutter_behind, style, clutter)
    return img, fg, lum


def draw_shapes(c: Canvas, d: Draw, rows: np.ndarray, style: Style) -> np.ndarray:
    """A flat-coloured silhouette (shape bank ``rows``) on a gradient, with distractor strokes and dots."""
    img, fg, _ = _vivid_scene(c, d, style)
    c.paint(img, c.sprite(c.banks.shapes, rows, make_pose(d, "obj", style)), fg)
    c.clutter(img, d, "clutter.front", style.clutter_front, style, _random_colour(d, "cf", d.u("cf.l"), (0.0, 0.4)))
    return img


def draw_textures(c: Canvas, d: Draw, rows: np.ndarray, style: Style) -> np.ndarray:
    """A full-frame texture (bank ``rows``) mapped onto two colours, with shading and a rare stroke."""
    l0 = d.uniform("tx.l0", 0.1, 0.9)
    c0 = _random_colour(d, "tx.c0", l0, (0.0, 0.35))
    c1 = _random_colour(d, "tx.c1", _contrasting(d, "tx.l1", l0, (0.25, 0.7)), (0.0, 0.35))
    tile = c.banks.textures.shape[-1]
    offset = np.stack([d.uniform("tx.ox", 0, tile), d.uniform("tx.oy", 0, tile)], axis=1)
    t = c.texture(rows, make_pose(d, "tx", style, centre=offset))
    c0f, c1f = c0.astype(F32)[:, :, None, None], c1.astype(F32)[:, :, None, None]
    img = c0f + t[:, None] * (c1f - c0f)
    amp = d.uniform("shade.amp", 0.0, 0.3)
    zero = np.zeros((len(d), 3))
    img += c.gradient(d, "shade", zero - amp[:, None] / 2, zero + amp[:, None] / 2, (1.0, 1.0))
    c.clutter(img, d, "clutter.front", style.clutter_front, style, _random_colour(d, "cf", d.u("cf.l"), (0.0, 0.4)))
    return img


# =============================================================================================
# The world
# =============================================================================================


@dataclass(frozen=True)
class WorldConfig:
    """A world's size and randomness. ``imbalance`` scales the log-normal spread of class
    frequencies (0: every leaf equally likely).

    ``domain_weights`` scales each domain's share of the upstream images (glyph, shape, texture).
    At 0.3 glyphs (126 upstream leaves in seven scripts) are about a third of upstream, one domain
    among several as in ImageNet-21k. Measured on the ``cpu`` preset (B, then one full expert per
    domain; kNN leave-one-out accuracy, seed 0): the glyph expert beats B on all three glyph tasks
    (digits 0.840 -> 0.849, unseen letters 0.890 -> 0.907, fonts 0.492 -> 0.504) and the texture
    expert on texture_unseen (0.913 -> 0.926); the shape expert ties B on shape_unseen (0.939).
    Version 1 of the world, with only Latin, Greek and Cyrillic glyphs, had the glyph expert lose on
    every glyph task at any weight, step count or learning rate tried: a generalist covered so
    narrow a domain as well as a specialist.
    """

    seed: int = 0
    resolution: int = 32
    upstream_size: int = 60_000
    holdout_size: int = 5_000
    test_size: int = 1_000  # test split of each downstream task (train 800 and val 200 always)
    imbalance: float = 1.0
    domain_weights: tuple[float, ...] = (0.3, 1.0, 1.0)

    def __post_init__(self) -> None:
        # JSON and --set give lists or strings; keep a hashable tuple of floats
        object.__setattr__(self, "domain_weights", tuple(float(v) for v in self.domain_weights))
        if len(self.domain_weights) != len(DOMAINS) or min(self.domain_weights) <= 0:
            raise ConfigError(f"domain_weights needs one positive weight per domain {DOMAINS}, got {self.domain_weights}")
        if not 8 <= self.resolution <= 256:
            raise ConfigError(f"world resolution must lie in [8, 256] pixels, got {self.resolution}")
        if self.upstream_size < 1 or self.holdout_size < 0 or self.test_size < 1:
            raise ConfigError("world sizes must be positive (holdout_size may be 0): "
                              f"upstream {self.upstream_size}, holdout {self.holdout_size}, test {self.test_size}")
        if self.imbalance < 0:
            raise ConfigError(f"imbalance must be >= 0, got {self.imbalance}")


@dataclass(frozen=True)
class TaskSpec:
    """A built-in downstream task: its group, class names, source domain (None: mixed) and recipe
    ``render(world, draw, labels int64 [B]) -> uint8 [B, 3, R, R]``."""

    name: str
    group: Group
    domain: str | None
    classes: tuple[str, ...]
    render: Callable[[World, Draw, np.ndarray], np.ndarray] = field(repr=False)


class _UpstreamRender:
    """The render function of an upstream split (a class so that it pickles: it carries the config only)."""

    def __init__(self, world: World, split: str) -> None:
        self.world, self.split = world, split

    def __call__(self, indices: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.world.render_upstream(self.split, indices))


class World:
    """The embedded procedural world of one config: upstream splits and downstream tasks."""

    def __init__(self, cfg: WorldConfig = WorldConfig()) -> None:
        self.cfg = cfg
        self.banks = build_banks(cfg.seed, cfg.resolution)
        held = {n for names in HELD_OUT.values() for n in names}
        self.classes: dict[str, WorldClass] = {
            n: WorldClass(n, dom, fam, *self.banks.rows[n]) for n, dom, fam in _catalogue()
        }
        upstream = [wc for wc in self.classes.values() if wc.name not in held]
        parents: dict[str, tuple[str, ...]] = {ROOT: ()}
        for wc in upstream:
            parents.setdefault(wc.domain, (ROOT,))
            parents.setdefault(f"{wc.domain}/{wc.family}", (wc.domain,))
            parents[wc.name] = (f"{wc.domain}/{wc.family}",)
        self.hierarchy = Hierarchy(parents)
        self._leaf_class = [self.classes[leaf] for leaf in self.hierarchy.leaves]
        self._leaf_cdf = np.cumsum(self.leaf_probabilities())
        self._glyph_pool = np.concatenate([np.arange(wc.start, wc.start + wc.count) for wc in upstream
                                           if wc.domain == "glyph"])
        self._specs = {s.name: s for s in _task_specs()}
        self.task_names: tuple[str, ...] = tuple(self._specs)
        self._tasks: dict[str, Task] = {}

    def __reduce__(self):  # pickle the config only; banks are rebuilt (and cached) on the other side
        return (World, (self.cfg,))

    def __repr__(self) -> str:
        return f"World({self.cfg})"

    @property
    def domains(self) -> tuple[str, ...]:
        return DOMAINS

    def leaf_probabilities(self) -> np.ndarray:
        """float64 [num_leaves]: how likely each upstream leaf (in ``hierarchy.leaves`` order) is.

        Log-normal family and leaf weights drawn from the seed. A domain's total share grows only
        with the square root of its number of leaves, so the glyph domain (most leaves) does not
        swamp the others and a generalist is not already a glyph expert."""
        g = np.random.default_rng([self.cfg.seed, 0x1EAF])
        spread = self.cfg.imbalance
        families = sorted({(wc.domain, wc.family) for wc in self._leaf_class})
        fam_w = dict(zip(families, np.exp(0.5 * spread * g.standard_normal(len(families)))))
        dom_w = dict(zip(DOMAINS, np.exp(0.3 * spread * g.standard_normal(len(DOMAINS)))))
        w = np.exp(0.8 * spread * g.standard_normal(len(self._leaf_class)))
        w *= np.array([fam_w[wc.domain, wc.family] for wc in self._leaf_class])
        domain = np.array([wc.domain for wc in self._leaf_class])
        for dom, share in zip(DOMAINS, self.cfg.domain_weights):
            on = domain == dom
            w[on] *= share * dom_w[dom] * np.sqrt(on.sum()) / w[on].sum()
        return w / w.sum()

    # -- upstream ------------------------------------------------------------------------------
    def _split_size(self, split: str) -> int:
        sizes = {"train": self.cfg.upstream_size, "holdout": self.cfg.holdout_size}
        if split not in sizes:
            raise DataError(f"unknown upstream split {split!r}; choose 'train' or 'holdout'")
        return sizes[split]

    def _leaves_of(self, d: Draw) -> np.ndarray:
        """int64 [B] leaf index (into hierarchy.leaves) of each image: inverse CDF of a hashed uniform."""
        return np.minimum(np.searchsorted(self._leaf_cdf, d.u("leaf"), side="right"), len(self._leaf_class) - 1)

    def leaf_ids(self, split: Literal["train", "holdout"]) -> np.ndarray:
        """int64 [N] leaf of every image of a split, without rendering."""
        n = self._split_size(split)
        return self._leaves_of(Draw(image_keys(self.cfg.seed, f"upstream/{split}", np.arange(n))))

    def upstream(self, split: Literal["train", "holdout"]) -> UpstreamData:
        """The upstream split as a lazily rendered, index-addressable dataset."""
        ids = self.leaf_ids(split)
        return UpstreamData(self.hierarchy, ids, _UpstreamRender(self, f"upstream/{split}"), self.cfg.resolution,
                            f"world{self.cfg.seed}-{split}")

    def render_upstream(self, split: str, indices: np.ndarray) -> np.ndarray:
        """uint8 [B, 3, R, R]: images ``indices`` of split ``split`` (e.g. 'upstream/train')."""
        idx = np.asarray(indices, dtype=np.int64)
        out = np.empty((idx.size, 3, self.cfg.resolution, self.cfg.resolution), dtype=np.uint8)
        for s in range(0, idx.size, _CHUNK):
            d = Draw(image_keys(self.cfg.seed, split, idx[s: s + _CHUNK]))
            classes = [self._leaf_class[i] for i in self._leaves_of(d)]
            out[s: s + _CHUNK] = self.render_classes(d, classes)
        return out

    # -- rendering by class ----------------------------------------------------------------------
    def canvas(self, resolution: int | None = None) -> Canvas:
        return Canvas(self.banks, resolution or self.cfg.resolution)

    def _rows(self, d: Draw, classes: Sequence[WorldClass]) -> np.ndarray:
        """int64 [B]: a random bank row (font or variant) of each image's class."""
        start = np.array([wc.start for wc in classes], dtype=np.int64)
        count = np.array([wc.count for wc in classes], dtype=np.int64)
        return start + d.integers("variant", count)

    def render_classes(self, d: Draw, classes: Sequence[WorldClass],
                       styles: dict[str, Style] | None = None) -> np.ndarray:
        """uint8 [B, 3, R, R]: image b shows class ``classes[b]`` in its domain's upstream style."""
        styles = {"glyph": GLYPH_STYLE, "shape": SHAPE_STYLE, "texture": TEXTURE_STYLE, **(styles or {})}
        r = self.cfg.resolution
        out = np.empty((len(d), 3, r, r), dtype=np.uint8)
        domain = np.array([wc.domain for wc in classes])
        rows = self._rows(d, classes)
        c = self.canvas()
        for dom in DOMAINS:
            on = domain == dom
            if on.any():
                out[on] = self._draw_domain(c, d.sub(on), dom, rows[on], styles[dom])
        return out

    def _draw_domain(self, c: Canvas, d: Draw, domain: str, rows: np.ndarray, style: Style) -> np.ndarray:
        if domain == "glyph":
            pool = self._glyph_pool
            nb = (pool[d.integers("nb.left", pool.size)], pool[d.integers("nb.right", pool.size)])
            img = draw_glyphs(c, d, rows, style, nb)
        elif domain == "shape":
            img = draw_shapes(c, d, rows, style)
        else:
            img = draw_textures(c, d, rows, style)
        return c.finish(img, d, style)

    def sample_grid(self, n_per_leaf: int = 1, leaves: Sequence[str] | None = None,
                    split: str = "preview") -> torch.Tensor:
        """uint8 [len(leaves) * n_per_leaf, 3, R, R], leaf-major: upstream-style images of the given
        classes (default: every upstream leaf; held-out classes may be named too)."""
        names = list(self.hierarchy.leaves if leaves is None else leaves)
        unknown = [n for n in names if n not in self.classes]
        if unknown:
            raise DataError(f"unknown world classes {unknown[:5]}; classes look like 'shape/star/star5'")
        classes = [self.classes[n] for n in names for _ in range(n_per_leaf)]
        d = Draw(image_keys(self.cfg.seed, split, np.arange(len(classes))))
        return torch.from_numpy(self.render_classes(d, classes))

    # -- downstream tasks ----------------------------------------------------------------------
    def _spec(self, name: str) -> TaskSpec:
        if name not in self._specs:
            raise DataError(f"unknown world task {name!r}; the world's tasks are: {', '.join(self.task_names)}")
        return self._specs[name]

    def domain_of_task(self, name: str) -> str | None:
        """The upstream domain node a task's images come from (None for a mixed task)."""
        return self._spec(name).domain

    def task(self, name: str) -> Task:
        """The task's VTAB-1k splits (train 800, val 200, test ``cfg.test_size``), near-balanced."""
        spec = self._spec(name)
        if name not in self._tasks:
            sizes = {"train": TRAIN_SIZE, "val": VAL_SIZE, "test": self.cfg.test_size}
            splits = {part: self._task_split(spec, part, n) for part, n in sizes.items()}
            self._tasks[name] = Task(name, spec.group, spec.classes, **splits)
        return self._tasks[name]

    def _task_split(self, spec: TaskSpec, part: str, n: int) -> Split:
        keys = image_keys(self.cfg.seed, f"task/{spec.name}/{part}", np.arange(n))
        # Near-balanced labels: rank the images by a hash and deal the classes out in turn.
        labels = np.empty(n, dtype=np.int64)
        labels[np.argsort(Draw(keys).bits("label"), kind="stable")] = np.arange(n) % len(spec.classes)
        images = np.empty((n, 3, self.cfg.resolution, self.cfg.resolution), dtype=np.uint8)
        for s in range(0, n, _CHUNK):
            images[s: s + _CHUNK] = spec.render(self, Draw(keys[s: s + _CHUNK]), labels[s: s + _CHUNK])
        return Split(torch.from_numpy(images), torch.from_numpy(labels))


# =============================================================================================
# Downstream recipes
# =============================================================================================


def _held_out(world: World, task: str, d: Draw, labels: np.ndarray) -> np.ndarray:
    """Held-out classes of ``task`` in their domain's upstream style."""
    return world.render_classes(d, [world.classes[HELD_OUT[task][k]] for k in labels])


_DIGIT_STYLE = replace(GLYPH_STYLE, rotation=(-25, 25), neighbours=0.7, clutter_behind=0.5, clutter_front=0.4,
                       noise=(0.02, 0.1), blur_passes=2)


def _render_digits(world: World, d: Draw, labels: np.ndarray) -> np.ndarray:
    """Digits with neighbouring digits, as in a number, under stronger nuisance than upstream glyphs."""
    digits = [world.classes[n] for n in HELD_OUT["glyph_digits"]]
    pool = np.concatenate([np.arange(wc.start, wc.start + wc.count) for wc in digits])
    rows = world._rows(d, [digits[k] for k in labels])
    c = world.canvas()
    nb = (pool[d.integers("nb.left", pool.size)], pool[d.integers("nb.right", pool.size)])
    return c.finish(draw_glyphs(c, d, rows, _DIGIT_STYLE, nb), d, _DIGIT_STYLE)


# Slant, width and stroke are the signal: bigger glyphs, no shear, little blur; neighbours share the font.
_FONT_STYLE = replace(GLYPH_STYLE, scale=(1.0, 1.3), rotation=(-6, 6), shear=0.0, aspect=0.03, neighbours=0.6,
                      clutter_behind=0.2, clutter_front=0.1, noise=(0.0, 0.04), blur=(0.0, 0.4))


def _render_fonts(world: World, d: Draw, labels: np.ndarray) -> np.ndarray:
    """Which of eight fonts a seen Latin letter (and its neighbours) is set in."""
    fonts = UNICODE_FONTS + LATIN_FONTS  # a Latin glyph's bank rows, in order
    letters = [wc for wc in world._leaf_class if wc.family in ("latin_upper", "latin_lower")]
    starts = np.array([wc.start for wc in letters], dtype=np.int64)
    font = np.array([fonts.index(f) for f in FONT_TASK_FONTS], dtype=np.int64)[labels]
    pick = lambda name: starts[d.integers(name, len(letters))] + font  # noqa: E731
    c = world.canvas()
    img = draw_glyphs(c, d, pick("letter"), _FONT_STYLE, (pick("nb.left"), pick("nb.right")))
    return c.finish(img, d, _FONT_STYLE)


_MICRO_STYLE = Style(scale=(0.6, 1.0), aspect=0.15, rotation=(-180, 180), shear=0.2, shift=0.25, clutter_behind=0.8,
                     clutter_front=0.0, dots=1.0, noise=(0.05, 0.14), blur=(0.6, 1.0), blur_passes=3,
                     contrast=(0.4, 0.9), brightness=0.05, cast=0.05)


def _render_microscopy(world: World, d: Draw, labels: np.ndarray) -> np.ndarray:
    """Fluorescence-like imaging of held-out shapes: dark ground, glowing stain with debris,
    heavy blur, sensor noise, low contrast."""
    classes = [world.classes[HELD_OUT["shape_microscopy"][k]] for k in labels]
    c = world.canvas()
    stain = _colour(d.uniform("stain.l", 0.45, 0.75), d.uniform("stain.c", 0.25, 0.45),
                    _angle(np.where(d.bernoulli("stain.h", 0.5), 120.0, 300.0) + d.uniform("stain.dh", -25, 25)))
    ground = _colour(d.uniform("ground.l", 0.02, 0.15), d.uniform("ground.c", 0.0, 0.05), d.integers("ground.h", _NA))
    img = np.broadcast_to(ground.astype(F32)[:, :, None, None], (len(d), 3, c.r, c.r)).copy()
    dim = _colour(d.uniform("debris.l", 0.2, 0.45), d.uniform("debris.c", 0.1, 0.3), _angle(d.uniform("dh", 0, 360)))
    debris = np.where(d.bernoulli("debris.same", 0.5)[:, None], stain, dim)
    c.clutter(img, d, "clutter.behind", _MICRO_STYLE.clutter_behind, _MICRO_STYLE, debris)
    c.paint(img, c.sprite(c.banks.shapes, world._rows(d, classes), make_pose(d, "obj", _MICRO_STYLE)), stain)
    return c.finish(img, d, _MICRO_STYLE)


_SENSOR_STYLE = replace(TEXTURE_STYLE, lowres=2, noise=(0.04, 0.12), blur=(0.5, 1.0), contrast=(0.35, 0.8), cast=0.1)


def _render_sensor(world: World, d: Draw, labels: np.ndarray) -> np.ndarray:
    """Held-out textures through a coarse, noisy, colour-cast sensor (half resolution, upsampled)."""
    classes = [world.classes[HELD_OUT["texture_sensor"][k]] for k in labels]
    rows = world._rows(d, classes)
    img, c = lowres_render(world.canvas, world.cfg.resolution, _SENSOR_STYLE.lowres,
                           lambda low: draw_textures(low, d, rows, _SENSOR_STYLE))
    return c.finish(img, d, _SENSOR_STYLE)


_COUNT_STYLE = Style(scale=(0.24, 0.34), aspect=0.15, rotation=(-180, 180), shear=0.15, clutter_behind=0.6,
                     clutter_front=0.4, dots=0.0)
COUNTS = (1, 2, 3, 4, 5, 6)


def _render_count(world: World, d: Draw, labels: np.ndarray) -> np.ndarray:
    """1-6 small seen shapes in distinct cells of a jittered 3x3 grid, among distractor strokes."""
    shapes = [wc for wc in world._leaf_class if wc.domain == "shape"]
    count = np.asarray(COUNTS)[labels]
    cells = np.argsort(np.stack([d.u(f"cell{k}") for k in range(9)], axis=1), axis=1)  # [B, 9] random order
    c = world.canvas()
    img, _, lum = _vivid_scene(c, d, _COUNT_STYLE)
    for k in range(max(COUNTS)):
        on = count > k
        if not on.any():
            continue
        s = d.sub(on)
        cell = cells[on, k]
        centre = np.stack([(cell % 3 - 1) * 0.64, (cell // 3 - 1) * 0.64], axis=1) + \
            np.stack([s.uniform(f"o{k}.jx", -0.06, 0.06), s.uniform(f"o{k}.jy", -0.06, 0.06)], axis=1)
        cls = [shapes[i] for i in s.integers(f"o{k}.cls", len(shapes))]
        rows = world._rows(Draw(s.bits(f"o{k}.v")), cls)  # an independent variant stream per object
        alpha = c.sprite(c.banks.shapes, rows, make_pose(s, f"o{k}", _COUNT_STYLE, centre))
        colour = _random_colour(s, f"o{k}.col", _contrasting(s, f"o{k}.l", lum[on], (0.2, 0.6)), (0.1, 0.4))
        sub = img[on]
        c.paint(sub, alpha, colour)
        img[on] = sub
    stroke = _random_colour(d, "cf", d.u("cf.l"), (0.0, 0.4))
    c.clutter(img, d, "clutter.front", _COUNT_STYLE.clutter_front, _COUNT_STYLE, stroke)
    return c.finish(img, d, _COUNT_STYLE)


# No letter here is another one turned (P turned is close to d), so a turn is never ambiguous.
ORIENTATION_LETTERS = ("glyph/latin_upper/F", "glyph/latin_upper/J", "glyph/latin_upper/L", "glyph/latin_upper/Q",
                       "glyph/latin_lower/b", "glyph/latin_lower/d", "glyph/latin_lower/k", "glyph/latin_lower/r")
ORIENTATION_BINS = 8
_ORIENT_STYLE = replace(GLYPH_STYLE, neighbours=0.0)


def _render_orientation(world: World, d: Draw, labels: np.ndarray) -> np.ndarray:
    """Seen asymmetric letters turned clockwise into one of 8 directions (45 degree bins, +-15 degrees
    jitter around the bin's angle)."""
    letters = [world.classes[n] for n in ORIENTATION_LETTERS]
    rows = world._rows(d, [letters[i] for i in d.integers("letter", len(letters))])
    angle = labels * (360.0 / ORIENTATION_BINS) + d.uniform("jitter", -15, 15)
    c = world.canvas()
    img = draw_glyphs(c, d, rows, _ORIENT_STYLE, (rows, rows), make_pose(d, "obj", _ORIENT_STYLE, angle_deg=angle))
    return c.finish(img, d, _ORIENT_STYLE)


LOCATION_GRID = 3
_LOCATION_STYLE = Style(scale=(0.35, 0.5), aspect=0.1, rotation=(-30, 30), shear=0.2, clutter_front=0.5, dots=0.3,
                        contrast=(0.6, 1.0))


def _render_location(world: World, d: Draw, labels: np.ndarray) -> np.ndarray:
    """A small seen glyph or shape anywhere in one of 3x3 position bins, on a faint seen texture."""
    g = LOCATION_GRID
    textures = [wc for wc in world._leaf_class if wc.domain == "texture"]
    img = draw_textures(world.canvas(), d, world._rows(d, [textures[i] for i in d.integers("bg", len(textures))]),
                        replace(TEXTURE_STYLE, clutter_front=0.0))
    grey = (img[:, 0:1] + img[:, 1:2] + img[:, 2:3]) * F32(1 / 3)
    img = img * F32(0.3) + grey * F32(0.7)  # a washed-out ground (per-pixel ops only)
    objects = [wc for wc in world._leaf_class if wc.domain in ("glyph", "shape")]
    cls = [objects[i] for i in d.integers("obj.cls", len(objects))]
    col, row = labels % g, labels // g
    centre = np.stack([(col + d.u("loc.x")) * (2 / g) - 1, (row + d.u("loc.y")) * (2 / g) - 1], axis=1)
    pose = make_pose(d, "obj", _LOCATION_STYLE, centre)
    bank = {"glyph": world.banks.glyphs, "shape": world.banks.shapes}
    c = world.canvas()
    alpha = np.zeros((len(d), c.r, c.r), dtype=F32)
    rows = world._rows(d, cls)
    for dom in bank:
        on = np.array([wc.domain == dom for wc in cls])
        if on.any():
            alpha[on] = c.sprite(bank[dom], rows[on], Pose(pose.m[on], pose.t[on], pose.angle[on], pose.scale[on]))
    lum = np.where(d.bernoulli("obj.dark", 0.5), d.uniform("obj.lo", 0.0, 0.2), d.uniform("obj.hi", 0.8, 1.0))
    c.paint(img, alpha, _random_colour(d, "obj", lum, (0.1, 0.4)))
    stroke = _random_colour(d, "cf", 1 - lum, (0.0, 0.4))
    c.clutter(img, d, "clutter.front", _LOCATION_STYLE.clutter_front, _LOCATION_STYLE, stroke)
    return c.finish(img, d, _LOCATION_STYLE)


def _location_names() -> tuple[str, ...]:
    rows, cols = ("top", "middle", "bottom"), ("left", "centre", "right")
    return tuple(f"location/{r}-{c}" for r in rows for c in cols)


def _task_specs() -> list[TaskSpec]:
    def held(task: str) -> Callable[[World, Draw, np.ndarray], np.ndarray]:
        return lambda w, d, y: _held_out(w, task, d, y)

    return [
        TaskSpec("glyph_digits", "natural", "glyph", HELD_OUT["glyph_digits"], _render_digits),
        TaskSpec("glyph_unseen", "natural", "glyph", HELD_OUT["glyph_unseen"], held("glyph_unseen")),
        TaskSpec("glyph_fonts", "natural", "glyph", tuple(f"font/{f}" for f in FONT_TASK_FONTS), _render_fonts),
        TaskSpec("shape_unseen", "natural", "shape", HELD_OUT["shape_unseen"], held("shape_unseen")),
        TaskSpec("texture_unseen", "natural", "texture", HELD_OUT["texture_unseen"], held("texture_unseen")),
        TaskSpec("shape_microscopy", "specialized", "shape", HELD_OUT["shape_microscopy"], _render_microscopy),
        TaskSpec("texture_sensor", "specialized", "texture", HELD_OUT["texture_sensor"], _render_sensor),
        TaskSpec("count", "structured", "shape", tuple(f"count/{n}" for n in COUNTS), _render_count),
        TaskSpec("orientation", "structured", "glyph",
                 tuple(f"orientation/{k * 360 // ORIENTATION_BINS}deg" for k in range(ORIENTATION_BINS)),
                 _render_orientation),
        TaskSpec("location", "structured", None, _location_names(), _render_location),
    ]


# =============================================================================================
# Preview
# =============================================================================================


def save_preview(world: World, path: str | os.PathLike, per_row: int = 12) -> Path:
    """Write a PNG grid: a row per upstream family (random leaves of it), then a row per task (its
    first training images, class names under them omitted for space). Returns the path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows: list[tuple[str, np.ndarray]] = []
    families = [n for n in world.hierarchy.nodes if world.hierarchy.depth(n) == 2]
    for fam in families:
        leaves = world.hierarchy.descendant_leaves(fam)
        pick = [leaves[i % len(leaves)] for i in range(per_row)]
        imgs = world.sample_grid(1, pick, split=f"preview/{fam}")
        rows.append((fam, imgs.numpy()))
    for name in world.task_names:
        t = world.task(name).train
        rows.append((f"{name} ({world.task(name).group})", t.images[:per_row].numpy()))
    r, pad = world.cfg.resolution, 2
    mosaic = np.full((len(rows) * (r + pad), per_row * (r + pad), 3), 255, dtype=np.uint8)
    for i, (_, imgs) in enumerate(rows):
        for j, im in enumerate(imgs[:per_row]):
            mosaic[i * (r + pad): i * (r + pad) + r, j * (r + pad): j * (r + pad) + r] = im.transpose(1, 2, 0)
    scale = 0.02 * max(r, 24)
    fig, ax = plt.subplots(figsize=(per_row * scale + 2.6, len(rows) * scale + 0.3), dpi=110)
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_yticks([i * (r + pad) + r / 2 for i in range(len(rows))], [n for n, _ in rows], fontsize=7)
    ax.set_xticks([])
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
