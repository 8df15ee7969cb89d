"""Fine-tuned models are kept and used: the model folder (save, load, tamper checks), predictions on
new images, the Wilson interval of the test accuracy, and a fine-tune that resumes from its checkpoint."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from expertise.cli import app
from expertise.data.loaders import read_image
from expertise.errors import ConfigError, ModelError
from expertise.models.forward import forward_batches
from expertise.runtime import RunContext
from expertise.stats import wilson_interval
from expertise.train import TrainConfig
from expertise.transfer import finetune as finetune_module
from expertise.transfer.finetune import finetune
from expertise.transfer.keep import finetune_to_folder
from expertise.transfer.saved import CHECKPOINT, MANIFEST, WEIGHTS, load_model, save_model

runner = CliRunner()
MEMBER, TASK = "bit_xs.baseline", "glyph_digits"
SMALL = TrainConfig(steps=8, batch_size=16, lr=0.01, warmup_steps=2)


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    """One thread, for the commands too (which take every core): deterministic CPU results for the
    resume comparison, and fast on a shared machine."""
    import expertise.runtime as runtime

    configure = runtime.configure
    monkeypatch.setattr(runtime, "configure", lambda threads=None, device="auto": configure(1, device))
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def task(tiny_library):
    return tiny_library.world.task(TASK)


@pytest.fixture(scope="module")
def saved_dir(tiny_library, task, tmp_path_factory) -> Path:
    """A model folder kept by finetune_to_folder (read-only for the tests that share it)."""
    lib = tiny_library.library
    folder = tmp_path_factory.mktemp("kept") / "model"
    kept = finetune_to_folder(MEMBER, lambda: lib.load(MEMBER), lib.verified_hash(MEMBER), task, SMALL, folder,
                              RunContext(progress=False, log=lambda _: None))
    assert not kept.reused and kept.resumed_from == 0
    return folder


# -- the Wilson interval -------------------------------------------------------------------------
@pytest.mark.parametrize("k,n", [(0, 10), (5, 10), (10, 10), (1, 3), (282, 300), (939, 1000), (1, 797), (4999, 5000)])
def test_wilson_matches_scipy(k, n):
    stats = pytest.importorskip("scipy.stats")
    ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(ref.low, abs=1e-12) and hi == pytest.approx(ref.high, abs=1e-12)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_wilson_known_values():
    # textbook values (z = 1.96): 0 of 10 -> [0, 0.2775], 5 of 10 -> [0.2366, 0.7634]
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.277532, abs=1e-6))
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.236593, abs=1e-6) and hi == pytest.approx(0.763407, abs=1e-6)
    assert wilson_interval(10, 10)[1] == 1.0
    lo90, hi90 = wilson_interval(5, 10, confidence=0.90)
    assert lo < lo90 < hi90 < hi  # a lower confidence gives a narrower interval
    for bad in [(11, 10), (-1, 10), (0, 0), (1.5, 3)]:
        with pytest.raises(ConfigError):
            wilson_interval(*bad)


# -- the model folder ----------------------------------------------------------------------------
def test_save_then_load_gives_identical_logits(tiny_library, task, tmp_path):
    model, _ = finetune(tiny_library.library.load(MEMBER), task.trainval, task.num_classes,
                        TrainConfig(steps=3, batch_size=16, lr=0.01), seed=0, progress=False)
    save_model(tmp_path / "m", model, task.classes, task.resolution, MEMBER, task.name, {"kind": "test"})
    saved = load_model(tmp_path / "m")
    images = task.test.images[:40]
    before = forward_batches(model, images, ("logits",))["logits"]
    after = forward_batches(saved.model, images, ("logits",))["logits"]
    assert before.abs().sum() > 0 and torch.equal(before, after)
    assert saved.classes == task.classes and saved.input_resolution == task.resolution
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config == json.loads(json.dumps(model.member_config())) and config["num_outputs"] == task.num_classes == 10 and config["head_kind"] == "task"


def test_kept_folder_holds_the_record(saved_dir, task):
    names = sorted(p.name for p in saved_dir.iterdir())
    assert names == ["config.json", "model.json", "model.safetensors", "result.json"]  # the checkpoint is gone
    record = json.loads((saved_dir / "result.json").read_text())
    assert {"kind", "created", "config", "metrics", "seconds", "images", "versions", "git"} <= set(record)
    m = record["metrics"]
    assert m["test_images"] == len(task.test) == 300 and m["test_accuracy"] == m["test_correct"] / 300
    lo, hi = m["test_accuracy_ci95"]
    assert (lo, hi) == wilson_interval(m["test_correct"], 300) and lo <= m["test_accuracy"] <= hi
    assert record["config"]["member"] == MEMBER and record["config"]["train"]["steps"] == SMALL.steps
    manifest = json.loads((saved_dir / MANIFEST).read_text())
    assert manifest["classes"] == list(task.classes) and manifest["format"] == 1 and manifest["input_resolution"] == 16


def test_tampered_or_malformed_folders_are_one_line_errors(saved_dir, tmp_path):
    import shutil

    def broken(name: str, change) -> Path:
        folder = tmp_path / name
        shutil.copytree(saved_dir, folder)
        change(folder)
        return folder

    def flip(folder: Path) -> None:
        data = bytearray((folder / WEIGHTS).read_bytes())
        data[-1] ^= 0xFF
        (folder / WEIGHTS).write_bytes(bytes(data))

    def rewrite(field, value):
        def change(folder: Path) -> None:
            m = json.loads((folder / MANIFEST).read_text())
            m[field] = value
            (folder / MANIFEST).write_text(json.dumps(m))
        return change

    cases = {
        "tampered": (flip, "sha256 mismatch"),
        "future": (rewrite("format", 2), "format 2"),
        "classes": (rewrite("classes", ["a", "b"]), "names 2 classes"),
        "garbage": (lambda f: (f / MANIFEST).write_text("{not json"), "cannot be read"),
        "half": (lambda f: ((f / MANIFEST).unlink(), (f / CHECKPOINT).write_bytes(b"x")), "unfinished fine-tune"),
        "missing": (lambda f: (f / WEIGHTS).unlink(), "missing"),
    }
    image = tmp_path / "x.png"
    Image.new("RGB", (16, 16), (10, 20, 30)).save(image)
    for name, (change, words) in cases.items():
        folder = broken(name, change)
        with pytest.raises(ModelError, match=words):
            load_model(folder)
        code, text = run("predict", "--model", str(folder), "--images", str(image))
        assert code == 2, (name, text)
        lines = text.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and words in text and "Traceback" not in text, (name, text)


# -- predict -------------------------------------------------------------------------------------
def _write_images(folder: Path) -> list[Path]:
    """PNGs of other sizes and modes than the task's 16 px RGB, one in a sub-folder, plus a hidden one."""
    rng = np.random.default_rng(0)
    (folder / "sub").mkdir(parents=True)
    arrays = {
        "rgb_big.png": (rng.integers(0, 256, (40, 24, 3), dtype=np.uint8), "RGB"),
        "gray.png": (rng.integers(0, 256, (9, 9), dtype=np.uint8), "L"),
        "sub/alpha.png": (rng.integers(0, 256, (16, 16, 4), dtype=np.uint8), "RGBA"),
        "sub/deep.png": (rng.integers(0, 65535, (20, 20), dtype=np.uint16), "I;16"),
    }
    paths = []
    for name, (a, mode) in arrays.items():
        img = Image.fromarray(a)
        assert img.mode == mode
        img.save(folder / name)
        paths.append(folder / name)
    Image.fromarray(arrays["gray.png"][0]).convert("P").save(folder / "palette.png")
    paths.append(folder / "palette.png")
    Image.new("RGB", (16, 16)).save(folder / ".hidden.png")
    return sorted(paths)


def test_predict_writes_csv_and_json(saved_dir, tmp_path, task):
    files = _write_images(tmp_path / "new")
    code, text = run("predict", "--model", str(saved_dir), "--images", str(tmp_path / "new"),
                     "--out", str(tmp_path / "p.csv"), "--top-k", "10")
    assert code == 0 and "wrote 5 prediction(s)" in text, text
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    header = ["path", "label", "probability"] + [f"{c}_{k}" for k in range(2, 11) for c in ("label", "probability")]
    assert list(rows[0]) == header and sorted(r["path"] for r in rows) == sorted(map(str, files))
    for r in rows:
        labels = [r["label"]] + [r[f"label_{k}"] for k in range(2, 11)]
        probs = [float(r["probability"])] + [float(r[f"probability_{k}"]) for k in range(2, 11)]
        assert sorted(labels) == sorted(task.classes)  # top-10 of 10 classes: each class once
        assert sum(probs) == pytest.approx(1.0, abs=1e-4) and probs == sorted(probs, reverse=True)

    # the same probabilities as the model on images read the way its task's images were
    saved = load_model(saved_dir)
    x = torch.from_numpy(np.stack([read_image(Path(r["path"]), 16) for r in rows]))
    probs = torch.softmax(forward_batches(saved.model, x, ("logits",))["logits"].double(), 1)
    top = probs.max(1)
    assert [saved.classes[i] for i in top.indices] == [r["label"] for r in rows]
    assert np.allclose(top.values.numpy(), [float(r["probability"]) for r in rows], atol=1e-6)

    code, text = run("predict", "--model", str(saved_dir), "--images", str(files[0]), "--images", str(files[1]),
                     "--out", str(tmp_path / "p.json"), "--top-k", "3")
    assert code == 0, text
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["classes"] == list(task.classes) and len(data["predictions"]) == 2
    for p in data["predictions"]:
        assert p["label"] in task.classes and len(p["top_k"]) == 3 and p["top_k"][0]["label"] == p["label"]
    code, text = run("predict", "--model", str(saved_dir), "--images", str(files[0]))  # CSV on standard output
    assert code == 0 and text.splitlines()[0] == "path,label,probability" and len(text.splitlines()) == 2


def test_predict_input_errors(saved_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.png").write_bytes(b"not an image")
    Image.new("RGB", (16, 16)).save(tmp_path / "ok.png")
    for args, words in [
        (["--images", str(tmp_path / "empty")], "no image files"),
        (["--images", str(tmp_path / "nope")], "no such file"),
        (["--images", str(tmp_path / "bad.png")], "cannot read image"),
        (["--images", str(tmp_path / "ok.png"), "--top-k", "11"], "--top-k"),
        (["--images", str(tmp_path / "ok.png"), "--out", str(tmp_path / "p.txt")], ".csv or .json"),
    ]:
        code, text = run("predict", "--model", str(saved_dir), *args)
        assert code == 2 and words in text and len(text.strip().splitlines()) == 1, (args, text)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        code, text = run("predict", "--model", str(saved_dir), "--images", str(tmp_path / "bad.png"),
                         "--images", str(tmp_path / "ok.png"), "--skip-corrupt")
    assert code == 0 and len([line for line in text.splitlines() if line.endswith(tuple("0123456789"))]) == 1, text


# -- resumption ----------------------------------------------------------------------------------
class Interrupt(KeyboardInterrupt):
    pass


def _tune(tiny_library, task, folder: Path, cfg: TrainConfig = SMALL, every: int | None = 2, log=None):
    lib = tiny_library.library
    return finetune_to_folder(MEMBER, lambda: lib.load(MEMBER), lib.verified_hash(MEMBER), task, cfg, folder,
                              RunContext(progress=False, log=log or (lambda _: None)), every_steps=every)


def _interrupt_at(monkeypatch, step: int) -> None:
    call = finetune_module.SplitBatches.__call__

    def batches(self, s: int):
        if s == step:
            raise Interrupt()
        return call(self, s)

    monkeypatch.setattr(finetune_module.SplitBatches, "__call__", batches)


def test_interrupted_finetune_resumes_to_the_same_weights(tiny_library, task, tmp_path, monkeypatch):
    whole = _tune(tiny_library, task, tmp_path / "whole")
    with monkeypatch.context() as m:
        _interrupt_at(m, 5)
        with pytest.raises(Interrupt):
            _tune(tiny_library, task, tmp_path / "cut")
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == [CHECKPOINT]  # after step 4 of 8; no model yet
    lines: list[str] = []
    resumed = _tune(tiny_library, task, tmp_path / "cut", log=lines.append)
    assert resumed.resumed_from == 4 and any("resuming from the checkpoint at step 4" in line for line in lines)
    assert resumed.metrics["resumed_from_step"] == 4 and not (tmp_path / "cut" / CHECKPOINT).exists()
    a, b = load_file(str(tmp_path / "whole" / WEIGHTS)), load_file(str(tmp_path / "cut" / WEIGHTS))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metrics["test_accuracy"] == whole.metrics["test_accuracy"]
    assert resumed.record["metrics"]["steps"] == SMALL.steps and resumed.record["images"]["finetune"] == SMALL.steps * 16
    again = _tune(tiny_library, task, tmp_path / "cut")  # a finished fine-tune is kept, not redone
    assert again.reused and again.record == resumed.record


def test_checkpoint_of_other_settings_restarts_and_says_so(tiny_library, task, tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        _interrupt_at(m, 5)
        with pytest.raises(Interrupt):
            _tune(tiny_library, task, tmp_path / "m")
    lines: list[str] = []
    other = TrainConfig(steps=8, batch_size=16, lr=0.02, warmup_steps=2)
    kept = _tune(tiny_library, task, tmp_path / "m", cfg=other, log=lines.append)
    assert kept.resumed_from == 0 and any("other settings" in line and "train.lr" in line for line in lines), lines
    lines.clear()
    replaced = _tune(tiny_library, task, tmp_path / "m", log=lines.append)  # the kept model had lr 0.02
    assert not replaced.reused and any("replacing it" in line for line in lines), lines
    assert json.loads((tmp_path / "m" / "result.json").read_text())["config"]["train"]["lr"] == 0.01


# -- the command line ----------------------------------------------------------------------------
@pytest.mark.slow
def test_finetune_command_keeps_the_model_and_says_how_sure(tiny_library, tmp_path, monkeypatch):
    lib = str(tiny_library.library.path)
    args = ["finetune", "--library", lib, "--task", TASK, "--member", MEMBER, "--preset", "tiny",
            "--set", "finetune.steps=4", "--set", "finetune.warmup_steps=1", "-q", "--out", str(tmp_path / "m")]
    with monkeypatch.context() as m:
        _interrupt_at(m, 3)
        code, text = run(*args)
    assert code == 130 and "checkpoint" in text and "again to resume" in text, text
    code, text = run(*args)
    assert code == 0 and "300 test images" in text and "95% CI" in text and "model kept in" in text, text
    assert "resuming from the checkpoint at step" in text
    code, again = run(*args)
    assert code == 0 and "kept from an earlier run" in again
    code, text = run("predict", "--model", str(tmp_path / "m"), "--images", str(tmp_path / "nothing"))
    assert code == 2
    # a command that does not resume does not promise it
    monkeypatch.setattr("expertise.transfer.saved.load_model", lambda _: (_ for _ in ()).throw(KeyboardInterrupt()))
    code, text = run("predict", "--model", str(tmp_path / "m"), "--images", str(tmp_path))
    assert code == 130 and "does not resume" in text and "again to resume" not in text, text


@pytest.mark.slow
def test_transfer_keeps_the_best_picks_final_retrain(tiny_library, tmp_path, task):
    lib = str(tiny_library.library.path)
    args = ["transfer", "--library", lib, "--task", TASK, "--strategy", "random", "--budget", "1", "--lr-factors", "1",
            "--preset", "tiny", "--set", "finetune.steps=3", "--set", "finetune.warmup_steps=1", "-q", "--out", str(tmp_path)]
    code, text = run(*args)
    assert code == 0 and "model kept in" in text and "300 test images" in text, text
    folder = next((tmp_path / "models").iterdir())
    saved = load_model(folder)
    record = saved.result()
    assert record["kind"] == "transfer_model" and record["config"]["phase"] == "retrain"
    assert saved.classes == task.classes and f"{TASK}." in folder.name
    median = float(text.split("median test accuracy ")[1].split()[0])
    assert math.isclose(record["metrics"]["test_accuracy"], median, abs_tol=5e-4)  # one retrain: its own accuracy
    code, text = run(*args)  # resumed: the unit is reused and the kept model stays
    assert code == 0 and "1 unit(s) reused" in text and load_model(folder).weights_sha256 == saved.weights_sha256
    import shutil

    shutil.rmtree(tmp_path / "models")
    code, text = run(*args)  # the record is there but the model is not: the retrain runs again to keep it
    assert code == 0 and "0 unit(s) reused" in text and load_model(folder).weights_sha256 == saved.weights_sha256, text


def test_protocol_keeps_the_first_retrain_and_recomputes_it_only_when_missing(tmp_path):
    from torch import nn

    from expertise.data.tasks import Split, Task
    from expertise.store import RecordStore
    from expertise.transfer.protocol import SweepConfig, transfer_protocol

    def split(n: int) -> Split:
        return Split(torch.zeros(n, 3, 4, 4, dtype=torch.uint8), torch.arange(n) % 2)

    toy = Task("toy", "natural", ("a", "b"), split(8), split(4), split(6))
    calls: list[int] = []

    def fake_finetune(member, train, num_classes, cfg, seed, device, progress, desc):
        calls.append(len(train))
        return nn.Linear(1, 1), {"images": 1}

    class Keeper:
        def __init__(self) -> None:
            self.saved: dict[str, tuple] = {}

        def wants(self, key: str) -> bool:
            return key not in self.saved

        def save(self, key, model, config, accuracy) -> None:
            self.saved[key] = (config["phase"], config["sweep"], config["retrain"], accuracy)

    def protocol(keeper):
        return transfer_protocol("m", lambda: nn.Linear(1, 1), "h", toy, SMALL, sweep,
                                 RunContext(progress=False, store=RecordStore(tmp_path)), finetune_fn=fake_finetune,
                                 evaluate_fn=lambda m, s, d: 0.5, keeper=keeper)

    sweep = SweepConfig(lr_factors=(1.0, 0.3), sweeps=2, retrains=2)
    keeper = Keeper()
    protocol(keeper)
    assert list(keeper.saved.values()) == [("retrain", 0, 0, 0.5)] and len(calls) == sweep.num_finetunes
    calls.clear()
    assert protocol(keeper).units_reused == sweep.num_finetunes and calls == []  # kept already: nothing runs
    fresh = Keeper()
    protocol(fresh)  # the records exist but this keeper lacks the model: only that retrain runs again
    assert calls == [12] and fresh.saved == keeper.saved


def test_fit_checkpoint_unreadable_or_foreign_restarts_from_zero(tmp_path):
    from torch import nn

    from expertise.checkpoint import Checkpoint
    from expertise.train import fit, softmax_loss

    cfg = TrainConfig(steps=6, batch_size=4, lr=0.1, warmup_steps=1)
    x, y = torch.randn(4, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 0, 1])

    def train(path: Path, identity: dict, lines: list[str]) -> tuple[nn.Module, int]:
        torch.manual_seed(0)
        model = nn.Linear(3, 2)
        ckpt = Checkpoint(path, identity, every_steps=2, log=lines.append)
        stats = fit(model, lambda step: (x, y), cfg, softmax_loss, show_progress=False, checkpoint=ckpt)
        return model, stats.steps

    lines: list[str] = []
    path = tmp_path / "c.safetensors"
    path.write_bytes(b"garbage")
    model, steps = train(path, {"run": 1}, lines)
    assert steps == 6 and any("cannot be read" in line and "step 0" in line for line in lines), lines
    assert path.exists()  # rewritten after step 4 (never after the last step)
    lines.clear()
    again, _ = train(path, {"run": 2}, lines)  # another identity: not resumed
    assert any("other settings (differs in: run)" in line for line in lines) and all("resuming" not in line for line in lines)
    assert torch.equal(again.weight, model.weight)
    lines.clear()
    resumed, steps = train(path, {"run": 2}, lines)  # the checkpoint at step 4 of run 2: two more steps
    assert steps == 6 and any("resuming from the checkpoint at step 4" in line for line in lines)
    assert torch.equal(resumed.weight, model.weight) and torch.equal(resumed.bias, model.bias)
