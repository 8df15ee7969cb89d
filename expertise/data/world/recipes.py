"""Recipes: how each domain's upstream images and each built-in downstream task are drawn.

A domain recipe returns float32 [B, 3, R, R] before the global nuisances of ``Canvas.finish``; a task
recipe ``render(world, draw, labels int64 [B])`` returns the finished uint8 [B, 3, R, R].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from expertise.data.tasks import Group
from expertise.data.world import blocks
from expertise.data.world.canvas import (F32, GLYPH_STYLE, TEXTURE_STYLE, Canvas, Pose, Style, grid_slots, lowres_render,
                                         make_pose)
from expertise.data.world.catalogue import FONT_TASK_FONTS, HELD_OUT, LATIN_FONTS, UNICODE_FONTS
from expertise.data.world.rng import COS, NUM_ANGLES, SIN, Draw, angle_index, colour_of, contrasting, random_colour

if TYPE_CHECKING:
    from expertise.data.world.world import World

# -- domain recipes (upstream style) ----------------------------------------------------------


def _unit(angle: np.ndarray) -> np.ndarray:
    """float64 [B, 2]: the frame direction of table angle ``angle`` (x right, y down)."""
    return np.stack([COS[angle], SIN[angle]], axis=1)


def draw_glyphs(c: Canvas, d: Draw, rows: np.ndarray, style: Style, neighbours: tuple[np.ndarray, np.ndarray],
                pose: Pose | None = None) -> np.ndarray:
    """Ink on paper: glyph ``rows`` of the glyph bank, with neighbouring glyphs ``neighbours`` (left,
    right; int64 [B] rows each, shown with probability ``style.neighbours``) cut by the frame as in
    a crop from a line of text, and pen strokes as clutter."""
    dark = d.bernoulli("paper.dark", 0.25)  # a quarter of the pages are light ink on a dark ground
    paper = np.where(dark, d.uniform("paper.lo", 0.05, 0.35), d.uniform("paper.hi", 0.6, 0.97))
    ink = random_colour(d, "ink", contrasting(d, "ink.l", paper, (0.3, 0.7)), (0.0, 0.3))
    stain = np.clip(paper + d.uniform("paper.d", -0.12, 0.12), 0, 1)
    img = c.gradient(d, "paper.grad", random_colour(d, "paper", paper, (0.0, 0.08)),
                     random_colour(d, "paper2", stain, (0.0, 0.08)), (0.0, 1.0))
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
    scribble = random_colour(d, "scribble", d.uniform("scribble.l", 0.0, 1.0), (0.0, 0.4))
    c.clutter(img, d, "clutter.front", style.clutter_front, style, scribble)
    return img


def _vivid_scene(c: Canvas, d: Draw, style: Style) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A two-colour gradient ground with distractors behind, and a foreground colour that stands out:
    (image float32 [B, 3, R, R], foreground float64 [B, 3], ground grey level float64 [B])."""
    lum = d.uniform("bg.l", 0.15, 0.85)
    img = c.gradient(d, "bg.grad", random_colour(d, "bg0", lum, (0.0, 0.3)),
                     random_colour(d, "bg1", np.clip(lum + d.uniform("bg.d", -0.2, 0.2), 0, 1), (0.0, 0.3)),
                     (0.3, 1.5))
    fg = random_colour(d, "fg", contrasting(d, "fg.l", lum, (0.2, 0.6)), (0.1, 0.4))
    clutter = random_colour(d, "cl", d.uniform("cl.l", 0.1, 0.9), (0.0, 0.4))
    c.clutter(img, d, "clutter.behind", style.clutter_behind, style, clutter)
    return img, fg, lum


def draw_shapes(c: Canvas, d: Draw, rows: np.ndarray, style: Style) -> np.ndarray:
    """A flat-coloured silhouette (shape bank ``rows``) on a gradient, with distractor strokes and dots."""
    img, fg, _ = _vivid_scene(c, d, style)
    c.paint(img, c.sprite(c.banks.shapes, rows, make_pose(d, "obj", style)), fg)
    c.clutter(img, d, "clutter.front", style.clutter_front, style, random_colour(d, "cf", d.u("cf.l"), (0.0, 0.4)))
    return img


def draw_textures(c: Canvas, d: Draw, rows: np.ndarray, style: Style) -> np.ndarray:
    """A full-frame texture (bank ``rows``) mapped onto two colours, with shading and a rare stroke."""
    l0 = d.uniform("tx.l0", 0.1, 0.9)
    c0 = random_colour(d, "tx.c0", l0, (0.0, 0.35))
    c1 = random_colour(d, "tx.c1", contrasting(d, "tx.l1", l0, (0.25, 0.7)), (0.0, 0.35))
    tile = c.banks.textures.shape[-1]
    offset = np.stack([d.uniform("tx.ox", 0, tile), d.uniform("tx.oy", 0, tile)], axis=1)
    t = c.texture(rows, make_pose(d, "tx", style, centre=offset))
    c0f, c1f = c0.astype(F32)[:, :, None, None], c1.astype(F32)[:, :, None, None]
    img = c0f + t[:, None] * (c1f - c0f)
    amp = d.uniform("shade.amp", 0.0, 0.3)
    zero = np.zeros((len(d), 3))
    img += c.gradient(d, "shade", zero - amp[:, None] / 2, zero + amp[:, None] / 2, (1.0, 1.0))
    c.clutter(img, d, "clutter.front", style.clutter_front, style, random_colour(d, "cf", d.u("cf.l"), (0.0, 0.4)))
    return img


# -- downstream tasks -------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSpec:
    """A built-in downstream task: its group, class names, source domain (None: mixed) and recipe
    ``render(world, draw, labels int64 [B]) -> uint8 [B, 3, R, R]``."""

    name: str
    group: Group
    domain: str | None
    classes: tuple[str, ...]
    render: Callable[[World, Draw, np.ndarray], np.ndarray] = field(repr=False)
    needs: tuple[str, ...] = ()  # the upstream domains its images draw on (default: its own domain)
    builtin: bool = True  # in the built-in suite; False: run when a suite names it

    @property
    def domains_needed(self) -> tuple[str, ...]:
        return self.needs or ((self.domain,) if self.domain else ())


def _held_out(world: World, task: str, d: Draw, labels: np.ndarray) -> np.ndarray:
    """Held-out classes of ``task`` in their domain's upstream style."""
    return world.render_classes(d, [world.classes[HELD_OUT[task][k]] for k in labels])


_DIGIT_STYLE = replace(GLYPH_STYLE, rotation=(-25, 25), neighbours=0.7, clutter_behind=0.5, clutter_front=0.4,
                       noise=(0.02, 0.1), blur_passes=2)


def _render_digits(world: World, d: Draw, labels: np.ndarray) -> np.ndarray:
    """Digits with neighbouring digits, as in a number, under stronger nuisance than upstream glyphs."""
    digits = [world.classes[n] for n in HELD_OUT["glyph_digits"]]
    pool = np.concatenate([np.arange(wc.start, wc.start + wc.count) for wc in digits])
    rows = world.bank_rows(d, [digits[k] for k in labels])
    c = world.canvas()
    nb = (pool[d.integers("nb.left", pool.size)], pool[d.integers("nb.right", pool.size)])
    return c.finish(draw_glyphs(c, d, rows, _DIGIT_STYLE, nb), d, _DIGIT_STYLE)


# Slant, width and stroke are the signal: bigger glyphs, no shear, little blur; neighbours share the font.
_FONT_STYLE = replace(GLYPH_STYLE, scale=(1.0, 1.3), rotation=(-6, 6), shear=0.0, aspect=0.03, neighbours=0.6,
                      clutter_behind=0.2, clutter_front=0.1, noise=(0.0, 0.04), blur=(0.0, 0.4))


def _render_fonts(world: World, d: Draw, labels: np.ndarray) -> np.ndarray:
    """Which of eight fonts a seen Latin letter (and its neighbours) is set in."""
    fonts = UNICODE_FONTS + LATIN_FONTS  # a Latin glyph's bank rows, in order
    letters = [wc for wc in world.leaf_classes if wc.family in ("latin_upper", "latin_lower")]
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
    stain = colour_of(d.uniform("stain.l", 0.45, 0.75), d.uniform("stain.c", 0.25, 0.45),
                    angle_index(np.where(d.bernoulli("stain.h", 0.5), 120.0, 300.0) + d.uniform("stain.dh", -25, 25)))
    ground = colour_of(d.uniform("ground.l", 0.02, 0.15), d.uniform("ground.c", 0.0, 0.05), d.integers("ground.h", NUM_ANGLES))
    img = np.broadcast_to(ground.astype(F32)[:, :, None, None], (len(d), 3, c.r, c.r)).copy()
    dim = colour_of(d.uniform("debris.l", 0.2, 0.45), d.uniform("debris.c", 0.1, 0.3), angle_index(d.uniform("dh", 0, 360)))
    debris = np.where(d.bernoulli("debris.same", 0.5)[:, None], stain, dim)
    c.clutter(img, d, "clutter.behind", _MICRO_STYLE.clutter_behind, _MICRO_STYLE, debris)
    c.paint(img, c.sprite(c.banks.shapes, world.bank_rows(d, classes), make_pose(d, "obj", _MICRO_STYLE)), stain)
    return c.finish(img, d, _MICRO_STYLE)


_SENSOR_STYLE = replace(TEXTURE_STYLE, lowres=2, noise=(0.04, 0.12), blur=(0.5, 1.0), contrast=(0.35, 0.8), cast=0.1)


def _render_sensor(world: World, d: Draw, labels: np.ndarray) -> np.ndarray:
    """Held-out textures through a coarse, noisy, colour-cast sensor (half resolution, upsampled)."""
    classes = [world.classes[HELD_OUT["texture_sensor"][k]] for k in labels]
    rows = world.bank_rows(d, classes)
    img, c = lowres_render(world.canvas, world.cfg.resolution, _SENSOR_STYLE.lowres,
                           lambda low: draw_textures(low, d, rows, _SENSOR_STYLE))
    return c.finish(img, d, _SENSOR_STYLE)


_COUNT_STYLE = Style(scale=(0.24, 0.34), aspect=0.15, rotation=(-180, 180), shear=0.15, clutter_behind=0.6,
                     clutter_front=0.4, dots=0.0)
COUNTS = (1, 2, 3, 4, 5, 6)


def _render_count(world: World, d: Draw, labels: np.ndarray) -> np.ndarray:
    """1-6 small seen shapes in distinct cells of a jittered 3x3 grid, among distractor strokes."""
    shapes = [wc for wc in world.leaf_classes if wc.domain == "shape"]
    c = world.canvas()
    img, _, lum = _vivid_scene(c, d, _COUNT_STYLE)
    for k, on, s, centre in grid_slots(d, np.asarray(COUNTS)[labels], max(COUNTS)):
        cls = [shapes[i] for i in s.integers(f"o{k}.cls", len(shapes))]
        rows = world.bank_rows(Draw(s.bits(f"o{k}.v")), cls)  # an independent variant stream per object
        alpha = c.sprite(c.banks.shapes, rows, make_pose(s, f"o{k}", _COUNT_STYLE, centre))
        colour = random_colour(s, f"o{k}.col", contrasting(s, f"o{k}.l", lum[on], (0.2, 0.6)), (0.1, 0.4))
        sub = img[on]
        c.paint(sub, alpha, colour)
        img[on] = sub
    stroke = random_colour(d, "cf", d.u("cf.l"), (0.0, 0.4))
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
    rows = world.bank_rows(d, [letters[i] for i in d.integers("letter", len(letters))])
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
    textures = [wc for wc in world.leaf_classes if wc.domain == "texture"]
    img = draw_textures(world.canvas(), d, world.bank_rows(d, [textures[i] for i in d.integers("bg", len(textures))]),
                        replace(TEXTURE_STYLE, clutter_front=0.0))
    grey = (img[:, 0:1] + img[:, 1:2] + img[:, 2:3]) * F32(1 / 3)
    img = img * F32(0.3) + grey * F32(0.7)  # a washed-out ground (per-pixel ops only)
    objects = [wc for wc in world.leaf_classes if wc.domain in ("glyph", "shape")]
    cls = [objects[i] for i in d.integers("obj.cls", len(objects))]
    col, row = labels % g, labels // g
    centre = np.stack([(col + d.u("loc.x")) * (2 / g) - 1, (row + d.u("loc.y")) * (2 / g) - 1], axis=1)
    pose = make_pose(d, "obj", _LOCATION_STYLE, centre)
    bank = {"glyph": world.banks.glyphs, "shape": world.banks.shapes}
    c = world.canvas()
    alpha = np.zeros((len(d), c.r, c.r), dtype=F32)
    rows = world.bank_rows(d, cls)
    for dom in bank:
        on = np.array([wc.domain == dom for wc in cls])
        if on.any():
            alpha[on] = c.sprite(bank[dom], rows[on], Pose(pose.m[on], pose.t[on], pose.angle[on], pose.scale[on]))
    lum = np.where(d.bernoulli("obj.dark", 0.5), d.uniform("obj.lo", 0.0, 0.2), d.uniform("obj.hi", 0.8, 1.0))
    c.paint(img, alpha, random_colour(d, "obj", lum, (0.1, 0.4)))
    stroke = random_colour(d, "cf", 1 - lum, (0.0, 0.4))
    c.clutter(img, d, "clutter.front", _LOCATION_STYLE.clutter_front, _LOCATION_STYLE, stroke)
    return c.finish(img, d, _LOCATION_STYLE)


def _location_names() -> tuple[str, ...]:
    rows, cols = ("top", "middle", "bottom"), ("left", "centre", "right")
    return tuple(f"location/{r}-{c}" for r in rows for c in cols)


def task_specs() -> list[TaskSpec]:
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
        # the structured tasks: block pieces, art no upstream domain has (blocks.py), as VTAB's dSprites
        # shares nothing with ImageNet's classes
        TaskSpec("blocks_count", "structured", None, tuple(f"count/{n}" for n in blocks.COUNTS), blocks.render_count),
        TaskSpec("blocks_orientation", "structured", None,
                 tuple(f"orientation/{k * 360 // blocks.ORIENTATION_BINS}deg" for k in range(blocks.ORIENTATION_BINS)),
                 blocks.render_orientation),
        TaskSpec("blocks_location", "structured", None, _location_names(), blocks.render_location),
        # natural tasks of the optional domains (world version 3), held-out classes in upstream style
        TaskSpec("scene_unseen", "natural", "scene", HELD_OUT["scene_unseen"], held("scene_unseen")),
        TaskSpec("cell_unseen", "natural", "cell", HELD_OUT["cell_unseen"], held("cell_unseen")),
        TaskSpec("solid_unseen", "natural", "solid", HELD_OUT["solid_unseen"], held("solid_unseen")),
        # the structured tasks of the built-in suite until 2026-12: objects drawn from upstream domains
        # (glyphs, shapes, textures), so a domain's expert knows them; outside the suite, loadable by name
        TaskSpec("count", "structured", "shape", tuple(f"count/{n}" for n in COUNTS), _render_count, builtin=False),
        TaskSpec("orientation", "structured", "glyph",
                 tuple(f"orientation/{k * 360 // ORIENTATION_BINS}deg" for k in range(ORIENTATION_BINS)),
                 _render_orientation, builtin=False),
        TaskSpec("location", "structured", None, _location_names(), _render_location,
                 needs=("glyph", "shape", "texture"), builtin=False),
    ]
