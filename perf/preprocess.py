"""Per-member preprocessing against the bare forward: `make bench-preprocess`, or
`.venv/bin/python -m perf.preprocess [--arch resnet50] [--images 256] [--batch 64] [--repeats 3] [--quick]`.

Embedding throughput (images/s) of a 224-px timm model on the CPU, two ways, on the same images:

* **our path**: ``forward_batches`` (``expertise.models.forward``, what selection's embedding runs)
  on uint8 task images at their source sizes: each batch resized, centre-cropped and normalised
  by the member's own timm data config (``models/preprocess.py``), then ``embed``;
* **bare forward**: timm's own ``forward_head(forward_features(x), pre_logits=True)`` under
  ``torch.inference_mode`` on the same images already transformed into float tensors [N, 3, 224, 224],
  in the same batches: the model alone, the ceiling of any embedding path.

The architecture is randomly initialised (``timm.create_model(arch)``; nothing is downloaded: the
weights do not change the time). Sources: photo-like images of several sizes up to 500 x 375 (a
task folder of photos, as the loaders keep them: the longer side at most 512), and 32-px images
(the built-in tasks' size). Each figure is the best of ``--repeats`` runs after a warm-up
(``perf.timing.best_of``). The target is our path at >= 90% of the bare forward. Run it on an
otherwise idle machine; writes perf/preprocess.md and splices it into BENCHMARKS.md (``--quick``, a
check that the script runs at a tiny size, only prints).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import timm
import torch

from expertise.data.ragged import Images, RaggedImages
from expertise.models.external import ExternalModel
from expertise.models.forward import forward_batches
from expertise.models.preprocess import prepare, timm_preprocessing
from perf.timing import best_of, machine, splice_section

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- preprocess:start -->", "<!-- preprocess:end -->"
PHOTO_SIZES = [(375, 500), (500, 375), (333, 500), (500, 333), (384, 512), (400, 400), (281, 500)]  # (h, w)


def sources(n: int, seed: int = 0) -> dict[str, Images]:
    """uint8 images: photo-like ones of several sizes (ragged) and 32-px ones (one tensor)."""
    rng = np.random.default_rng(seed)
    photos = []
    for i in range(n):
        h, w = PHOTO_SIZES[i % len(PHOTO_SIZES)]
        photos.append(rng.integers(0, 256, (3, h, w), dtype=np.uint8))
    small = torch.from_numpy(rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8))
    return {"photos up to 500x375 px, several sizes": RaggedImages.from_arrays(photos), "32x32 px": small}


def timers(model: ExternalModel, images: Images, batch: int) -> tuple[Callable[[], object], Callable[[], object]]:
    """(our path, bare forward) on ``images``, each a function running the whole set once."""
    net = model.net.eval()
    ready = prepare(images, model.preprocessing)  # the same pixels, transformed up front, outside the timing

    def ours() -> object:
        return forward_batches(model, images, ("features",), batch)

    @torch.inference_mode()
    def bare() -> object:
        return [net.forward_head(net.forward_features(ready[i:i + batch]), pre_logits=True)
                for i in range(0, ready.shape[0], batch)]

    return ours, bare


def section(arch: str, n: int, batch: int, repeats: int, size: int | None = None) -> str:
    torch.manual_seed(0)
    net = timm.create_model(arch, pretrained=False)
    prep = timm_preprocessing(timm.data.resolve_data_config(model=net), size)
    model = ExternalModel.wrap(net, arch, prep).eval()
    rows = []
    for label, images in sources(n).items():
        ours, bare = timers(model, images, batch)
        t_ours, t_bare = best_of(ours, repeats), best_of(bare, repeats)
        rows.append(f"| {label} | {n / t_ours:,.1f} | {n / t_bare:,.1f} | {t_bare / t_ours:.0%} |")
    p = model.preprocessing
    lines = [
        START, "## Per-member preprocessing against the bare forward", "",
        f"Regenerate with `make bench-preprocess` (`python -m perf.preprocess`) on an otherwise idle machine. Embedding "
        f"throughput of timm's `{arch}` (random weights) at {p.size} px on the CPU: our path (`forward_batches` on uint8 "
        f"source images: the shorter side resized to {p.resize} px ({p.interpolation}), the centre {p.size} px cropped, "
        f"normalised, batch by batch) against timm's own forward on the same images transformed up front (float "
        f"tensors), both in batches of {batch}, {n} images; best of {repeats} runs after a warm-up. "
        f"{torch.get_num_threads()} threads, {machine()}, torch {torch.__version__}. "
        "Target: our path at >= 90% of the bare forward.", "",
        "| source images | our path (images/s) | bare forward (images/s) | ours / bare |",
        "|---|---:|---:|---:|",
        *rows,
    ]
    return "\n".join(lines + ["", END])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet50", help="timm architecture (224 px by its data config)")
    ap.add_argument("--images", type=int, default=256, help="images per run")
    ap.add_argument("--batch", type=int, default=64, help="batch size of both paths")
    ap.add_argument("--repeats", type=int, default=3, help="runs per figure (the best is reported)")
    ap.add_argument("--quick", action="store_true", help="test_resnet at 64 px, 8 images, 1 run: checks the script, writes nothing")
    args = ap.parse_args()
    if args.quick:
        print(section("test_resnet", 8, 4, 1, size=64))
        return
    text = section(args.arch, args.images, args.batch, args.repeats)
    print(text)
    splice_section(ROOT / "perf" / "preprocess.md", START, END, text)


if __name__ == "__main__":
    main()
