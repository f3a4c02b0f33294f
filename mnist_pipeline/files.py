"""Files at paths others control (a user's images and outputs, a folder store's keys): read only
when they are regular files, since reading a FIFO blocks until a writer comes and a device may
never end; written whole or not at all, since a full disk must not leave half a file in the
place of a good one."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO

from mnist_pipeline.errors import PipelineError, os_error_message

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


class NotARegularFile(OSError):
    """A FIFO, a device or a socket where a file was expected; `strerror` says which."""

    def __str__(self) -> str:
        return f"{self.filename} is {self.strerror}"


def kind_of(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def not_regular(path: str | os.PathLike, mode: int) -> OSError:
    if stat.S_ISDIR(mode):  # what open() itself says of a folder: callers already handle it
        return IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
    return NotARegularFile(errno.EINVAL, f"{kind_of(mode)}, not a regular file", str(path))


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """Open for reading, refusing anything but a regular file without waiting: O_NONBLOCK makes
    opening a FIFO return at once, and fstat (of what was opened, not of the name) decides."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket cannot be opened at all
            raise NotARegularFile(errno.ENXIO, "a socket, not a regular file", str(path)) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise not_regular(path, mode)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike) -> bytes:
    with open_regular(path) as fh:
        return fh.read()


def current_umask() -> int:
    try:  # Linux shows it without changing it (os.umask would, for every thread, for a moment)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Replace `path` by `data` whole, or leave it as it was: a temporary file in the same folder,
    fsync, rename over it (through a symlink, the file it points to). The one way commands write
    a user's path. PipelineError, one line naming the path, when it cannot be written; no
    temporary file is left behind."""
    target = Path(os.path.realpath(path))
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise PipelineError(f"cannot write {path}: {os_error_message(exc)}") from None
    if mode is not None and not stat.S_ISREG(mode):
        raise PipelineError(f"cannot write {path}: it is {kind_of(mode)}, not a regular file; give a file path")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), stat.S_IMODE(mode) if mode is not None else 0o666 & ~current_umask())
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        tmp = None
    except OSError as exc:
        kept = "; the existing file is unchanged" if mode is not None else ""
        raise PipelineError(f"cannot write {path}: {os_error_message(exc)}{kept}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    with contextlib.suppress(OSError):  # the rename itself survives a power cut once the folder is synced
        folder = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
