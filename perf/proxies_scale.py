"""Proxy scoring at pool scale (issue 17): `make bench-proxies`, or
`.venv/bin/python -m perf.proxies_scale [--device cuda] [--quick]`.

Writes its section to perf/proxies_scale.md and splices it into BENCHMARKS.md (between the
markers below; `make bench` keeps the file's section). Every pool run is a fresh subprocess, so its
peak resident memory is its own; members' features are made on access (a lazy mapping, as the
embedding cache hands them over), so memory is per member, not per pool. All timings within one
run, so the ratios compare like with like; the machine is shared, so each row states best-of or
single run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

START, END = "<!-- proxies_scale:start -->", "<!-- proxies_scale:end -->"
# Members scored at once on the CPU (score_pool's workers); the table's other row uses the other of
# 1 and 2. (The 2-worker row once measured 3x slower than 1 worker: score_pool's thread limits
# missed scikit-learn's OpenMP runtime and scipy's OpenBLAS, which loaded after them, so without
# OMP_NUM_THREADS each worker's probe ran one OpenMP thread per core; fixed in score_pool.)
WORKERS = int(os.environ.get("BENCH_WORKERS", "1"))
FEATURE_PROXIES = ("knn_loo", "knn_val", "linear_probe", "ridge_loo", "logme", "hscore", "regularized_hscore")


class SyntheticPool(Mapping[str, np.ndarray]):
    """``members`` members' float32 features [N, D] of one N-image task with ``classes`` classes,
    each made on access from its own seed: embedding-like (ReLU of class-shifted Gaussians, a
    member-specific signal strength)."""

    def __init__(self, members: int, n: int, d: int, classes: int = 10, seed: int = 0) -> None:
        self.members, self.n, self.d, self.classes, self.seed = members, n, d, classes, seed
        self.labels = np.random.default_rng(seed).integers(0, classes, n)

    def __getitem__(self, key: str) -> np.ndarray:
        i = int(key[1:])
        rng = np.random.default_rng((self.seed, i))
        signal = 0.05 + 0.4 * (i % 10) / 10
        x = rng.normal(size=(self.n, self.d)) + signal * rng.normal(size=(self.classes, self.d))[self.labels]
        return np.maximum(x, 0.0).astype(np.float32)

    def __iter__(self) -> Iterator[str]:
        return (f"m{i:03d}" for i in range(self.members))

    def __len__(self) -> int:
        return self.members


def _worker(kind: str, members: int, n: int, d: int, device: str, workers: int) -> dict:
    """One pool run in this process: seconds per proxy (and per shared stage) and peak RSS."""
    from threadpoolctl import threadpool_limits

    import tests.numpy_reference_proxies  # noqa: F401  (imports before the baseline, whichever path runs)
    from expertise.select.scoring import score_pool

    pool = SyntheticPool(members, n, d)
    seconds: dict[str, float] = {}
    baseline_mb = _status_mb("VmRSS")
    limits = threadpool_limits(torch.get_num_threads())
    t0 = time.perf_counter()
    if kind in ("new", "probe"):

        def lazy_on_device() -> Mapping[str, torch.Tensor | np.ndarray]:
            if device == "cpu":
                return pool
            return {k: torch.from_numpy(pool[k]).to(device) for k in pool}  # noqa: the device path holds them there

        proxies = FEATURE_PROXIES if kind == "new" else ("linear_probe",)
        score_pool(lazy_on_device(), pool.labels, proxies, seconds=seconds, workers=workers if device == "cpu" else 1)
    elif kind == "old":
        import tests.numpy_reference_proxies as ref

        for name in pool:
            x = pool[name]
            for p in FEATURE_PROXIES:
                t = time.perf_counter()
                ref.PROXIES[p].fn(x, pool.labels)
                seconds[p] = seconds.get(p, 0.0) + time.perf_counter() - t
    elif kind == "knn":
        from expertise.select.proxies import knn_loo

        x = pool["m000"]
        knn_loo(x, pool.labels)
        seconds["knn_loo"] = time.perf_counter() - t0
    total = time.perf_counter() - t0
    limits.restore_original_limits()
    rss_mb = _status_mb("VmHWM")  # this process's peak (getrusage's survives exec: it would be the parent's)
    return {"seconds": seconds, "total": total, "rss_mb": rss_mb, "work_mb": rss_mb - baseline_mb}


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status (kB) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def run_worker(kind: str, members: int, n: int, d: int, device: str = "cpu", workers: int = WORKERS) -> dict:
    cmd = [sys.executable, "-m", "perf.proxies_scale", "--worker", kind, str(members), str(n), str(d), "--device", device,
           "--workers", str(workers)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def embed_seconds_per_image(backbone: str, images: int, device: str) -> float:
    """Best of 2 embedding passes of ``images`` random images with one untrained member."""
    from perf.timing import best_of

    from expertise.models.backbones import BACKBONES, ExpertModel
    from expertise.select.embed import embed_images

    cfg = BACKBONES[backbone]
    model = ExpertModel(cfg, num_outputs=0)
    imgs = torch.randint(0, 256, (images, 3, cfg.resolution, cfg.resolution), dtype=torch.uint8)
    return best_of(lambda: embed_images(model, imgs, device=torch.device(device)), 2) / images


def _load() -> str:
    try:
        return ", ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def section(device: str, quick: bool) -> str:
    n, d = 1000, 2048
    sizes = (2, 5) if quick else (10, 20, 50, 100)
    embed_r50 = embed_seconds_per_image("bit_r50x1", 16 if quick else 64, device)
    embed_s = embed_seconds_per_image("bit_s", 1000, device)
    loads = [_load()]
    runs = {m: run_worker("new", m, n, d, device) for m in sizes}
    other_workers = 2 if WORKERS == 1 else 1
    other = run_worker("new", sizes[-1], n, d, device, workers=other_workers)
    loads.append(_load())
    old_members = 2 if quick else 10
    old = run_worker("old", old_members, n, d)
    loads.append(_load())
    lines = [
        START, f"## Proxy scoring at pool scale ({device})", "",
        f"Regenerate with `make bench-proxies` (`python -m perf.proxies_scale`{' --device ' + device if device != 'cpu' else ''}). "
        f"Pools of M members, each 1,000 x 2,048 float32 features (ReLU of class-shifted Gaussians, 10 classes; "
        f"ResNet-50-sized), all seven feature proxies through `score_pool` (one spectrum per member; members scored "
        f"{WORKERS} at a time on the CPU, `BENCH_WORKERS`). Each pool is one "
        f"fresh process, single run (the machine is shared: load averages {' / '.join(loads)} during the runs); "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s) for torch and BLAS (`BENCH_THREADS`), {platform.machine()}. Ratios are to the "
        f"embedding time of the same pool: M x 1,000 images through an untrained `bit_r50x1` (128 px, 2,048-d), "
        f"measured here at {embed_r50 * 1000:.0f} ms per image (best of 2).", "",
        "| members | " + " | ".join(FEATURE_PROXIES) + " | shared spectrum | all, wall (s) | per member (s) | score / embed | peak RSS (MB) | of which working (MB) |",
        "|---:|" + "---:|" * (len(FEATURE_PROXIES) + 7),
    ]
    for m, r in runs.items():
        s = r["seconds"]
        shared = s.get("spectrum", 0.0) + s.get("duplicates", 0.0) + s.get("validate", 0.0)
        lines.append(f"| {m} | " + " | ".join(f"{s.get(p, 0.0):.1f}" for p in FEATURE_PROXIES)
                     + f" | {shared:.1f} | {r['total']:.1f} | {r['total'] / m:.2f} | {r['total'] / (m * n * embed_r50):.3f} "
                     f"| {r['rss_mb']:.0f} | {r['work_mb']:.0f} |")
    s = old["seconds"]
    scale = 100 / old_members
    lines += [
        "", f"Before (the NumPy proxies of before issue 17, `tests/numpy_reference_proxies.py`, each proxy on its own, "
        f"same threads), measured on {old_members} members and scaled x{scale:.0f} to 100 (cost is linear in members, "
        "as the table above shows):", "",
        "| | " + " | ".join(FEATURE_PROXIES) + " | all (s) | peak RSS (MB) | of which working (MB) |",
        "|---|" + "---:|" * (len(FEATURE_PROXIES) + 3),
        f"| before, {old_members} members | " + " | ".join(f"{s[p]:.1f}" for p in FEATURE_PROXIES)
        + f" | {old['total']:.1f} | {old['rss_mb']:.0f} | {old['work_mb']:.0f} |",
        "| before, scaled to 100 | " + " | ".join(f"{s[p] * scale:.0f}" for p in FEATURE_PROXIES) + f" | {old['total'] * scale:.0f} | | |",
    ]
    new = runs[sizes[-1]]
    for w, r in ((WORKERS, new), (other_workers, other)):
        lines.append(f"| after, {sizes[-1]} members, {w} worker(s) (measured) | "
                     + " | ".join(f"{r['seconds'].get(p, 0.0):.1f}" for p in FEATURE_PROXIES)
                     + f" | {r['total']:.1f} | {r['rss_mb']:.0f} | {r['work_mb']:.0f} |")
    lines += ["", "Per-proxy columns after issue 17 are summed over the workers (CPU seconds, so with 2 workers they add up to "
              "about twice the wall time) and exclude the shared stages (validation, the one spectrum per member, "
              "the duplicate hash), which the shared-spectrum column holds. Peak RSS includes the ~0.8 GB that importing "
              "torch and scikit-learn maps before any work; the working column is the peak above the resident size after "
              "those imports.", ""]
    lines += demo_pool_lines(device, embed_s, quick)
    lines += knn_scaling_lines(device, embed_s, quick)
    if device == "cpu":
        lines += ["", "On an accelerator: not measured (no GPU was lent to this session). `python -m perf.proxies_scale "
                  "--device cuda` produces the same tables with the device path (features on the GPU, torch float64 "
                  "there, members batched in `score_pool`).", ""]
    lines.append(END)
    return "\n".join(lines)


def demo_pool_lines(device: str, embed_s: float, quick: bool) -> list[str]:
    """The demo's shape: 17 members, 256-d features (bit_s), a 1,000-image task."""
    members = 5 if quick else 17
    r = run_worker("new", members, 1000, 256, device)
    old = run_worker("old", members, 1000, 256)
    # What selection runs: one member per thread on the CPU (select/registry.scoring_workers), so 2
    # workers on this machine's 2 threads; wall times, against the embedding on the same 2 threads.
    walls = {(kind, w): run_worker(kind, members, 1000, 256, device, workers=w)["total"]
             for kind in ("new", "probe") for w in (1, 2)} if device == "cpu" else {}
    embed = members * 1000 * embed_s
    s, o = r["seconds"], old["seconds"]
    wall_lines = [
        "", "Wall time of the pool's scoring with 1 and 2 workers (selection scores one member per thread on the CPU: "
        "2 workers with this machine's 2 threads, the threads the embedding used), single runs:", "",
        "| scoring | 1 worker (s) | 2 workers (s) | 1 worker / embed | 2 workers / embed |", "|---|---:|---:|---:|---:|",
        *[f"| {label} | {walls[(kind, 1)]:.2f} | {walls[(kind, 2)]:.2f} | {walls[(kind, 1)] / embed:.3f} | "
          f"{walls[(kind, 2)] / embed:.3f} |" for kind, label in (("probe", "linear_probe alone"), ("new", "all seven"))], "",
    ] if walls else []
    return [
        f"### The demo's shape: {members} members, 1,000 x 256 features", "",
        f"Embedding {members} x 1,000 images with untrained `bit_s` members: {embed:.2f} s "
        f"({embed_s * 1e6:.0f} us per image, best of 2). Scores / embedding time, single runs, 1 worker "
        f"(`BENCH_WORKERS`); per-proxy seconds:", "",
        "| proxy | before (s) | after (s) | before / embed | after / embed |", "|---|---:|---:|---:|---:|",
        *[f"| {p} | {o[p]:.2f} | {s.get(p, 0.0):.2f} | {o[p] / embed:.3f} | {s.get(p, 0.0) / embed:.3f} |" for p in FEATURE_PROXIES],
        f"| shared spectrum and duplicate hash (after) | | {s.get('spectrum', 0) + s.get('duplicates', 0):.2f} | | "
        f"{(s.get('spectrum', 0) + s.get('duplicates', 0)) / embed:.3f} |",
        f"| all seven | {old['total']:.2f} | {r['total']:.2f} | {old['total'] / embed:.3f} | {r['total'] / embed:.3f} |", "",
        *wall_lines,
    ]


def knn_scaling_lines(device: str, embed_s: float, quick: bool) -> list[str]:
    sizes = (1000, 5000) if quick else (1000, 5000, 10000, 20000, 50000)
    lines = ["### knn_loo against N, D = 256 (exact)", "",
             "One member, N images, 256-d features: exact leave-one-out 1-NN (distances in float64 blocks of 2^25 "
             "elements, 256 MiB, so memory is the features plus one block whatever N), single run in a fresh process. "
             "Embedding time: N images through untrained `bit_s` at the rate above.", "",
             "| N | knn_loo (s) | embed (s) | knn / embed | peak RSS (MB) | of which working (MB) |", "|---:|---:|---:|---:|---:|---:|"]
    for n in sizes:
        r = run_worker("knn", 1, n, 256, device)
        embed = n * embed_s
        lines.append(f"| {n:,} | {r['seconds']['knn_loo']:.2f} | {embed:.2f} | {r['seconds']['knn_loo'] / embed:.3f} | {r['rss_mb']:.0f} | {r['work_mb']:.0f} |")
    return lines + [""]


def splice(text: str) -> None:
    from perf.timing import splice_section

    splice_section(ROOT / "perf" / "proxies_scale.md", START, END, text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="small sizes, to check the script runs")
    ap.add_argument("--worker", nargs=4, metavar=("KIND", "MEMBERS", "N", "D"))
    ap.add_argument("--workers", type=int, default=WORKERS)
    args = ap.parse_args()
    threads = int(os.environ.get("BENCH_THREADS", "1"))
    torch.set_num_threads(threads)
    if args.worker:
        kind, m, n, d = args.worker
        print(json.dumps(_worker(kind, int(m), int(n), int(d), args.device, args.workers)))
        return
    text = section(args.device, args.quick)
    print(text)
    if not args.quick:
        splice(text)


if __name__ == "__main__":
    main()
