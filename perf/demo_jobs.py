"""The demo's wall time by ``--jobs``, idle and beside a busy process: `make bench-jobs`, or
`.venv/bin/python -m perf.demo_jobs [--variants j1,j2,j2-busy,j1-busy] [--fresh]`.

Each variant is `expertise demo --preset cpu --fresh` into `runs/demo-jobs/<variant>/`, one after
another on this machine: ``jN`` with ``--jobs N`` (``j1``: every unit in the command's process on
every core, what the demo did before worker processes; ``j2``: two one-thread workers), ``-busy``
beside one busy process (a Python loop spinning on one core for the whole run, as another user's
job would). A variant whose folder already holds a finished run is read back, not run again
(``--fresh`` runs it again), so the figures of a section may come from several invocations on one
machine; the section says which commit and CPU each ran on. It writes perf/demo_jobs.md and splices
it into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import time
from typing import Any

from perf.timing import ROOT, machine, splice_section

START, END = "<!-- demo_jobs:start -->", "<!-- demo_jobs:end -->"
RUNS = ROOT / "runs" / "demo-jobs"
STAGES = ("upstream", "select", "other_strategies", "finetune", "total")


def _spin() -> None:
    while True:
        pass


def _git() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def run(variant: str) -> dict[str, Any]:
    """One demo from scratch: its wall time, its stages' seconds and its takeaway."""
    jobs, busy = int(variant.split("-")[0][1:]), variant.endswith("-busy")
    out = RUNS / variant
    shutil.rmtree(out, ignore_errors=True)
    spinner = None
    if busy:
        spinner = mp.get_context("spawn").Process(target=_spin, daemon=True)
        spinner.start()
    env = {**os.environ, "EXPERTISE_PROGRESS": "0"}
    env.pop("EXPERTISE_JOBS", None)
    t0 = time.perf_counter()
    try:
        subprocess.run([sys.executable, "-m", "expertise", "demo", "--preset", "cpu", "--jobs", str(jobs), "--out",
                        str(out), "--quiet"], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    finally:
        if spinner is not None:
            spinner.kill()
    wall = time.perf_counter() - t0
    result = json.loads((out / "results.json").read_text())
    info = {"variant": variant, "wall": wall, "seconds": result["seconds"], "takeaway": result["metrics"]["takeaway"],
            "git": _git(), "cpu": machine()}
    (out / "timing.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def section(runs: dict[str, dict[str, Any]]) -> str:
    base = runs.get("j1")
    rows = []
    for name, r in runs.items():
        s = r["seconds"]
        ratio = f"{r['wall'] / base['wall']:.2f}" if base else "-"
        idle = runs.get(name.removesuffix("-busy"))
        busy = f"{r['wall'] / idle['wall']:.2f}x its idle time" if name.endswith("-busy") and idle else ""
        rows.append(f"| {name} | {r['wall']:.0f} | " + " | ".join(f"{s.get(k, 0):.0f}" for k in STAGES[:-1])
                    + f" | {ratio} | {busy} | {r['takeaway'].split('(')[0].strip()} |")
    where = sorted({f"{r['cpu']}, commit {r['git']}" for r in runs.values()})
    return "\n".join([
        START, "## The demo by `--jobs`, idle and beside a busy process", "",
        "Regenerate with `make bench-jobs` (`python -m perf.demo_jobs`) on an otherwise idle machine. Each row is "
        "`expertise demo --preset cpu --fresh` from scratch, one after another on one machine: `j1` runs every "
        "unit in the command's own process on both cores (what the demo did before worker processes, its library "
        "byte for byte), `j2` two one-thread workers (the default on two cores; B alone on both threads); "
        "`-busy` beside one Python process spinning on one core for the whole run. "
        f"Measured on {'; '.join(where)}.", "",
        "| variant | wall (s) | upstream | select | other strategies | fine-tunes | / j1 | beside a busy process | "
        "takeaway |", "|---|---:|---:|---:|---:|---:|---:|---|---|", *rows, "", END])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", default="j1,j2,j2-busy,j1-busy")
    ap.add_argument("--fresh", action="store_true", help="run every variant again, even one already measured")
    ap.add_argument("--rerun", default="", help="variants to run again although measured (comma-separated)")
    args = ap.parse_args()
    again = set(filter(None, args.rerun.split(",")))
    runs: dict[str, dict[str, Any]] = {}
    for variant in args.variants.split(","):
        kept = RUNS / variant / "timing.json"
        if kept.is_file() and not args.fresh and variant not in again:
            runs[variant] = json.loads(kept.read_text())
        else:
            print(f"running {variant} ...", flush=True)
            runs[variant] = run(variant)
        print(f"{variant}: {runs[variant]['wall']:.0f}s", flush=True)
    text = section(runs)
    print(text)
    splice_section(ROOT / "perf" / "demo_jobs.md", START, END, text)


if __name__ == "__main__":
    main()
