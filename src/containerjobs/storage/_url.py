"""One string names a store: `storage_from_url` turns it into one."""

from __future__ import annotations

import importlib
import re
from typing import cast
from urllib.parse import unquote, urlsplit

from ._base import Storage
from ._memory import InMemoryStorage
from ._sqlite import SQLiteStorage

_SCHEMES = "memory://, sqlite:///PATH (or a bare path), postgresql://USER:PASSWORD@HOST:PORT/DB"


def mask_url(url: str) -> str:
    """`url` with the password of its user part replaced by ``***``."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def storage_from_url(url: str) -> Storage:
    """The store a URL names, not opened yet.

    - ``memory://``: `InMemoryStorage`;
    - ``sqlite:///srv/jobs.db`` (the path after ``sqlite://``, so three slashes before
      an absolute path), or a bare path such as ``jobs.db``: `SQLiteStorage`;
    - ``postgresql://user:password@host:5432/db`` (or ``postgres://``): `PostgresStorage`
      (the extra ``containerjobs[postgres]``).

    Raises `ValueError` for any other scheme; the message never shows a password.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError("a store URL must be a non-empty str")
    if "://" not in url:
        return SQLiteStorage(url)  # a bare path, as --db has always taken
    scheme = url.split("://", 1)[0].lower()
    if scheme == "memory":
        if url.split("://", 1)[1].strip("/"):
            raise ValueError(f"memory:// takes nothing after it, got {mask_url(url)!r}")
        return InMemoryStorage()
    if scheme == "sqlite":
        parts = urlsplit(url)
        path = unquote(parts.path)
        if parts.netloc or not path or path == "/":
            raise ValueError(
                f"{mask_url(url)!r} is not a SQLite store URL: write sqlite:///PATH "
                "(sqlite:///srv/jobs.db for /srv/jobs.db), or the bare path"
            )
        return SQLiteStorage(path)
    if scheme in ("postgresql", "postgres"):
        # Loaded when named: its driver is the extra containerjobs[postgres].
        postgres = importlib.import_module("containerjobs.storage._postgres")
        return cast(Storage, postgres.PostgresStorage(url))
    raise ValueError(f"unknown store URL {mask_url(url)!r}: use one of {_SCHEMES}")
