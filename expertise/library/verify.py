"""``library verify``: every problem that would stop a member from loading, found without loading
it, one line each."""

from __future__ import annotations

from typing import TYPE_CHECKING

from expertise.errors import ExpertiseError, LibraryError
from expertise.library import banks
from expertise.library.checks import leftovers
from expertise.library.manifest import HIERARCHY, MANIFEST, MEMBERS, TOP_FILES
from expertise.library.upstream_meta import check_upstream

if TYPE_CHECKING:
    from expertise.library.core import Library


def verify(lib: Library) -> list[str]:
    """Every problem found, one line each; [] when every member is loadable. Checks the
    top-level files against their recorded hashes and schemas, each member's files (present,
    inside the library, matching their sha256), that its config passes its schema and builds
    exactly the tensors its safetensors headers hold, and reports files the manifest does not
    name and leftovers of interrupted writes (:meth:`clean` removes those)."""
    problems: list[str] = []
    for fname in TOP_FILES:
        try:
            if fname == HIERARCHY:
                lib.read_hierarchy()
            elif (meta := lib.read_meta(fname)) is not None:
                check_upstream(meta, str(lib.path / fname))
        except ExpertiseError as e:
            problems.append(str(e))
    for name in lib.names():
        member_problems = lib.problems(name)
        problems += member_problems
        folder, listed = lib.member_dir(name), lib.info(name).files
        if folder.is_dir():
            problems += [f"member {name!r}: {f} is not listed in the manifest; delete it or re-add the member"
                         for f in sorted(folder.iterdir()) if f.name not in listed]
        if not member_problems:
            try:
                lib.config(name)
            except LibraryError as e:
                problems.append(f"member {name!r}: unreadable config: {e}")
                continue
            try:
                lib.check_loadable(name)
            except LibraryError as e:
                problems.append(str(e))
    problems += [f"{f} is left over from an interrupted write (or one in progress); delete it when no writer holds the library"
                 for f in leftovers(lib.path)]
    problems += banks.stray_files(lib)
    members_dir = lib.path / MEMBERS
    if members_dir.is_dir():
        problems += [f"{d} is not a member named in {MANIFEST}; delete it or re-add the member"
                     for d in sorted(members_dir.iterdir()) if not d.name.startswith(".") and d.name not in lib]
    return problems
