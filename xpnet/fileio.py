"""Atomic file writes: a crash mid-save never replaces a good file with a broken one.

Data goes to a temporary file in the target's folder, is flushed and fsynced, and
only then renamed over the target (``os.replace`` is atomic on POSIX and Windows).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from xpnet.errors import DataError, XpnetError


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a binary stream whose contents appear at ``path`` only on success."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise XpnetError(f"cannot write {target}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        if isinstance(exc, OSError):
            raise XpnetError(f"cannot write {target}: {exc.strerror or exc}") from exc
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_writer(path) as stream:
        stream.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def read_failure(path: Path, exc: OSError, what: str, where: str = "the path") -> DataError:
    """The ``DataError`` for an input file that cannot be opened: missing, a folder, or unreadable."""
    if isinstance(exc, FileNotFoundError):
        return DataError(f"{path}: file not found; check {where}")
    if isinstance(exc, IsADirectoryError):
        return DataError(f"{path}: is a folder, not {what}; pass the file itself")
    return DataError(f"{path}: cannot read: {exc.strerror or exc}; check the file's permissions")
