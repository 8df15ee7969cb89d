"""The project's exceptions. Each message says what is wrong and what to do about it.

The command line catches :class:`ExpertiseError` and prints its message on one line, so a user
never sees a traceback for bad input; anything else is a bug and keeps its traceback.
"""


class ExpertiseError(Exception):
    """Base class for every error a user can cause and fix."""


class DataError(ExpertiseError):
    """A dataset or task cannot be read or is not usable as given."""


class LibraryError(ExpertiseError):
    """A model library is missing, locked, inconsistent or tampered with."""


class ConfigError(ExpertiseError):
    """A configuration value is out of range or inconsistent."""
