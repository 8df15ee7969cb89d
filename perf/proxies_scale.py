"""Proxy scoring at pool scale (issue 17): `make bench-proxies`, or
`.venv/bin/python -m perf.proxies_scale [--device cuda] [--quick]`.

Writes its section to perf/proxies_scale.md and splices it into BENCHMARKS.md (between the
markers below; `make bench` keeps the file's section). Every pool run is a fresh subprocess, so its
peak resident memory is its own. Members' features are written once to safetensors files in a
temporary folder and read on access (a lazy mapping, as the embedding cache hands them over), so
memory is per member, not per pool, and the timings hold reading the features, not making them.
All timings within one run, so the ratios compare like with like; the machine is shared, so each
row states best-of or single run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch

from perf.timing import machine

ROOT = Path(__file__).resolve().parents[1]

START, END = "<!-- proxies_scale:start -->", "<!-- proxies_scale:end -->"
# Members scored at once on the CPU (score_pool's workers); the table's other row uses the other of
# 1 and 2. (The 2-worker row once measured 3x slower than 1 worker: score_pool's thread limits
# missed scikit-learn's OpenMP runtime and scipy's OpenBLAS, which loaded after them, so without
# OMP_NUM_THREADS each worker's probe ran one OpenMP thread per core; fixed in score_pool.)
WORKERS = int(os.environ.get("BENCH_WORKERS", "1"))
REPEATS = 3  # runs of the 100-member pool per worker count
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


class PoolOnDisk(Mapping[str, np.ndarray]):
    """The first ``members`` members of a pool :func:`write_pool` wrote to ``folder``, each member's
    features read from its safetensors file on access (as the embedding cache hands them over)."""

    def __init__(self, folder: Path, members: int) -> None:
        from safetensors.numpy import load_file

        self.folder, self.members = folder, members
        self.names = [f"m{i:03d}" for i in range(members)]
        self.labels = load_file(folder / "labels.safetensors")["labels"]

    def __getitem__(self, key: str) -> np.ndarray:
        from safetensors.numpy import load_file

        if key not in self.names:
            raise KeyError(key)
        return load_file(self.folder / f"{key}.safetensors")["features"]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return self.members


def write_pool(folder: Path, members: int, n: int, d: int) -> Path:
    """:class:`SyntheticPool`'s first ``members`` members and its labels as safetensors files in
    ``folder`` (a pool of M members holds the first M of a larger one: member i's features depend
    on i alone)."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    pool = SyntheticPool(members, n, d)
    save_file({"labels": pool.labels}, folder / "labels.safetensors")
    for name in pool:
        save_file({"features": pool[name]}, folder / f"{name}.safetensors")
    return folder


def _worker(kind: str, members: int, folder: Path, device: str, workers: int) -> dict:
    """One pool run in this process: seconds per proxy (and per shared stage) and peak RSS."""
    from threadpoolctl import threadpool_limits

    import tests.numpy_reference_proxies  # noqa: F401  (imports before the baseline, whichever path runs)
    from expertise.select.scoring import score_pool

    pool = PoolOnDisk(folder, members)
    seconds: dict[str, float] = {}
    # The probes' one-off imports, timed apart: a process pays them once, whatever the tasks and
    # members it scores after (the embedding time they are compared with is warm too).
    t = time.perf_counter()
    if kind == "old":
        import sklearn.linear_model  # noqa: F401  (the reference probe's)
    else:
        from expertise.select.probe import threadpools

        threadpools()  # scipy.optimize and the thread-limit controller
    imports = time.perf_counter() - t
    baseline_mb, anon_base_mb = _status_mb("VmRSS"), _status_mb("RssAnon")
    limits = threadpool_limits(torch.get_num_threads())
    anon = AnonPeak().__enter__()
    t0 = time.perf_counter()
    if kind in ("new", "probe"):

        def lazy_on_device() -> Mapping[str, torch.Tensor | np.ndarray]:
            if device == "cpu":
                return pool
            return {k: torch.from_numpy(pool[k]).to(device) for k in pool}  # the device path holds them there

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
    anon.__exit__()
    limits.restore_original_limits()
    rss_mb = _status_mb("VmHWM")  # this process's peak (getrusage's survives exec: it would be the parent's)
    return {"seconds": seconds, "total": total, "rss_mb": rss_mb, "work_mb": rss_mb - baseline_mb, "imports": imports,
            "anon_mb": anon.peak_mb, "anon_base_mb": anon_base_mb, "file_mb": _status_mb("RssFile")}


class AnonPeak:
    """The peak of this process's anonymous resident memory (``RssAnon``: what it allocated, not the
    pages of the shared libraries it maps, ``RssFile``, whose count varies with the page cache from
    run to run), sampled every ``interval`` seconds by a daemon thread while in use."""

    def __init__(self, interval: float = 0.05) -> None:
        import threading

        self.interval, self.peak_mb = interval, _status_mb("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, _status_mb("RssAnon"))

    def __enter__(self) -> AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, _status_mb("RssAnon"))


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status (kB) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


class Pools:
    """Pools written to safetensors files under one temporary folder, once per shape (largest
    member count asked for first); removed on exit."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="proxies_scale-")
        self._written: dict[tuple[int, int], tuple[int, Path]] = {}

    def folder(self, members: int, n: int, d: int) -> Path:
        have = self._written.get((n, d))
        if have is None or have[0] < members:
            path = write_pool(Path(self._tmp.name) / f"{n}x{d}-{members}", members, n, d)
            self._written[(n, d)] = (members, path)
        return self._written[(n, d)][1]

    def __enter__(self) -> Pools:
        return self

    def __exit__(self, *exc: object) -> None:
        self._tmp.cleanup()


def run_worker(pools: Pools, kind: str, members: int, n: int, d: int, device: str = "cpu", workers: int = WORKERS) -> dict:
    folder = pools.folder(members, n, d)
    cmd = [sys.executable, "-m", "perf.proxies_scale", "--worker", kind, str(members), str(folder), "--device", device,
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


def section(device: str, quick: bool, pools: Pools) -> str:
    n, d = 1000, 2048
    sizes = (2, 5) if quick else (10, 20, 50, 100)
    embed_r50 = embed_seconds_per_image("bit_r50x1", 16 if quick else 64, device)
    embed_s = embed_seconds_per_image("bit_s", 1000, device)
    pools.folder(sizes[-1], n, d)  # the largest pool first: the smaller ones are its first members
    loads = [_load()]
    runs = {m: run_worker(pools, "new", m, n, d, device) for m in sizes[:-1]}
    # The largest pool, the target, with both worker counts, interleaved, REPEATS times:
    # its rows give the median run and every run's wall time.
    other_workers = 2 if WORKERS == 1 else 1
    repeats = 1 if quick else REPEATS
    big: dict[int, list[dict]] = {WORKERS: [], other_workers: []}
    for _ in range(repeats):
        for w in big:
            big[w].append(run_worker(pools, "new", sizes[-1], n, d, device, workers=w))
    for w in big:
        big[w].sort(key=lambda r: r["total"])
    runs[sizes[-1]] = big[WORKERS][len(big[WORKERS]) // 2]
    loads.append(_load())
    old_members = 2 if quick else 10
    old = run_worker(pools, "old", old_members, n, d)
    loads.append(_load())
    lines = [
        START, f"## Proxy scoring at pool scale ({device})", "",
        f"Regenerate with `make bench-proxies` (`python -m perf.proxies_scale`{' --device ' + device if device != 'cpu' else ''}). "
        f"Pools of M members, each 1,000 x 2,048 float32 features (ReLU of class-shifted Gaussians, 10 classes; "
        f"ResNet-50-sized), each member read from its safetensors file when scored (as the embedding cache hands "
        f"features over; the files are written before the clock starts), all seven feature proxies through `score_pool` (one spectrum per member; members scored "
        f"{WORKERS} at a time on the CPU, `BENCH_WORKERS`). Each pool is one "
        f"fresh process, single run ({sizes[-1]} members: the median of {repeats}, every run in the rows below; the machine is shared: load averages {' / '.join(loads)} during the runs); "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s) for torch and BLAS (`BENCH_THREADS`), {machine()}. Ratios are to the "
        f"embedding time of the same pool: M x 1,000 images through an untrained `bit_r50x1` (128 px, 2,048-d), "
        f"measured here at {embed_r50 * 1000:.0f} ms per image (best of 2).", "",
        "| members | " + " | ".join(FEATURE_PROXIES) + " | shared spectrum | all, wall (s) | per member (s) | score / embed | peak RSS (MB) | anonymous peak (MB) | of which working (MB) |",
        "|---:|" + "---:|" * (len(FEATURE_PROXIES) + 7),
    ]
    for m, r in runs.items():
        s = r["seconds"]
        shared = s.get("spectrum", 0.0) + s.get("duplicates", 0.0) + s.get("validate", 0.0)
        lines.append(f"| {m} | " + " | ".join(f"{s.get(p, 0.0):.1f}" for p in FEATURE_PROXIES)
                     + f" | {shared:.1f} | {r['total']:.1f} | {r['total'] / m:.2f} | {r['total'] / (m * n * embed_r50):.3f} "
                     f"| {r['rss_mb']:.0f} | {r['anon_mb']:.0f} | {r['work_mb']:.0f} |")
    s = old["seconds"]
    scale = 100 / old_members
    lines += [
        "", f"Before (the NumPy proxies of before issue 17, `tests/numpy_reference_proxies.py`, each proxy on its own, "
        f"same threads), measured on {old_members} members and scaled x{scale:.0f} to 100 (cost is linear in members, "
        "as the table above shows):", "",
        "| | " + " | ".join(FEATURE_PROXIES) + " | all (s) | peak RSS (MB) | anonymous peak (MB) | of which working (MB) |",
        "|---|" + "---:|" * (len(FEATURE_PROXIES) + 4),
        f"| before, {old_members} members | " + " | ".join(f"{s[p]:.1f}" for p in FEATURE_PROXIES)
        + f" | {old['total']:.1f} | {old['rss_mb']:.0f} | {old['anon_mb']:.0f} | {old['work_mb']:.0f} |",
        "| before, scaled to 100 | " + " | ".join(f"{s[p] * scale:.0f}" for p in FEATURE_PROXIES) + f" | {old['total'] * scale:.0f} | | | |",
    ]
    for w, rs in big.items():
        r = rs[len(rs) // 2]
        walls = ", ".join(f"{x['total']:.1f}" for x in rs)
        every = f", median of {len(rs)}: [{walls}] s" if len(rs) > 1 else ""
        lines.append(f"| after, {sizes[-1]} members, {w} worker(s) (measured{every}) | "
                     + " | ".join(f"{r['seconds'].get(p, 0.0):.1f}" for p in FEATURE_PROXIES)
                     + f" | {r['total']:.1f} | {r['rss_mb']:.0f} | {r['anon_mb']:.0f} | {r['work_mb']:.0f} |")
    two = big.get(2)
    if two:
        med = two[len(two) // 2]["total"]
        lines += ["", f"Issue 17's target, all seven proxies for {sizes[-1]} members in at most 30 s on two cores: "
                  f"{med:.1f} s with 2 workers (median; runs {', '.join(f'{x:.1f}' for x in sorted(r['total'] for r in two))} s), "
                  f"{'within' if med <= 30 else 'over'} it on this machine."]
    med_run = big[max(big)][len(big[max(big)]) // 2]
    lines += ["", "Per-proxy columns after issue 17 are summed over the workers (CPU seconds, so with 2 workers they add up to "
              "about twice the wall time) and exclude the shared stages (validation, the one spectrum per member, "
              "the search for duplicate rows), which the shared-spectrum column holds. Peak RSS includes what importing "
              "torch and scipy (before: scikit-learn) maps before any work; the working column is the peak above the "
              "resident size after those imports, which are not timed (a process pays them once). Of the peak RSS, "
              "the anonymous peak is what the process allocated (sampled every 50 ms; of it, the imports allocate "
              f"{med_run['anon_base_mb']:.0f} MB before any work, in the median {max(big)}-worker run of the largest pool); "
              "the rest is file-backed, the pages of the shared libraries torch maps (shared with every process that "
              "maps them), whose count varies from run to run with the page cache (in that run "
              f"{med_run['file_mb']:.0f} MB at the end).", ""]
    lines += demo_pool_lines(pools, device, embed_s, quick)
    lines += knn_scaling_lines(pools, device, embed_s, quick)
    if device == "cpu":
        lines += ["", "On an accelerator: not measured (no GPU was lent to this session). `python -m perf.proxies_scale "
                  "--device cuda` produces the same tables with the device path (features on the GPU, torch float64 "
                  "there, members batched in `score_pool`).", ""]
    lines.append(END)
    return "\n".join(lines)


def demo_pool_lines(pools: Pools, device: str, embed_s: float, quick: bool) -> list[str]:
    """The demo's shape: 17 members, 256-d features (bit_s), a 1,000-image task."""
    members = 5 if quick else 17
    r = run_worker(pools, "new", members, 1000, 256, device)
    old = run_worker(pools, "old", members, 1000, 256)
    # What selection runs: one member per thread on the CPU (select/registry.scoring_workers), so 2
    # workers on this machine's 2 threads; wall times, against the embedding on the same 2 threads.
    walls = {(kind, w): run_worker(pools, kind, members, 1000, 256, device, workers=w)["total"]
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
        f"(`BENCH_WORKERS`); per-proxy seconds. Every timing here starts after the probe's one-off imports, "
        f"which a process pays once whatever it scores next, as the warm embedding time leaves out its own start-up: "
        f"scipy.optimize {r['imports']:.2f} s (before: scikit-learn {old['imports']:.2f} s).", "",
        "| proxy | before (s) | after (s) | before / embed | after / embed |", "|---|---:|---:|---:|---:|",
        *[f"| {p} | {o[p]:.2f} | {s.get(p, 0.0):.2f} | {o[p] / embed:.3f} | {s.get(p, 0.0) / embed:.3f} |" for p in FEATURE_PROXIES],
        f"| shared spectrum and duplicate search (after) | | {s.get('spectrum', 0) + s.get('duplicates', 0):.2f} | | "
        f"{(s.get('spectrum', 0) + s.get('duplicates', 0)) / embed:.3f} |",
        f"| all seven | {old['total']:.2f} | {r['total']:.2f} | {old['total'] / embed:.3f} | {r['total'] / embed:.3f} |", "",
        *wall_lines,
    ]


def knn_scaling_lines(pools: Pools, device: str, embed_s: float, quick: bool) -> list[str]:
    sizes = (1000, 5000) if quick else (1000, 5000, 10000, 20000, 50000)
    lines = ["### knn_loo against N, D = 256 (exact)", "",
             "One member, N images, 256-d features: exact leave-one-out 1-NN (distances in float64 blocks of 2^25 "
             "elements, 256 MiB, so memory is the features plus one block whatever N), single run in a fresh process. "
             "Embedding time: N images through untrained `bit_s` at the rate above.", "",
             "| N | knn_loo (s) | embed (s) | knn / embed | peak RSS (MB) | anonymous peak (MB) | of which working (MB) |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for n in sizes:
        r = run_worker(pools, "knn", 1, n, 256, device)
        embed = n * embed_s
        lines.append(f"| {n:,} | {r['seconds']['knn_loo']:.2f} | {embed:.2f} | {r['seconds']['knn_loo'] / embed:.3f} | {r['rss_mb']:.0f} | {r['anon_mb']:.0f} | {r['work_mb']:.0f} |")
    return lines + [""]


def splice(text: str) -> None:
    from perf.timing import splice_section

    splice_section(ROOT / "perf" / "proxies_scale.md", START, END, text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="small sizes, to check the script runs")
    ap.add_argument("--worker", nargs=3, metavar=("KIND", "MEMBERS", "FOLDER"))
    ap.add_argument("--workers", type=int, default=WORKERS)
    args = ap.parse_args()
    threads = int(os.environ.get("BENCH_THREADS", "1"))
    torch.set_num_threads(threads)
    if args.worker:
        kind, m, folder = args.worker
        print(json.dumps(_worker(kind, int(m), Path(folder), args.device, args.workers)))
        return
    with Pools() as pools:
        text = section(args.device, args.quick, pools)
    print(text)
    if not args.quick:
        splice(text)


if __name__ == "__main__":
    main()
