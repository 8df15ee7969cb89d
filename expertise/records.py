"""The one record format: every run writes a JSON object with its config, metrics, wall time per
stage, images processed, package versions and the git revision. Tables and plots are made from
records, never typed by hand."""

from __future__ import annotations

import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from expertise.io import atomic_write_json


def versions() -> dict[str, str]:
    import numpy
    import sklearn
    import timm
    import torch

    from expertise import __version__

    return {
        "expertise": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "timm": timm.__version__, "numpy": numpy.__version__, "sklearn": sklearn.__version__,
    }


def git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def make_record(kind: str, config: dict[str, Any], metrics: dict[str, Any],
                timings: dict[str, float] | None = None, images: dict[str, int] | None = None) -> dict[str, Any]:
    return {
        "kind": kind,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config,
        "metrics": metrics,
        "seconds": {k: round(v, 3) for k, v in (timings or {}).items()},
        "images": images or {},
        "versions": versions(),
        "git": git_revision(),
        "host": platform.node(),
    }


def write_record(path: Path, record: dict[str, Any]) -> None:
    atomic_write_json(path, record)
