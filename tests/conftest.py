"""Fixtures shared by the whole suite.

* ``tiny_library``: one library built once per test run by the real upstream code
  (:func:`expertise.upstream.build.build_library` on a shortened ``tiny`` preset): the baseline B, three
  full experts, the EPN and an adapter bank of three adapter experts on B. It is read-only: every
  test is checked afterwards to have left its files as they were. A test that writes to a library
  takes ``tiny_library_copy`` (a fresh copy in its ``tmp_path``) or calls ``tiny_library.copy_to``.
* ``timm_checkpoint``: timm's ``test_resnet`` with perturbed weights and a 7-class classifier, saved
  locally as a safetensors state dict (the way an external member arrives); ``make_timm_net`` makes
  other such networks.
"""

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch

os.environ.setdefault("EXPERTISE_PROGRESS", "0")
# Commands run their units in this process unless a test asks for workers (--jobs N, tests/test_process_executor.py).
os.environ.setdefault("EXPERTISE_JOBS", "1")
# The key that tags caches and records (expertise/tags.py): the suite's own, never the user's ~/.cache one.
os.environ.setdefault("EXPERTISE_KEY", "the test suite's key")

from expertise.runtime import RunContext  # noqa: E402
from expertise.config import Preset, get_preset  # noqa: E402  (after the progress switch)
from expertise.data.world import World  # noqa: E402
from expertise.library import Library  # noqa: E402
from expertise.upstream.build import build_library  # noqa: E402

# Short training: the tests check plumbing and contracts, not accuracy.
TINY_OVERRIDES = {"baseline.steps": "40", "expert.steps": "8", "epn.steps": "20", "num_experts": "3",
                  "adapter.steps": "6"}


def _snapshot(path: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file and folder under ``path``: what a write would change."""
    return {str(p.relative_to(path)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*"))}


@dataclass
class TinyLibrary:
    """The shared library and what built it. ``names`` is the pool ``build_library`` returned (B, the
    full experts, the adapter experts); the EPN is in the library but not in the pool."""

    library: Library
    world: World
    names: list[str]
    preset: Preset
    snapshot: dict[str, tuple[int, int]]

    def preset_with(self, **overrides: str) -> Preset:
        """The same preset with some settings changed (``preset_with(**{"epn.steps": "21"})``)."""
        return get_preset("tiny", {**TINY_OVERRIDES, **overrides})

    def copy_to(self, dest: Path) -> Library:
        """A writable copy of the library at ``dest``."""
        shutil.copytree(self.library.path, dest)
        return Library.open(dest)

    def changes(self) -> list[str]:
        now = _snapshot(self.library.path)
        return sorted(k for k in now.keys() | self.snapshot.keys() if now.get(k) != self.snapshot.get(k))


_SHARED: dict[str, TinyLibrary] = {}


@pytest.fixture(scope="session")
def tiny_library(tmp_path_factory) -> TinyLibrary:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        preset = get_preset("tiny", TINY_OVERRIDES)
        path = tmp_path_factory.mktemp("shared") / "tiny_library"
        lib, world, names = build_library(preset, path, RunContext(progress=False, log=lambda *a: None))
    finally:
        torch.set_num_threads(threads)
    _SHARED["tiny"] = shared = TinyLibrary(lib, world, list(names), preset, _snapshot(path))
    return shared


@pytest.fixture
def tiny_library_copy(tiny_library: TinyLibrary, tmp_path: Path) -> Library:
    """A fresh, writable copy of the shared library for a test that changes it."""
    return tiny_library.copy_to(tmp_path / "tiny_library")


@pytest.fixture(autouse=True)
def _shared_library_is_read_only(request):
    yield
    shared = _SHARED.get("tiny")
    changed = [] if shared is None else shared.changes()
    if changed:
        shared.snapshot = _snapshot(shared.library.path)  # blame this test only, not every later one
        pytest.fail(f"{request.node.nodeid} changed the shared tiny library ({', '.join(changed[:3])}, ...); "
                    "a test that writes to a library takes the tiny_library_copy fixture", pytrace=False)


def _perturbed_timm_net(arch: str = "test_resnet", num_classes: int = 7, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    with torch.no_grad():  # a zero-initialised last block would hide a mis-loaded checkpoint
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


@pytest.fixture(scope="session")
def make_timm_net():
    """``make_timm_net(arch="test_resnet", num_classes=7, seed=0)``: a timm network in eval mode with
    every parameter perturbed."""
    return _perturbed_timm_net


@pytest.fixture(scope="session")
def timm_checkpoint(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """(net, path): timm's ``test_resnet`` (7 classes) and its state dict as a local safetensors file.
    Read-only: compare against ``net``, never change it."""
    net = _perturbed_timm_net()
    path = tmp_path_factory.mktemp("ckpt") / "test_resnet.safetensors"
    safetensors.torch.save_file(net.state_dict(), str(path))
    return net, path


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
    yield
