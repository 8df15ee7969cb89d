"""The command line: user errors are one line with exit status 2, never a traceback."""

import pytest
from typer.testing import CliRunner

from expertise.cli import app

runner = CliRunner()


def run(*args):
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_help_lists_every_command():
    code, text = run("--help")
    assert code == 0
    for cmd in ("demo", "upstream", "experts", "select", "finetune", "library"):
        assert cmd in text


def test_missing_library_is_one_line(tmp_path):
    code, text = run("library", "ls", str(tmp_path / "nope"))
    assert code == 2
    assert "error:" in text and "Traceback" not in text


def test_unknown_preset_and_bad_override(tmp_path):
    code, text = run("upstream", "--library", str(tmp_path / "lib"), "--preset", "huge")
    assert code == 2 and "unknown preset" in text
    code, text = run("upstream", "--library", str(tmp_path / "lib"), "--preset", "tiny", "--set", "baseline.stepz=3")
    assert code == 2 and "unknown setting" in text


@pytest.mark.slow
def test_stages_from_the_command_line(tmp_path):
    lib = tmp_path / "lib"
    small = ["--preset", "tiny", "--set", "baseline.steps=20", "--set", "expert.steps=5", "-q"]
    code, text = run("experts", "--library", str(lib), "-k", "2", *small)
    assert code == 0, text
    code, text = run("library", "ls", str(lib))
    assert code == 0 and "baseline" in text and "full_expert" in text
    code, text = run("library", "verify", str(lib))
    assert code == 0, text
    code, text = run("select", "--library", str(lib), "--task", "count", "-q")
    assert code == 0 and "picked:" in text, text
    code, text = run("finetune", "--library", str(lib), "--task", "sklearn_digits", "--member", "bit_xs.baseline",
                     *small, "--set", "finetune.steps=5", "--out", str(tmp_path / "tuned"))
    assert code == 0 and "test accuracy" in text and "797 test images" in text, text
    assert (tmp_path / "tuned" / "model.json").is_file()
    code, text = run("finetune", "--library", str(lib), "--task", "count", "--member", "bit_xs.expert_nope", "-q")
    assert code == 2 and "bit_xs.expert_nope" in text
    # a tampered weight file is caught by verify and by load
    weights = next((lib / "members").rglob("model.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    code, text = run("library", "verify", str(lib))
    assert code == 1 and "model.safetensors" in text
