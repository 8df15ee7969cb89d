"""A PNG preview of a world: a row per upstream family, then a row per downstream task."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from expertise.data.world.world import World


def save_preview(world: World, path: str | os.PathLike, per_row: int = 12) -> Path:
    """Write a PNG grid: a row per upstream family (random leaves of it), then a row per task (its
    first training images, class names under them omitted for space; the tasks outside the built-in
    suite last). Returns the path."""
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
    for name in world.all_task_names:
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
