"""The one registry type: a name -> spec table for each kind of thing the tool looks up by name
(proxies, selection strategies, unit kinds, backbone shapes, member classes).

A name is registered once (a second registration under it is refused unless it says ``replace``:
a module reloaded, a test's stand-in), and an unknown name is one line that names the closest
registered names and every choice, so a typo on the command line or in a file from elsewhere says
what to type instead. A registry may name a ``loader``: a function run once before the first
lookup that imports the modules registering the built-in entries (the unit kinds live beside their
stages, which import the registry, not the other way round).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from expertise.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """``name -> spec`` for one kind of thing (``what``, as messages say it: "proxy", "unit kind")."""

    def __init__(self, what: str, loader: Callable[[], None] | None = None, hint: str = "") -> None:
        self.what = what
        self.hint = hint  # what an unknown-name message adds (e.g. how workers and coordinator must agree)
        self._entries: dict[str, T] = {}
        self._loader = loader

    def _load(self) -> None:
        loader, self._loader = self._loader, None
        if loader is not None:
            loader()

    def register(self, name: str, spec: T, replace: bool = False) -> T:
        """Add ``spec`` under ``name``; a name taken by another spec is refused unless ``replace``."""
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a {self.what} needs a name, got {name!r}")
        if name in self._entries and not replace and self._entries[name] is not spec:
            raise ConfigError(f"{self.what} {name!r} is registered already; pick another name, or pass replace=True "
                              "to swap it")
        self._entries[name] = spec
        return spec

    def remove(self, name: str) -> T | None:
        """Take ``name`` out (a test's stand-in); its spec, or None when it was not registered."""
        return self._entries.pop(name, None)

    def __call__(self, name: str, replace: bool = False) -> Callable[[T], T]:
        """A decorator: register the decorated object under ``name``."""
        def deco(spec: T) -> T:
            return self.register(name, spec, replace)
        return deco

    def get(self, name: str) -> T:
        """The spec called ``name``; one line naming the closest and all registered names otherwise."""
        self._load()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            pass
        known = list(self._entries)
        close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.6)
        guess = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise ConfigError(f"unknown {self.what} {name!r}; {guess}choose one of: {', '.join(known)}"
                          + (f" ({self.hint})" if self.hint else "")) from None

    __getitem__ = get

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(list(self._entries))

    def __len__(self) -> int:
        self._load()
        return len(self._entries)

    def names(self) -> list[str]:
        """Every registered name, in registration order."""
        self._load()
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        self._load()
        return list(self._entries.items())

    def values(self) -> list[T]:
        self._load()
        return list(self._entries.values())

    def copy(self) -> Registry[T]:
        """A registry of the same entries (a test that adds one, then puts the original back)."""
        self._load()
        out: Registry[T] = Registry(self.what, hint=self.hint)
        out._entries = dict(self._entries)
        return out

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, {len(self._entries)} entries)"
