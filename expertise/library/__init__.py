"""A model library on disk: a manifest plus one folder per pool member.

Layout::

    LIBRARY/
      library.json                 manifest {"format": 1, "files": {top-level file: sha256}, "members": {name: entry}}
      hierarchy.json               the upstream Hierarchy (absent for a library of external models)
      upstream.json                which preset and world built it (absent for external models)
      members/<name>/config.json   member_config(): rebuilds the module with model_from_config
      members/<name>/model.safetensors
      members/<name>/label_prior.safetensors   optional: "prior", float64 [num_label_nodes]
      adapters/<bank>.safetensors  the adapters of every adapter expert of one bank (all in one file)
      adapters/<bank>.json         the bank's structure: experts, reduction, parent backbone
      .lock                        present while a writer holds the library: its pid and host
      .claims/<name>               present while a process builds member <name>

A library may come from someone else, so it is data, never code: weights are safetensors and
everything else is JSON checked against a schema with bounds before anything is built from it;
nothing is ever unpickled. Every file is written under a temporary name and renamed into place; a
member is assembled in a hidden staging folder and swapped in by one transaction whose commit is
the manifest rewrite, so an error or a crash never leaves a half-written member that the manifest
names. The sha256 of every member file and of the top-level files is kept in the manifest and
checked by :meth:`Library.load` and :meth:`Library.verify`, which also checks that every member
builds exactly the tensors its safetensors headers hold.

Modules: :mod:`.manifest` (format, entries), :mod:`.checks` (what makes a member loadable),
:mod:`.locking` (writer lock and build claims), :mod:`.transaction` (the one commit path), :mod:`.verify`,
:mod:`.banks` (adapter-bank storage), :mod:`.upstream_meta` (``upstream.json``'s schema),
:mod:`.admission` (what a writer checks first) and :mod:`.core` (the :class:`Library` facade).
"""

from expertise.library.core import Library
from expertise.library.manifest import (
    ADAPTERS, CONFIG, FORMAT, HIERARCHY, KINDS, MANIFEST, MEMBERS, PRIOR, UPSTREAM, WEIGHTS, MemberInfo,
)

__all__ = ["Library", "MemberInfo", "KINDS", "FORMAT", "MANIFEST", "HIERARCHY", "UPSTREAM", "MEMBERS", "CONFIG",
           "WEIGHTS", "PRIOR", "ADAPTERS"]
