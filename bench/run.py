"""Regenerate BENCHMARKS.md: `make bench` (or `.venv/bin/python bench/run.py`).

Each figure is measured in this one run on this machine, and ratios are taken within the run, so
they compare like with like. Throughputs are best-of-3 after a warm-up.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from expertise.data.world import World, WorldConfig  # noqa: E402
from expertise.models.backbones import BACKBONES, ExpertModel  # noqa: E402
from expertise.select.embed import embed_images  # noqa: E402
from expertise.train import TrainConfig, fit, multilabel_loss  # noqa: E402


def best_of(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def world_rate(resolution: int, n: int = 4000) -> float:
    up = World(WorldConfig(resolution=resolution, upstream_size=n)).upstream("train")
    idx = np.arange(n)
    return n / best_of(lambda: up.images(idx))


def train_rate(backbone: str, batch: int = 128, steps: int = 8) -> float:
    cfg = BACKBONES[backbone]
    model = ExpertModel(cfg, num_outputs=150)
    x = torch.randn(batch, 3, cfg.resolution, cfg.resolution)
    y = (torch.rand(batch, 150) > 0.97).float()
    tc = TrainConfig(steps=steps, batch_size=batch, lr=0.01)
    return steps * batch / best_of(lambda: fit(model, lambda s: (x, y), tc, multilabel_loss, show_progress=False), 2)


def embed_rate(backbone: str, n: int = 2000) -> float:
    cfg = BACKBONES[backbone]
    model = ExpertModel(cfg, num_outputs=0)
    imgs = torch.randint(0, 256, (n, 3, cfg.resolution, cfg.resolution), dtype=torch.uint8)
    return n / best_of(lambda: embed_images(model, imgs))


def proxy_seconds(n: int = 1000, d: int = 256, classes: int = 10, z: int = 128) -> dict[str, float]:
    """Seconds each proxy takes to score one member on a 1,000-image task (best of 3)."""
    from expertise.select.proxies import PROXIES

    rng = np.random.default_rng(0)
    y = rng.integers(0, classes, n)
    feats = rng.normal(size=(n, d)) + np.eye(classes)[y] @ rng.normal(size=(classes, d))
    logits = rng.normal(size=(n, z))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return {name: best_of(lambda spec=spec: spec.fn(feats if spec.input == "features" else probs, y))
            for name, spec in PROXIES.items()}


def main() -> None:
    torch.set_num_threads(torch.get_num_threads())
    rows = [
        ("world render, 32x32", f"{world_rate(32):,.0f} images/s"),
        ("world render, 16x16", f"{world_rate(16):,.0f} images/s"),
        ("train bit_s (32 px, batch 128)", f"{train_rate('bit_s'):,.0f} images/s"),
        ("train bit_xs (16 px, batch 128)", f"{train_rate('bit_xs'):,.0f} images/s"),
        ("embed bit_s (32 px)", f"{embed_rate('bit_s'):,.0f} images/s"),
    ]
    embed_ms = 1000 / embed_rate("bit_s") * 1000
    rows.append(("embed 1,000 images with one bit_s member", f"{embed_ms:.0f} ms"))
    rows += [(f"score one member: {name}", f"{sec * 1000:.1f} ms") for name, sec in proxy_seconds().items()]
    demo = ROOT / "runs" / "demo" / "results.json"
    lines = [
        "# Benchmarks", "",
        "Regenerate with `make bench`. Measured on "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}.", "",
        "## Throughput", "",
        "Scoring rows: one pool member on a 1,000-image task, 10 classes; features 1,000 x 256, or for "
        "LEEP and NCE upstream probabilities over 128 source labels. Compare with the embedding row: "
        "selection cost is embedding plus scoring, per member.", "",
        "| what | measured |", "|---|---:|", *[f"| {a} | {b} |" for a, b in rows], "",
    ]
    if demo.exists():
        rec = json.loads(demo.read_text())
        secs = rec["seconds"]
        lines += ["## Demo wall time (`make demo`, from its last `runs/demo/results.json`)", "",
                  "| stage | seconds |", "|---|---:|", *[f"| {k} | {v:.0f} |" for k, v in secs.items()], ""]
    (ROOT / "BENCHMARKS.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
