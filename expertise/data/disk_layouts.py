"""Three layouts of an upstream dataset on disk, each read into a :class:`DiskIndex` from labels
alone (no image is opened):

1. **Folders** (ImageNet-21k: fall11, winter21, ImageNet-21K-P): ``DIR/<class>/<image>``; class
   folders are wnids, placed in the WordNet hierarchy, unless a hierarchy file is given.
2. **A manifest**: CSV with a header holding ``path`` and ``labels`` (several labels separated by
   ``;``), or JSON lines ``{"path": ..., "labels": [...]}``; paths relative to the manifest's
   folder. Labels may be internal nodes (as in JFT).
3. **WebDataset shards** (``.tar``; local paths, brace patterns such as
   ``shards/imagenet22k-{0000..4094}.tar``): a sample is the files sharing a key, an image and a
   ``cls`` (a class name, or an index into ``classes``) or ``json`` (``{"label": ...}`` or
   ``{"labels": [...]}``) label; read with the ``webdataset`` library, label members only.

The hierarchy is a :class:`Hierarchy`, a hierarchy file (``Hierarchy.read``: parent-child pairs or
``hierarchy.json``), or, when none is given, WordNet (the labels are then wnids; ``wordnet`` picks
the source, by default the packaged table). Bad input is a one-line :class:`DataError` that says
what to fix; empty class folders are skipped with a warning and listed in ``DiskIndex.notes``.
"""

from __future__ import annotations

import csv
import os
import tarfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from expertise.data.disk_index import DiskIndex, IndexBuilder
from expertise.data.hierarchy import ROOT, Hierarchy
from expertise.data.loaders import IMAGE_EXTENSIONS
from expertise.data.wordnet import WordNet, check_wnid
from expertise import reading
from expertise.errors import ConfigError, DataError

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".json")
LABEL_SEPARATOR = ";"
CHECKED_FILES = 16  # manifest paths whose files are checked to exist before anything else is done
SHARD_IMAGE_EXTENSIONS = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS) + ("ppm", "pgm")

HierarchySource = Hierarchy | Path | str | None
WordNetSource = WordNet | Path | str | None


class _LabelSpace:
    """Checks label names as they are read and gives the hierarchy at the end: the given one, or
    WordNet's for the wnids seen."""

    def __init__(self, hierarchy: HierarchySource, wordnet: WordNetSource) -> None:
        self.given = hierarchy if isinstance(hierarchy, Hierarchy) or hierarchy is None else Hierarchy.read(Path(hierarchy))
        self.wordnet = None if self.given is not None else (
            wordnet if isinstance(wordnet, WordNet) else WordNet.load(wordnet))
        self.first_seen: dict[str, str] = {}  # label -> where it was first seen

    def check(self, label: str, where: str) -> str:
        if label in self.first_seen:  # checked before: most labels, on a big dataset
            return label
        if not isinstance(label, str) or not label.strip():
            raise DataError(f"{where}: a label must be a non-empty string, got {str(label)[:40]!r}")
        label = label.strip()
        if self.given is not None:
            if label == ROOT or label not in self.given.parents:
                raise DataError(f"{where}: label {label[:60]!r} is not a node of the hierarchy; add it to the hierarchy "
                                f"file or fix the label")
        else:
            try:
                check_wnid(label)
            except DataError as e:
                raise DataError(f"{where}: {e} (with no hierarchy file, labels are WordNet wnids)") from None
        self.first_seen.setdefault(label, where)
        return label

    def hierarchy(self) -> Hierarchy:
        if self.given is not None:
            return self.given
        assert self.wordnet is not None
        missing = self.wordnet.missing(self.first_seen)
        if missing:
            raise DataError(f"{self.first_seen[missing[0]]}: {self.wordnet.missing_message(missing)}")
        return self.wordnet.hierarchy(sorted(self.first_seen))


def _existing(path: Path | str, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise DataError(f"no {what} at {p}: check the path")
    return p


# -- 1. folders ----------------------------------------------------------------------------------
def read_folders(root: Path | str, hierarchy: HierarchySource = None, wordnet: WordNetSource = None,
                 skip_unknown: bool = False) -> DiskIndex:
    """``root/<class>/<image>``: one label per image, its folder's name (a wnid unless a hierarchy
    is given). Empty class folders are skipped with a warning; a class missing from the hierarchy is
    an error, or with ``skip_unknown`` skipped with a warning."""
    root = _existing(root, "dataset folder")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder: give the folder that holds one sub-folder per class")
    space = _LabelSpace(hierarchy, wordnet)
    with os.scandir(root) as entries:
        folders = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    if space.given is None:
        bad = [f for f in folders if not _is_wnid(f)]
        if bad:
            raise DataError(f"{root}: folder(s) {', '.join(bad[:5])} are not wnids (n + 8 digits); give a hierarchy "
                            f"file for other class names, or write a manifest")
    notes = []
    unknown = [c for c in folders if not _known(space, c)]
    if unknown:
        if not skip_unknown:
            raise DataError(f"{root}: class folder(s) missing from the hierarchy: {_unknown_message(space, unknown)}")
        notes.append(f"skipped {len(unknown)} class folder(s) missing from the hierarchy: {', '.join(unknown[:10])}")
    builder = IndexBuilder()
    empty: list[str] = []
    skipped = set(unknown)
    for c in folders:
        if c in skipped:
            continue
        with os.scandir(root / c) as entries:  # names only: no image is opened
            files = sorted(e.name for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            empty.append(c)
            continue
        label = (space.check(c, f"{root}/{c}"),)
        for f in files:
            builder.add(f"{c}/{f}", label)
    if empty:
        notes.append(f"skipped {len(empty)} empty class folder(s): {', '.join(empty[:10])}")
    if not len(builder):
        raise DataError(f"{root} holds no class folder with images ({', '.join(IMAGE_EXTENSIONS)}); check the path")
    for note in notes:
        warnings.warn(f"{root}: {note}", stacklevel=2)
    return builder.build(space.hierarchy(), str(root), "folders", str(root), notes)


def _is_wnid(name: str) -> bool:
    try:
        check_wnid(name)
        return True
    except DataError:
        return False


def _known(space: _LabelSpace, label: str) -> bool:
    if space.given is not None:
        return label in space.given.parents and label != ROOT
    assert space.wordnet is not None
    return label in space.wordnet


def _unknown_message(space: _LabelSpace, unknown: list[str]) -> str:
    if space.wordnet is not None:
        return space.wordnet.missing_message(unknown) + "; or pass skip_unknown to leave them out"
    return f"{', '.join(unknown[:5])}: add them to the hierarchy file, or pass skip_unknown to leave them out"


# -- 2. a manifest -------------------------------------------------------------------------------
def read_manifest(path: Path | str, hierarchy: HierarchySource = None, wordnet: WordNetSource = None,
                  root: Path | str | None = None) -> DiskIndex:
    """A CSV (header with ``path`` and ``labels`` or ``label``; labels separated by ``;``) or JSON-lines
    manifest (``{"path": ..., "labels": [...]}`` or ``"label": ...``); paths relative to ``root``
    (default: the manifest's folder). The first 16 files are checked to exist."""
    path = _existing(path, "manifest")
    if path.suffix.lower() not in MANIFEST_SUFFIXES:
        raise DataError(f"{path}: a manifest is a .csv or .jsonl file")
    base = Path(root) if root is not None else path.parent
    space = _LabelSpace(hierarchy, wordnet)
    builder = IndexBuilder()
    try:
        with open(path, encoding="utf-8", newline="") as f:  # streamed: a manifest may hold millions of lines
            rows = _csv_rows(path, f) if path.suffix.lower() == ".csv" else _jsonl_rows(path, f)
            for number, file, raw_labels in rows:
                where = f"{path}, line {number}"
                labels = [space.check(label, where) for label in raw_labels]
                if len(builder) < CHECKED_FILES and not (base / file).is_file():
                    raise DataError(f"{where}: no image at {base / file} (paths are relative to {base}; "
                                    f"give root= for another folder)")
                builder.add(file, labels)
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path} cannot be read as UTF-8 text ({getattr(e, 'strerror', None) or e})") from None
    if not len(builder):
        raise DataError(f"{path} lists no images")
    return builder.build(space.hierarchy(), str(base), "manifest", str(path))


def _csv_rows(path: Path, lines: Iterable[str]) -> Iterator[tuple[int, str, list[str]]]:
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
        raise DataError(f"{path} is empty: write a header 'path,labels' and one line per image")
    header = [h.strip().lower() for h in header]
    label_col = "labels" if "labels" in header else "label"
    if "path" not in header or label_col not in header:
        raise DataError(f"{path}, line 1: the header needs a 'path' and a 'labels' column, got {','.join(header)[:80]!r}")
    i_path, i_labels = header.index("path"), header.index(label_col)
    for row in reader:
        number = reader.line_num
        if not row or all(not f.strip() for f in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{path}, line {number}: {len(row)} fields where the header has {len(header)}; "
                            f"quote fields that hold commas")
        file = row[i_path].strip()
        labels = [label.strip() for label in row[i_labels].split(LABEL_SEPARATOR) if label.strip()]
        if not file or not labels:
            raise DataError(f"{path}, line {number}: every line needs a path and at least one label")
        yield number, file, labels


def _jsonl_rows(path: Path, lines: Iterable[str]) -> Iterator[tuple[int, str, list[str]]]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = reading.loads_json(line, f"{path}, line {number}")
        except ConfigError as e:
            raise DataError(str(e)) from None
        if not isinstance(obj, dict) or not isinstance(obj.get("path"), str) or not obj["path"].strip():
            raise DataError(f"{path}, line {number}: expected an object with a 'path' string and 'labels'")
        labels = obj.get("labels", obj.get("label"))
        labels = [labels] if isinstance(labels, str) else labels
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
            raise DataError(f"{path}, line {number}: 'labels' must be a non-empty list of label names")
        yield number, obj["path"].strip(), labels


# -- 3. WebDataset shards --------------------------------------------------------------------------
def shard_paths(urls: str | Path | Sequence[str | Path]) -> list[Path]:
    """Local shard paths from paths or brace patterns (``shards/train-{000..099}.tar``)."""
    from webdataset.shardlists import expand_urls

    items = [urls] if isinstance(urls, (str, Path)) else list(urls)
    paths = [Path(u) for item in items for u in expand_urls(str(item))]
    if not paths:
        raise DataError(f"no shards in {urls!r}")
    for p in paths:
        if not p.is_file():
            raise DataError(f"no shard at {p}: check the path or brace pattern")
    return paths


def read_shards(urls: str | Path | Sequence[str | Path], hierarchy: HierarchySource = None,
                wordnet: WordNetSource = None, classes: Sequence[str] | Path | str | None = None) -> DiskIndex:
    """WebDataset shards: one image and one label (``cls`` or ``json``) per sample key. A ``cls``
    that is an integer indexes ``classes`` (a list, or a file of names one a line, such as timm's
    ``imagenet22k_synsets.txt``). Only label members are read; images are skipped unread."""
    paths = shard_paths(urls)
    names_of = _class_names(classes)
    space = _LabelSpace(hierarchy, wordnet)
    builder = IndexBuilder()
    for shard in paths:
        for key, image, raw in _shard_samples(shard):
            where = f"shard {shard}, sample {key!r}"
            if image is None:
                raise DataError(f"{where}: a label but no image; every sample needs an image")
            if raw is None:
                raise DataError(f"{where}: no label (a .cls or .json member); every sample needs one")
            builder.add(f"{shard}#{image}", [space.check(label, where) for label in _decode_label(raw, names_of, where)])
    if not len(builder):
        raise DataError(f"no samples in the shards {urls!r}")
    return builder.build(space.hierarchy(), "", "shards", str(urls))


def _shard_samples(shard: Path):
    """(key, image member name or None, (extension, bytes) of the label or None) per sample, in
    the shard's order; image bytes are never read."""
    from webdataset.tariterators import base_plus_ext, tar_file_iterator

    order: list[str] = []  # every key, in the shard's order
    order_set: set[str] = set()
    images: dict[str, str] = {}

    def select(fname: str) -> bool:
        key, ext = base_plus_ext(fname)
        if key is None:
            return False
        if key not in order_set:
            order.append(key)
            order_set.add(key)
        ext = ext.lower()
        if ext in SHARD_IMAGE_EXTENSIONS:
            images[key] = fname
            return False
        return ext in ("cls", "json")

    found: dict[str, tuple[str, bytes]] = {}
    try:
        with open(shard, "rb") as f:
            for member in tar_file_iterator(f, select_files=select):
                key, ext = base_plus_ext(member["fname"])
                if ext.lower() == "cls" or key not in found:
                    found[key] = (ext.lower(), member["data"])
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"shard {shard} is not a readable tar file ({e})") from None
    for key in order:
        if key in images or key in found:
            yield key, images.get(key), found.get(key)


def _class_names(classes: Sequence[str] | Path | str | None) -> list[str] | None:
    if classes is None or isinstance(classes, list | tuple):
        return None if classes is None else [str(c) for c in classes]
    p = _existing(classes, "class list")
    return [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def _decode_label(raw: tuple[str, bytes], names: list[str] | None, where: str) -> list[str]:
    ext, data = raw
    try:
        text = data.decode("utf-8").strip()
        value = reading.loads_json(text, where) if ext == "json" else text
    except (UnicodeDecodeError, ConfigError):
        raise DataError(f"{where}: its .{ext} label is not valid {'JSON' if ext == 'json' else 'text'}") from None
    if isinstance(value, dict):
        value = next((value[k] for k in ("labels", "label", "cls", "class") if k in value), None)
    values = value if isinstance(value, list) else [value]
    out = []
    for v in values:
        if isinstance(v, int) or (isinstance(v, str) and v.strip().lstrip("-").isdigit()):
            i = int(v)
            if names is None:
                raise DataError(f"{where}: label {i} is a class index; pass classes= (a file of class names, one a line)")
            if not 0 <= i < len(names):
                raise DataError(f"{where}: class index {i} is outside the {len(names)} classes given")
            out.append(names[i])
        elif isinstance(v, str) and v.strip():
            out.append(v.strip())
        else:
            raise DataError(f"{where}: no usable label in its .{ext} member (got {str(value)[:40]!r})")
    return out


# -- any of them ---------------------------------------------------------------------------------
def read_upstream(spec: str | Path | Sequence[str | Path], hierarchy: HierarchySource = None,
                  wordnet: WordNetSource = None, classes: Sequence[str] | Path | str | None = None) -> DiskIndex:
    """A folder of class folders, a manifest (.csv, .jsonl) or WebDataset shards (.tar, brace
    patterns, or a list of shards), told apart by the path."""
    if not isinstance(spec, (str, Path)) or "{" in str(spec) or str(spec).endswith(".tar"):
        return read_shards(spec, hierarchy, wordnet, classes)
    p = Path(spec)
    if p.is_dir():
        return read_folders(p, hierarchy, wordnet)
    if p.suffix.lower() in MANIFEST_SUFFIXES:
        return read_manifest(p, hierarchy, wordnet)
    raise DataError(f"no dataset at {p}: give a folder of class folders, a manifest (.csv or .jsonl) or "
                    f"WebDataset shards (.tar, brace patterns allowed)")
