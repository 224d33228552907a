"""Files on disk: inputs that cannot hang, outputs that never destroy what they replace.

Inputs: ``open_input`` opens only regular files. A named pipe (FIFO) would block
``open()`` until a writer appears, and a device can stream forever, so the path is
checked with ``os.stat`` first and opened with ``O_NONBLOCK`` (a FIFO swapped in
after the check still cannot block), then checked again on the open descriptor.

Outputs: ``atomic_writer`` writes a regular file atomically: the data goes to a
temporary file in the target's folder, is flushed and fsynced, and only then renamed
over the target (``os.replace`` is atomic on POSIX and Windows). A symbolic link is
written through to the file it points to, atomically there, and stays a link. A
character device (``/dev/null``) or a FIFO is streamed to, never replaced; anything
else that is not a regular file (a folder, a socket, a block device) is refused. New
files get the permissions the umask allows (``0666 & ~umask``); a replaced file keeps
its own.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from xpnet.errors import ConfigError, DataError, XpnetError

#: ``--out -`` and friends: standard output, where a command allows it.
STDOUT = "-"
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def file_kind(mode: int) -> str:
    """What a ``st_mode`` describes, in words for error messages."""
    for test, name in (
        (stat.S_ISREG, "regular file"),
        (stat.S_ISDIR, "folder"),
        (stat.S_ISFIFO, "named pipe (FIFO)"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "special file"


# -- inputs ------------------------------------------------------------------------------


def open_input(path: str | os.PathLike, what: str, error: type[XpnetError] = DataError) -> BinaryIO:
    """Open ``path`` for binary reading if it is a regular file; never blocks on a FIFO.

    A folder raises ``IsADirectoryError`` and a missing file ``FileNotFoundError``, so
    callers keep their own messages for those; any other non-regular file raises
    ``error`` naming ``what`` the file should have been.
    """
    path = Path(path)
    _check_input_mode(path, os.stat(path).st_mode, what, error)
    fd = os.open(path, os.O_RDONLY | _NONBLOCK | _CLOEXEC)
    try:
        _check_input_mode(path, os.fstat(fd).st_mode, what, error)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _check_input_mode(path: Path, mode: int, what: str, error: type[XpnetError]) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    raise error(
        f"{path}: is a {file_kind(mode)}, not {what}; xpnet reads only regular files (it would block or never end)"
    )


def read_failure(path: Path, exc: OSError, what: str, where: str = "the path") -> DataError:
    """The ``DataError`` for an input file that cannot be opened: missing, a folder, or unreadable."""
    if isinstance(exc, FileNotFoundError):
        return DataError(f"{path}: file not found; check {where}")
    if isinstance(exc, IsADirectoryError):
        return DataError(f"{path}: is a folder, not {what}; pass the file itself")
    return DataError(f"{path}: cannot read: {exc.strerror or exc}; check the file's permissions")


# -- outputs -----------------------------------------------------------------------------


def _mode(target: Path) -> int | None:
    """``target``'s file mode (links followed), None when nothing is there; other OSErrors pass."""
    try:
        return os.stat(target).st_mode
    except FileNotFoundError:
        return None


def check_output_path(path: str | os.PathLike, option: str, *, stdout: bool = False) -> None:
    """Refuse, before any work is done, an output path that ``atomic_writer`` would refuse later.

    ``option`` names the argument in the message; ``stdout`` allows ``-``.
    """
    if stdout and str(path) == STDOUT:
        return
    target = Path(path)
    try:
        mode = _mode(target)
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot use it: {exc.strerror or exc}") from None
    if mode is not None and not stat.S_ISREG(mode):
        if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
            return  # streamed to, never replaced
        if stat.S_ISDIR(mode):
            raise ConfigError(f"{option} {path}: is a folder; give the name of a file to write (in it, say)")
        raise ConfigError(
            f"{option} {path}: is a {file_kind(mode)}; xpnet writes only regular files, FIFOs and devices"
        )
    folder = _write_target(target).parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise ConfigError(f"{option} {path}: cannot write in {folder}; choose another path")


def is_stream(path: str | os.PathLike) -> bool:
    """True if writing ``path`` streams to it (standard output, a character device, a FIFO)."""
    if str(path) == STDOUT:
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, *, stdout: bool = False) -> Iterator[BinaryIO]:
    """A binary stream whose contents appear at ``path`` only on success.

    Regular files (also through symbolic links) are replaced atomically; character
    devices and FIFOs are streamed to; ``-`` is standard output when ``stdout``.
    """
    if stdout and str(path) == STDOUT:
        sys.stdout.flush()  # text printed before goes first
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    target = Path(path)
    try:
        mode = _mode(target)
    except OSError as exc:
        raise _write_error(target, exc) from exc
    if mode is not None and (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)):
        with _streaming(target) as stream:
            yield stream
        return
    if mode is not None and not stat.S_ISREG(mode):
        raise XpnetError(f"cannot write {target}: it is a {file_kind(mode)}, not a regular file; choose a file name")
    with _replacing(target, _write_target(target), mode) as stream:
        yield stream


def _write_target(path: Path) -> Path:
    """The file a write to ``path`` lands in: the final target of a symbolic link, else ``path``."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


@contextlib.contextmanager
def _streaming(target: Path) -> Iterator[BinaryIO]:
    try:
        stream = open(target, "wb", buffering=0)  # noqa: SIM115 - closed below, errors mapped
    except OSError as exc:
        raise _write_error(target, exc) from exc
    try:
        with stream:
            yield stream
    except OSError as exc:
        raise _write_error(target, exc) from exc


@contextlib.contextmanager
def _replacing(shown: Path, target: Path, mode: int | None) -> Iterator[BinaryIO]:
    folder = target.parent if str(target.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise _write_error(shown, exc) from exc
    try:
        # mkstemp makes 0600 files; give the permissions a new file would get, or the replaced file's own.
        os.fchmod(fd, stat.S_IMODE(mode) if mode is not None else 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        _check_still_replaceable(shown, target)
        os.replace(temp_name, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        if isinstance(exc, OSError):
            raise _write_error(shown, exc) from exc
        raise


def _check_still_replaceable(shown: Path, target: Path) -> None:
    """Something other than a regular file put there during the write is not replaced either."""
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise XpnetError(f"cannot write {shown}: it became a {file_kind(mode)} while xpnet was writing it")


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # no /proc: set and restore (not thread-safe, but brief)
    os.umask(mask)
    return mask


def _write_error(target: Path, exc: OSError) -> XpnetError:
    return XpnetError(f"cannot write {target}: {exc.strerror or exc}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, stdout: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (or stream it; see ``atomic_writer``)."""
    with atomic_writer(path, stdout=stdout) as stream:
        stream.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, *, stdout: bool = False) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (or stream it; see ``atomic_writer``)."""
    atomic_write_bytes(path, text.encode("utf-8"), stdout=stdout)


# -- paths from the user and the environment ----------------------------------------------


def write_marked_section(doc: str | os.PathLike, key: str, writer: str, text: str) -> None:
    """Put ``text`` between ``key``'s begin and end markers in the Markdown file ``doc``, keeping the
    rest; the first time, the markers and ``text`` are appended. ``writer`` is named in the begin
    marker (the command that rewrites the section), so a reader knows not to edit it by hand."""
    begin = f"<!-- {key}:begin (written by {writer}; do not edit by hand) -->"
    end = f"<!-- {key}:end -->"
    old = Path(doc).read_text(encoding="utf-8")
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        tail = rest.split(end, 1)[1]
    else:
        head, tail = old.rstrip("\n") + "\n\n", "\n"
    atomic_write_text(doc, f"{head}{begin}\n{text}\n{end}{tail}")


def expand_user(path: str | os.PathLike, where: str) -> Path:
    """``path`` with a leading ``~`` or ``~user`` expanded; ``where`` names its source.

    An unknown user, or no home folder at all (``HOME`` unset and no password entry,
    as in a container run with ``--user 12345``), is a ``ConfigError``, not a crash.
    """
    try:
        return Path(path).expanduser()
    except (RuntimeError, KeyError) as exc:
        raise ConfigError(
            f"{where} {str(path)!r}: cannot expand '~' ({exc}); give an absolute path or set HOME"
        ) from None


def home_folder() -> Path | None:
    """The user's home folder, or None where there is none."""
    try:
        return Path.home()
    except (RuntimeError, KeyError):
        return None
