"""The WordNet 3.0 noun hierarchy, for ImageNet-21k-style classes named by wnids.

A wnid is ``n`` plus the 8-digit offset of a noun synset in WordNet 3.0's ``data.noun``; a synset's
parents are its hypernyms (``@`` pointers) and instance hypernyms (``@i``: "Sun" is an instance of
"star"). WordNet's nouns form a DAG (about 2,200 synsets have several parents) with one top,
``entity`` (n00001740). :meth:`WordNet.hierarchy` turns a list of class wnids into the
:class:`~expertise.data.hierarchy.Hierarchy` of the classes and all their ancestors, ``entity``
hanging under the hierarchy's root; classes may be ancestors of other classes (ImageNet-21k's "dog"
is an ancestor of its dog breeds), so not every class is a leaf.

Where it comes from: :meth:`WordNet.load` reads a ``data.noun`` given by path (Debian's
``wordnet-base`` installs ``/usr/share/wordnet/data.noun``) or, with no path, the compact table
shipped in this package (``wordnet_hypernyms.txt.gz``: every synset that is a class of timm's
ImageNet class lists or an ancestor of one, with its parents and first lemma; licence notice in
``WORDNET_LICENSE.txt``). ``python -m expertise.data.wordnet --build-table`` regenerates the table.
"""

from __future__ import annotations

import argparse
import gzip
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from expertise.data.hierarchy import ROOT, Hierarchy
from expertise.errors import DataError

WNID = re.compile(r"^n\d{8}$")
ENTITY = "n00001740"  # the one top of WordNet's noun hierarchy
SYSTEM_DATA_NOUN = Path("/usr/share/wordnet/data.noun")  # Debian / Ubuntu: apt-get install wordnet-base
TABLE_NAME = "wordnet_hypernyms.txt.gz"
LICENSE_NAME = "WORDNET_LICENSE.txt"
PARENT_POINTERS = ("@", "@i")  # hypernym, instance hypernym
TIMM_LISTS = ("imagenet21k_goog", "imagenet22k", "imagenet22k_ms", "imagenet21k_miil", "imagenet21k_miil_w21",
              "imagenet12k", "imagenet", "imagenet_a", "imagenet_r", "mini_imagenet")  # <name>_synsets.txt in timm


def check_wnid(wnid: str) -> str:
    if not isinstance(wnid, str) or not WNID.fullmatch(wnid):
        raise DataError(f"{str(wnid)[:60]!r} is not a wnid: a wnid is 'n' and the 8-digit WordNet 3.0 noun offset, "
                        f"e.g. n02084071")
    return wnid


@dataclass(frozen=True)
class WordNet:
    """Noun synsets by wnid: ``parents[w]`` (hypernyms and instance hypernyms, in the file's order;
    empty for ``entity`` only) and ``names[w]`` (the first lemma). ``source`` says where they were
    read; ``complete`` is False for the packaged table, which holds only ImageNet's synsets."""

    parents: Mapping[str, tuple[str, ...]]
    names: Mapping[str, str]
    source: str
    complete: bool

    # -- reading -------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: Path | str | None = None) -> WordNet:
        """The packaged table with no path; else ``data.noun`` (or a folder holding it, such as
        ``/usr/share/wordnet``), or a table written by :meth:`write_table`."""
        if path is None:
            return cls.packaged()
        p = Path(path)
        if p.is_dir():
            p = p / "data.noun"
        if not p.exists():
            hint = f" (it is installed at {SYSTEM_DATA_NOUN})" if SYSTEM_DATA_NOUN.exists() else \
                " (Debian/Ubuntu: apt-get install wordnet-base installs /usr/share/wordnet/data.noun)"
            raise DataError(f"no WordNet file at {p}: give the path of WordNet 3.0's data.noun{hint}")
        if p.name.endswith(".gz"):
            return cls.from_table(p)
        return cls.from_data_noun(p)

    @classmethod
    def packaged(cls) -> WordNet:
        """The table shipped in this package (no download, no system package needed)."""
        ref = resources.files("expertise.data") / TABLE_NAME
        with ref.open("rb") as f:
            return cls._parse_table(f.read(), f"the packaged {TABLE_NAME}", complete=False)

    @classmethod
    def from_table(cls, path: Path) -> WordNet:
        try:
            raw = Path(path).read_bytes()
        except OSError as e:
            raise DataError(f"{path} cannot be read ({e.strerror or e})") from None
        return cls._parse_table(raw, str(path), complete=False)

    @classmethod
    def _parse_table(cls, raw: bytes, source: str, complete: bool) -> WordNet:
        try:
            text = gzip.decompress(raw).decode("utf-8")
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise DataError(f"{source} is not a gzip-compressed WordNet table ({e}); regenerate it with "
                            f"python -m expertise.data.wordnet --build-table") from None
        parents: dict[str, tuple[str, ...]] = {}
        names: dict[str, str] = {}
        for number, line in enumerate(text.splitlines(), 1):
            if not line or line.startswith("#"):
                continue
            fields = line.split(" ")
            if len(fields) < 2 or not all(f.isdigit() and len(f) == 8 for f in (fields[0], *fields[2:])):
                raise DataError(f"{source}, line {number}: expected 'offset lemma parent-offset ...', got {line[:60]!r}")
            parents["n" + fields[0]] = tuple("n" + f for f in fields[2:])
            names["n" + fields[0]] = fields[1]
        return cls(parents, names, source, complete)

    @classmethod
    def from_data_noun(cls, path: Path) -> WordNet:
        """Parse WordNet 3.0's ``data.noun``: ``offset lex_filenum ss_type w_cnt (word lex_id)*
        p_cnt (pointer offset pos source/target)* | gloss``; lines starting with two spaces are the
        licence header."""
        parents: dict[str, tuple[str, ...]] = {}
        names: dict[str, str] = {}
        try:
            with open(path, encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    if line.startswith("  ") or not line.strip():
                        continue
                    wnid, name, ps = _parse_data_line(line, path, number)
                    parents[wnid] = ps
                    names[wnid] = name
        except OSError as e:
            raise DataError(f"{path} cannot be read ({e.strerror or e})") from None
        except UnicodeDecodeError:
            raise DataError(f"{path} is not a text file; give WordNet 3.0's data.noun") from None
        if not parents:
            raise DataError(f"{path} holds no noun synsets; give WordNet 3.0's data.noun")
        return cls(parents, names, str(path), complete=True)

    # -- queries -------------------------------------------------------------------------------
    def __contains__(self, wnid: object) -> bool:
        return wnid in self.parents

    def name(self, wnid: str) -> str:
        return self.names[self._known(wnid)]

    def missing(self, wnids: Iterable[str]) -> list[str]:
        """The given wnids (checked for form) that are not synsets here, in the given order."""
        return [w for w in wnids if check_wnid(w) not in self.parents]

    def closure(self, wnids: Iterable[str]) -> set[str]:
        """The wnids and every ancestor of each (all must be known)."""
        seen: set[str] = set()
        stack = [self._known(w) for w in wnids]
        while stack:
            w = stack.pop()
            if w in seen:
                continue
            seen.add(w)
            stack.extend(p for p in self.parents[w] if p not in seen)
        return seen

    def ancestors(self, wnid: str) -> set[str]:
        """Strict ancestors of one synset, up to ``entity``."""
        return self.closure([wnid]) - {wnid}

    def hierarchy(self, classes: Sequence[str]) -> Hierarchy:
        """The :class:`Hierarchy` of ``classes`` (wnids) and all their ancestors: ``entity`` under
        the root, each other node under its WordNet parents. Every class must be a known synset."""
        missing = self.missing(classes)
        if missing:
            raise DataError(self.missing_message(missing))
        nodes = self.closure(classes)
        parents: dict[str, tuple[str, ...]] = {ROOT: ()}
        for w in sorted(nodes):
            parents[w] = self.parents[w] or (ROOT,)
        return Hierarchy(parents)

    def missing_message(self, missing: Sequence[str]) -> str:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        if self.complete:
            advice = "they are not WordNet 3.0 noun synsets: rename or remove those classes, or give a hierarchy file"
        else:
            advice = ("the packaged table holds only the synsets of timm's ImageNet class lists: give WordNet 3.0's "
                      "data.noun instead" + (f" (installed at {SYSTEM_DATA_NOUN})" if SYSTEM_DATA_NOUN.exists()
                                             else " (apt-get install wordnet-base installs /usr/share/wordnet/data.noun)"))
        return f"{len(missing)} wnid(s) not found in {self.source}: {shown}; {advice}"

    def _known(self, wnid: str) -> str:
        if check_wnid(wnid) not in self.parents:
            raise DataError(self.missing_message([wnid]))
        return wnid

    # -- the packaged table --------------------------------------------------------------------
    def table_bytes(self, classes: Iterable[str], license_text: str) -> bytes:
        """A deterministic gzip table of the classes and all their ancestors: ``offset lemma
        parent-offset ...`` per synset, sorted by offset, after a header of ``#`` lines that carries
        the WordNet licence."""
        lines = ["# Derived from WordNet 3.0's data.noun: noun synsets, their first lemma, their hypernym (@) and",
                 "# instance hypernym (@i) parents. Regenerate: python -m expertise.data.wordnet --build-table",
                 "#",
                 *("# " + line if line else "#" for line in license_text.strip().splitlines())]
        for w in sorted(self.closure(classes)):
            lines.append(" ".join([w[1:], self.names[w], *(p[1:] for p in self.parents[w])]))
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
            gz.write(("\n".join(lines) + "\n").encode("utf-8"))
        return buf.getvalue()


def _parse_data_line(line: str, path: Path, number: int) -> tuple[str, str, tuple[str, ...]]:
    fields = line.split(" | ", 1)[0].split()
    try:
        offset, ss_type, w_cnt = fields[0], fields[2], int(fields[3], 16)
        i = 4 + 2 * w_cnt
        name, p_cnt = fields[4], int(fields[i])
        pointers = fields[i + 1:i + 1 + 4 * p_cnt]
        if len(pointers) != 4 * p_cnt or not (offset.isdigit() and len(offset) == 8) or ss_type != "n":
            raise ValueError
    except (IndexError, ValueError):
        raise DataError(f"{path}, line {number}: not a WordNet 3.0 data.noun synset line ({line[:60]!r}); "
                        f"give the data.noun of WordNet 3.0") from None
    parents = tuple("n" + pointers[j + 1] for j in range(0, len(pointers), 4)
                    if pointers[j] in PARENT_POINTERS and pointers[j + 2] == "n")
    return "n" + offset, name, parents


def timm_synsets(name: str) -> list[str]:
    """A class list timm ships (``timm/data/_info/<name>_synsets.txt``), e.g. ``imagenet21k_goog``
    (21,843 wnids, ImageNet-21k fall 2011), ``imagenet22k`` (21,841), ``imagenet`` (ImageNet-1k)."""
    ref = resources.files("timm.data") / "_info" / f"{name}_synsets.txt"
    if not ref.is_file():
        raise DataError(f"timm has no class list {name!r}; known: {', '.join(TIMM_LISTS)}")
    return [w for w in ref.read_text(encoding="utf-8").split() if w]


def license_text() -> str:
    return (resources.files("expertise.data") / LICENSE_NAME).read_text(encoding="utf-8")


def build_table(data_noun: Path, out: Path, lists: Sequence[str] = TIMM_LISTS) -> tuple[int, int]:
    """Write the packaged table from ``data_noun`` for timm's class lists; (synsets, bytes)."""
    from expertise.io import atomic_write_bytes

    wn = WordNet.from_data_noun(data_noun)
    classes = sorted({w for name in lists for w in timm_synsets(name)})
    missing = wn.missing(classes)
    if missing:
        raise DataError(wn.missing_message(missing))
    raw = wn.table_bytes(classes, license_text())
    atomic_write_bytes(out, raw)
    return len(wn.closure(classes)), len(raw)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m expertise.data.wordnet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--build-table", action="store_true", help=f"regenerate the packaged {TABLE_NAME}")
    parser.add_argument("--data-noun", type=Path, default=SYSTEM_DATA_NOUN, help="WordNet 3.0's data.noun")
    parser.add_argument("--out", type=Path, default=Path(str(resources.files("expertise.data") / TABLE_NAME)))
    args = parser.parse_args(argv)
    if not args.build_table:
        parser.error("nothing to do: pass --build-table")
    n, size = build_table(args.data_noun, args.out)
    print(f"wrote {args.out}: {n:,} synsets, {size:,} bytes")


if __name__ == "__main__":
    main()
