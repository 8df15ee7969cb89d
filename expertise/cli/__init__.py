"""The ``expertise`` command line: one thin function per command, parsing and calling the API.

A user error (:class:`~expertise.errors.ExpertiseError`) prints one line and exits with status 2;
a warning prints one line, ``warning: ...`` (installed by :func:`main`, the entry point, never on
import). Commands live by stage in this package's modules; importing them registers them on ``app``.
"""

from __future__ import annotations

import sys

# Importing the command modules registers their commands; this order is the order of the help.
from expertise.cli import upstream_cmds, select_cmds, transfer_cmds, bench_cmds, library_cmds  # noqa: F401, I001
from expertise.cli.common import _registry_help, app, show_warning, user_errors

__all__ = ["app", "main", "user_errors", "_registry_help"]


def main() -> None:
    import warnings

    warnings.showwarning = show_warning
    app(prog_name="expertise")


if __name__ == "__main__":
    sys.exit(main())
