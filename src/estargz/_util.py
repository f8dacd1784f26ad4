"""Small helpers: atomic output files and CPU counts."""

from __future__ import annotations

import os
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class AtomicOutput:
    """A file written under a temporary name beside its target and renamed
    into place by :meth:`commit`; anything else removes it, so a failure
    never leaves a half-written file and never touches an existing one.

    The target ``-`` means standard output: the bytes are copied there on
    commit, so nothing reaches it when the work fails.
    """

    def __init__(self, target: PathLike) -> None:
        self.target = os.fspath(target)
        self.to_stdout = self.target == "-"
        self.file: Optional[BinaryIO] = None
        self._temp = ""
        self._committed = False

    def __enter__(self) -> AtomicOutput:
        if self.to_stdout:
            handle, self._temp = tempfile.mkstemp(prefix="estargz-", suffix=".part")
        else:
            path = Path(self.target)
            parent = path.parent if str(path.parent) else Path(".")
            if path.is_dir():
                raise IsADirectoryError(
                    f"cannot write {self.target!r}: it is a directory"
                )
            try:
                handle, self._temp = tempfile.mkstemp(
                    dir=parent, prefix=f".{path.name}.", suffix=".part"
                )
            except OSError as exc:
                raise type(exc)(
                    exc.errno, f"cannot write {self.target!r}: {exc.strerror}"
                ) from None
            os.fchmod(handle, 0o666 & ~_umask())
        self.file = os.fdopen(handle, "w+b", buffering=1 << 20)
        return self

    def commit(self) -> None:
        """Finish the file and move it into place."""
        assert self.file is not None
        self.file.flush()
        if self.to_stdout:
            self.file.seek(0)
            out = sys.stdout.buffer
            while True:
                block = self.file.read(1 << 20)
                if not block:
                    break
                out.write(block)
            out.flush()
            self.file.close()
            os.unlink(self._temp)
        else:
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self._temp, self.target)
        self._committed = True

    def discard(self) -> None:
        if self._committed or not self._temp:
            return
        if self.file is not None:
            self.file.close()
        try:
            os.unlink(self._temp)
        except FileNotFoundError:
            pass
        self._committed = True

    def __exit__(
        self,
        kind: Optional[type[BaseException]],
        value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.discard()
