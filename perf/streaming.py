"""Streaming throughput from a folder of JPEGs, for `perf/upstream_data.py` (`make bench-data`).

A folder of N JPEGs at 256 px (`--jpeg-size`) (ImageNet-21k layout, 20 wnids) is written once; then images per
second through (a) a plain loop that opens, decodes and resizes each file (at full scale, and with
libjpeg's reduced-scale decoding as streaming uses it), (b) `DiskBatches` with
0, 1 and 2 worker processes (decode, resize, batch, the model's normalisation, the targets), each
over one epoch; and (c) the trainer, `fit`, fed by `DiskBatches` with 2 workers, against the same
`fit` on one batch held in memory (the bare forward/backward rate). Run alone:
`python -m perf.streaming --jpegs 2000`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361", "n01494475", "n01496331", "n01498041", "n01514668",
         "n01514859", "n01518878", "n01530575", "n01531178", "n01532829", "n01534433", "n01537544", "n01558993",
         "n01560419", "n01580077", "n01582220", "n01592084")  # the first 20 classes of ImageNet-1k


def write_jpegs(root: Path, n: int, size: int = 256) -> None:
    """``n`` 256-px JPEGs (smooth colour fields with noise, so they compress like photographs)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for w in WNIDS:
        (root / w).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        a, b, c = rng.random(3) * 6
        base = np.stack([np.sin(a * xx + b * yy), np.cos(b * xx - c * yy), np.sin(c * xx * yy + a)], -1)
        img = np.clip((base * 0.5 + 0.5) * 220 + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / WNIDS[i % len(WNIDS)] / f"{WNIDS[i % len(WNIDS)]}_{i}.JPEG", quality=90)


def measure(n: int, backbone: str = "bit_s", batch: int = 64, train_steps: int = 10, threads: int = 1,
            size: int = 256) -> dict:
    from expertise.data.disk_layouts import read_folders
    from expertise.data.loaders import decode_image
    from expertise.upstream.streaming import DiskBatches
    from expertise.models.backbones import BACKBONES, ExpertModel
    from expertise.train import TrainConfig, fit, multilabel_loss

    torch.set_num_threads(threads)  # the trainer's threads; the workers are processes of their own
    out: dict = {"n": n, "size": size, "backbone": backbone, "batch": batch, "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        write_jpegs(root, n, size)
        out["write_s"] = time.perf_counter() - t
        out["mb"] = sum(f.stat().st_size for f in root.rglob("*.JPEG")) / 2**20
        index = read_folders(root)
        model = ExpertModel(BACKBONES[backbone], num_outputs=len(index.hierarchy.label_nodes))
        prep, size = model.preprocessing, model.preprocessing.size
        files = [Path(index.location(i)) for i in range(len(index))]
        t = time.perf_counter()
        for f in files:
            decode_image(f, size)
        out["plain"] = n / (time.perf_counter() - t)
        t = time.perf_counter()
        for f in files:
            decode_image(f, size, draft=True)
        out["plain_draft"] = n / (time.perf_counter() - t)
        steps = n // batch
        for workers in (0, 1, 2):
            with DiskBatches(index, batch, prep, seed=0, steps=steps, workers=workers) as b:
                t = time.perf_counter()
                for s in range(steps):
                    b(s)
                out[f"workers{workers}"] = steps * batch / (time.perf_counter() - t)
        cfg = TrainConfig(steps=train_steps, batch_size=batch, lr=0.01)
        with DiskBatches(index, batch, prep, seed=1, steps=train_steps, workers=2) as b:
            x, y = b(0)
        out["bare"] = _fit_rate(model, lambda s: (x, y), cfg, fit, multilabel_loss)
        with DiskBatches(index, batch, prep, seed=1, steps=train_steps, workers=2) as b:
            out["fed"] = _fit_rate(model, b, cfg, fit, multilabel_loss)
    out["load"] = os.getloadavg()[0]
    out["threads"] = torch.get_num_threads()
    return out


def _fit_rate(model, batches, cfg, fit, loss) -> float:
    stats = fit(model, batches, cfg, loss, show_progress=False)
    return stats.images / stats.seconds


def lines(r: dict) -> list[str]:
    return [
        "### Streaming JPEGs from disk into training", "",
        f"{r['n']:,} JPEGs at {r.get('size', 256)} px ({r['mb']:.0f} MB, ImageNet-21k folder layout), decoded and resized to "
        f"{r['backbone']}'s input; batches of {r['batch']}; {r['cores']} cores shared with other jobs (load average "
        f"{r['load']:.1f} at the end), torch on {r['threads']} thread(s); one run each. `DiskBatches` includes batching, "
        "normalisation and the multi-hot targets; the trainer rows are `fit` on that model.", "",
        "| what | images/s |", "|---|---:|",
        f"| plain loop: open, decode, resize each file | {r['plain']:,.0f} |",
        f"| the same loop, JPEGs decoded at reduced scale first (`draft`, as `DiskBatches` does) | {r['plain_draft']:,.0f} |",
        *[f"| `DiskBatches`, {w} worker{'s' if w != 1 else ''} | {r[f'workers{w}']:,.0f} |" for w in (0, 1, 2)],
        f"| `fit` on one batch in memory (bare forward/backward) | {r['bare']:,.0f} |",
        f"| `fit` fed by `DiskBatches`, 2 workers | {r['fed']:,.0f} ({r['fed'] / r['bare']:.0%} of bare) |", "",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jpegs", type=int, default=20_000)
    ap.add_argument("--jpeg-size", type=int, default=256, help="side of the square JPEGs written, in pixels")
    args = ap.parse_args()
    print("\n".join(lines(measure(args.jpegs, size=args.jpeg_size))))


if __name__ == "__main__":
    main()
