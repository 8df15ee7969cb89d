"""The manifest ``library.json``: its format, its member entries (:class:`MemberInfo`), and the
checked reading and atomic writing of it.

``{"format": 1, "files": {"hierarchy.json": sha256, "upstream.json": sha256}, "members": {name: entry}}``:
``files`` holds the hashes of the library's top-level files (absent in libraries written before
they were hashed; the next write records them), ``members`` one entry per pool member in insertion
order. Every entry is checked field by field when read, so a hand-edited or hostile manifest is one
:class:`LibraryError`, never a traceback later.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from expertise import schema
from expertise import reading
from expertise.errors import ConfigError, LibraryError
from expertise.io import atomic_write_json
from expertise.models.backbones import MAX_OUTPUTS, Preprocessing

FORMAT = 1
MANIFEST, HIERARCHY, UPSTREAM, LOCK, MEMBERS = "library.json", "hierarchy.json", "upstream.json", ".lock", "members"
CONFIG, WEIGHTS, PRIOR = "config.json", "model.safetensors", "label_prior.safetensors"
ADAPTERS, CLAIMS = "adapters", ".claims"  # folder of adapter banks; claims of members being built
TOP_FILES = (HIERARCHY, UPSTREAM)  # top-level files whose sha256 the manifest keeps
KINDS = ("baseline", "full_expert", "adapter_expert", "epn", "external")
# A library-relative bank file named in a member's ``files``: adapters/<bank>.safetensors or .json.
MAX_MEMBERS = 20_000          # members of one library (a manifest listing more is refused before it is read)
MAX_MANIFEST_BYTES = 64 << 20  # library.json: about 40 MB at MAX_MEMBERS
BANK_FILE = re.compile(r"^adapters/([A-Za-z0-9_-][A-Za-z0-9._-]{0,127})\.(safetensors|json)$")
_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Hidden folders under members/ and adapters/ used while a write is in flight; a crash can leave them.
STAGING, RETIRED = ".staging-", ".retired-"


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in (".", ".."):
        raise LibraryError(
            f"invalid member name {name!r}: use 1-128 letters, digits, '.', '_' or '-', not starting with '.' "
            "(no spaces or path separators), e.g. 'bit_s.expert_animal'"
        )
    return name


@dataclass(frozen=True)
class MemberInfo:
    """One pool member's manifest entry. ``files`` maps file name -> sha256 and is filled by the
    library; ``parameters`` and ``embedding_dim`` given as 0 are filled from the model by
    :meth:`Library.add`."""

    name: str
    kind: str  # one of KINDS
    parent: str | None  # e.g. the baseline an expert was tuned from
    domain: str | None  # hierarchy node the expert specialises in
    upstream_images: int  # images in its upstream training slice
    parameters: int
    embedding_dim: int
    upstream_accuracy: float | None  # upstream holdout accuracy
    preprocessing: dict  # Preprocessing.to_json()
    files: dict[str, str] = field(default_factory=dict)
    architecture: str = ""  # e.g. the backbone name "bit_s"
    extra: dict = field(default_factory=dict)  # free-form JSON: training config, steps, wall time

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MemberInfo:
        if not isinstance(d, dict):
            raise LibraryError(f"a manifest member entry must be a JSON object, got {type(d).__name__}")
        required = [f.name for f in fields(cls) if f.name not in ("files", "architecture", "extra")]
        missing = [k for k in required if k not in d]
        if missing:
            raise LibraryError(f"manifest entry {d.get('name', '?')!r} lacks {missing}; restore library.json or re-add the member")
        try:
            return cls._from_checked_json(d)
        except (ConfigError, TypeError, ValueError, AttributeError) as e:
            raise LibraryError(f"manifest entry {d.get('name', '?')!r} has a malformed field ({e}); restore library.json") from None

    @classmethod
    def _from_checked_json(cls, d: dict[str, Any]) -> MemberInfo:
        where = f"member {d.get('name', '?')!r}"
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {unknown}")
        acc = d["upstream_accuracy"]
        if acc is not None and not (isinstance(acc, float) and math.isnan(acc)):
            acc = schema.number(acc, f"{where}.upstream_accuracy", 0.0, 1.0)
        prep = schema.obj(d["preprocessing"], f"{where}.preprocessing")
        if prep:
            Preprocessing.from_json(prep, f"{where}.preprocessing")
        files = schema.obj(d.get("files", {}), f"{where}.files")
        for k, v in files.items():
            if not isinstance(v, str) or not _SHA256.fullmatch(v) or len(k) > 256:
                raise ConfigError(f"{where}.files: {str(k)[:60]!r} needs a sha256 (64 hex digits), got {str(v)[:70]!r}")
        optional_name = [None if d[k] is None else schema.string(d[k], f"{where}.{k}") for k in ("parent", "domain")]
        return cls(
            name=schema.string(d["name"], f"{where}.name"), kind=schema.string(d["kind"], f"{where}.kind", choices=KINDS),
            parent=optional_name[0], domain=optional_name[1],
            upstream_images=schema.integer(d["upstream_images"], f"{where}.upstream_images", 0, 1 << 50),
            parameters=schema.integer(d["parameters"], f"{where}.parameters", 0, 1 << 40),
            embedding_dim=schema.integer(d["embedding_dim"], f"{where}.embedding_dim", 0, MAX_OUTPUTS),
            upstream_accuracy=None if acc is None else float(acc), preprocessing=dict(prep), files=dict(files),
            architecture=schema.string(d.get("architecture", ""), f"{where}.architecture"),
            extra=dict(schema.obj(d.get("extra", {}), f"{where}.extra")),
        )


def bank_of(info: MemberInfo) -> str | None:
    """The bank file (``adapters/<bank>.safetensors``) an adapter expert lives in; None for a
    member stored whole in its own folder."""
    bank = info.extra.get("bank")
    return bank if isinstance(bank, str) else None


def bank_config_path(bank: str) -> str:
    """``adapters/<bank>.safetensors`` -> ``adapters/<bank>.json``."""
    return bank.removesuffix(".safetensors") + ".json"


def files_digest(files: dict[str, str], extra: str = "") -> str:
    h = hashlib.sha256(("".join(f"{k}:{v}\n" for k, v in sorted(files.items())) + extra).encode())
    return h.hexdigest()[:16]


@dataclass
class Manifest:
    """What ``library.json`` holds: member entries in order, and the top-level files' hashes
    (``None`` for a manifest written before they were hashed)."""

    members: dict[str, MemberInfo]
    files: dict[str, str] | None

    @classmethod
    def read(cls, path: Path) -> Manifest:
        f = path / MANIFEST
        try:
            data = reading.read_json(f, max_bytes=MAX_MANIFEST_BYTES)
        except OSError as e:
            raise LibraryError(f"{f} cannot be read ({e}); restore it from a backup") from None
        except reading.ReadError as e:
            raise LibraryError(f"{f} cannot be read ({e.reason}); restore it from a backup") from None
        if not isinstance(data, dict) or "format" not in data or not isinstance(data.get("members"), dict):
            raise LibraryError(f"{f} is not a library manifest (needs 'format' and 'members'); restore it from a backup")
        if data["format"] != FORMAT:
            raise LibraryError(f"{f} has format {data['format']!r}; this version of expertise reads format {FORMAT}: upgrade expertise")
        top = data.get("files")
        if top is not None and (not isinstance(top, dict) or set(top) - set(TOP_FILES)
                                or not all(isinstance(v, str) and _SHA256.fullmatch(v) for v in top.values())):
            raise LibraryError(f"{f}: 'files' must map {' or '.join(TOP_FILES)} to sha256 digests; restore library.json")
        if len(data["members"]) > MAX_MEMBERS:
            raise LibraryError(f"{f} lists {len(data['members']):,} members, more than the {MAX_MEMBERS:,} a library "
                               "holds; restore it from a backup")
        members = {}
        for name, d in data["members"].items():
            check_name(name)  # a hand-edited manifest must not point outside members/
            info = MemberInfo.from_json(d)
            if info.name != name:
                raise LibraryError(f"{f}: entry {name!r} is named {info.name!r} inside; restore library.json")
            members[name] = info
        return cls(members, None if top is None else dict(top))

    def write(self, path: Path) -> None:
        data: dict[str, Any] = {"format": FORMAT}
        if self.files is not None:
            data["files"] = dict(sorted(self.files.items()))
        data["members"] = {n: m.to_json() for n, m in self.members.items()}
        atomic_write_json(path / MANIFEST, data)
