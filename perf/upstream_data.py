"""Upstream data from disk, measured: `make bench-data` (`python -m perf.upstream_data`).

Building the ImageNet-21k hierarchy (timm's 21,843 wnids) from WordNet 3.0: reading the source
(the packaged table, or data.noun where `wordnet-base` is installed), the closure into a
`Hierarchy`, its sparse ancestry table, subtree counts and the top-50 expert domains; seconds
(best of 3, each in a fresh process) and peak memory (tracemalloc's peak of what reading and
building allocate, in one more process, and the process's peak RSS above its RSS after imports).

Then a synthetic label index of a million images over that hierarchy: building it, counting every
node's images, the top-50 domains, the targets of a batch. Then streaming throughput from a folder
of JPEGs (`perf/streaming.py`; `--jpegs 0` skips it).

Writes its section to perf/upstream_data.md and splices it into BENCHMARKS.md between the markers
below (`make bench` keeps the file's section).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

from perf.timing import machine, splice_section

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- upstream_data:start -->", "<!-- upstream_data:end -->"


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _worker(source: str, trace: bool) -> dict:
    import numpy as np

    from expertise.data.wordnet import SYSTEM_DATA_NOUN, WordNet, timm_synsets

    classes = timm_synsets("imagenet21k_goog")
    rss0 = _status_mb("VmRSS")
    if trace:  # tracemalloc slows allocation down, so memory and time are measured in separate processes
        tracemalloc.start()
    t0 = time.perf_counter()
    wn = WordNet.load(None if source == "table" else SYSTEM_DATA_NOUN)
    t1 = time.perf_counter()
    h = wn.hierarchy(classes)
    indptr, indices = h.ancestor_columns
    counts = dict.fromkeys(h.leaves, 600)  # a flat 600 images per leaf class
    domains = h.choose_expert_domains(counts, 50)
    t2 = time.perf_counter()
    peak = tracemalloc.get_traced_memory()[1] if trace else 0
    tracemalloc.stop()
    dense = len(h.leaves) * len(h.label_nodes)
    return {"read_s": t1 - t0, "build_s": t2 - t1, "peak_mb": peak / 2**20, "rss_mb": _status_mb("VmHWM") - rss0,
            "synsets": len(wn.parents), "nodes": len(h.label_nodes), "leaves": len(h.leaves),
            "csr_mb": (indptr.nbytes + indices.nbytes) / 2**20, "entries": int(indices.size), "dense_mb": dense / 2**20,
            "top": [wn.name(d) for d in domains[:8]], "dtype": str(np.result_type(indices))}


def _index_worker(n: int) -> dict:
    """A synthetic index of ``n`` images over the 21k hierarchy (5% with a second label), ImageNet-style names."""
    import numpy as np

    from expertise.data.disk_index import IndexBuilder
    from expertise.data.wordnet import WordNet, timm_synsets

    classes = timm_synsets("imagenet21k_goog")
    h = WordNet.load().hierarchy(classes)
    h.ancestor_columns  # built once, outside the timings
    rng = np.random.default_rng(0)
    first, second = rng.integers(0, len(classes), (2, n))
    multi = rng.random(n) < 0.05
    t0 = time.perf_counter()
    b = IndexBuilder()
    for i in range(n):
        c = classes[first[i]]
        b.add(f"{c}/{c}_{i}.JPEG", (c, classes[second[i]]) if multi[i] else (c,))
    t1 = time.perf_counter()
    index = b.build(h, "/data/imagenet21k", "folders", "synthetic")
    t2 = time.perf_counter()
    counts = index.node_counts()
    t3 = time.perf_counter()
    index.choose_expert_domains(50)
    t4 = time.perf_counter()
    batch = np.sort(rng.choice(n, 256, replace=False))
    targets = min(_seconds(lambda: index.targets(batch)) for _ in range(5))
    sl = _seconds(lambda: index.slice("n02084071"))
    return {"n": n, "add_s": t1 - t0, "build_s": t2 - t1, "counts_s": t3 - t2, "domains_s": t4 - t3,
            "targets_ms": targets * 1000, "slice_s": sl, "root": counts["root"],
            "mb": (index.names.nbytes + index.label_indptr.nbytes + index.label_columns.nbytes) / 2**20}


def _seconds(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run_worker(source: str, trace: bool = False) -> dict:
    flags = ["--trace"] if trace else []
    out = subprocess.run([sys.executable, "-m", "perf.upstream_data", "--worker", source, *flags], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def section(repeats: int, images: int, jpegs: int, jpeg_size: int = 256) -> str:
    from expertise.data.wordnet import SYSTEM_DATA_NOUN
    from perf.streaming import lines as streaming_lines
    from perf.streaming import measure as measure_streaming

    sources = ["table"] + (["data.noun"] if SYSTEM_DATA_NOUN.exists() else [])
    rows = []
    for source in sources:
        runs = [run_worker(source) for _ in range(repeats)]
        best = min(runs, key=lambda r: r["read_s"] + r["build_s"])
        traced = run_worker(source, trace=True)
        rows.append((source, best, traced["peak_mb"], max(r["rss_mb"] for r in runs)))
    r = rows[0][1]
    out = subprocess.run([sys.executable, "-m", "perf.upstream_data", "--worker", "index", "--images", str(images)],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    x = json.loads(out.stdout.strip().splitlines()[-1])
    import torch

    lines = [
        START, "## Upstream data from disk", "",
        "Regenerate with `make bench-data` (`python -m perf.upstream_data`). "
        f"Measured on {machine()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, each time the best of {repeats} fresh processes (the machine is shared: load "
        f"average {os.getloadavg()[0]:.1f} at the end).", "",
        "### The ImageNet-21k hierarchy from WordNet 3.0", "",
        f"timm's 21,843 ImageNet-21k wnids and their ancestors: {r['nodes']:,} label nodes, {r['leaves']:,} of them "
        f"leaves. Read: parsing the source into parents and names. Build: closure, `Hierarchy` (topological "
        f"order, checks), its sparse ancestry table "
        f"({r['entries']:,} entries, {r['csr_mb']:.1f} MB; the dense leaf-by-node matrix it replaces would be "
        f"{r['dense_mb']:,.0f} MB), subtree counts and the top-50 expert domains (with 600 images per leaf: "
        f"{', '.join(r['top'])}, ...). Peak traced: tracemalloc's peak over reading and building (a separate "
        "process, as tracing slows allocation); peak RSS added: the process's peak RSS above its RSS after imports.", "",
        "| source | synsets read | read (s) | build (s) | peak traced (MB) | peak RSS added (MB) |",
        "|---|---:|---:|---:|---:|---:|",
        *[f"| {'packaged table' if s == 'table' else '`/usr/share/wordnet/data.noun`'} | {b['synsets']:,} | "
          f"{b['read_s']:.2f} | {b['build_s']:.2f} | {peak:.0f} | {rss:.0f} |" for s, b, peak, rss in rows],
        "",
        "### A label index of a million images", "",
        f"A `DiskIndex` of {x['n']:,} synthetic images over that hierarchy (ImageNet-style names "
        "`<wnid>/<wnid>_<i>.JPEG`, random classes, 5% with a second label), built with `IndexBuilder` as the "
        "readers do; labels only, so no file is touched. One process, one run.", "",
        "| what | measured |", "|---|---:|",
        f"| add every image to the builder (a Python loop, as the readers run) | {x['add_s']:.1f} s |",
        f"| build the index (labels to columns, sorted, without repeats) | {x['build_s']:.2f} s |",
        f"| memory held by the index (names, label columns) | {x['mb']:.0f} MB |",
        f"| images under every node (`node_counts`) | {x['counts_s']:.2f} s |",
        f"| top-50 expert domains (`choose_expert_domains`, counts included) | {x['domains_s']:.2f} s |",
        f"| multi-hot targets of a batch of 256 images ([256, {r['nodes']:,}]) | {x['targets_ms']:.0f} ms |",
        f"| the slice of dog (n02084071) | {x['slice_s']:.2f} s |",
        "", *(streaming_lines(measure_streaming(jpegs, size=jpeg_size)) if jpegs else []), END,
    ]
    return "\n".join(lines)


def splice(text: str) -> None:
    splice_section(ROOT / "perf" / "upstream_data.md", START, END, text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--worker", choices=["table", "data.noun", "index"])
    ap.add_argument("--images", type=int, default=1_000_000, help="images in the synthetic label index")
    ap.add_argument("--trace", action="store_true", help="(worker) measure memory with tracemalloc")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--jpegs", type=int, default=20_000, help="JPEGs of the streaming measurement (0: skip it)")
    ap.add_argument("--jpeg-size", type=int, default=256, help="side of those JPEGs, in pixels")
    args = ap.parse_args()
    if args.worker == "index":
        print(json.dumps(_index_worker(args.images)))
        return
    if args.worker:
        print(json.dumps(_worker(args.worker, args.trace)))
        return
    text = section(args.repeats, args.images, args.jpegs, args.jpeg_size)
    print(text)
    splice(text)


if __name__ == "__main__":
    main()
