"""The ``scene`` domain: upright landscapes, drawn column by column without a bank.

A scene is a sky gradient over ground whose top edge (the horizon profile, one height per column)
has the class's geometry: peaks, dunes, a skyline, a calm sea. Palettes, horizon height, a far hazy
layer and a sun are nuisances. The statistics differ from every other domain: large smooth areas,
one long edge across the frame, always upright, sky above ground.

Profiles use only table lookups (``COS``), floor, min/max and exactly rounded arithmetic on
per-image numbers, so an image's bytes do not depend on its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from expertise.data.world.canvas import F32, Canvas, Style
from expertise.data.world.catalogue import SCENE_FAMILIES
from expertise.data.world.rng import COS, Draw, angle_index, colour_of, random_colour

SCENE_KINDS: tuple[str, ...] = tuple(n for names in SCENE_FAMILIES.values() for n in names)
_WATER = {"sea", "islands", "lake", "coast", "waves"}
_SKYLINE_BLOCKS = 16

SCENE_STYLE = Style(contrast=(0.7, 1.1), brightness=0.08, noise=(0.0, 0.05), blur=(0.0, 0.8), cast=0.04)


def _cos(v: np.ndarray) -> np.ndarray:
    """cos(2 pi v) from the angle table (v in cycles)."""
    return COS[angle_index(v * 360.0)]


def _tri(v: np.ndarray) -> np.ndarray:
    """A triangle wave in [0, 1] of phase v (cycles): 0 at whole cycles, 1 half-way."""
    return np.abs(v - np.floor(v) - 0.5) * -2 + 1


@dataclass
class _Cols:
    """Per-image numbers of one kind's profile, broadcast against the column coordinates x [1, R]."""

    d: Draw
    x: np.ndarray

    def u(self, name: str, lo: float, hi: float) -> np.ndarray:
        return self.d.uniform(name, lo, hi)[:, None]


def _profile(kind: str, p: _Cols) -> np.ndarray:
    """float64 [B, R]: how far the ground rises above the horizon line at each column."""
    x = p.x
    if kind == "peaks":
        return p.u("a", 0.4, 0.7) * (1 - _tri(p.u("f", 0.8, 1.5) * x + p.u("p", 0, 1)))
    if kind == "ridge":
        a = p.u("a", 0.25, 0.4)
        return a * (1 - _tri(p.u("f", 2.5, 4) * x + p.u("p", 0, 1))) + 0.35 * a * (1 - _tri(p.u("f2", 6, 9) * x + p.u("p2", 0, 1)))
    if kind == "volcano":
        a, x0 = p.u("a", 0.5, 0.8), p.u("x0", -0.4, 0.4)
        cone = np.maximum(a - p.u("s", 1.1, 1.8) * np.abs(x - x0), 0)
        return np.minimum(cone, a - p.u("crater", 0.08, 0.15))
    if kind == "cliff":
        side = np.where(p.d.bernoulli("side", 0.5), 1.0, -1.0)[:, None]
        return p.u("a", 0.4, 0.7) * np.clip((x - p.u("x0", -0.4, 0.4)) * side * p.u("k", 5, 9) + 0.5, 0, 1)
    if kind == "canyon":
        return p.u("a", 0.4, 0.65) * np.minimum(np.abs(x - p.u("x0", -0.4, 0.4)) * p.u("k", 2.5, 4.5), 1)
    if kind == "hills":
        return p.u("a", 0.15, 0.35) * (0.5 + 0.5 * _cos(p.u("f", 0.5, 1.1) * x + p.u("p", 0, 1)))
    if kind == "dunes":
        v = p.u("f", 1.5, 3) * x + p.u("p", 0, 1)
        v = v - np.floor(v)
        return p.u("a", 0.1, 0.25) * np.where(v < 0.75, v * (1 / 0.75), (1 - v) * 4)
    if kind == "mesa":
        return p.u("a", 0.25, 0.45) * np.clip((_cos(p.u("f", 0.6, 1.1) * x + p.u("p", 0, 1)) - 0.2) * 4, 0, 1)
    if kind == "plain":
        return 0.02 + 0.02 * _cos(p.u("f", 1, 3) * x + p.u("p", 0, 1))
    if kind == "terraces":
        n = np.floor(p.u("n", 3, 5))
        return p.u("a", 0.3, 0.5) * np.floor((0.5 + 0.5 * _cos(p.u("f", 0.5, 0.9) * x + p.u("p", 0, 1))) * n) / n
    if kind in ("sea", "lake"):
        return np.zeros_like(x * p.u("a", 0, 1))
    if kind == "waves":
        return p.u("a", 0.04, 0.09) * (0.5 + 0.5 * _cos(p.u("f", 3, 5) * x + p.u("p", 0, 1)))
    if kind == "islands":
        bumps = [np.maximum(1 - ((x - p.u(f"x{j}", -0.7, 0.7)) * p.u(f"w{j}", 2.5, 5)) ** 2, 0) * p.u(f"a{j}", 0.1, 0.3)
                 for j in range(2)]
        return np.maximum(bumps[0], bumps[1] * p.d.bernoulli("two", 0.6)[:, None])
    if kind == "coast":
        side = np.where(p.d.bernoulli("side", 0.5), 1.0, -1.0)[:, None]
        return p.u("a", 0.35, 0.6) * np.clip((x - p.u("x0", 0.0, 0.5) * side) * side * p.u("k", 6, 10) + 0.5, 0, 1)
    if kind == "skyline":
        heights = np.stack([p.d.uniform(f"b{j}", 0.15, 0.6) for j in range(_SKYLINE_BLOCKS)], axis=1)
        block = np.floor((x + 1) * p.u("n", 3, 5) + p.u("p", 0, 1)).astype(np.int64) % _SKYLINE_BLOCKS
        return np.take_along_axis(heights, np.broadcast_to(block, (len(p.d), x.shape[-1])), axis=1)
    if kind == "towers":
        out = 0.02 + 0 * x
        for j in range(3):
            on = np.abs(x - p.u(f"x{j}", -0.8, 0.8)) < p.u(f"w{j}", 0.04, 0.09)
            out = np.maximum(out, on * p.u(f"a{j}", 0.45, 0.85))
        return out
    if kind == "pyramids":
        out = 0 * x
        for j in range(3):
            w = p.u(f"w{j}", 0.2, 0.45)
            out = np.maximum(out, np.maximum(w - np.abs(x - p.u(f"x{j}", -0.7, 0.7)), 0) * p.u(f"s{j}", 0.9, 1.3))
        return out
    if kind == "forest":
        v = 1 - _tri(p.u("f", 5, 8) * x + p.u("p", 0, 1))
        return p.u("a", 0.2, 0.35) * np.clip(v * 2 - 1, 0, 1) + 0.03
    if kind == "arches":
        return p.u("a", 0.3, 0.5) + 0 * x  # the deck; the arches are cut below it in draw_scenes
    raise ValueError(f"unknown scene kind {kind!r}")


def _edge(c: Canvas, top: np.ndarray) -> np.ndarray:
    """float32 [B, R, R] coverage of the region below ``top`` float64 [B, R] (y down), anti-aliased."""
    y = c.grid.astype(np.float64)[None, :, None]
    return np.clip((y - top[:, None, :]) * (c.r / 2) + 0.5, 0, 1).astype(F32)


def draw_scenes(c: Canvas, d: Draw, kinds: np.ndarray, style: Style = SCENE_STYLE) -> np.ndarray:
    """float32 [B, 3, R, R]: landscapes of scene kinds ``kinds`` (indices into ``SCENE_KINDS``)."""
    b, r = len(d), c.r
    x = c.grid.astype(np.float64)[None, :]
    day = d.uniform("sky.l", 0.2, 0.9)
    sky0 = colour_of(day, d.uniform("sky.c", 0.1, 0.4), angle_index(d.uniform("sky.h", 180, 260)))
    sky1 = random_colour(d, "sky1", np.clip(day + d.uniform("sky.d", -0.1, 0.3), 0, 1), (0.05, 0.4))
    t = np.clip((c.grid[None, :, None] + F32(1)) * F32(0.5), 0, 1)[:, None]  # [1, 1, R, 1] top to bottom
    s0, s1 = sky0.astype(F32)[:, :, None, None], sky1.astype(F32)[:, :, None, None]
    img = np.broadcast_to(s0 + t * (s1 - s0), (b, 3, r, r)).copy()
    sun = d.bernoulli("sun", 0.4)
    if sun.any():  # a disc in the sky, painted before the ground so hills can hide it
        cx, cy, rad = d.uniform("sun.x", -0.7, 0.7), d.uniform("sun.y", -0.8, -0.3), d.uniform("sun.r", 0.08, 0.18)
        gx, gy = c.grid.astype(np.float64)[None, None, :], c.grid.astype(np.float64)[None, :, None]
        q = (gx - cx[:, None, None]) ** 2 + (gy - cy[:, None, None]) ** 2
        alpha = (np.clip((rad[:, None, None] ** 2 - q) * (c.r * 2), 0, 1) * sun[:, None, None]).astype(F32)
        c.paint(img, alpha, random_colour(d, "sun", d.uniform("sun.l", 0.75, 1.0), (0.0, 0.3)))
    horizon = d.uniform("horizon", -0.15, 0.35)
    ground_l = d.uniform("ground.l", 0.1, 0.6)
    ground = random_colour(d, "ground", ground_l, (0.05, 0.3))
    far = d.bernoulli("far", 0.6)
    if far.any():  # a far, hazy range of hills between sky and ground
        cols = _Cols(d, x)
        top = horizon[:, None] - 0.08 - cols.u("far.a", 0.1, 0.3) * (0.5 + 0.5 * _cos(cols.u("far.f", 0.8, 2) * x + cols.u("far.p", 0, 1)))
        haze = (ground + (sky1 - ground) * d.uniform("far.haze", 0.4, 0.7)[:, None])
        c.paint(img, _edge(c, top) * far[:, None, None].astype(F32), haze)
    names = np.asarray(SCENE_KINDS)[kinds]
    water = np.isin(names, list(_WATER))
    water_colour = colour_of(d.uniform("water.l", 0.2, 0.6), d.uniform("water.c", 0.1, 0.35),
                             angle_index(d.uniform("water.h", 170, 230)))
    for kind in np.unique(names):
        on = names == kind
        s = d.sub(on)
        top = horizon[on, None] - _profile(str(kind), _Cols(s, x))
        sub = img[on]
        colour = ground[on]
        if kind == "lake":  # ground far away, water from a second, lower line
            c.paint(sub, _edge(c, top - 0.02), colour)
            top = top + s.uniform("shore", 0.15, 0.35)[:, None]
            colour = water_colour[on]
        elif kind in ("sea", "waves"):  # the profile is the water's surface
            colour = water_colour[on]
        elif kind in _WATER:  # the profile is land (islands, coast) standing out of water at the horizon
            level = horizon[on, None] + 0 * top
            c.paint(sub, _edge(c, level), water_colour[on])
            c.paint(sub, np.clip(_edge(c, top) - _edge(c, level), 0, 1), colour)
            img[on] = sub
            continue
        elif kind == "arches":
            c.paint(sub, _edge(c, horizon[on, None] + 0 * top), colour)
            v = s.uniform("arch.f", 1.2, 2.2)[:, None] * x + s.uniform("arch.p", 0, 1)[:, None]
            v = (v - np.floor(v)) * 2 - 1
            depth = (horizon[on, None] - top) * s.uniform("arch.depth", 0.6, 0.85)[:, None]
            under = top + (horizon[on, None] - top - depth * (1 - v * v))  # the arch's underside
            deck = _edge(c, top) - _edge(c, np.maximum(under, top + 0.08))
            colour = random_colour(s, "bridge", s.uniform("bridge.l", 0.1, 0.8), (0.0, 0.2))
            c.paint(sub, np.clip(deck, 0, 1), colour)
            img[on] = sub
            continue
        c.paint(sub, _edge(c, top), colour)
        img[on] = sub
    if water.any():  # ripples: brighter rows below the horizon
        s = d.sub(water)
        y = c.grid.astype(np.float64)[None, :]
        rows = 0.5 + 0.5 * _cos(s.uniform("ripple.f", 4, 9)[:, None] * y + s.uniform("ripple.p", 0, 1)[:, None])
        below = np.clip((y - horizon[water, None]) * (c.r / 2), 0, 1)
        gain = (rows * below * s.uniform("ripple.a", 0.05, 0.2)[:, None]).astype(F32)
        img[water] += gain[:, None, :, None]
    return img
