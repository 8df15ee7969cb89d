"""Lock files shared by every writer of a library: the writer lock ``.lock`` (held while files are
swapped in and the manifest rewritten) and claims ``.claims/<member>`` (held while a member is
built, so a second builder waits for it instead of training it again).

A lock file holds its holder's pid and host and is created with O_CREAT|O_EXCL. While held, a
heartbeat thread touches it every :data:`HEARTBEAT_S` seconds. It is judged stale, and taken over
with a warning, when its holder on this host is no longer running, or, for a holder on another
host (whose pid cannot be checked), when it has shown no heartbeat for :data:`STALE_AFTER_S`.

A writer that finds the writer lock held by a live writer waits for it (:func:`acquire`), at most
:data:`LOCK_WAIT_S` seconds, and then says who holds it and when it last showed a heartbeat; a
builder waits for a claim as long as its holder shows a heartbeat, so a claim left by a dead
process on another host is taken over (with a warning that says so) once it is stale, never
waited on forever.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from expertise.errors import LibraryError, disk_error
from expertise.library.manifest import CLAIMS, check_name

if TYPE_CHECKING:
    from expertise.library.core import Library

HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0  # a lock of another host without a heartbeat for this long is stale
# A lock file without a readable pid is only presumed stale after this long: its writer may be
# between creating the file and writing the pid into it.
UNREADABLE_GRACE_S = 10.0
LOCK_WAIT_S = 120.0  # how long a writer waits for another writer's lock (held only while files are swapped in)
LOCK_POLL_S = 0.1


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def holder(lock: Path) -> tuple[int | None, str | None]:
    """(pid, host) written in a lock file; (None, None) when it cannot be read."""
    try:
        lines = lock.read_text().split()
        return int(lines[0]), (lines[1] if len(lines) > 1 else None)
    except (OSError, ValueError, IndexError):
        return None, None


def age(lock: Path) -> float:
    """Seconds since the lock's last heartbeat (infinite when it is gone)."""
    try:
        return time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


def stale_reason(lock: Path) -> str | None:
    """Why the lock's holder is presumed gone, or None while it may be alive."""
    pid, host = holder(lock)
    if pid is None:
        return "it names no holder" if age(lock) > UNREADABLE_GRACE_S else None
    if host is not None and host != socket.gethostname():
        seconds = age(lock)
        if seconds > STALE_AFTER_S:
            return f"pid {pid} on host {host} has shown no sign of life for {seconds:.0f} s (stale after {STALE_AFTER_S:.0f} s)"
        return None
    return None if pid_alive(pid) else f"pid {pid} on this host is no longer running"


@contextlib.contextmanager
def directory_mutex(path: Path) -> Iterator[None]:
    """flock on a folder, so two writers cannot both judge a lock stale and both take it over.
    Only held for the instant of acquiring; a no-op where flock is unavailable."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class _Heartbeat:
    """Touches a lock file every ``interval`` seconds until stopped."""

    def __init__(self, lock: Path, interval: float = HEARTBEAT_S) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(lock, interval), daemon=True, name=f"heartbeat {lock.name}")
        self._thread.start()

    def _run(self, lock: Path, interval: float) -> None:
        while not self._stop.wait(interval):
            with contextlib.suppress(OSError):
                os.utime(lock)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def try_acquire(lock: Path) -> tuple[int | None, str | None] | None:
    """Create ``lock`` for this process (taking over a stale one, with a warning). Returns None on
    success, or the (pid, host) of the live holder."""
    try:
        with directory_mutex(lock.parent):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                reason = stale_reason(lock)
                if reason is None:
                    return holder(lock)
                warnings.warn(f"taking over the stale lock {lock}: {reason}", stacklevel=3)
                lock.unlink(missing_ok=True)  # safe under the directory mutex
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(f"{os.getpid()}\n{socket.gethostname()}\n")
            except BaseException:
                lock.unlink(missing_ok=True)
                raise
    except OSError as e:
        raise disk_error(e, lock) from None
    return None


@contextlib.contextmanager
def held(lock: Path) -> Iterator[None]:
    """Keep an acquired lock alive with a heartbeat; remove it on exit."""
    beat = _Heartbeat(lock)
    try:
        yield
    finally:
        beat.stop()
        lock.unlink(missing_ok=True)


def heartbeat_note(lock: Path, host: str | None) -> str:
    """When the lock last showed a heartbeat, and, for another host's, when it will be judged stale."""
    seconds = age(lock)
    if seconds == float("inf"):
        return "just released"
    note = f"last heartbeat {seconds:.0f} s ago"
    if host is not None and host != socket.gethostname():
        note += f"; taken over after {STALE_AFTER_S:.0f} s without one"
    return note


def locked_error(library: Path, lock: Path, who: tuple[int | None, str | None], waited: float = 0.0) -> LibraryError:
    pid, host = who
    waiting = f"waited {waited:.0f} s; " if waited >= 1 else ""
    return LibraryError(
        f"the library at {library} is locked by another writer (pid {pid} on {host or 'this host'}, "
        f"{heartbeat_note(lock, host)}); {waiting}wait for it to finish, or delete {lock} if no such process is running"
    )


def acquire(lock: Path, library: Path, wait_s: float | None = None) -> None:
    """Take the writer lock ``lock`` of ``library``, waiting while a live writer holds it, at most
    ``wait_s`` seconds (default :data:`LOCK_WAIT_S`); then one line that names the holder. A lock
    whose holder is gone (:func:`stale_reason`) is taken over at once, with a warning."""
    limit = LOCK_WAIT_S if wait_s is None else wait_s
    start = time.monotonic()
    while True:
        who = try_acquire(lock)
        if who is None:
            return
        waited = time.monotonic() - start
        if waited >= limit:
            raise locked_error(library, lock, who, waited)
        time.sleep(min(LOCK_POLL_S, max(limit - waited, 0.0)))


@contextlib.contextmanager
def claim(lib: Library, name: str, log: Callable[[str], None] = print, done: Callable[[], bool] | None = None,
          poll_s: float = 2.0) -> Iterator[bool]:
    """Claim the building of ``name`` (a member, or a unit such as an adapter bank), so two
    builders never train the same thing: a second process waits while the claim is held.
    Yields True when this process should build it, False when it is done (``done()``, by
    default: the member exists), perhaps by the process this one waited for."""
    is_done = done or (lambda: name in lib)
    lock = lib.path / CLAIMS / check_name(name)
    try:
        lock.parent.mkdir(exist_ok=True)
    except OSError as e:
        raise disk_error(e, lock.parent) from None
    told = False
    while True:
        lib.refresh()
        if is_done():
            yield False
            return
        who = try_acquire(lock)
        if who is None:
            break
        if not told:
            log(f"{name} is being built by pid {who[0]} on {who[1] or 'this host'} ({heartbeat_note(lock, who[1])}); "
                f"waiting for it (delete {lock} if no such process is running)")
            told = True
        time.sleep(poll_s)
    with held(lock):
        lib.refresh()
        yield not is_done()
