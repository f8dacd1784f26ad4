"""Small helpers: atomic output files and CPU counts."""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


def cpu_count() -> int:
    """CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _read_umask() -> int:
    # /proc tells without changing it; os.umask() must set it to learn it,
    # which would briefly affect files other threads create.
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def file_mode() -> int:
    """The mode a new regular file gets from ``open()`` (with the umask as
    it was when estargz was imported)."""
    return 0o666 & ~_UMASK


class AtomicOutput:
    """A file written under a temporary name beside its target and renamed
    into place by :meth:`commit`; anything else removes it, so a failure
    never leaves a half-written file and never touches an existing one.

    The target ``-`` means standard output, and a target that is not a
    regular file (a device, a FIFO) is written as it stands, not replaced:
    the bytes then wait in a temporary file and are copied there on commit,
    so nothing reaches it when the work fails.  A symbolic link is followed:
    the file it names is replaced, the link stays.
    """

    def __init__(self, target: PathLike) -> None:
        self.target = os.fspath(target)
        self.to_stdout = self.target == "-"
        self.copy_to: Optional[str] = None
        self.file: Optional[BinaryIO] = None
        self._temp = ""
        self._final = self.target
        self._committed = False

    def __enter__(self) -> AtomicOutput:
        if not self.to_stdout:
            try:
                mode = os.stat(self.target).st_mode
            except OSError:
                mode = None
            if mode is not None and stat.S_ISDIR(mode):
                raise IsADirectoryError(
                    f"cannot write {self.target!r}: it is a directory"
                )
            if mode is not None and not stat.S_ISREG(mode):
                self.copy_to = self.target
        if self.to_stdout or self.copy_to is not None:
            handle, self._temp = tempfile.mkstemp(prefix="estargz-", suffix=".part")
        else:
            # Through any symbolic links: the file they name is replaced.
            path = Path(os.path.realpath(self.target))
            try:
                handle, self._temp = tempfile.mkstemp(
                    dir=path.parent, prefix=f".{path.name}.", suffix=".part"
                )
            except OSError as exc:
                raise type(exc)(
                    exc.errno, f"cannot write {self.target!r}: {exc.strerror}"
                ) from None
            self._final = str(path)
            os.fchmod(handle, file_mode())
        self.file = os.fdopen(handle, "w+b", buffering=1 << 20)
        return self

    def commit(self) -> None:
        """Finish the file and move it into place."""
        assert self.file is not None
        self.file.flush()
        if self.to_stdout or self.copy_to is not None:
            self.file.seek(0)
            if self.copy_to is not None:
                with open(self.copy_to, "wb") as out:
                    self._copy(out)
            else:
                self._copy(sys.stdout.buffer)
            self.file.close()
            os.unlink(self._temp)
        else:
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self._temp, self._final)
        self._committed = True

    def _copy(self, out: BinaryIO) -> None:
        assert self.file is not None
        while True:
            block = self.file.read(1 << 20)
            if not block:
                break
            out.write(block)
        out.flush()

    def discard(self) -> None:
        if self._committed or not self._temp:
            return
        self._committed = True
        try:
            if self.file is not None:
                # Closing flushes, which fails again on a full disk: the
                # temporary file goes whatever happens.
                self.file.close()
        except OSError:
            pass
        finally:
            try:
                os.unlink(self._temp)
            except FileNotFoundError:
                pass

    def __exit__(
        self,
        kind: Optional[type[BaseException]],
        value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.discard()
