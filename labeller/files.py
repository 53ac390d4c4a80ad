"""Reading files that users point the importer at, defensively.

- Only regular files are opened, and opening never blocks: a FIFO named ``x.jpg`` would otherwise hang
  the import for ever, and ``/dev/zero`` behind a symlink would fill the memory.
- Content is hashed by streaming, and files above a size cap are refused before they are read.
- File names that are not valid UTF-8 (possible on Linux) cannot be stored in the database; they are
  reported, with the name escaped so that printing the report cannot fail either.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import BinaryIO

# Far above any photo or scan we expect; PIL's pixel limit still guards against decompression bombs.
MAX_FILE_BYTES = 512 * 1024 * 1024
_CHUNK = 1 << 20


class FileRefused(Exception):
    """A file that is not read; ``reason`` says why, for the import report."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def printable(path: Path | str) -> str:
    """The path as text that encodes to UTF-8: undecodable bytes appear as ``\\udcxx`` escapes."""
    return str(path).encode("utf-8", "backslashreplace").decode("utf-8")


def is_utf8_name(path: Path | str) -> bool:
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:  # os.fsdecode turned undecodable bytes into lone surrogates
        return False
    return True


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def open_regular(path: Path, *, max_bytes: int = MAX_FILE_BYTES) -> BinaryIO:
    """Open ``path`` for reading if (after following links) it is a regular file of at most ``max_bytes``."""
    try:
        # O_NONBLOCK: opening a FIFO for reading returns at once instead of waiting for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as error:
        reason = "broken link" if path.is_symlink() else "file vanished or does not exist"
        raise FileRefused(f"unreadable: {reason}") from error
    except PermissionError as error:
        raise FileRefused("unreadable: permission denied") from error
    except OSError as error:
        raise FileRefused(f"unreadable: {error.strerror or error}") from error
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileRefused(f"not a regular file: {_kind(info.st_mode)}")
        if info.st_size > max_bytes:
            raise FileRefused(f"too large: {info.st_size:,} bytes (the limit is {max_bytes:,})")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def hash_file(path: Path, *, max_bytes: int = MAX_FILE_BYTES) -> tuple[str, int]:
    """SHA-256 (hex) and size of a regular file, read in 1 MiB chunks; raises :class:`FileRefused`."""
    digest = hashlib.sha256()
    size = 0
    with open_regular(path, max_bytes=max_bytes) as stream:
        try:
            while chunk := stream.read(_CHUNK):
                size += len(chunk)
                if size > max_bytes:  # it grew after the size check
                    raise FileRefused(f"too large: over {max_bytes:,} bytes")
                digest.update(chunk)
        except OSError as error:
            raise FileRefused(f"unreadable: {error.strerror or error}") from error
    return digest.hexdigest(), size


def read_regular(path: Path, *, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The whole content of a regular file of at most ``max_bytes``; raises :class:`FileRefused`."""
    with open_regular(path, max_bytes=max_bytes) as stream:
        try:
            data = stream.read(max_bytes + 1)
        except OSError as error:
            raise FileRefused(f"unreadable: {error.strerror or error}") from error
    if len(data) > max_bytes:
        raise FileRefused(f"too large: over {max_bytes:,} bytes")
    return data
