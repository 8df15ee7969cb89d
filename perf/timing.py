"""The one timer of the benchmark scripts (best of ``repeats`` runs after a warm-up run) and the
splice that puts a script's section into BENCHMARKS.md."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def splice_section(md: Path, start: str, end: str, text: str) -> None:
    """Write a script's section (``text``, from its ``start`` marker to its ``end`` marker) to ``md``
    and in place of the same section of BENCHMARKS.md (appended when it has none); ``make bench``
    keeps the section by reading ``md``."""
    md.write_text(text + "\n")
    path = ROOT / "BENCHMARKS.md"
    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in doc and end in doc:
        doc = doc[: doc.index(start)] + text + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(doc)


def machine() -> str:
    """The CPU's model name (``/proc/cpuinfo``) and architecture, e.g. "AMD EPYC 7B13 (x86_64)":
    results differ between machines, so every section names the one it was measured on."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({platform.machine()})"
    except OSError:
        pass
    return platform.processor() or platform.machine()
