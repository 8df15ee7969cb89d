"""Every command of the README and docs/guide.md works: they are run, in order (the README first),
at the ``tiny`` preset.

The convention (also stated in README.md): every ``expertise ...`` line of a fenced block tagged
```` ```bash ```` is run, and every ```` ```python ```` block is executed, in the order they appear.
Blocks tagged otherwise (```` ```sh ````, untagged) are shown to the reader and not run: they are
for what this test cannot do offline (a download) or must not do (``make demo``).

Only the scale is rewritten, never what a command means:

* a command with a ``--preset`` option runs at ``--preset tiny`` with shorter training (``--set``);
* ``-k N`` becomes at most the ``tiny`` preset's K, ``--sweeps`` at most 1, ``--retrains`` at most
  2, and a member named after another preset's backbone (``bit_s.expert_glyph``) is the same member
  of the tiny backbone (``bit_xs.expert_glyph``);
* ``--suite builtin`` runs one built-in task (``count``); an external model is added at 32 pixels;
* everything runs in a temporary folder (the working directory), where the files the README names
  are written first when missing: an ImageFolder task for ``--task some/path``, a timm state dict
  for ``--checkpoint FILE``, a Hugging Face timm folder for ``--hf ./FOLDER/``; the Python snippet's
  ``runs/demo/library`` is the library the README's commands built.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from expertise.cli import app
from expertise.config import PRESETS

README = Path(__file__).resolve().parents[1] / "README.md"
GUIDE = README.parent / "docs" / "guide.md"  # run after the README, in the same folder


def documents() -> str:
    """The README, then docs/guide.md: the commands the project promises to run as written."""
    return README.read_text() + "\n" + GUIDE.read_text()
TINY = PRESETS["tiny"]
# Shorter training than tiny's: the test checks that each command runs, not what it learns.
FAST = tuple(f"{stage}.{k}={v}" for stage, steps in (("baseline", 8), ("expert", 3), ("epn", 4), ("adapter", 3), ("finetune", 3))
             for k, v in (("steps", steps), ("warmup_steps", 1), ("batch_size", 16)))
SUITE = "count"
EXTERNAL_SIZE = "32"
FENCE = re.compile(r"^```\s*([\w+-]*)\s*$")


# -- reading the README -------------------------------------------------------------------------
def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language tag, body) of every fenced block, in order."""
    blocks, lang, body = [], None, []
    for line in text.splitlines():
        m = FENCE.match(line.strip())
        if m and lang is None:
            lang, body = m.group(1), []
        elif line.strip() == "```" and lang is not None:
            blocks.append((lang, "\n".join(body)))
            lang = None
        elif lang is not None:
            body.append(line)
    assert lang is None, "README.md has an unclosed code fence"
    return blocks


def shell_commands(body: str) -> list[list[str]]:
    """The ``expertise`` command lines of a shell block (continuations joined, comments dropped),
    each as its arguments after ``expertise``."""
    out = []
    for line in body.replace("\\\n", " ").splitlines():
        argv = shlex.split(line, comments=True)
        if argv and argv[0] == "expertise":
            out.append(argv[1:])
    return out


def readme_steps(text: str) -> list[tuple[str, list[str] | str]]:
    """("cli", argv) and ("python", source) in README order."""
    steps: list[tuple[str, list[str] | str]] = []
    for lang, body in fenced_blocks(text):
        if lang == "bash":
            steps += [("cli", argv) for argv in shell_commands(body)]
        elif lang == "python":
            steps.append(("python", body))
    return steps


# -- rewriting to the tiny scale ----------------------------------------------------------------
def resolve(argv: list[str]) -> tuple[Any, list[str]]:
    """The click command an ``expertise`` argument list runs, and the arguments left for it (duck
    typed: recent typer versions bring their own copy of click)."""
    cmd = typer.main.get_command(app)
    args = list(argv)
    while args and args[0] in getattr(cmd, "commands", {}):
        cmd = cmd.commands[args.pop(0)]  # type: ignore[attr-defined]
    return cmd, args


def option_names(cmd: Any) -> set[str]:
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}


def _drop(argv: list[str], names: tuple[str, ...]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in names:
            skip = True
        elif not any(a.startswith(n + "=") for n in names if n.startswith("--")):
            out.append(a)
    return out


def _value(argv: list[str], names: tuple[str, ...]) -> str | None:
    for i, a in enumerate(argv[:-1]):
        if a in names:
            return argv[i + 1]
    return None


def at_tiny_scale(argv: list[str]) -> list[str]:
    opts = option_names(resolve(argv)[0])
    argv = list(argv)
    other_backbones = {p.backbone for p in PRESETS.values()} - {TINY.backbone}
    for i, a in enumerate(argv[:-1]):
        if a in ("-k", "--num-experts"):
            argv[i + 1] = str(min(int(argv[i + 1]), TINY.num_experts))
        elif a in ("-m", "--member"):
            arch, dot, rest = argv[i + 1].partition(".")
            if dot and arch in other_backbones:
                argv[i + 1] = f"{TINY.backbone}.{rest}"
        elif a in ("--sweeps", "--retrains"):
            argv[i + 1] = str(min(int(argv[i + 1]), 1 if a == "--sweeps" else 2))
        elif a == "--suite" and argv[i + 1] == "builtin":
            argv[i + 1] = SUITE
    if "--preset" in opts:
        argv = _drop(argv, ("--preset",)) + ["--preset", "tiny"] + [x for s in FAST for x in ("--set", s)]
    if "--timm" in opts and "--size" in opts and _value(argv, ("--size",)) is None and "--from" not in argv:  # pool add of one model
        argv += ["--size", EXTERNAL_SIZE]
    return argv


# -- the files the README names -----------------------------------------------------------------
def write_image_folder(root: Path, classes: int = 3, per_class: int = 12) -> None:
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 80, (20, 20, 3)) + 80 * c  # classes differ in brightness
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")


def _timm_net(arch: str):
    import timm
    import torch

    torch.manual_seed(0)
    return timm.create_model(arch, pretrained=False, num_classes=10)


def write_files_named_by(argv: list[str]) -> None:
    images = [_value(argv, ("--images",))] if argv[0] == "predict" else []  # new images to classify
    for path in [_value(argv, ("--task", "-t"))] + (_value(argv, ("--suite",)) or "").split(",") + images:
        if path and "/" in path and not Path(path).exists():
            write_image_folder(Path(path))
    checkpoint, arch = _value(argv, ("--checkpoint",)), _value(argv, ("--timm",))
    if checkpoint and arch and not Path(checkpoint).exists():
        import safetensors.torch

        safetensors.torch.save_file(_timm_net(arch).state_dict(), checkpoint)
    hf = _value(argv, ("--hf",))
    if hf and hf.startswith((".", "/")) and not Path(hf).exists():
        from timm.models._hub import save_for_hf

        save_for_hf(_timm_net(Path(hf).name.split(".")[0]), hf, safe_serialization=True)


# -- the tests ----------------------------------------------------------------------------------
def test_the_readme_has_commands_to_run():
    steps = readme_steps(documents())
    commands = [argv for kind, argv in steps if kind == "cli"]
    assert len(commands) >= 10 and any(kind == "python" for kind, _ in steps)
    stages = {argv[0] for argv in commands}
    assert {"upstream", "experts", "select", "finetune", "transfer", "bench", "dat", "library", "pool"} <= stages


def test_every_readme_command_parses():
    """Fast: each README command names a command and options that exist, with valid values."""
    for kind, argv in readme_steps(documents()):
        if kind != "cli":
            continue
        cmd, args = resolve(argv)  # type: ignore[arg-type]
        try:
            cmd.make_context("expertise", args)
        except typer.Exit as e:  # an eager option that finishes the command (--version, --help)
            assert e.exit_code == 0, f"README command 'expertise {shlex.join(argv)}' exits with {e.exit_code}"
        except Exception as e:  # click's usage errors (typer's copy of click or click itself)
            if not hasattr(e, "format_message"):
                raise
            pytest.fail(f"README command 'expertise {shlex.join(argv)}' does not parse: {e.format_message()}")


def test_rewrite_keeps_the_meaning_and_changes_the_scale():
    argv = at_tiny_scale(["experts", "--library", "lib/", "--preset", "cpu", "-k", "8", "--kind", "adapter"])
    assert argv[:6] == ["experts", "--library", "lib/", "-k", str(TINY.num_experts), "--kind"]
    assert argv[argv.index("--preset") + 1] == "tiny" and argv.count("--preset") == 1
    assert at_tiny_scale(["select", "--library", "lib/", "--task", "count"]) == ["select", "--library", "lib/", "--task", "count"]
    finetune = at_tiny_scale(["finetune", "--library", "lib/", "--task", "x", "--member", "bit_s.expert_glyph"])
    assert finetune[finetune.index("--member") + 1] == f"{TINY.backbone}.expert_glyph"
    assert at_tiny_scale(["library", "ls", "lib/"]) == ["library", "ls", "lib/"]
    assert "--size" in at_tiny_scale(["pool", "add", "--library", "lib/", "--timm", "resnet18", "--checkpoint", "r.safetensors"])
    assert shell_commands("source x\nexpertise a --b c   # note\nexpertise d \\\n  --e f\n") == [["a", "--b", "c"], ["d", "--e", "f"]]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # about 2 minutes on two idle cores; far longer on a shared machine
def test_every_readme_command_runs(tmp_path, monkeypatch):
    """The README, in order, at the tiny scale: each command exits 0, each snippet runs."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EXPERTISE_CACHE", str(tmp_path / "cache"))  # select --pool's libraries stay in tmp_path
    runner = CliRunner()
    libraries: list[str] = []
    for kind, step in readme_steps(documents()):
        if kind == "cli":
            argv = at_tiny_scale(step)  # type: ignore[arg-type]
            write_files_named_by(argv)
            library = _value(argv, ("--library", "-l"))
            if library:
                libraries.append(library)
            t0 = time.perf_counter()
            result = runner.invoke(app, argv)
            print(f"{time.perf_counter() - t0:6.1f}s  expertise {shlex.join(argv)}", file=sys.stderr)
            trace = "" if isinstance(result.exception, SystemExit) or result.exc_info is None else \
                "".join(traceback.format_exception(*result.exc_info))
            assert result.exit_code == 0, (f"README command 'expertise {shlex.join(step)}' failed at the tiny scale "
                                           f"(ran: expertise {shlex.join(argv)}):\n{result.output}{trace}")
        else:
            demo = tmp_path / "runs" / "demo" / "library"
            built = [lib for lib in libraries if (tmp_path / lib / "upstream.json").is_file()]  # on the world, as the demo's
            if not demo.exists() and built:
                demo.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(tmp_path / built[0], demo)
            exec(compile(step, "README.md (python)", "exec"), {"__name__": "readme"})  # noqa: S102


@pytest.mark.slow
def test_upstream_alone_and_adapter_experts_alone(tmp_path):
    """`expertise upstream` builds B and the EPN; `experts --kind adapter` on a fresh library builds
    what it needs (B, the EPN, the bank) and no full expert. Both used to die choosing 0 domains."""
    from expertise.library import Library

    fast = ["--preset", "tiny", *[x for s in FAST for x in ("--set", s)], "-q"]
    result = CliRunner().invoke(app, ["upstream", "--library", str(tmp_path / "up"), *fast])
    assert result.exit_code == 0, result.output
    assert [m.kind for m in Library.open(tmp_path / "up").members()] == ["baseline", "epn"]
    result = CliRunner().invoke(app, ["experts", "--library", str(tmp_path / "ad"), "--kind", "adapter", "-k", "2", *fast])
    assert result.exit_code == 0, result.output
    lib = Library.open(tmp_path / "ad")
    assert [m.kind for m in lib.members()] == ["baseline", "epn", "adapter_expert", "adapter_expert"]
    assert lib.info(lib.names()[1]).extra["nodes"] == [lib.info(n).domain for n in lib.names()[2:]]
    assert lib.verify() == []
