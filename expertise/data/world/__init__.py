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
orientation, location) never appear upstream: the downstream tasks are built from them. The
structured tasks of the built-in suite draw block pieces, art no upstream domain has (``blocks``).

Determinism: image ``i`` of a split is a pure function of (seed, split, i). Per-image parameters
come from a counter-based hash (splitmix64 on uint64 arrays) of that triple and a stream name;
pixels come from fixed banks (glyph bitmaps, shape and clutter sprites, texture tiles, noise
tiles) built once per (seed, resolution). The hot path uses only exactly rounded float32 ops
(add, multiply, floor, clip, gathers) applied element-wise, no reduction across pixels or images
and no transcendental per pixel (angles and hues come from lookup tables), so an image's bytes do
not depend on the batch it is rendered in.

The layers, each a module, each using only those above it:

* ``rng``: counter-based random numbers (``image_keys``, ``Draw``), angle and colour tables;
* ``catalogue``: every class of the world and the fonts, and which classes are held out;
* ``banks`` (with ``textures``): the procedural art, built once per (seed, resolution);
* ``canvas``: compositing on a batch (``Style``, ``Pose``, ``Canvas``);
* ``recipes``: how each domain and each built-in task is drawn (``TaskSpec``); ``blocks``: the
  block pieces and the structured tasks drawn from them;
* ``world``: the facade, ``World`` and ``WorldConfig``; ``World.upstream`` returns the
  ``UpstreamData`` the rest of the library trains on, ``World.task`` a downstream ``Task``;
* ``preview``: a PNG of a world.
"""

from expertise.data.world.catalogue import DOMAINS, HELD_OUT, WorldClass
from expertise.data.world.preview import save_preview
from expertise.data.world.recipes import TaskSpec
from expertise.data.world.rng import Draw, image_keys
from expertise.data.world.world import WORLD_VERSION, World, WorldConfig

__all__ = ["DOMAINS", "HELD_OUT", "WORLD_VERSION", "Draw", "TaskSpec", "World", "WorldClass", "WorldConfig",
           "image_keys", "save_preview"]
