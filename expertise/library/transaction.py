"""The one transaction every library writer uses: staged files and folders are moved into place,
whatever they replace is moved aside, and the manifest rewrite commits. If anything fails before
the commit, every move is undone in reverse order, so the library is exactly as it was; after the
commit, what was moved aside is deleted."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from expertise.errors import disk_error
from expertise.library.manifest import RETIRED


class Transaction:
    """``with Transaction() as tx: tx.put(staged, final); tx.remove(old); tx.commit(write_manifest)``."""

    def __init__(self) -> None:
        self._tag = uuid.uuid4().hex[:8]
        self._moves: list[tuple[Path, Path]] = []
        self._retired: list[Path] = []
        self._committed = False

    def _move(self, src: Path, dst: Path) -> None:
        try:
            os.replace(src, dst)
        except OSError as e:
            raise disk_error(e, dst) from None
        self._moves.append((src, dst))

    def remove(self, final: Path) -> None:
        """Move ``final`` (a file or folder) aside; deleted at commit, restored on failure."""
        if final.exists():
            aside = final.with_name(f"{RETIRED}{final.name}-{self._tag}")
            self._move(final, aside)
            self._retired.append(aside)

    def put(self, staged: Path, final: Path) -> None:
        """Move ``staged`` to ``final`` (its folder made when missing), moving aside what was there."""
        self.remove(final)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise disk_error(e, final.parent) from None
        self._move(staged, final)

    def commit(self, write_manifest: Callable[[], None]) -> None:
        write_manifest()
        self._committed = True

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if self._committed:
            for path in self._retired:
                if path.is_dir() and not path.is_symlink():  # a link is removed, never what it leads to
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            return
        for src, dst in reversed(self._moves):  # not committed: undo, newest first
            os.replace(dst, src)
