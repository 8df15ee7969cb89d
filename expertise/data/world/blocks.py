"""Block pieces: art that no upstream domain has, for structured tasks in the manner of VTAB's dSprites.

A piece is a short spine of square blocks with a head block at one end and one or two blocks on the
spine's sides, drawn flat with a visible gap between blocks, the head in a second colour, on a flat
ground without distractors. No upstream domain draws blocks, flat grounds or two-colour sprites, so
no expert of the library has seen this art (VTAB's dSprites and Clevr share no content with
ImageNet's classes either). The head gives each piece a direction, the same for every piece, so the
orientation task is the direction of the head, learnable across pieces.

The tasks built on the pieces (``blocks_count``, ``blocks_orientation``, ``blocks_location``) are the
built-in suite's structured tasks. The earlier ones (``count``, ``orientation``, ``location``) drew
shapes and glyphs, whose domain experts know them, so an expert helped on them as it would on a
natural task; they still load by name (docs/world.md has the measurements of both).
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from expertise.data.world.banks import _box_down, _supersampled
from expertise.data.world.canvas import F32, Canvas, Pose, Style, grid_slots, make_pose
from expertise.data.world.rng import Draw, contrasting, random_colour

if TYPE_CHECKING:
    from expertise.data.world.world import World

PIECES = 32  # pieces per world seed
_GAP = 0.14  # the gap between neighbouring blocks, a fraction of a block's side
_REACH = 0.88  # every corner of a piece lies within this radius, so any rotation fits the sprite canvas

BLOCKS_STYLE = Style(scale=(0.75, 1.05), aspect=0.08, rotation=(-180, 180), shear=0.1, shift=0.15, clutter_behind=0.0,
                     clutter_front=0.0, dots=0.0, noise=(0.0, 0.06), blur=(0.0, 0.6), contrast=(0.7, 1.1))


def piece_cells(g: np.random.Generator) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """One piece's blocks on an integer grid (x right, y up): the body and the head. The head sits on
    top of a vertical spine of 2-3 blocks; 1-2 side blocks hang left or right of spine blocks."""
    spine = int(g.integers(2, 4))
    body = [(0, -k) for k in range(1, spine + 1)]
    sides = [(sx, -k) for k in range(1, spine + 1) for sx in (-1, 1)]
    for i in g.choice(len(sides), size=int(g.integers(1, 3)), replace=False):
        body.append(sides[int(i)])
    return body, (0, 0)


def _draw_cells(x: np.ndarray, y: np.ndarray, cells: list[tuple[int, int]], centre: np.ndarray, side: float) -> np.ndarray:
    """bool mask of squares of ``side`` (less the gap) at grid ``cells`` around ``centre``."""
    half = side * (1 - _GAP) / 2
    out = np.zeros(x.shape, dtype=bool)
    for cx, cy in cells:
        px, py = (cx - centre[0]) * side, (cy - centre[1]) * side
        out |= (np.abs(x - px) <= half) & (np.abs(y - py) <= half)
    return out


@lru_cache(maxsize=4)
def blocks_bank(seed: int, size: int) -> np.ndarray:
    """float32 [2 * PIECES, size+2, size+2]: each piece's body coverage (rows 0..PIECES-1), then its
    head's (rows PIECES..), the piece centred on its bounding box and scaled to reach ``_REACH``."""
    g = np.random.default_rng([seed, 0xB10C5])
    x, y = _supersampled(size)
    bodies, heads = [], []
    for _ in range(PIECES):
        body, head = piece_cells(g)
        cells = np.array([*body, head], dtype=np.float64)
        centre = (cells.min(axis=0) + cells.max(axis=0)) / 2
        corners = np.abs(cells - centre) + 0.5
        side = _REACH / float(np.hypot(corners[:, 0], corners[:, 1]).max())
        bodies.append(_box_down(_draw_cells(x, y, body, centre, side), 4))
        heads.append(_box_down(_draw_cells(x, y, [head], centre, side), 4))
    bank = np.pad(np.stack(bodies + heads), ((0, 0), (1, 1), (1, 1)))
    bank.flags.writeable = False
    return bank


def _ground(c: Canvas, d: Draw) -> tuple[np.ndarray, np.ndarray]:
    """A flat ground, dark or light: (image float32 [B, 3, R, R], its grey level float64 [B])."""
    lum = np.where(d.bernoulli("ground.dark", 0.5), d.uniform("ground.lo", 0.0, 0.3), d.uniform("ground.hi", 0.7, 1.0))
    colour = random_colour(d, "ground", lum, (0.0, 0.15)).astype(F32)
    return np.broadcast_to(colour[:, :, None, None], (len(d), 3, c.r, c.r)).copy(), lum


def _paint_pieces(world: World, c: Canvas, d: Draw, name: str, img: np.ndarray, lum: np.ndarray, pose: Pose) -> None:
    """In place: a random piece at ``pose``, its body and head in two colours that stand out from the ground."""
    bank = blocks_bank(world.cfg.seed, 2 * c.r)
    rows = d.integers(name + ".piece", PIECES)
    body = random_colour(d, name + ".body", contrasting(d, name + ".body.l", lum, (0.35, 0.7)), (0.0, 0.35))
    head = random_colour(d, name + ".head", contrasting(d, name + ".head.l", lum, (0.35, 0.7)), (0.25, 0.5))
    c.paint(img, c.sprite(bank, rows, pose), body)
    c.paint(img, c.sprite(bank, rows + PIECES, pose), head)


COUNTS = (1, 2, 3, 4, 5, 6)
_COUNT_STYLE = replace(BLOCKS_STYLE, scale=(0.24, 0.32))


def render_count(world: World, d: Draw, labels: np.ndarray) -> np.ndarray:
    """1-6 small pieces, any rotation, in distinct cells of a jittered 3x3 grid."""
    c = world.canvas()
    img, lum = _ground(c, d)
    for k, on, s, centre in grid_slots(d, np.asarray(COUNTS)[labels], max(COUNTS)):
        sub = img[on]
        _paint_pieces(world, c, s, f"o{k}", sub, lum[on], make_pose(s, f"o{k}", _COUNT_STYLE, centre))
        img[on] = sub
    return c.finish(img, d, _COUNT_STYLE)


ORIENTATION_BINS = 8


def render_orientation(world: World, d: Draw, labels: np.ndarray) -> np.ndarray:
    """One piece whose head points into one of 8 directions (45 degree bins, +-15 degrees jitter)."""
    angle = labels * (360.0 / ORIENTATION_BINS) + d.uniform("jitter", -15, 15)
    c = world.canvas()
    img, lum = _ground(c, d)
    _paint_pieces(world, c, d, "obj", img, lum, make_pose(d, "obj", BLOCKS_STYLE, angle_deg=angle))
    return c.finish(img, d, BLOCKS_STYLE)


LOCATION_GRID = 3
_LOCATION_STYLE = replace(BLOCKS_STYLE, scale=(0.35, 0.5))


def render_location(world: World, d: Draw, labels: np.ndarray) -> np.ndarray:
    """One small piece, any rotation, anywhere in one of 3x3 position bins."""
    g = LOCATION_GRID
    col, row = labels % g, labels // g
    centre = np.stack([(col + d.u("loc.x")) * (2 / g) - 1, (row + d.u("loc.y")) * (2 / g) - 1], axis=1)
    c = world.canvas()
    img, lum = _ground(c, d)
    _paint_pieces(world, c, d, "obj", img, lum, make_pose(d, "obj", _LOCATION_STYLE, centre))
    return c.finish(img, d, _LOCATION_STYLE)
