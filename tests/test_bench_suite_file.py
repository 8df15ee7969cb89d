"""`expertise bench --suite FILE`: a benchmark suite of built-in tasks and ImageFolder tasks on disk
with their group, from TOML or JSON, checked whole before any work, each problem one line naming
the entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from disk_datasets import image_bytes, make_dataset
from expertise.bench import suite_file
from expertise.cli import app
from expertise.errors import ConfigError

runner = CliRunner()


def task_folder(root: Path, classes: int = 2, per_class: int = 6, seed: int = 0) -> Path:
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            (root / f"class{c}" / f"{i}.png").write_bytes(image_bytes(seed + 10 * c + i, "PNG"))
    return root


def test_a_suite_file_in_toml_and_json(tmp_path: Path) -> None:
    task_folder(tmp_path / "tasks" / "flowers")
    (tmp_path / "suite.toml").write_text(
        'description = "ours"\n\n[[task]]\nname = "count"\n\n[[task]]\npath = "tasks/flowers"\ngroup = "specialized"\n\n'
        '[[task]]\npath = "tasks/flowers"\ngroup = "natural"\nname = "flowers_again"\n')
    entries = suite_file.read(tmp_path / "suite.toml")
    assert [(e.name, e.group) for e in entries] == [("count", None), ("flowers", "specialized"), ("flowers_again", "natural")]
    assert entries[1].path == tmp_path / "tasks" / "flowers" and entries[1].where.endswith("task 2 (line 6)")
    (tmp_path / "suite.json").write_text(json.dumps({"task": [{"name": "sklearn_digits"},
                                                              {"path": str(tmp_path / "tasks" / "flowers"), "group": "structured"}]}))
    entries = suite_file.read(tmp_path / "suite.json")
    assert [(e.name, e.group) for e in entries] == [("sklearn_digits", None), ("flowers", "structured")]
    suite_file.check_builtins(entries, ["sklearn_digits"])
    tasks = suite_file.load(entries, None, 16)
    assert [t.name for t in tasks] == ["sklearn_digits", "flowers"] and tasks[1].group == "structured"
    # built-in tasks at the library's resolution; a folder at its images' own size (12 px here), capped
    # by max_side, as every member then resizes it itself (issue 15)
    assert (tasks[0].resolution, tasks[1].resolution, tasks[1].max_side) == (16, 12, 512)
    assert suite_file.load(entries, None, 16, max_side=8)[1].resolution == 8
    assert suite_file.is_suite_file("suite.TOML") and not suite_file.is_suite_file("count,sklearn_digits")


@pytest.mark.parametrize("body, message", [
    ('[[task]]\nname = "count"\n\n[[task]]\npath = "tasks/flowers"\n', r"task 2 \(line 4\): group must be one of natural, specialized, structured, got None"),
    ('[[task]]\npath = "tasks/flowers"\ngroup = "vtab"\n', "group must be one of"),
    ('[[task]]\npath = "nowhere"\ngroup = "natural"\n', r"task 1 \(line 1\): no task folder at .*nowhere"),
    ('[[task]]\nname = "count"\ngroup = "natural"\n', "built-in task 'count' has its own group; drop 'group'"),
    ('[[task]]\nname = "count"\nsplit = 3\n', r"task 1 \(line 1\): unknown key\(s\) 'split'; expected name, path, group"),
    ('[[task]]\ngroup = "natural"\n', "give a built-in task's name, or the path"),
    ('[[task]]\nname = "count"\n\n[[task]]\nname = "count"\n', r"task 2 \(line 4\): task 'count' is already task 1 \(line 1\)"),
    ('[[task]]\npath = "tasks/flowers"\ngroup = "natural"\nname = "../x"\n', "name must be a plain name"),
    ('title = "x"\n', "unknown top-level key"),
    ('description = "nothing"\n', "lists no tasks"),
    ('[[task]\nname = "count"\n', "is not valid TOML"),
])
def test_every_bad_entry_is_one_line_naming_it(tmp_path: Path, body: str, message: str) -> None:
    task_folder(tmp_path / "tasks" / "flowers")
    (tmp_path / "suite.toml").write_text(body)
    with pytest.raises(ConfigError, match=message):
        suite_file.read(tmp_path / "suite.toml")


def test_unknown_builtin_and_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text('[[task]]\nname = "cifar100"\n')
    entries = suite_file.read(tmp_path / "s.toml")
    with pytest.raises(ConfigError, match=r"s.toml: task 1 \(line 1\): unknown built-in task 'cifar100'; use one of count, sklearn_digits"):
        suite_file.check_builtins(entries, ["count", "sklearn_digits"])
    with pytest.raises(ConfigError, match="no suite file at"):
        suite_file.read(tmp_path / "none.toml")
    (tmp_path / "s.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected an object with a 'task' list"):
        suite_file.read(tmp_path / "s.json")
    (tmp_path / "t.json").write_text('{"task": [3]}')
    with pytest.raises(ConfigError, match="task 1: expected a table"):
        suite_file.read(tmp_path / "t.json")


def test_bench_on_a_suite_file(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data")
    lib = tmp_path / "lib"
    fast = [a for k in ("baseline", "epn", "finetune") for a in ("--set", f"{k}.steps=2", "--set", f"{k}.warmup_steps=1",
                                                                  "--set", f"{k}.batch_size=4")]
    result = runner.invoke(app, ["upstream", "--library", str(lib), "--data", str(data["folders"]), "--holdout", "3",
                                 "--preset", "tiny", "--set", "num_experts=1", "-q", *fast])
    assert result.exit_code == 0, result.output
    task_folder(tmp_path / "suite" / "leaves", seed=1)
    task_folder(tmp_path / "suite" / "bark", seed=2)
    suite = tmp_path / "suite" / "suite.toml"
    suite.write_text('[[task]]\npath = "leaves"\ngroup = "specialized"\n\n[[task]]\npath = "bark"\ngroup = "structured"\n')
    # checked whole before the library is read: a bad entry fails first, in one line
    (tmp_path / "bad.toml").write_text('[[task]]\npath = "leaves"\n')
    bad = runner.invoke(app, ["bench", "--library", str(tmp_path / "no_library"), "--suite", str(tmp_path / "bad.toml")])
    assert bad.exit_code == 2 and "bad.toml: task 1 (line 1)" in bad.output and "Traceback" not in bad.output, bad.output
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('[[task]]\nname = "count"\n')  # a world task, and this library was built from disk
    bad = runner.invoke(app, ["bench", "--library", str(lib), "--suite", str(unknown), "--preset", "tiny"])
    assert bad.exit_code == 2 and "unknown built-in task 'count'; use one of sklearn_digits" in bad.output, bad.output
    out = tmp_path / "bench"
    result = runner.invoke(app, ["bench", "--library", str(lib), "--suite", str(suite), "--out", str(out),
                                 "--strategy", "knn_loo", "--strategy", "random", "--preset", "tiny", "-q", *fast])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    protocol = {r["config"]["task"] for r in records if r["kind"] == "protocol"}
    assert protocol == {"leaves", "bark"}
    summary = (out / "summary.md").read_text()
    assert "specialized" in summary and "structured" in summary
