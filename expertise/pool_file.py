"""Pools kept in a file: ``expertise pool add --from pool.toml`` and ``expertise pool export``.

A pool file is TOML with one ``[[member]]`` table per model (docs/pools.md)::

    [[member]]
    name = "resnet50_tv"                  # optional; default as `pool add` names it
    timm = "resnet50"                     # a timm architecture ...
    checkpoint = "weights/resnet50.safetensors"   # ... with a local safetensors checkpoint,
    # pretrained = true                   # ... or timm's own pretrained weights (timm = "resnet50.tv_in1k")
    # hf = "google/vit-base-patch16-224"  # or a Hugging Face id (local cache) or folder ("./models/vit")
    size = 224                            # optional input size
    upstream_dataset = "imagenet-1k"      # optional metadata, stored in the manifest entry
    upstream_images = 1281167
    imagenet_top1 = 76.13                 # percent; task_agnostic ranks by it
    notes = "torchvision's V1 weights"

Relative paths are relative to the pool file's folder. Reading checks every entry and refuses a
member named twice (by name or by source) before anything is added; adding is idempotent (a member
already in the library from the same source is skipped and reported) and stops at the first entry
that fails, with one line naming its position and line, keeping the members added before it.
The writer (:func:`dump`) is a small TOML emitter for exactly this shape, checked by reading its
output back with :mod:`tomllib`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expertise import schema
from expertise import reading
from expertise.errors import ConfigError, ExpertiseError, LibraryError
from expertise.library import Library, MemberInfo
from expertise.library.manifest import check_name
from expertise.models.backbones import MAX_INPUT_SIZE
from expertise.pool import PoolMetadata, add_external, is_hub_id, load_external

SOURCE_KEYS = ("timm", "checkpoint", "pretrained", "hf")
META_KEYS = ("upstream_dataset", "upstream_images", "imagenet_top1", "notes")
KEYS = ("name", *SOURCE_KEYS, "size", *META_KEYS)  # also the order pool export writes them in
_MEMBER_HEADER = re.compile(r"^\s*\[\[\s*member\s*\]\]")
MAX_MEMBERS = 10_000


@dataclass(frozen=True)
class PoolEntry:
    """One ``[[member]]`` of a pool file, checked; paths resolved against the file's folder."""

    position: int  # 1-based
    line: int | None  # of its [[member]] header, when the file has one per member
    where: str  # "pool.toml: member 3 (line 12)"
    name: str | None
    timm: str | None
    checkpoint: Path | None
    pretrained: bool
    hf: str | None  # a Hub id, or a folder made absolute
    size: int | None
    metadata: PoolMetadata

    @property
    def source(self) -> tuple[str, str]:
        """(kind, location) as the member's manifest entry records them (``ExternalSource``)."""
        if self.hf is not None:
            return "hf", self.hf
        if self.checkpoint is not None:
            return "checkpoint", str(self.checkpoint)
        return "timm", str(self.timm)

    def describe(self) -> str:
        kind, location = self.source
        return f"{kind} {location}" + (f" at {self.size} px" if self.size else "")


@dataclass(frozen=True)
class Outcome:
    entry: PoolEntry
    info: MemberInfo
    added: bool  # False: already in the library from the same source, skipped


def _lines(text: str) -> list[int]:
    return [i + 1 for i, line in enumerate(text.splitlines()) if _MEMBER_HEADER.match(line)]


def read(path: Path) -> list[PoolEntry]:
    """Every entry of a pool file, checked; one ConfigError line for the first problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"no pool file at {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} cannot be read ({e})") from None
    return parse(text, path)


def parse(text: str, path: Path) -> list[PoolEntry]:
    data = reading.loads_toml(text, str(path))
    extra = sorted(set(data) - {"member", "description"})
    if extra:
        raise ConfigError(f"{path}: unknown top-level key(s) {', '.join(map(repr, extra))}; a pool file holds "
                          "[[member]] tables (and an optional description)")
    members = data.get("member")
    if not isinstance(members, list) or not members or not all(isinstance(m, dict) for m in members):
        raise ConfigError(f"{path} lists no members: add [[member]] tables (see docs/pools.md)")
    if len(members) > MAX_MEMBERS:
        raise ConfigError(f"{path} lists {len(members)} members; at most {MAX_MEMBERS}")
    lines = _lines(text)
    lines_ok = len(lines) == len(members)
    entries = [_entry(m, i + 1, lines[i] if lines_ok else None, path) for i, m in enumerate(members)]
    _refuse_duplicates(entries, path)
    return entries


def _entry(d: dict[str, Any], position: int, line: int | None, path: Path) -> PoolEntry:
    where = f"{path}: member {position}" + (f" (line {line})" if line else "")
    unknown = sorted(set(d) - set(KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; expected {', '.join(KEYS)}")
    name = d.get("name")
    if name is not None:
        try:
            check_name(name)
        except LibraryError as e:
            raise ConfigError(f"{where}: {e}") from None
    timm_name = None if d.get("timm") is None else schema.token(d["timm"], f"{where}: timm")
    pretrained = schema.boolean(d.get("pretrained", False), f"{where}: pretrained")
    checkpoint = hf = None
    if "checkpoint" in d:
        checkpoint = _path(schema.string(d["checkpoint"], f"{where}: checkpoint", 4096), path)
    if "hf" in d:
        text = schema.string(d["hf"], f"{where}: hf", 4096)
        folder = _path(text, path)
        hf = str(folder) if folder.is_dir() or not is_hub_id(text) else text
    if hf is not None and (timm_name or checkpoint or pretrained):
        raise ConfigError(f"{where}: 'hf' names the model and its weights; do not combine it with timm, checkpoint or pretrained")
    if hf is None:
        if not timm_name:
            raise ConfigError(f"{where}: name a model: timm = ARCH with checkpoint = FILE.safetensors or pretrained = true, "
                              "or hf = ID_OR_FOLDER")
        if (checkpoint is None) == (not pretrained):
            raise ConfigError(f"{where}: timm = {timm_name!r} needs exactly one of checkpoint = FILE.safetensors or "
                              "pretrained = true")
    size = None if d.get("size") is None else schema.integer(d["size"], f"{where}: size", 8, MAX_INPUT_SIZE)
    meta = PoolMetadata.checked(where, **{k: d[k] for k in META_KEYS if k in d})
    return PoolEntry(position, line, where, name, timm_name, checkpoint, pretrained, hf, size, meta)


def _path(text: str, base: Path) -> Path:
    p = Path(text).expanduser()
    return p if p.is_absolute() else (base.parent / p).resolve()


def _refuse_duplicates(entries: list[PoolEntry], path: Path) -> None:
    """Two entries of one name, or of one source at the same input size (an entry without a size
    takes the weights' own, so it matches any), are refused."""
    names: dict[str, PoolEntry] = {}
    sources: dict[tuple[str, str], list[PoolEntry]] = {}
    for e in entries:
        first = names.get(e.name) if e.name else None
        what = f"the name {e.name!r}"
        if first is None:
            first = next((o for o in sources.get(e.source, []) if o.size is None or e.size is None or o.size == e.size), None)
            what = f"the same model ({e.describe()})"
        if first is not None:
            raise ConfigError(f"{path}: {_short(first)} and {_short(e)} both give {what}; list each member once "
                              "(nothing was added)")
        if e.name:
            names[e.name] = e
        sources.setdefault(e.source, []).append(e)


def _short(e: PoolEntry) -> str:
    return f"member {e.position}" + (f" (line {e.line})" if e.line else "")


def _same_source(info: MemberInfo, entry: PoolEntry) -> bool:
    kind, location = entry.source
    return (info.kind == "external" and info.extra.get("source") == kind and info.extra.get("location") == location
            and (entry.size is None or info.preprocessing.get("size") == entry.size))


def present(library: Library, entry: PoolEntry) -> MemberInfo | None:
    """The library's member that ``entry`` names, when it came from the same source; a member of
    the entry's name from another source is an error."""
    if entry.name is not None:
        if entry.name not in library.names():
            return None
        info = library.info(entry.name)
        if not _same_source(info, entry):
            was = f"{info.extra.get('source', info.kind)} {info.extra.get('location', '')}".strip()
            raise ConfigError(f"the library already has a member {entry.name!r} from another source or input size "
                              f"({was} at {info.preprocessing.get('size')} px); rename this entry or remove that member")
        return info
    return next((m for m in library.members() if _same_source(m, entry)), None)


def add_from_file(library: Path, pool_file: Path, overwrite: bool = False,
                  report: Callable[[Outcome], None] = lambda o: None) -> list[Outcome]:
    """Add every member of ``pool_file`` to ``library`` (created if missing), in order; see the
    module docstring. ``report`` is called after each member."""
    entries = read(pool_file)
    lib = Library.create(library, None, exist_ok=True)
    outcomes: list[Outcome] = []
    for entry in entries:
        try:
            info = None if overwrite else present(lib, entry)
            if info is None:
                model, source = load_external(entry.timm, entry.checkpoint, entry.hf, entry.pretrained, entry.size)
                info = add_external(lib, model, source, entry.name, overwrite, entry.metadata)
                outcomes.append(Outcome(entry, info, True))
            else:
                outcomes.append(Outcome(entry, info, False))
        except ExpertiseError as e:
            kept = sum(o.added for o in outcomes)
            raise type(e)(f"{entry.where}: {e} ({kept} member(s) added before it stay; fix this entry and run "
                          "again: members already added are skipped)") from None
        report(outcomes[-1])
    return outcomes


def entry_of(info: MemberInfo) -> dict[str, Any]:
    """A stored external member as a pool file table (what ``pool export`` writes)."""
    kind, location = info.extra.get("source"), info.extra.get("location")
    if not isinstance(location, str):
        raise LibraryError(f"member {info.name!r} records no source location; re-add it with 'expertise pool add'")
    d: dict[str, Any] = {"name": info.name}
    if kind == "hf":
        d["hf"] = location
    elif kind == "checkpoint":
        d["timm"], d["checkpoint"] = info.architecture, location
    elif kind == "timm":
        d["timm"], d["pretrained"] = location, True
    else:
        raise LibraryError(f"member {info.name!r} has an unknown source {kind!r}; re-add it with 'expertise pool add'")
    if info.preprocessing.get("size"):
        d["size"] = int(info.preprocessing["size"])
    try:
        meta = PoolMetadata.of(info)
    except ConfigError as e:
        raise LibraryError(f"member {info.name!r}: {e}") from None
    for k in META_KEYS:
        v = getattr(meta, k)
        if v is not None and v != 0:
            d[k] = v
    return d


def export(library: Library) -> tuple[str, int]:
    """The library's external members as a pool file, and how many members were left out (our own
    experts, which are built, not added from a source)."""
    members = library.members()
    external = [m for m in members if m.kind == "external"]
    header = [f"expertise pool file: the external members of {library.path}",
              "add them to a library with: expertise pool add --library LIB --from THIS_FILE"]
    left = len(members) - len(external)
    if left:
        header.append(f"{left} other member(s) of that library (built by expertise upstream/experts) are not listed")
    return dump([entry_of(m) for m in external], header), left


# -- TOML writing ---------------------------------------------------------------------------------
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\b": "\\b", "\f": "\\f"}


def toml_value(v: Any) -> str:
    """A TOML literal of a string, a boolean, an integer or a finite float."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"a pool file holds finite numbers, got {v}")
        return repr(v)
    if isinstance(v, str):
        return '"' + "".join(_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c)
                             for c in v) + '"'
    raise TypeError(f"a pool file holds strings, booleans and numbers, got {type(v).__name__}")


def dump(entries: Iterable[Mapping[str, Any]], header: Iterable[str] = ()) -> str:
    """Pool file text: comment lines, then one ``[[member]]`` table per entry, keys in
    :data:`KEYS` order."""
    out = [f"# {line}".rstrip() for h in header for line in h.splitlines()]
    for e in entries:
        unknown = sorted(set(e) - set(KEYS))
        if unknown:
            raise ValueError(f"not pool file keys: {unknown}")
        out += ["", "[[member]]"] + [f"{k} = {toml_value(e[k])}" for k in KEYS if k in e and e[k] is not None]
    return "\n".join(out) + "\n"
