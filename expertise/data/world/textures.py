"""Texture tiles and sensor-noise tiles, built once per (seed, tile size).

A texture is a tileable float [T, T] in [0, 1] from (X, Y, rng, T): X, Y in [0, 1) tile units,
frequencies in whole cycles per tile so the tile wraps seamlessly.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

from expertise.data.world.catalogue import TEXTURE_FAMILIES
from expertise.data.world.rng import stable_code

_TEXTURE_VARIANTS = 6


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
def texture_bank(seed: int, tile: int) -> tuple[np.ndarray, dict[str, tuple[int, int]]]:
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
                g = np.random.default_rng([seed, stable_code(name) & 0xFFFFFFFF, v, 7])
                t = np.asarray(fns[name](x, y, g, tile), dtype=np.float64)
                rows.append(((t - t.min()) / max(t.max() - t.min(), 1e-9)).astype(np.float32))
    bank = np.stack(rows)
    bank.flags.writeable = False
    return bank, index


@lru_cache(maxsize=4)
def noise_bank(seed: int, tile: int) -> np.ndarray:
    """Sensor-noise tiles float32 [16, 3, tile, tile], standard normal."""
    bank = np.random.default_rng([seed, 0x5E4502]).standard_normal((16, 3, tile, tile)).astype(np.float32)
    bank.flags.writeable = False
    return bank

