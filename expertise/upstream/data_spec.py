"""Which upstream dataset on disk a library is built from, and how a later command finds it again.

``expertise upstream --data SPEC`` (and ``experts``, ``dat``) names a dataset in one of the three
layouts of :mod:`expertise.data.disk_layouts` (a folder of class folders, a manifest, WebDataset
shards), with a hierarchy file or a class list where the layout needs one. The library records it in
``upstream.json`` (:func:`data_record`): the paths, the layout, the fingerprint of its label index
(:meth:`DiskIndex.fingerprint`), its size and the holdout size. A later command on that library
without ``--data`` reads the dataset the record names and checks it still has that fingerprint; a
command with ``--data`` naming another dataset is a one-line error, as is ``--data`` on a library of
the embedded world.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expertise.data.disk_index import DiskIndex
from expertise.errors import ConfigError, LibraryError
from expertise.upstream.disk_data import DiskHoldout, DiskUpstream, default_holdout, split_rows


def _absolute(path: str | None) -> str | None:
    """An absolute path (brace patterns kept as they are), so a later command run from another
    folder finds the same files."""
    return None if path is None else os.path.abspath(os.path.expanduser(str(path)))


@dataclass(frozen=True)
class DataSpec:
    """What ``--data`` and its options name: the dataset (``spec``; None: the one the library
    records, if any, else the embedded world), its ``hierarchy`` file and ``classes`` list (None:
    WordNet, class names), the images to hold out (None: as recorded, else
    :func:`~expertise.upstream.disk_data.default_holdout`), and how to read images: ``workers``
    decoding processes, ``strict`` (an unreadable image is an error, not skipped)."""

    spec: str | None = None
    hierarchy: str | None = None
    classes: str | None = None
    holdout: int | None = None
    workers: int = 0
    strict: bool = False

    def __post_init__(self) -> None:
        if self.spec is None:
            given = [name for name, v in (("--hierarchy", self.hierarchy), ("--classes", self.classes),
                                          ("--holdout", self.holdout)) if v is not None]
            if given:
                raise ConfigError(f"{given[0]} describes the upstream dataset on disk; give it with --data")
        elif not str(self.spec).strip():
            raise ConfigError("--data needs a dataset: a folder of class folders, a manifest (.csv, .jsonl) or "
                              "WebDataset shards (.tar, brace patterns allowed)")
        if self.holdout is not None and self.holdout < 1:
            raise ConfigError(f"--holdout must be at least 1, got {self.holdout}")
        if self.workers < 0:
            raise ConfigError(f"--workers must be at least 0, got {self.workers}")
        object.__setattr__(self, "spec", _absolute(self.spec))
        object.__setattr__(self, "hierarchy", _absolute(self.hierarchy))
        object.__setattr__(self, "classes", _absolute(self.classes))

    def read(self) -> DiskIndex:
        """The dataset's label index (labels only: no image is opened)."""
        from expertise.data.disk_layouts import read_upstream

        assert self.spec is not None
        return read_upstream(self.spec, hierarchy=self.hierarchy, classes=self.classes)


@dataclass(frozen=True)
class DiskSource:
    """A dataset on disk, read: its index, fingerprint and holdout size."""

    spec: DataSpec
    index: DiskIndex
    fingerprint: str
    holdout: int

    def record(self) -> dict[str, Any]:
        """The ``data`` block of ``upstream.json``."""
        return {"spec": self.spec.spec, "hierarchy": self.spec.hierarchy, "classes": self.spec.classes,
                "layout": self.index.layout, "fingerprint": self.fingerprint, "images": len(self.index),
                "holdout": self.holdout}

    def settings(self) -> dict[str, Any]:
        """What of the dataset decides the models trained on it (``upstream.json``'s settings)."""
        return {"fingerprint": self.fingerprint, "holdout": self.holdout}

    def train(self, seed: int) -> DiskUpstream:
        rows, _ = split_rows(len(self.index), self.holdout, seed)
        return DiskUpstream(self.index, rows, f"{self.index.layout} {self.spec.spec} (train)", self.spec.workers,
                            self.spec.strict)

    def holdout_split(self, seed: int, resolution: int) -> DiskHoldout:
        _, rows = split_rows(len(self.index), self.holdout, seed)
        return DiskHoldout.decode(self.index, rows, resolution, f"{self.index.layout} {self.spec.spec} (holdout)",
                                  self.spec.workers, self.spec.strict)


def recorded(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ``data`` block of a checked ``upstream.json`` (None: no library yet, or the world)."""
    return None if meta is None else meta.get("data")


def resolve(library: Path, meta: dict[str, Any] | None, given: DataSpec | None = None,
            log: Callable[[str], None] = print) -> DiskSource | None:
    """The dataset on disk a command on ``library`` (whose checked ``upstream.json`` is ``meta``)
    works on: ``given.spec`` (``--data``), else the one the library records (read with ``given``'s
    workers and strictness); None for the embedded world. Reads its index and checks it against the
    record: another dataset, or a recorded one that changed on disk, is a :class:`LibraryError`."""
    given = given or DataSpec()
    rec = recorded(meta)
    if given.spec is None and rec is None:
        return None
    if given.spec is not None and meta is not None and rec is None:
        raise LibraryError(f"the library at {library} was built on the embedded world, not on data from disk; "
                           f"use another --library for --data {given.spec}")
    if given.spec is None:
        assert rec is not None
        given = DataSpec(rec["spec"], rec.get("hierarchy"), rec.get("classes"), rec["holdout"], given.workers, given.strict)
        log(f"upstream data: the library records {rec['layout']} at {rec['spec']}")
    t0 = time.perf_counter()
    index = given.read()
    fingerprint = index.fingerprint()
    if rec is not None and fingerprint != rec["fingerprint"]:
        what = (f"the dataset at {given.spec} changed since the library at {library} was built from it"
                if given.spec == rec["spec"] else
                f"--data {given.spec} is not the dataset the library at {library} was built from ({rec['spec']})")
        raise LibraryError(f"{what}: {len(index):,} images with label fingerprint {fingerprint[:12]}, recorded "
                           f"{rec['images']:,} images with {rec['fingerprint'][:12]}; use that dataset, or another --library")
    holdout = given.holdout or (rec["holdout"] if rec is not None else default_holdout(len(index)))
    if rec is not None and holdout != rec["holdout"]:
        raise LibraryError(f"the library at {library} held out {rec['holdout']:,} upstream images, not {holdout:,}; "
                           f"drop --holdout or use another --library")
    log(f"upstream data: {index.layout} at {given.spec}: {len(index):,} images, {len(index.class_counts()):,} classes, "
        f"{len(index.hierarchy.label_nodes):,} label nodes ({time.perf_counter() - t0:.1f}s to read the labels)")
    return DiskSource(given, index, fingerprint, holdout)
