"""A full disk, told apart from other failures (issue 23 item 8).

A full disk surfaces as ``OSError(ENOSPC)`` (or EDQUOT, a quota) from file writes (thumbnails, uploads), as
SQLite's ``database or disk is full`` (``sqlite3.OperationalError``, SQLITE_FULL, wrapped by SQLAlchemy) and as
PostgreSQL's ``disk_full`` (SQLSTATE 53100, "could not extend file ... No space left on device"). The
database rolls the transaction back in every case, so the callers stop cleanly with a message that says
"disk full" and where, instead of a traceback.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
DISK_FULL_TEXTS = ("database or disk is full", "no space left on device", "disk quota exceeded")
PG_DISK_FULL = "53100"


def is_disk_full(error: BaseException | None) -> bool:
    """True when ``error``, or an error it wraps or was raised from, means the disk (or quota) is full."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
            return True
        if getattr(error, "sqlstate", None) == PG_DISK_FULL or getattr(error, "pgcode", None) == PG_DISK_FULL:
            return True
        if getattr(error, "sqlite_errorcode", None) == 13:  # SQLITE_FULL
            return True
        if any(text in str(error).lower() for text in DISK_FULL_TEXTS):
            return True
        wrapped = getattr(error, "orig", None)  # sqlalchemy.exc.DBAPIError wraps the driver's error
        error = wrapped if isinstance(wrapped, BaseException) else error.__cause__ or error.__context__
    return False


def mount_point(path: Path) -> Path:
    """The mount point of the file system holding ``path`` (its nearest existing ancestor)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def device_of(error: BaseException, *, files: Path, database_url: str | None) -> str:
    """Where space must be freed, in words: the file system of the file that failed (or of ``files``, where
    the writes go), or of the SQLite database, or the PostgreSQL server's disk."""
    filename = error.filename if isinstance(error, OSError) and isinstance(error.filename, str) else None
    if isinstance(error, OSError):
        return str(mount_point(Path(filename) if filename else files))
    url = database_url or ""
    if url.startswith("sqlite"):
        from sqlalchemy.engine import make_url

        database = make_url(url).database
        if database and database != ":memory:":
            return str(mount_point(Path(database)))
    if url:
        return "the database server's disk"
    return str(mount_point(files))
