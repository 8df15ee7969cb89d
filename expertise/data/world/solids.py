"""The ``solid`` domain: shaded 3-D objects (spheres, prisms, cones, cylinders) on a table.

Each class is a signed distance function; the bank holds, per class variant (a view from above at a
random yaw and pitch, and a random light), the object's coverage and its premultiplied Lambert and
specular shading, ray-marched once per seed and size with numpy. An image paints one object in a
random colour over its drop shadow on a wall-and-floor ground. Rendering only reads the banks
through ``Canvas.sprite``, so an image's bytes do not depend on its batch.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

from expertise.data.world.canvas import F32, Canvas, Style, make_pose
from expertise.data.world.catalogue import SOLID_FAMILIES
from expertise.data.world.rng import Draw, random_colour, stable_code

_VARIANTS = 6
SOLID_STYLE = Style(scale=(0.8, 1.1), aspect=0.05, rotation=(-12, 12), shear=0.05, shift=0.15, clutter_behind=0.0,
                    clutter_front=0.1, noise=(0.0, 0.05), blur=(0.0, 0.7), contrast=(0.7, 1.1))

Sdf = Callable[[np.ndarray], np.ndarray]  # points [N, 3] -> signed distance [N] (a lower bound outside)


def _planes(normals: list, offsets: list | float) -> Sdf:
    n = np.asarray(normals, dtype=np.float64)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    o = np.broadcast_to(np.asarray(offsets, dtype=np.float64), (len(n),))
    return lambda p: np.max(p @ n.T - o, axis=1)


def _box(hx: float, hy: float, hz: float, centre=(0.0, 0.0, 0.0)) -> Sdf:
    h, c = np.array([hx, hy, hz]), np.asarray(centre, dtype=np.float64)

    def f(p: np.ndarray) -> np.ndarray:
        q = np.abs(p - c) - h
        return np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(axis=1), 0)
    return f


def _cylinder(r: float, h: float, y0: float = 0.0) -> Sdf:
    def f(p: np.ndarray) -> np.ndarray:
        dx, dy = np.hypot(p[:, 0], p[:, 2]) - r, np.abs(p[:, 1] - y0) - h
        return np.minimum(np.maximum(dx, dy), 0) + np.hypot(np.maximum(dx, 0), np.maximum(dy, 0))
    return f


def _cone(apex: float, base: float, rb: float, double: bool = False) -> Sdf:
    """A cone with its apex at y = ``apex`` and a base of radius ``rb`` at y = ``base``."""
    height = apex - base
    nr, ny = height / np.hypot(height, rb), rb / np.hypot(height, rb)

    def f(p: np.ndarray) -> np.ndarray:
        y = np.abs(p[:, 1]) if double else p[:, 1]
        side = nr * np.hypot(p[:, 0], p[:, 2]) + ny * (y - apex)
        return side if double else np.maximum(side, base - p[:, 1])
    return f


def _ngon_prism(n: int, r: float, h: float) -> Sdf:
    a = 2 * np.pi * np.arange(n) / n
    sides = [[np.cos(t), 0, np.sin(t)] for t in a]
    return _planes(sides + [[0, 1, 0], [0, -1, 0]], [r] * n + [h, h])


def _solid_sdfs(g: np.random.Generator) -> dict[str, Sdf]:
    """Every class's distance function, its sizes drawn from ``g`` once (a variant)."""
    k = {name: float(g.uniform(lo, hi)) for name, lo, hi in (
        ("sphere", 0.55, 0.62), ("torus", 0.16, 0.2), ("capsule", 0.26, 0.3), ("cube", 0.4, 0.46),
        ("slab", 0.14, 0.2), ("hex", 0.4, 0.46), ("tri", 0.28, 0.32), ("cone", 0.42, 0.5), ("tetra", 0.26, 0.3),
        ("spindle", 0.3, 0.38), ("cyl_r", 0.35, 0.42), ("cyl_h", 0.38, 0.48), ("disc", 0.55, 0.62),
        ("disc_h", 0.1, 0.14))}
    cyl = _cylinder(k["cyl_r"], k["cyl_h"])
    axes = np.array([0.42, 0.66, 0.42])
    cavity = lambda p: np.maximum(np.hypot(p[:, 0], p[:, 2]) - 0.32, -0.3 - p[:, 1])  # noqa: E731
    bars = [_box(0.55, 0.16, 0.16), _box(0.16, 0.55, 0.16), _box(0.16, 0.16, 0.55)]
    shaft, head = _cylinder(0.14, 0.45, -0.1), _ngon_prism(6, 0.32, 0.12)
    return {
        "sphere": lambda p: np.linalg.norm(p, axis=1) - k["sphere"],
        "egg": lambda p: (np.linalg.norm(p / axes, axis=1) - 1) * axes.min(),
        "torus": lambda p: np.hypot(np.hypot(p[:, 0], p[:, 2]) - 0.45, p[:, 1]) - k["torus"],
        "capsule": lambda p: np.linalg.norm(p - np.c_[np.clip(p[:, 0], -0.4, 0.4), 0 * p[:, :2]], axis=1) - k["capsule"],
        "dome": lambda p: np.maximum(np.linalg.norm(p - np.array([0, -0.25, 0]), axis=1) - 0.65, -0.25 - p[:, 1]),
        "cube": _box(k["cube"], k["cube"], k["cube"]),
        "slab": _box(0.6, k["slab"], 0.4),
        "hex_prism": _ngon_prism(6, k["hex"], 0.38),
        "tri_prism": _ngon_prism(3, k["tri"], 0.42),
        "cross": lambda p: np.min([b(p) for b in bars], axis=0),
        "cone": _cone(0.55, -0.45, k["cone"]),
        "pyramid": _planes([[1, 0.45, 0], [-1, 0.45, 0], [0, 0.45, 1], [0, 0.45, -1], [0, -1, 0]],
                           [0.45 * 0.55 / np.hypot(1, 0.45)] * 4 + [0.4]),
        "tetrahedron": _planes([[1, 1, 1], [-1, -1, 1], [-1, 1, -1], [1, -1, -1]], k["tetra"]),
        "octahedron": _planes([[a, b, c] for a in (1, -1) for b in (1, -1) for c in (1, -1)], 0.46),
        "spindle": _cone(0.7, 0.0, k["spindle"], double=True),
        "cylinder": cyl,
        "disc": _cylinder(k["disc"], k["disc_h"]),
        "tube": lambda p: np.maximum(cyl(p), 0.26 - np.hypot(p[:, 0], p[:, 2])),
        "bolt": lambda p: np.minimum(shaft(p), head(p - np.array([0, 0.45, 0]))),
        "cup": lambda p: np.maximum(_cylinder(0.42, 0.4)(p), -cavity(p)),
    }


def _rotation(yaw: float, pitch: float) -> np.ndarray:
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    return rx @ ry  # object -> camera


def _march(sdf: Sdf, rot: np.ndarray, light: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Orthographic ray marching of ``sdf`` seen through ``rot`` (object -> camera; camera x right, y up,
    z towards the viewer) on an n x n grid over [-1, 1]^2: coverage and shading, float64 [n, n] each."""
    g = (np.arange(n) + 0.5) / n * 2 - 1
    x, y = np.meshgrid(g, -g)
    origin = np.c_[x.ravel(), y.ravel(), np.full(x.size, 2.0)]
    ray = np.array([0.0, 0.0, -1.0])
    t = np.zeros(x.size)
    hit = np.zeros(x.size, dtype=bool)
    active = np.ones(x.size, dtype=bool)
    for _ in range(80):
        idx = np.nonzero(active)[0]
        if idx.size == 0:
            break
        p = (origin[idx] + t[idx, None] * ray) @ rot  # camera -> object (rot is orthonormal)
        dist = sdf(p)
        t[idx] += np.maximum(dist * 0.9, 1e-4)
        done = dist < 2e-3
        hit[idx[done]] = True
        active[idx[done | (t[idx] > 4.0)]] = False
    shade = np.zeros(x.size)
    idx = np.nonzero(hit)[0]
    if idx.size:
        p = (origin[idx] + t[idx, None] * ray) @ rot
        eps = 1e-3
        grad = np.stack([sdf(p + e) - sdf(p - e) for e in np.eye(3) * eps], axis=1)
        normal = (grad / np.maximum(np.linalg.norm(grad, axis=1, keepdims=True), 1e-12)) @ rot.T  # to camera
        half = light + np.array([0.0, 0.0, 1.0])
        half /= np.linalg.norm(half)
        diffuse = np.clip(normal @ light, 0, 1)
        spec = np.clip(normal @ half, 0, 1) ** 24
        shade[idx] = np.clip(0.18 + 0.72 * diffuse + 0.35 * spec, 0, 1)
    return hit.reshape(n, n).astype(np.float64), shade.reshape(n, n)


@lru_cache(maxsize=4)
def solid_banks(seed: int, size: int) -> tuple[np.ndarray, np.ndarray, dict[str, tuple[int, int]]]:
    """Coverage and premultiplied shading float32 [M, size+2, size+2] each (zero border),
    ``_VARIANTS`` rows per class, and each class's (start, count)."""
    cover, shade, index = [], [], {}
    for family, names in SOLID_FAMILIES.items():
        for name in names:
            index[f"solid/{family}/{name}"] = (len(cover), _VARIANTS)
            for v in range(_VARIANTS):
                g = np.random.default_rng([seed, stable_code("solid/" + name) & 0xFFFFFFFF, v])
                sdf = _solid_sdfs(g)[name]
                rot = _rotation(g.uniform(0, 2 * np.pi), np.radians(g.uniform(15, 40)))
                light = np.array([g.uniform(-0.7, 0.7), g.uniform(0.3, 0.9), g.uniform(0.5, 1.0)])
                hit, sh = _march(sdf, rot, light / np.linalg.norm(light), 2 * size)
                down = lambda a: a.reshape(size, 2, size, 2).mean(axis=(1, 3)).astype(np.float32)  # noqa: E731
                cover.append(down(hit))
                shade.append(down(hit * sh))
    pad = ((0, 0), (1, 1), (1, 1))
    cb, sb = np.pad(np.stack(cover), pad), np.pad(np.stack(shade), pad)
    cb.flags.writeable = sb.flags.writeable = False
    return cb, sb, index


def draw_solids(c: Canvas, d: Draw, cover: np.ndarray, shade: np.ndarray, rows: np.ndarray,
                style: Style = SOLID_STYLE) -> np.ndarray:
    """float32 [B, 3, R, R]: one shaded object (bank ``rows``) over its drop shadow, on a wall above a
    floor, in a random colour."""
    b = len(d)
    wall = random_colour(d, "wall", d.uniform("wall.l", 0.35, 0.9), (0.0, 0.15))
    floor = random_colour(d, "floor", d.uniform("floor.l", 0.2, 0.7), (0.0, 0.2))
    line = d.uniform("floor.y", -0.1, 0.45).astype(F32)
    y = c.grid[None, :, None]
    below = np.clip((y - line[:, None, None]) * F32(c.r / 2) + F32(0.5), 0, 1)  # [B, R, 1]
    w, f = wall.astype(F32)[:, :, None, None], floor.astype(F32)[:, :, None, None]
    img = np.broadcast_to(w + below[:, None] * (f - w), (b, 3, c.r, c.r)).copy()
    pose = make_pose(d, "obj", style)
    offset = np.stack([d.uniform("shadow.x", -0.15, 0.15), d.uniform("shadow.y", 0.06, 0.16)], axis=1)
    shadow = c.sprite(cover, rows, pose.moved(pose.t + offset)) * d.uniform("shadow.op", 0.25, 0.55).astype(F32)[:, None, None]
    c.paint(img, shadow, np.zeros((b, 3)))
    alpha = c.sprite(cover, rows, pose)
    lit = c.sprite(shade, rows, pose)
    colour = random_colour(d, "obj", d.uniform("obj.l", 0.45, 0.85), (0.15, 0.45)).astype(F32)
    img += -alpha[:, None] * img + lit[:, None] * colour[:, :, None, None]
    return img
