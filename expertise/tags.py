"""Authentication tags for what this installation derives and keeps beside a library: embedding
cache entries and unit records. Neither is checked by a library's manifest (they are recomputable),
and both travel with a folder someone sends; a forged one could change a pick or a reported
accuracy. So each carries an HMAC-SHA256 tag over its identity and content, made with a key that
never lives in a library or an output folder, and an entry whose tag does not verify (copied from
another machine, edited, truncated, written by an older expertise) is ignored and recomputed.

The key: ``EXPERTISE_KEY`` (any text: set the same on every machine of a cluster that shares caches
or records), else the file ``EXPERTISE_KEY_FILE``, else ``$XDG_CACHE_HOME/expertise/key`` (default
``~/.cache/expertise/key``), made with 32 random bytes (mode 0600) on first use. docs/security.md
says what a tag proves and what it does not.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from expertise.errors import ConfigError

KEY_ENV, KEY_FILE_ENV = "EXPERTISE_KEY", "EXPERTISE_KEY_FILE"
_keys: dict[str, bytes] = {}


def key_path() -> Path:
    """Where the key file is (made on first use when missing)."""
    given = os.environ.get(KEY_FILE_ENV)
    if given:
        return Path(given)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "expertise" / "key"


def key() -> bytes:
    """This installation's key (see the module docstring), read once per process and source."""
    text = os.environ.get(KEY_ENV)
    if text:
        return hashlib.sha256(b"expertise key\0" + text.encode("utf-8")).digest()
    path = key_path()
    cached = _keys.get(str(path))
    if cached is not None:
        return cached
    try:
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
            try:
                os.link(tmp, path)  # the first process to make it wins; every other one reads that key
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
        value = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read or make the key that authenticates caches and records at {path} ({e}); set "
                          f"{KEY_ENV} or {KEY_FILE_ENV} to a key of your own") from None
    if len(value) < 16:
        raise ConfigError(f"the key at {path} is {len(value)} bytes; delete it (a new one is made) or set {KEY_ENV}")
    _keys[str(path)] = value
    return value


def tag(kind: str, identity: str, content: bytes) -> str:
    """The hex tag of ``content`` as the ``kind`` entry ``identity`` (where it is filed: a record's
    kind and key, a cache entry's member, task and split)."""
    msg = b"\0".join([kind.encode(), identity.encode(), hashlib.sha256(content).digest()])
    return hmac.new(key(), msg, hashlib.sha256).hexdigest()


def verify(kind: str, identity: str, content: bytes, given: object) -> bool:
    """Whether ``given`` is the tag :func:`tag` makes of the same things."""
    return isinstance(given, str) and hmac.compare_digest(given, tag(kind, identity, content))
