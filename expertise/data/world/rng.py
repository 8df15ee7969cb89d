"""Counter-based randomness: every per-image number is a hash of (seed, split, index, stream name).

Per-image parameters come from splitmix64 on uint64 arrays, so image ``i`` of a split does not depend
on the batch it is rendered in. Also the angle and hue tables, and colours drawn from them.
"""

from __future__ import annotations

import hashlib
import zlib

import numpy as np

_MASK64 = (1 << 64) - 1


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 [...] (arithmetic wraps mod 2**64)."""
    z = np.atleast_1d(np.asarray(x, dtype=np.uint64))
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def stable_code(text: str) -> int:
    """A stable 64-bit code for a name (split, task part, stream); Python's hash() is salted."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def image_keys(seed: int, split: str, indices: np.ndarray) -> np.ndarray:
    """uint64 [B]: one key per image, a pure function of (seed, split name, index)."""
    base = _mix(np.array([seed & _MASK64], dtype=np.uint64) ^ _mix(np.array([stable_code(split)], dtype=np.uint64)))
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
NUM_ANGLES = 3600
COS = np.cos(2 * np.pi * np.arange(NUM_ANGLES) / NUM_ANGLES)
SIN = np.sin(2 * np.pi * np.arange(NUM_ANGLES) / NUM_ANGLES)


def angle_index(deg: np.ndarray) -> np.ndarray:
    """int64 [B] table index for angles in degrees (rounded to 0.1 degree)."""
    return np.floor(np.asarray(deg) * (NUM_ANGLES / 360) + 0.5).astype(np.int64) % NUM_ANGLES


def colour_of(lum: np.ndarray, chroma: np.ndarray, hue: np.ndarray) -> np.ndarray:
    """float64 [B, 3] RGB in [0, 1]: grey level ``lum`` plus ``chroma`` along hue table index ``hue``."""
    third = NUM_ANGLES // 3
    h = np.stack([COS[hue], COS[(hue - third) % NUM_ANGLES], COS[(hue + third) % NUM_ANGLES]], axis=1)
    return np.clip(lum[:, None] + chroma[:, None] * h, 0.0, 1.0)


def random_colour(d: Draw, name: str, lum: np.ndarray, chroma: tuple[float, float]) -> np.ndarray:
    return colour_of(lum, d.uniform(name + ".c", *chroma), d.integers(name + ".h", NUM_ANGLES))


def contrasting(d: Draw, name: str, lum: np.ndarray, gap: tuple[float, float]) -> np.ndarray:
    """float64 [B]: a grey level at distance ``gap`` from ``lum``, on whichever side stays in [0, 1]."""
    delta = d.uniform(name, *gap)
    up = d.bernoulli(name + ".up", 0.5)
    out = np.where(up, lum + delta, lum - delta)
    out = np.where((out > 1) | (out < 0), np.where(up, lum - delta, lum + delta), out)
    return np.clip(out, 0.0, 1.0)
