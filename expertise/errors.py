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


class ModelError(ExpertiseError):
    """A saved fine-tuned model folder is missing, incomplete, of another format, malformed or
    tampered with."""


class DiskError(ExpertiseError, OSError):
    """A file could not be written for a reason of the disk: no space, read-only, permissions. It
    is an ``OSError`` too, so code that handles those keeps working."""


_ADVICE = {
    "ENOSPC": "no space left on the device: free some space or choose a folder on another disk, then run the same command again",
    "EDQUOT": "disk quota exceeded: free some space or choose a folder on another disk, then run the same command again",
    "EROFS": "the file system is read-only: choose a writable folder (or copy the library to one)",
    "EACCES": "permission denied: choose a folder you may write to, or ask its owner for write access",
    "EPERM": "operation not permitted: choose a folder you may write to, or ask its owner for write access",
}


def disk_error(error: OSError, path: object = None) -> DiskError:
    """One line for an ``OSError`` of the disk, naming the path and what to do; nothing is left
    half-written by the project's writers, so the advice is always to fix the disk and rerun."""
    import errno

    if isinstance(error, DiskError):
        return error
    name = errno.errorcode.get(error.errno or 0, "")
    where = path if path is not None else (error.filename or "a file")
    advice = _ADVICE.get(name, f"{error.strerror or error}: check the disk and the path")
    return DiskError(f"cannot write {where}: {advice}")
