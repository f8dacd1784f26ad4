"""Where a blob's bytes come from: anything that serves byte ranges."""

from __future__ import annotations

import io
import os
import threading
from typing import BinaryIO, Callable, Protocol, Union, runtime_checkable

from estargz._util import PathLike
from estargz.errors import BlobFormatError

__all__ = ["BytesSource", "CallableSource", "FileSource", "RangeSource", "as_source"]


@runtime_checkable
class RangeSource(Protocol):
    """A blob that can be read by byte range, such as a file or an HTTP
    resource answering range requests.  ``read_at`` may return fewer bytes
    only at the end of the blob."""

    @property
    def size(self) -> int: ...

    def read_at(self, offset: int, size: int) -> bytes: ...


class _Counting:
    bytes_read = 0
    reads = 0

    def _count(self, data: bytes) -> bytes:
        self.bytes_read += len(data)
        self.reads += 1
        return data


class FileSource(_Counting):
    """A blob in a file (a path or a seekable binary file object).

    Counts the bytes and reads it serves (``bytes_read``, ``reads``), which
    shows what lazy access actually costs.  Safe to share between threads.
    """

    def __init__(self, file: Union[PathLike, BinaryIO]) -> None:
        self._lock = threading.Lock()
        if isinstance(file, (str, os.PathLike)):
            try:
                self._file: BinaryIO = open(file, "rb")
            except OSError as exc:
                raise BlobFormatError(
                    f"cannot open blob {os.fspath(file)!r}: {exc.strerror or exc}"
                ) from exc
            self._owned = True
        else:
            self._file = file
            self._owned = False
        try:
            self._fd = self._file.fileno()
        except (AttributeError, io.UnsupportedOperation, OSError):
            self._fd = -1
        self._file.seek(0, os.SEEK_END)
        self._size = self._file.tell()

    @property
    def size(self) -> int:
        return self._size

    def read_at(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0:
            raise ValueError("negative offset or size")
        size = max(0, min(size, self._size - offset))
        if self._fd >= 0:
            parts = []
            done = 0
            while done < size:
                part = os.pread(self._fd, size - done, offset + done)
                if not part:
                    break
                parts.append(part)
                done += len(part)
            return self._count(b"".join(parts) if len(parts) != 1 else parts[0])
        with self._lock:
            self._file.seek(offset)
            return self._count(self._file.read(size))

    def readinto_at(self, offset: int, view: memoryview) -> int:
        """Fill ``view`` from ``offset`` (short only at the end of the
        file), without an intermediate bytes object."""
        if self._fd < 0:
            data = self.read_at(offset, len(view))
            view[: len(data)] = data
            return len(data)
        size = max(0, min(len(view), self._size - offset))
        done = 0
        while done < size:
            n = os.preadv(self._fd, [view[done:size]], offset + done)
            if not n:
                break
            done += n
        self.bytes_read += done
        self.reads += 1
        return done

    def close(self) -> None:
        if self._owned:
            self._file.close()


class BytesSource(_Counting):
    """A blob held in memory."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)

    @property
    def size(self) -> int:
        return len(self._data)

    def read_at(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0:
            raise ValueError("negative offset or size")
        return self._count(bytes(self._data[offset : offset + size]))


class CallableSource(_Counting):
    """A blob of ``size`` bytes read through ``fetch(offset, size)``, for
    example an HTTP range request."""

    def __init__(self, fetch: Callable[[int, int], bytes], size: int) -> None:
        self._fetch = fetch
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    def read_at(self, offset: int, size: int) -> bytes:
        size = max(0, min(size, self._size - offset))
        return self._count(self._fetch(offset, size))


def as_source(blob: Union[PathLike, BinaryIO, bytes, RangeSource]) -> RangeSource:
    """Wrap what the caller gave us as a :class:`RangeSource`."""
    if isinstance(blob, (bytes, bytearray, memoryview)):
        return BytesSource(bytes(blob))
    if isinstance(blob, RangeSource):
        return blob
    return FileSource(blob)
