"""The options that name an upstream dataset on disk (``--data`` and what reads it) and those that
checkpoint and resume a long upstream run, shared by ``upstream``, ``experts`` and ``dat``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

if TYPE_CHECKING:
    from expertise.upstream.data_spec import DataSpec
    from expertise.upstream.resume import Checkpointing

DataOpt = Annotated[Optional[str], typer.Option(
    "--data", help="Upstream dataset on disk instead of the embedded world: a folder of class folders (ImageNet-21k: "
    "DIR/<wnid>/<image>), a manifest (.csv or .jsonl: path and labels) or WebDataset shards (.tar, brace patterns "
    "such as 'shards/train-{0000..0099}.tar'). Recorded in the library: later commands on it read the same "
    "dataset without --data.")]
HierarchyOpt = Annotated[Optional[Path], typer.Option(
    "--hierarchy", help="Hierarchy file of --data's labels (parent,child pairs, one a line, or a hierarchy.json); "
    "default: WordNet, the labels being wnids.")]
ClassesOpt = Annotated[Optional[Path], typer.Option(
    "--classes", help="Class names, one a line, that --data's shards' integer labels index (e.g. timm's "
    "imagenet22k_synsets.txt).")]
HoldoutOpt = Annotated[Optional[int], typer.Option(
    "--holdout", help="Images of --data held out (seeded) for the members' upstream accuracy (default 2%, at most 10,000).")]
WorkersOpt = Annotated[int, typer.Option(
    "--workers", help="Processes decoding --data's images (0: in this process).")]
StrictOpt = Annotated[bool, typer.Option(
    "--strict", help="Stop at an unreadable image of --data instead of skipping it (skipped images are counted "
    "and named at the end).")]
ResumeOpt = Annotated[bool, typer.Option(
    "--resume", help="Continue the member an interrupted run was training from its last checkpoint "
    "(LIBRARY/.checkpoints) to the same weights as an uninterrupted run.")]
CheckpointEveryOpt = Annotated[Optional[int], typer.Option(
    "--checkpoint-every", help="Checkpoint every N steps (default: a tenth of each member's steps, and at least "
    "every 5 minutes).")]

RESUMES = ("finished members are kept in the library and the one in training was checkpointed",
           "run the same command again with --resume to continue")


def data_spec(data: str | None, hierarchy: Path | None, classes: Path | None, holdout: int | None, workers: int,
              strict: bool) -> DataSpec:
    """The dataset ``--data`` names, checked; without ``--data``, the library's recorded dataset (if
    any) read with ``--workers`` and ``--strict`` (the options that describe a dataset are refused)."""
    from expertise.upstream.data_spec import DataSpec

    return DataSpec(data, None if hierarchy is None else str(hierarchy), None if classes is None else str(classes),
                    holdout, workers, strict)


def checkpointing(resume: bool, every: int | None) -> Checkpointing:
    from expertise.upstream.resume import Checkpointing

    return Checkpointing(resume, every)
