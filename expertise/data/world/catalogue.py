"""The class catalogue: every class of the world, seen upstream or held out for the downstream tasks,
and the fonts glyphs are set in."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

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
# Three more domains (world version 3), each with its own low-level statistics; a world draws them
# only when ``WorldConfig.domains`` names them (see ``scenes.py``, ``cells.py``, ``solids.py``).
SCENE_FAMILIES: dict[str, tuple[str, ...]] = {  # upright landscapes: the class is the horizon's geometry
    "mountain": ("peaks", "ridge", "volcano", "cliff", "canyon"),
    "lowland": ("hills", "dunes", "mesa", "plain", "terraces"),
    "water": ("sea", "islands", "lake", "coast", "waves"),
    "built": ("skyline", "towers", "pyramids", "arches", "forest"),
}
CELL_FAMILIES: dict[str, tuple[str, ...]] = {  # microscopy: several stained cells of one morphology
    "round": ("nucleus", "ring", "target", "speckled", "halo"),
    "elongated": ("rod", "spindle", "chain", "curved", "filament"),
    "lobed": ("bilobed", "trilobed", "multilobed", "budding"),
    "irregular": ("amoeboid", "stellate", "crenated", "fragmented"),
}
SOLID_FAMILIES: dict[str, tuple[str, ...]] = {  # shaded 3-D objects under one light
    "curved": ("sphere", "egg", "torus", "capsule", "dome"),
    "prism": ("cube", "slab", "hex_prism", "tri_prism", "cross"),
    "pointed": ("cone", "pyramid", "tetrahedron", "octahedron", "spindle"),
    "cylinder": ("cylinder", "disc", "tube", "bolt", "cup"),
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
    "scene_unseen": ("scene/mountain/volcano", "scene/lowland/mesa", "scene/water/islands", "scene/built/towers",
                     "scene/built/arches", "scene/mountain/canyon"),
    "cell_unseen": ("cell/round/target", "cell/round/speckled", "cell/elongated/spindle", "cell/elongated/curved",
                    "cell/lobed/trilobed", "cell/irregular/stellate"),
    "solid_unseen": ("solid/curved/egg", "solid/curved/torus", "solid/prism/hex_prism", "solid/pointed/pyramid",
                     "solid/cylinder/tube", "solid/pointed/spindle"),
}
DOMAINS: tuple[str, ...] = ("glyph", "shape", "texture")  # the default world's domains
ALL_DOMAINS: tuple[str, ...] = DOMAINS + ("scene", "cell", "solid")

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


FAMILIES: dict[str, dict[str, tuple[str, ...]]] = {
    "glyph": {f: tuple(chars) for f, chars in GLYPH_FAMILIES.items()}, "shape": SHAPE_FAMILIES,
    "texture": TEXTURE_FAMILIES, "scene": SCENE_FAMILIES, "cell": CELL_FAMILIES, "solid": SOLID_FAMILIES,
}


def catalogue(domains: tuple[str, ...] = DOMAINS) -> list[tuple[str, str, str]]:
    """(name, domain, family) of every class of ``domains`` in a fixed order (``ALL_DOMAINS``' order,
    so a world of the default domains lists its classes as before)."""
    return [(f"{dom}/{f}/{n}", dom, f) for dom in ALL_DOMAINS if dom in domains
            for f, names in FAMILIES[dom].items() for n in names]

