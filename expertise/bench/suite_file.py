"""Benchmark suites kept in a file: ``expertise bench --suite FILE`` (``.toml`` or ``.json``).

One ``[[task]]`` table per task (JSON: ``{"task": [{...}, ...]}``)::

    description = "our VTAB-style suite"    # optional

    [[task]]
    name = "count"                          # a built-in task: its own group

    [[task]]
    path = "tasks/flowers"                  # an ImageFolder task on disk (relative to this file)
    group = "natural"                       # natural, specialized or structured
    name = "flowers"                        # optional; default: the folder's name

The whole file is checked before any task is loaded (:func:`read`: keys, groups, folders that
exist, no task named twice; :func:`check_builtins`: built-in names against the library's world),
each problem one line naming the entry by position and, in TOML, line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expertise import schema
from expertise.data.tasks import GROUPS, Task
from expertise import reading
from expertise.errors import ConfigError

SUFFIXES = (".toml", ".json")
KEYS = ("name", "path", "group")
MAX_TASKS = 1_000
_TASK_HEADER = re.compile(r"^\s*\[\[\s*task\s*\]\]")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}$")


@dataclass(frozen=True)
class SuiteEntry:
    """One task of a suite file, checked; ``path`` resolved against the file's folder (None: a
    built-in task)."""

    position: int
    where: str  # "suite.toml: task 3 (line 9)"
    name: str
    path: Path | None
    group: str | None


def is_suite_file(spec: str) -> bool:
    """Whether ``--suite`` names a file (by its suffix) rather than built-in tasks."""
    return Path(spec).suffix.lower() in SUFFIXES


def read(path: Path) -> list[SuiteEntry]:
    """Every task of a suite file, checked; one :class:`ConfigError` line for the first problem."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise ConfigError(f"{path}: a suite file is .toml or .json")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"no suite file at {path}; check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} cannot be read ({e})") from None
    data = reading.loads_toml(text, str(path)) if path.suffix.lower() == ".toml" else reading.loads_json(text, str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected an object with a 'task' list")
    extra = sorted(set(data) - {"task", "description"})
    if extra:
        raise ConfigError(f"{path}: unknown top-level key(s) {', '.join(map(repr, extra))}; a suite file holds "
                          "[[task]] tables (and an optional description)")
    tasks = data.get("task")
    if not isinstance(tasks, list) or not tasks:
        raise ConfigError(f"{path} lists no tasks: add [[task]] tables (JSON: a 'task' list)")
    if len(tasks) > MAX_TASKS:
        raise ConfigError(f"{path} lists {len(tasks)} tasks; at most {MAX_TASKS}")
    lines = [i + 1 for i, line in enumerate(text.splitlines()) if _TASK_HEADER.match(line)]
    lines = lines if path.suffix.lower() == ".toml" and len(lines) == len(tasks) else []
    entries = [_entry(t, i + 1, lines[i] if lines else None, path) for i, t in enumerate(tasks)]
    seen: dict[str, SuiteEntry] = {}
    for e in entries:
        if e.name in seen:
            raise ConfigError(f"{e.where}: task {e.name!r} is already {seen[e.name].where.split(': ', 1)[1]}; "
                              "give each task once (name = ... tells two folders of the same name apart)")
        seen[e.name] = e
    return entries


def _entry(d: Any, position: int, line: int | None, path: Path) -> SuiteEntry:
    where = f"{path}: task {position}" + (f" (line {line})" if line else "")
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a table with name, path and group")
    unknown = sorted(set(d) - set(KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; expected {', '.join(KEYS)}")
    name = d.get("name")
    if name is not None and (not isinstance(name, str) or not _NAME.fullmatch(name)):
        raise ConfigError(f"{where}: name must be a plain name (letters, digits, _ . + -), got {str(name)[:60]!r}")
    if d.get("path") is None:
        if name is None:
            raise ConfigError(f"{where}: give a built-in task's name, or the path of an ImageFolder task with its group")
        if "group" in d:
            raise ConfigError(f"{where}: built-in task {name!r} has its own group; drop 'group' (or give its folder as path)")
        return SuiteEntry(position, where, name, None, None)
    folder = Path(schema.string(d["path"], f"{where}: path", 4096)).expanduser()
    folder = folder if folder.is_absolute() else path.parent / folder
    if not folder.is_dir():
        raise ConfigError(f"{where}: no task folder at {folder} (paths are relative to {path.parent}); "
                          "give an ImageFolder directory (one sub-folder of images per class)")
    group = d.get("group")
    if group not in GROUPS:
        raise ConfigError(f"{where}: group must be one of {', '.join(GROUPS)}, got {group!r}")
    return SuiteEntry(position, where, name or folder.resolve().name, folder, group)


def check_builtins(entries: Sequence[SuiteEntry], known: Sequence[str]) -> None:
    """Every built-in task of the suite exists (``known``: the library world's tasks and the
    package's own)."""
    for e in entries:
        if e.path is None and e.name not in known:
            raise ConfigError(f"{e.where}: unknown built-in task {e.name!r}; use one of {', '.join(known)}, "
                              "or give an ImageFolder task as path and group")


def load(entries: Sequence[SuiteEntry], world, resolution: int, seed: int = 0, max_side: int | None = None) -> list[Task]:
    """The suite's tasks, in file order: built-in tasks rendered at ``resolution``, folders kept at
    their source resolution with the longer side capped at ``max_side`` (default the loaders')."""
    from expertise.data.loaders import DEFAULT_MAX_SIDE, load_image_folder, load_task

    side = max_side or DEFAULT_MAX_SIDE
    return [load_task(e.name, seed=seed, world=world, builtin_resolution=resolution) if e.path is None else
            load_image_folder(e.path, None, seed, group=e.group or "natural", name=e.name, max_side=side) for e in entries]
