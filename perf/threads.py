"""Thread count against a busy machine: `make bench-threads`, or
`.venv/bin/python -m perf.threads [--preset cpu] [--steps 30] [--repeats 3] [--busy 1] [--quick]`.

Times one short fine-tune through the real path (``transfer.finetune.finetune``: the preset's
backbone at its resolution, its fine-tune settings cut to ``--steps`` steps, 1,000 synthetic images
of 10 classes) with 1 thread and with the default thread count (``runtime.default_threads()``, what
every command uses without ``--threads``), alone and beside ``--busy`` processes each spinning on one
core. Every figure comes from this one run and each is the median of ``--repeats`` runs after a
warm-up, so the ratios compare like with like. Run it on an otherwise idle machine: other work is
contention this script does not control. Writes perf/threads.md and splices it into BENCHMARKS.md
(``--quick``, a check that the script runs, only prints).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from expertise.config import get_preset
from expertise.data.tasks import Split
from expertise.models.backbones import BACKBONES, ExpertModel
from expertise.runtime import default_threads
from expertise.transfer.finetune import finetune
from perf.timing import machine, splice_section

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- threads:start -->", "<!-- threads:end -->"
SPIN = "while True:\n    pass\n"


def _load() -> str:
    try:
        return ", ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


class Busy:
    """``n`` processes, each spinning on one core, for the duration of a ``with`` block."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> Busy:
        self.procs = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(self.n)]
        time.sleep(0.5)  # let them start spinning
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


def finetune_seconds(preset: str, steps: int) -> Callable[[], float]:
    """A function that runs the ``steps``-step fine-tune once and returns its seconds."""
    cfg = get_preset(preset)
    backbone = BACKBONES[cfg.backbone]
    torch.manual_seed(0)
    member = ExpertModel(backbone, num_outputs=150)
    g = torch.Generator().manual_seed(0)
    res = backbone.resolution
    train = Split(torch.randint(0, 256, (1000, 3, res, res), dtype=torch.uint8, generator=g),
                  torch.randint(0, 10, (1000,), generator=g))
    tc = dataclasses.replace(cfg.finetune, steps=steps, warmup_steps=min(cfg.finetune.warmup_steps, steps // 3))

    def once() -> float:
        t0 = time.perf_counter()
        finetune(member, train, 10, tc, seed=0, progress=False)
        return time.perf_counter() - t0

    return once


def measure(once: Callable[[], float], threads: list[int], repeats: int, busy: int) -> dict[tuple[int, bool], list[float]]:
    """Seconds of every run per (threads, beside busy processes); thread counts interleaved."""
    times: dict[tuple[int, bool], list[float]] = {}
    for contended in (False, True):
        with Busy(busy if contended else 0):
            for _ in range(repeats):
                for n in threads:
                    torch.set_num_threads(n)
                    times.setdefault((n, contended), []).append(once())
    return times


def section(preset: str, steps: int, repeats: int, busy: int) -> str:
    default = default_threads()
    threads = sorted({1, default})
    source = "OMP_NUM_THREADS" if os.environ.get("OMP_NUM_THREADS") else "the cores this process may use"
    once = finetune_seconds(preset, steps)
    torch.set_num_threads(default)
    once()  # warm-up: allocator, kernels
    loads = [_load()]
    times = measure(once, threads, repeats, busy)
    loads.append(_load())
    med = {k: statistics.median(v) for k, v in times.items()}
    cfg = get_preset(preset)
    what = f"{busy} busy process{'es' if busy > 1 else ''}"
    runs = "one run" if repeats == 1 else f"the median of {repeats} runs"
    lines = [
        START, "## Thread count against a busy machine", "",
        f"Regenerate with `make bench-threads` (`python -m perf.threads`) on an otherwise idle machine. One {steps}-step "
        f"fine-tune of the `{preset}` preset ({cfg.backbone}, {BACKBONES[cfg.backbone].resolution} px, batch "
        f"{cfg.finetune.batch_size}, 1,000 synthetic images) through `transfer.finetune`, with 1 thread and with the default "
        f"({default}: {source}), alone and beside {what} (a Python loop spinning on one core each); {os.cpu_count()} cores, "
        f"{machine()}, torch {torch.__version__}. Each cell is {runs} after a warm-up "
        f"(every run in brackets); load averages {loads[0]} before and {loads[1]} after. The last two columns say "
        "whether fewer threads pay when another process holds a core (`--threads 1`, or `OMP_NUM_THREADS=1`).", "",
        f"| threads | alone (s) | beside {what} (s) | slowdown from the busy process | time / 1 thread's, alone | time / 1 thread's, beside {what} |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for n in threads:
        alone, crowded = med[(n, False)], med[(n, True)]
        every = {c: ", ".join(f"{t:.1f}" for t in times[(n, c)]) for c in (False, True)}
        label = f"{n} (default)" if n == default else str(n)
        lines.append(f"| {label} | {alone:.2f} [{every[False]}] | {crowded:.2f} [{every[True]}] | {crowded / alone:.2f}x "
                     f"| {alone / med[(1, False)]:.2f} | {crowded / med[(1, True)]:.2f} |")
    return "\n".join(lines + ["", END])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu", help="preset whose backbone and fine-tune settings are timed")
    ap.add_argument("--steps", type=int, default=30, help="fine-tune steps per run")
    ap.add_argument("--repeats", type=int, default=3, help="runs per cell (the median is reported)")
    ap.add_argument("--busy", type=int, default=1, help="busy processes beside the fine-tune, one core each")
    ap.add_argument("--quick", action="store_true", help="tiny preset, 3 steps, 1 run: checks the script, writes nothing")
    args = ap.parse_args()
    if args.quick:
        print(section("tiny", 3, 1, args.busy))
        return
    text = section(args.preset, args.steps, args.repeats, args.busy)
    print(text)
    splice_section(ROOT / "perf" / "threads.md", START, END, text)


if __name__ == "__main__":
    main()
