"""The command line on a real machine: thread count, device checks, progress where stderr is not a
terminal (and in a run's log file), warnings as one line, --version and help without clutter."""

import importlib.metadata
import io
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import typer
from rich.console import Console
from typer.testing import CliRunner

from expertise import progress
from expertise.cli import app
from expertise.cli.common import TINY_WARNING, run_log, show_warning, user_errors
from expertise.runtime import configure, default_threads

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def one_error_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    assert "Traceback" not in text
    return lines[0]


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# --- threads ---------------------------------------------------------------------------------------

def test_default_threads_follow_omp_num_threads_then_affinity_then_cpu_count(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "5,2")  # nested OpenMP levels: the first is the outer one
    assert default_threads() == 5
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 7}, raising=False)
    for unusable in ("", "0", "many"):  # unset or unusable: the cores this process may use
        monkeypatch.setenv("OMP_NUM_THREADS", unusable)
        assert default_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert default_threads() == 3
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # macOS, Windows
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert default_threads() == 6


def test_configure_applies_the_thread_count(monkeypatch, keep_threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    configure()
    assert torch.get_num_threads() == 1
    configure(2)
    assert torch.get_num_threads() == 2


def test_threads_option_is_applied(tmp_path, tiny_library, keep_threads):
    torch.set_num_threads(2)
    code, text = run("select", "--library", str(tiny_library.library.path), "--task", "count", "--strategy", "random",
                     "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "-q", "--threads", "1")
    assert code == 0, text
    assert torch.get_num_threads() == 1


def test_threads_are_set_before_the_command_fails(tmp_path, keep_threads):
    torch.set_num_threads(2)
    code, text = run("finetune", "--library", str(tmp_path / "nope"), "--task", "count", "--member", "m", "--threads", "1")
    assert code == 2 and "nope" in one_error_line(text)
    assert torch.get_num_threads() == 1


def test_zero_threads_is_one_line(tmp_path, keep_threads):
    code, text = run("upstream", "--library", str(tmp_path / "lib"), "--threads", "0")
    assert code == 2 and "--threads 0" in one_error_line(text)
    assert not (tmp_path / "lib").exists()


# --- device ----------------------------------------------------------------------------------------

def test_cuda_without_a_gpu_is_one_line_before_any_work(tmp_path, monkeypatch, keep_threads):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for args in (["upstream", "--library", str(tmp_path / "lib"), "--device", "cuda"],
                 ["select", "--library", str(tmp_path / "lib"), "--task", "count", "--device", "cuda:0"]):
        code, text = run(*args)
        assert code == 2 and "no usable CUDA GPU" in one_error_line(text), text
    assert not (tmp_path / "lib").exists()
    assert configure(device="auto") == torch.device("cpu")


def test_unknown_device_is_one_line(tmp_path, keep_threads):
    for device in ("nonsense", "cuda:x", "gpu"):
        code, text = run("upstream", "--library", str(tmp_path / "lib"), "--device", device)
        assert code == 2 and "unknown device" in one_error_line(text), text


# --- progress --------------------------------------------------------------------------------------

@pytest.fixture
def plain_console(monkeypatch):
    """Progress on, to a console that is not a terminal (stderr redirected to a file)."""
    monkeypatch.setenv("EXPERTISE_PROGRESS", "1")
    buf = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=buf, width=200))
    return buf


def test_progress_prints_plain_lines_when_stderr_is_not_a_terminal(plain_console, monkeypatch):
    monkeypatch.setattr(progress, "PLAIN_INTERVAL_S", 0.0)
    with progress.progress_bar("train B", total=3) as advance:
        for step in range(3):
            advance(1, loss=1.0 / (step + 1))
    lines = plain_console.getvalue().splitlines()
    assert lines[0].startswith("train B: 1/3 (33%), ") and "eta " in lines[0] and lines[0].endswith("loss 1.000")
    assert lines[1].startswith("train B: 2/3 (66%), ") and lines[1].endswith("loss 0.500")
    assert lines[2].startswith("train B: 3/3 done in ") and lines[2].endswith("loss 0.333")
    assert len(lines) == 3 and "\x1b[" not in plain_console.getvalue()  # plain text, no bar, no colour codes


def test_plain_progress_prints_at_a_modest_rate():
    now = [0.0]
    lines: list[str] = []
    bar = progress.PlainProgress("fine-tune", 100, lines.append, interval=15.0, clock=lambda: now[0])
    for step in range(100):
        now[0] = step * 0.5  # 2 steps/s: the last at 49.5 s
        bar.advance(1, loss=0.25)
    bar.finish()
    assert len(lines) == 4  # at 15, 30 and 45 s, then the last
    assert lines[0] == "fine-tune: 31/100 (31%), 2.07/s, 15s elapsed, eta 33s, loss 0.250"
    assert lines[-1] == "fine-tune: 100/100 done in 50s (2.02/s), loss 0.250"


def test_quiet_and_the_environment_switch_silence_progress(plain_console, monkeypatch):
    monkeypatch.setattr(progress, "PLAIN_INTERVAL_S", 0.0)
    with progress.progress_bar("a", total=2, enabled=False) as advance:
        advance(2)
    monkeypatch.setenv("EXPERTISE_PROGRESS", "0")
    with progress.progress_bar("b", total=2) as advance:
        advance(2)
    assert plain_console.getvalue() == ""


def test_run_log_gets_messages_and_progress_for_the_command_only(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EXPERTISE_PROGRESS", "1")
    monkeypatch.setattr(progress, "console", Console(file=io.StringIO(), force_terminal=True))  # a terminal: a bar
    monkeypatch.setattr(progress, "PLAIN_INTERVAL_S", 3600.0)

    @user_errors
    def command() -> None:
        log = run_log(tmp_path / "out")
        log("[bold]expertise demo[/]: starting")
        with progress.progress_bar("embed count", total=2) as advance:
            advance(2)

    command()
    lines = (tmp_path / "out" / "log.txt").read_text().splitlines()
    assert [line[20:] for line in lines] == ["expertise demo: starting", lines[1][20:]]
    assert lines[1][20:].startswith("embed count: 2/2 done in ")
    assert lines[0][:4].isdigit() and lines[0][19] == " "  # "YYYY-MM-DD HH:MM:SS message"
    assert "expertise demo: starting" in capsys.readouterr().out
    assert progress._sinks == []  # the log file closes with the command
    with progress.progress_bar("later", total=1) as advance:
        advance(1)
    assert len((tmp_path / "out" / "log.txt").read_text().splitlines()) == 2


# --- warnings --------------------------------------------------------------------------------------

def test_warnings_print_as_one_line(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show_warning
        warnings.warn("images 3 and 7 are unreadable;\n  skipped", UserWarning)
    err = capsys.readouterr().err
    assert err == "warning: images 3 and 7 are unreadable; skipped\n"


def test_tiny_preset_warns(tmp_path, keep_threads):
    with pytest.warns(UserWarning, match="preset tiny: its models are near chance"):
        code, _ = run("finetune", "--library", str(tmp_path / "nope"), "--task", "count", "--member", "m", "--preset", "tiny")
    assert code == 2


@pytest.mark.slow  # a fresh interpreter importing torch: seconds
def test_the_entry_point_prints_warnings_as_one_line(tmp_path):
    """Through ``python -m expertise.cli`` (main installs the format): the tiny preset's warning, then
    the error, one line each, no source file, line number or warning class."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EXPERTISE_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, "-m", "expertise.cli", "finetune", "--library", str(tmp_path / "nope"),
                           "--task", "count", "--member", "m", "--preset", "tiny", "--threads", "1"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == f"warning: {TINY_WARNING}"
    assert len(lines) == 2 and lines[1].startswith("error: ")
    assert "UserWarning" not in proc.stderr and ".py:" not in proc.stderr


# --- version and help ------------------------------------------------------------------------------

def test_version():
    code, text = run("--version")
    assert code == 0
    assert text.startswith(f"expertise {importlib.metadata.version('expertise')} (torch {torch.__version__}")


def _commands(group, path=()):
    for name, cmd in group.commands.items():
        yield (*path, name), cmd
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*path, name))


COMMANDS = list(_commands(typer.main.get_command(app)))


def test_every_option_is_described_and_every_docstring_is_one_paragraph():
    assert len(COMMANDS) >= 12
    for path, cmd in COMMANDS:
        assert cmd.help and "\n" not in cmd.help, path  # single newlines would show as ragged lines
        for param in cmd.params:
            if param.param_type_name == "option":
                assert param.help, f"{' '.join(path)} {param.opts[0]} has no description"


@pytest.mark.parametrize("path", [(), *[p for p, _ in COMMANDS]], ids=lambda p: " ".join(p) or "expertise")
def test_help_shows_no_bool_type(path):
    code, text = run(*path, "--help")
    assert code == 0, text
    assert "<bool>" not in text and "--help" in text


def test_computing_commands_take_threads_and_their_own_set_example():
    commands = {" ".join(path): cmd for path, cmd in COMMANDS}
    for name, example in (("demo", "baseline.steps"), ("upstream", "baseline.steps"), ("experts", "expert.steps"),
                          ("finetune", "finetune.steps"), ("transfer", "finetune.steps"), ("bench", "finetune.steps"),
                          ("dat", "baseline.steps"), ("select", None)):
        options = {p.opts[0]: p for p in commands[name].params if p.param_type_name == "option"}
        assert "--threads" in options, name
        if example:
            assert f"--set {example}=" in options["--set"].help, name


@pytest.mark.slow  # trains B and the EPN a few steps
def test_upstream_alone_builds_b_and_the_epn(tmp_path, keep_threads):
    """`expertise upstream` trains no expert: choosing zero expert domains must not fail it."""
    lib = tmp_path / "lib"
    code, text = run("upstream", "--library", str(lib), "--preset", "tiny", "-q", "--threads", "1",
                     "--set", "baseline.steps=4", "--set", "baseline.warmup_steps=1",
                     "--set", "epn.steps=4", "--set", "epn.warmup_steps=1")
    assert code == 0, text
    code, text = run("library", "ls", str(lib))
    assert code == 0 and "baseline" in text and "epn" in text and "full_expert" not in text, text
