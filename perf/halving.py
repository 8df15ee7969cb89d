"""Full scoring against successive halving: `make bench-halving`, or
`.venv/bin/python -m perf.halving [--images 1000] [--proxy knn_loo] [--quick]`.

A heterogeneous pool of 12 timm architectures (randomly initialised, each at its own input size and
data config; nothing is downloaded) ranked with a proxy on a synthetic task of photo-sized images
(two classes, one brighter), once by full scoring (every member on every train+val image) and once
by ``--search halving`` (``expertise.select.halving``), each on a cold embedding cache. Reports the
seconds and images embedded of each, whether the top-1 agrees and Kendall's tau between the two
rankings. Run it on an otherwise idle machine; writes perf/halving.md and splices it into
BENCHMARKS.md (``--quick``: 4 tiny test architectures at 32 px on 200 images, only prints).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import timm
import torch

from expertise.bench.halving import kendall_tau
from expertise.data.tasks import Split, Task
from expertise.library import Library
from expertise.models.external import ExternalModel, ExternalSource
from expertise.models.preprocess import timm_preprocessing
from expertise.pool import add_external
from expertise.runtime import RunContext
from expertise.select.embed import EmbeddingCache
from expertise.select.run import run_selection
from perf.timing import machine, splice_section

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- halving:start -->", "<!-- halving:end -->"
POOL = ["resnet18", "resnet26", "resnet34", "resnet50", "mobilenetv3_small_100", "mobilenetv3_large_100",
        "efficientnet_b0", "convnext_atto", "regnetx_002", "regnety_004", "inception_v3", "vit_tiny_patch16_224"]
QUICK_POOL = ["test_resnet", "test_efficientnet", "test_convnext", "test_byobnet"]


def _task(n_trainval: int, side: int, seed: int = 0) -> Task:
    g = torch.Generator().manual_seed(seed)
    n = n_trainval + 100
    labels = torch.arange(n) % 2
    noise = torch.rand((n, 1, side, side), generator=g).expand(n, 3, side, side) * 255 * 0.6
    images = (noise + 40 * labels.view(-1, 1, 1, 1)).clamp(0, 255).to(torch.uint8).contiguous()
    n_train = int(0.8 * n_trainval)
    cut = lambda a, b: Split(images[a:b], labels[a:b])  # noqa: E731
    return Task("bright", "natural", ("dark", "bright"), cut(0, n_train), cut(n_train, n_trainval), cut(n_trainval, n),
                source="synthetic")


def _library(folder: Path, archs: list[str], size: int | None) -> list[str]:
    lib = Library.create(folder, None)
    for i, arch in enumerate(archs):
        torch.manual_seed(i)
        net = timm.create_model(arch, pretrained=False)
        model = ExternalModel.wrap(net, arch, timm_preprocessing(timm.data.resolve_data_config(model=net), size))
        add_external(lib, model, ExternalSource("timm", arch, arch), name=arch)
    return archs


def section(archs: list[str], n: int, side: int, proxy: str, size: int | None = None) -> str:
    task = _task(n, side)
    with tempfile.TemporaryDirectory() as tmp:
        names = _library(Path(tmp) / "lib", archs, size)
        lib = Library.open(Path(tmp) / "lib")
        runs = {}
        for search in ("full", "halving"):
            ctx = RunContext(progress=False, cache=EmbeddingCache(Path(tmp) / f"cache-{search}"))
            t0 = time.perf_counter()
            run = run_selection(lib, task, "proxy", 1, proxy, names, ctx, 64, resamples=0, search=search)
            runs[search] = (run, time.perf_counter() - t0)
    (full, t_full), (halving, t_halving) = runs["full"], runs["halving"]
    tau = kendall_tau([n for n, _ in full.selection.ranking], [n for n, _ in halving.selection.ranking])
    report = halving.search
    lines = [
        START, "## Full scoring against successive halving", "",
        f"Regenerate with `make bench-halving` (`python -m perf.halving`) on an otherwise idle machine. {len(archs)} timm "
        f"architectures (random weights, each at its own data config: {', '.join(archs)}) ranked by {proxy} on a "
        f"synthetic two-class task of {n:,} train+val images of {side} px, on cold embedding caches. "
        f"{torch.get_num_threads()} threads, {machine()}, torch {torch.__version__}.", "",
        "| search | seconds | images embedded | top-1 | Kendall tau vs full |", "|---|---:|---:|---|---:|",
        f"| full | {t_full:.1f} | {full.embed.images:,} | {full.selection.best} | 1.00 |",
        f"| halving | {t_halving:.1f} | {report.images_embedded:,} | {halving.selection.best} | {tau:.2f} |", "",
        f"{report.line()[0].upper()}{report.line()[1:]}.",
    ]
    return "\n".join(lines + ["", END])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1000, help="train+val images of the task")
    ap.add_argument("--side", type=int, default=256, help="side of the task's images, pixels")
    ap.add_argument("--proxy", default="knn_loo", help="proxy of the ranking")
    ap.add_argument("--quick", action="store_true", help="4 test architectures at 32 px, 200 images: checks the script")
    args = ap.parse_args()
    if args.quick:
        print(section(QUICK_POOL, 200, 48, args.proxy, size=32))
        return
    text = section(POOL, args.images, args.side, args.proxy)
    print(text)
    splice_section(ROOT / "perf" / "halving.md", START, END, text)


if __name__ == "__main__":
    main()
