"""A record store for resumable benchmark work.

Each unit of work (one fine-tune, one selection, ...) is named by its ``kind`` and a JSON
``config`` that determines its result. When it finishes, its record (the project's one record
format, :func:`expertise.records.make_record`) is written atomically to
``DIR/units/<kind>.<digest>.json``, where ``digest`` hashes ``(kind, config)``. A unit whose record
exists is never computed again, so a killed run resumes where it stopped, and two runs that
share units share their results. A crash mid-write leaves no record (writes go to a temporary
name first), so a half-finished unit is simply redone.

Each record carries an authentication ``tag`` (:mod:`expertise.tags`) made with this installation's
key: a record without a valid one (edited, copied from another machine, written by an older
expertise) is not believed. It counts as not finished, so its unit runs again, and one warning line
says so; ``expertise records trust DIR`` accepts a folder's records after checking their form.

Layout::

    DIR/
      units/<kind>.<digest>.json   one record per finished unit
      records.jsonl                optional export of every record, one JSON object a line
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expertise import reading, tags
from expertise.errors import ConfigError, DataError, ExpertiseError
from expertise.io import atomic_write_text
from expertise.records import make_record, write_record

UNITS = "units"


class UntrustedWarning(UserWarning):
    """Records or cache entries without a valid tag were found and are not believed."""


def _content(rec: Mapping[str, Any]) -> bytes:
    """What a record's tag covers: the record without its tag, as canonical JSON."""
    return json.dumps({k: v for k, v in rec.items() if k != "tag"}, sort_keys=True, allow_nan=False).encode()


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _form_problem(rec: Mapping[str, Any]) -> str | None:
    """What is wrong with a record's form (types and ranges of its fields), or None."""
    if not isinstance(rec["kind"], str) or not _KIND.fullmatch(rec["kind"]):
        return f"its kind {rec['kind']!r} is not a unit kind"
    if not isinstance(rec["config"], dict) or not isinstance(rec["metrics"], dict):
        return "its config and metrics must be JSON objects"
    for field_name in ("seconds", "images"):
        value = rec.get(field_name, {})
        if not isinstance(value, dict) or not all(isinstance(k, str) and _number(v) for k, v in value.items()):
            return f"its {field_name} must map names to numbers of at least 0"
    accuracy = rec["metrics"].get("accuracy", rec["metrics"].get("test_accuracy"))
    if accuracy is not None and not (_number(accuracy) and accuracy <= 1):
        return f"its accuracy {accuracy!r} is not a fraction in [0, 1]"
    return None
_KIND = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _normalise(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` as it reads back from JSON (tuples become lists, keys strings), so the config
    kept in a record compares equal to the one a later run asks for."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"a unit config must be a JSON object (dict), got {type(config).__name__}")
    try:
        return json.loads(json.dumps(config, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"a unit config must be plain JSON (no NaN, tensors or objects): {e}") from None


def _named(values: Mapping[str, float] | float | int | None, kind: str, cast: type) -> dict[str, Any]:
    if values is None:
        return {}
    if isinstance(values, Mapping):
        return {str(k): cast(v) for k, v in values.items()}
    return {kind: cast(values)}


@dataclass(frozen=True)
class UnitResult:
    """What a unit's function returns to :meth:`RecordStore.run_unit`: its metrics (plain JSON) and
    its cost. ``seconds`` left as None is the measured wall time of the function."""

    metrics: dict[str, Any]
    images: Mapping[str, int] | int = field(default_factory=dict)
    seconds: Mapping[str, float] | float | None = None


@dataclass(frozen=True)
class Unit:
    """A finished unit: its record's metrics and cost, and whether this call computed it (False:
    it was read back from the store)."""

    kind: str
    key: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    seconds: dict[str, float]
    images: dict[str, int]
    computed: bool

    @property
    def total_seconds(self) -> float:
        return float(sum(self.seconds.values()))

    @property
    def total_images(self) -> int:
        return int(sum(self.images.values()))


class RecordStore:
    """One JSON record per finished unit under ``DIR/units``; see the module docstring."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"{self.root} is a file; a record store needs a folder")
        self.units_dir = self.root / UNITS
        self.untrusted: set[str] = set()  # record files read without a valid tag
        self._warned = False

    def __repr__(self) -> str:
        return f"RecordStore({str(self.root)!r})"

    @staticmethod
    def _check_kind(kind: str) -> str:
        if not isinstance(kind, str) or not _KIND.fullmatch(kind):
            raise ConfigError(f"a unit kind must be 1-64 letters, digits, '_' or '-' (e.g. 'finetune'), got {kind!r}")
        return kind

    def key(self, kind: str, config: Mapping[str, Any]) -> str:
        """The unit's digest: sha256 of its kind and canonical JSON config (16 hex digits)."""
        self._check_kind(kind)
        blob = json.dumps({"kind": kind, "config": _normalise(config)}, sort_keys=True, allow_nan=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def path(self, kind: str, config: Mapping[str, Any]) -> Path:
        return self.units_dir / f"{kind}.{self.key(kind, config)}.json"

    @staticmethod
    def read_form(path: Path) -> dict[str, Any]:
        """A record file's content, checked for its form (not its tag): one line naming the file otherwise."""
        try:
            rec = reading.read_json(path)
        except (OSError, ConfigError) as e:
            raise DataError(f"record {path} cannot be read ({e}); delete it and the unit will be recomputed") from None
        if not isinstance(rec, dict) or not {"kind", "config", "metrics"} <= set(rec):
            raise DataError(f"{path} is not a unit record (needs kind, config, metrics); delete it to recompute the unit")
        problem = _form_problem(rec)
        if problem:
            raise DataError(f"{path}: {problem}; delete it and the unit will be recomputed")
        return rec

    def _read(self, path: Path) -> dict[str, Any] | None:
        """The record at ``path`` when its tag verifies; None (counted, and said once) otherwise."""
        rec = self.read_form(path)
        if tags.verify("record", path.name, _content(rec), rec.get("tag")):
            return rec
        self.untrusted.add(path.name)
        if not self._warned:
            self._warned = True
            warnings.warn(f"{self.units_dir}: records without a valid tag (written on another machine, by an older "
                          "expertise, or edited) are not believed: their units run again; 'expertise records trust "
                          f"{self.root}' accepts them after checking their form", UntrustedWarning, stacklevel=3)
        return None

    def get_record(self, kind: str, config: Mapping[str, Any]) -> dict[str, Any] | None:
        """The unit's full record, or None when it has not finished (or its record is not believed)."""
        path = self.path(kind, config)
        if not path.exists():
            return None
        rec = self._read(path)
        if rec is None:
            return None
        if rec["kind"] != kind or rec["config"] != _normalise(config):
            raise DataError(f"{path} holds a different unit than its name says; delete it to recompute the unit")
        return rec

    def get(self, kind: str, config: Mapping[str, Any]) -> dict[str, Any] | None:
        """The finished unit's metrics, or None."""
        rec = self.get_record(kind, config)
        return None if rec is None else rec["metrics"]

    def has(self, kind: str, config: Mapping[str, Any]) -> bool:
        """Whether the unit has finished (its record there and believed)."""
        return self.path(kind, config).exists() and self.get_record(kind, config) is not None

    def put(self, kind: str, config: Mapping[str, Any], metrics: Mapping[str, Any],
            seconds: Mapping[str, float] | float | None = None,
            images: Mapping[str, int] | int | None = None) -> dict[str, Any]:
        """Record a finished unit (atomically) and return its record. ``seconds`` and ``images``
        are the unit's cost, per stage (a dict) or as one number (filed under ``kind``)."""
        key = self.key(kind, config)
        cfg = _normalise(config)
        try:
            json.dumps(metrics, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"unit {kind}: metrics must be plain JSON without NaN (use None): {e}") from None
        record = make_record(kind, cfg, dict(metrics), _named(seconds, kind, float), _named(images, kind, int))
        record["key"] = key
        name = f"{kind}.{key}.json"
        record["tag"] = tags.tag("record", name, _content(record))
        write_record(self.units_dir / name, record)
        self.untrusted.discard(name)
        return record

    def trust(self) -> tuple[int, list[str]]:
        """Tag every record of this store whose form checks with this installation's key (what
        ``expertise records trust DIR`` does); (records tagged, one line per record refused)."""
        done, refused = 0, []
        for path in sorted(self.units_dir.glob("*.json")) if self.units_dir.is_dir() else []:
            if path.name.startswith("."):
                continue
            try:
                rec = self.read_form(path)
                if path.name != f"{rec['kind']}.{self.key(rec['kind'], rec['config'])}.json":
                    raise DataError(f"{path} is filed under another unit's name than its kind and config give")
            except ExpertiseError as e:
                refused.append(str(e))
                continue
            rec["tag"] = tags.tag("record", path.name, _content(rec))
            write_record(path, rec)
            done += 1
        return done, refused

    def finished(self, kind: str, config: Mapping[str, Any]) -> Unit | None:
        """The unit as recorded (``computed`` False), or None when it has not finished."""
        rec = self.get_record(kind, config)
        return None if rec is None else self._unit(rec, computed=False)

    def record_result(self, kind: str, config: Mapping[str, Any], out: UnitResult | Mapping[str, Any],
                      elapsed: float) -> Unit:
        """Record what a unit's function returned (``elapsed``: its wall time, the cost when it
        names none) and return the unit, ``computed`` True."""
        if not isinstance(out, UnitResult):
            if not isinstance(out, Mapping):
                raise ConfigError(f"unit {kind}: the unit function must return a UnitResult or a metrics dict, got {type(out).__name__}")
            out = UnitResult(dict(out))
        rec = self.put(kind, config, out.metrics, elapsed if out.seconds is None else out.seconds, out.images)
        return self._unit(rec, computed=True)

    def run_unit(self, kind: str, config: Mapping[str, Any],
                 fn: Callable[[], UnitResult | Mapping[str, Any]], recompute: bool = False) -> Unit:
        """The unit's stored result when it has finished before; else ``fn()`` is run, its result
        stored, and returned. ``fn`` returns a :class:`UnitResult` or just its metrics dict (its
        wall time is then measured and no images are counted). ``recompute`` runs ``fn`` even when
        the unit has finished (something it makes besides its record is wanted again) and replaces
        the record."""
        done = None if recompute else self.finished(kind, config)
        if done is not None:
            return done
        t0 = time.perf_counter()
        out = fn()
        return self.record_result(kind, config, out, time.perf_counter() - t0)

    @staticmethod
    def _unit(rec: dict[str, Any], computed: bool) -> Unit:
        return Unit(kind=rec["kind"], key=str(rec.get("key", "")), config=rec["config"], metrics=rec["metrics"],
                    seconds={k: float(v) for k, v in rec.get("seconds", {}).items()},
                    images={k: int(v) for k, v in rec.get("images", {}).items()}, computed=computed)

    def all(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Every finished unit's record (of one ``kind``, when given), in file-name order."""
        if kind is not None:
            self._check_kind(kind)
        if not self.units_dir.is_dir():
            return []
        pattern = f"{kind}.*.json" if kind else "*.json"
        found = [self._read(p) for p in sorted(self.units_dir.glob(pattern)) if not p.name.startswith(".")]
        return [r for r in found if r is not None]

    def __len__(self) -> int:
        return len(self.all())

    def export_jsonl(self, path: Path | str | None = None, kind: str | None = None) -> Path:
        """Write every record (of ``kind``, when given) to ``path`` (default ``DIR/records.jsonl``),
        one JSON object a line, atomically; returns the path."""
        path = Path(path) if path is not None else self.root / "records.jsonl"
        lines = [json.dumps(r, sort_keys=True) for r in self.all(kind)]
        atomic_write_text(path, "".join(line + "\n" for line in lines))
        return path
