"""The ``World`` facade: a ``WorldConfig`` in, upstream splits (``World.upstream`` -> ``UpstreamData``,
the seam to the rest of the library) and the built-in downstream tasks (``World.task``) out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from expertise.data.hierarchy import ROOT, Hierarchy
from expertise.data.tasks import TRAIN_SIZE, VAL_SIZE, Split, Task
from expertise.data.upstream_data import UpstreamData
from expertise.data.world.banks import build_banks
from expertise.data.world.canvas import GLYPH_STYLE, SHAPE_STYLE, TEXTURE_STYLE, Canvas, Style
from expertise.data.world.catalogue import ALL_DOMAINS, DOMAINS, HELD_OUT, WorldClass, catalogue
from expertise.data.world.cells import CELL_STYLE, cell_bank, draw_cells
from expertise.data.world.recipes import TaskSpec, draw_glyphs, draw_shapes, draw_textures, task_specs
from expertise.data.world.scenes import SCENE_KINDS, SCENE_STYLE, draw_scenes
from expertise.data.world.solids import SOLID_STYLE, draw_solids, solid_banks
from expertise.data.world.rng import Draw, image_keys
from expertise.errors import ConfigError, DataError

# Bumped whenever the same WorldConfig renders other pixels or another hierarchy, so that a library
# trained on an earlier world is refused rather than silently paired with the new one's tasks.
# 2: Armenian and Georgian glyph families upstream.
# 3: optional scene, cell and solid domains (``WorldConfig.domains``) with their natural tasks; the
#    default domains render the same bytes as version 2.
WORLD_VERSION = 3
_CHUNK = 512  # images rendered at once: big enough to amortise numpy overhead, small enough for cache


@dataclass(frozen=True)
class WorldConfig:
    """A world's size and randomness. ``imbalance`` scales the log-normal spread of class
    frequencies (0: every leaf equally likely).

    ``domains`` names the visual domains drawn upstream (a subset of ``ALL_DOMAINS``, in any order;
    classes, hierarchy and tasks follow ``ALL_DOMAINS``' order); the built-in tasks are those whose
    domains are all there. ``domain_weights`` scales each domain's share of the upstream images, one
    weight per entry of ``domains``. The default 0.3 for glyphs keeps the domain with the most leaves
    one domain among several, as in ImageNet-21k; docs/world.md has the measurements that chose it.
    """

    seed: int = 0
    resolution: int = 32
    upstream_size: int = 60_000
    holdout_size: int = 5_000
    test_size: int = 1_000  # test split of each downstream task (train 800 and val 200 always)
    imbalance: float = 1.0
    domain_weights: tuple[float, ...] = (0.3, 1.0, 1.0)
    domains: tuple[str, ...] = DOMAINS

    def __post_init__(self) -> None:
        # JSON and --set give lists or strings; keep hashable tuples
        object.__setattr__(self, "domain_weights", tuple(float(v) for v in self.domain_weights))
        object.__setattr__(self, "domains", tuple(str(v) for v in self.domains))
        unknown = [v for v in self.domains if v not in ALL_DOMAINS]
        if not self.domains or unknown or len(set(self.domains)) != len(self.domains):
            raise ConfigError(f"world domains must be distinct names among {', '.join(ALL_DOMAINS)}, got {self.domains}")
        if len(self.domain_weights) != len(self.domains) or min(self.domain_weights) <= 0:
            raise ConfigError(f"domain_weights needs one positive weight per domain {self.domains}, "
                              f"got {self.domain_weights} (set world.domain_weights with world.domains)")
        if not 8 <= self.resolution <= 256:
            raise ConfigError(f"world resolution must lie in [8, 256] pixels, got {self.resolution}")
        if self.upstream_size < 1 or self.holdout_size < 0 or self.test_size < 1:
            raise ConfigError("world sizes must be positive (holdout_size may be 0): "
                              f"upstream {self.upstream_size}, holdout {self.holdout_size}, test {self.test_size}")
        if self.imbalance < 0:
            raise ConfigError(f"imbalance must be >= 0, got {self.imbalance}")


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
        rows = dict(self.banks.rows)
        size = 2 * cfg.resolution  # as the sprite banks: minified ~2x when drawn
        if "cell" in cfg.domains:
            self.cell_bank, cell_rows = cell_bank(cfg.seed, size)
            rows.update(cell_rows)
        if "solid" in cfg.domains:
            self.solid_cover, self.solid_shade, solid_rows = solid_banks(cfg.seed, size)
            rows.update(solid_rows)
        rows.update({name: (SCENE_KINDS.index(name.split("/")[2]), 1) for name, _, _ in catalogue(("scene",))})
        self.classes: dict[str, WorldClass] = {
            n: WorldClass(n, dom, fam, *rows[n]) for n, dom, fam in catalogue(cfg.domains)
        }
        upstream = [wc for wc in self.classes.values() if wc.name not in held]
        parents: dict[str, tuple[str, ...]] = {ROOT: ()}
        for wc in upstream:
            parents.setdefault(wc.domain, (ROOT,))
            parents.setdefault(f"{wc.domain}/{wc.family}", (wc.domain,))
            parents[wc.name] = (f"{wc.domain}/{wc.family}",)
        self.hierarchy = Hierarchy(parents)
        self.leaf_classes = [self.classes[leaf] for leaf in self.hierarchy.leaves]
        self._leaf_cdf = np.cumsum(self.leaf_probabilities())
        self._glyph_pool = np.concatenate([np.arange(wc.start, wc.start + wc.count) for wc in upstream
                                           if wc.domain == "glyph"] or [np.zeros(0, dtype=np.int64)])
        self._specs = {s.name: s for s in task_specs() if set(s.domains_needed) <= set(cfg.domains)}
        self.task_names: tuple[str, ...] = tuple(n for n, s in self._specs.items() if s.builtin)  # the built-in suite
        self.extra_task_names: tuple[str, ...] = tuple(n for n, s in self._specs.items() if not s.builtin)
        self.all_task_names: tuple[str, ...] = (*self.task_names, *self.extra_task_names)  # any loads by name
        self._tasks: dict[str, Task] = {}

    def __reduce__(self):  # pickle the config only; banks are rebuilt (and cached) on the other side
        return (World, (self.cfg,))

    def __repr__(self) -> str:
        return f"World({self.cfg})"

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(d for d in ALL_DOMAINS if d in self.cfg.domains)

    def leaf_probabilities(self) -> np.ndarray:
        """float64 [num_leaves]: how likely each upstream leaf (in ``hierarchy.leaves`` order) is.

        Log-normal family and leaf weights drawn from the seed. A domain's total share grows only
        with the square root of its number of leaves, so the glyph domain (most leaves) does not
        swamp the others and a generalist is not already a glyph expert."""
        g = np.random.default_rng([self.cfg.seed, 0x1EAF])
        spread = self.cfg.imbalance
        families = sorted({(wc.domain, wc.family) for wc in self.leaf_classes})
        fam_w = dict(zip(families, np.exp(0.5 * spread * g.standard_normal(len(families)))))
        dom_w = dict(zip(self.domains, np.exp(0.3 * spread * g.standard_normal(len(self.domains)))))
        w = np.exp(0.8 * spread * g.standard_normal(len(self.leaf_classes)))
        w *= np.array([fam_w[wc.domain, wc.family] for wc in self.leaf_classes])
        domain = np.array([wc.domain for wc in self.leaf_classes])
        for dom, share in zip(self.cfg.domains, self.cfg.domain_weights):
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
        return np.minimum(np.searchsorted(self._leaf_cdf, d.u("leaf"), side="right"), len(self.leaf_classes) - 1)

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
            classes = [self.leaf_classes[i] for i in self._leaves_of(d)]
            out[s: s + _CHUNK] = self.render_classes(d, classes)
        return out

    # -- rendering by class ----------------------------------------------------------------------
    def canvas(self, resolution: int | None = None) -> Canvas:
        return Canvas(self.banks, resolution or self.cfg.resolution)

    def bank_rows(self, d: Draw, classes: Sequence[WorldClass]) -> np.ndarray:
        """int64 [B]: a random bank row (font or variant) of each image's class."""
        start = np.array([wc.start for wc in classes], dtype=np.int64)
        count = np.array([wc.count for wc in classes], dtype=np.int64)
        return start + d.integers("variant", count)

    def render_classes(self, d: Draw, classes: Sequence[WorldClass],
                       styles: dict[str, Style] | None = None) -> np.ndarray:
        """uint8 [B, 3, R, R]: image b shows class ``classes[b]`` in its domain's upstream style."""
        styles = {"glyph": GLYPH_STYLE, "shape": SHAPE_STYLE, "texture": TEXTURE_STYLE, "scene": SCENE_STYLE,
                  "cell": CELL_STYLE, "solid": SOLID_STYLE, **(styles or {})}
        r = self.cfg.resolution
        out = np.empty((len(d), 3, r, r), dtype=np.uint8)
        domain = np.array([wc.domain for wc in classes])
        rows = self.bank_rows(d, classes)
        c = self.canvas()
        for dom in self.domains:
            on = domain == dom
            if on.any():
                if dom == "cell":  # several cells per image, each of its own variant
                    sub = [wc for wc, o in zip(classes, on) if o]
                    img = draw_cells(c, d.sub(on), self.cell_bank, np.array([wc.start for wc in sub], dtype=np.int64),
                                     np.array([wc.count for wc in sub], dtype=np.int64), styles[dom])
                    out[on] = c.finish(img, d.sub(on), styles[dom])
                else:
                    out[on] = self._draw_domain(c, d.sub(on), dom, rows[on], styles[dom])
        return out

    def _draw_domain(self, c: Canvas, d: Draw, domain: str, rows: np.ndarray, style: Style) -> np.ndarray:
        if domain == "glyph":
            pool = self._glyph_pool
            nb = (pool[d.integers("nb.left", pool.size)], pool[d.integers("nb.right", pool.size)])
            img = draw_glyphs(c, d, rows, style, nb)
        elif domain == "shape":
            img = draw_shapes(c, d, rows, style)
        elif domain == "texture":
            img = draw_textures(c, d, rows, style)
        elif domain == "scene":
            img = draw_scenes(c, d, rows, style)
        else:
            img = draw_solids(c, d, self.solid_cover, self.solid_shade, rows, style)
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
            raise DataError(f"unknown world task {name!r}; the world's tasks are: "
                            f"{', '.join(self.all_task_names)}")
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
