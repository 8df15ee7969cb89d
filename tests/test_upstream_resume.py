"""`expertise upstream/experts --resume`: a run interrupted while training (B, a full expert, the
EPN, the adapter bank) continues from its checkpoints to the same library as an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from disk_datasets import make_dataset
from expertise.checkpoint import Checkpoint
from expertise.cli import app

runner = CliRunner()
STEPS = {"baseline": 5, "expert": 3, "epn": 3, "adapter": 3}


def command(lib: Path, folders: Path, *extra: str) -> list[str]:
    args = ["experts", "--library", str(lib), "--kind", "both", "--data", str(folders), "--holdout", "3", "--preset",
            "tiny", "--threads", "1", "-q", "--checkpoint-every", "1", "--set", "num_experts=2", *extra]
    for stage, n in STEPS.items():
        args += ["--set", f"{stage}.steps={n}", "--set", f"{stage}.warmup_steps=1", "--set", f"{stage}.batch_size=4"]
    return args


def tensors(lib: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every member and bank file, by file and name."""
    out = {}
    for f in sorted(lib.rglob("*.safetensors")):
        if ".checkpoints" not in f.parts and "cache" not in f.parts:
            out.update({f"{f.relative_to(lib)}:{k}": v for k, v in load_file(f).items()})
    return out


def test_an_interrupted_build_resumes_to_the_same_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    threads = torch.get_num_threads()
    try:
        folders = make_dataset(tmp_path / "data")["folders"]
        whole = runner.invoke(app, command(tmp_path / "whole", folders))
        assert whole.exit_code == 0, whole.output

        saves: list[tuple[str, int]] = []
        original = Checkpoint.save

        def save_then_stop(self: Checkpoint, steps_done: int, *args, **kwargs) -> None:
            original(self, steps_done, *args, **kwargs)
            saves.append((self.path.stem, steps_done))
            if len(saves) % 2 == 1:  # killed right after every other checkpoint
                raise KeyboardInterrupt

        monkeypatch.setattr(Checkpoint, "save", save_then_stop)
        lib = tmp_path / "resumed"
        first = runner.invoke(app, command(lib, folders))
        assert first.exit_code == 130 and "run the same command again with --resume to continue" in first.output, first.output
        assert list((lib / ".checkpoints").glob("bit_xs.baseline.safetensors"))
        again = runner.invoke(app, command(lib, folders))  # without --resume: the checkpoint is not thrown away
        assert again.exit_code == 2 and "bit_xs.baseline was interrupted at step 1" in again.output, again.output
        assert "pass --resume to continue it" in again.output
        runs = 1
        while True:
            result = runner.invoke(app, command(lib, folders, "--resume"))
            runs += 1
            if result.exit_code == 0:
                break
            assert result.exit_code == 130 and runs < 20, result.output
        units = {u for u, _ in saves}
        assert units == {"bit_xs.baseline", "bit_xs.expert_n00001740", "bit_xs.expert_n00001930", "bit_xs.epn",
                         "bank.adapter-bank"}, saves
        stage = {"bit_xs.baseline": "baseline", "bit_xs.epn": "epn", "bank.adapter-bank": "adapter"}
        for unit in units:  # each resumed where it stopped: every step checkpointed once, none trained twice
            steps = [s for u, s in saves if u == unit]
            assert steps == list(range(1, STEPS[stage.get(unit, "expert")])), (unit, steps)
        assert not (lib / ".checkpoints").exists()
        assert runner.invoke(app, ["library", "verify", str(lib)]).exit_code == 0
        a, b = tensors(tmp_path / "whole"), tensors(lib)
        assert a.keys() == b.keys() and len(a) > 50
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert not different, different[:5]
    finally:
        torch.set_num_threads(threads)
