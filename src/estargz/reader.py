"""Open eStargz blobs, read files lazily, verify everything.

A :class:`Blob` sits on any source that serves byte ranges (a file, bytes,
or a callable such as an HTTP range request).  Opening it reads the footer
and the TOC only; reading a file fetches and inflates just the gzip members
that hold the bytes asked for, starting at the chunk's ``innerOffset``, and
checks every chunk against its ``chunkDigest``.  :meth:`Blob.verify` reads
the whole blob once and also checks that the tar stream inside agrees with
the TOC, which the chunk digests alone do not guarantee.
"""

from __future__ import annotations

import bisect
import collections
import hashlib
import io
import logging
import os
import queue
import re
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Optional, Union

from estargz import _native
from estargz._format import (
    EXTERNAL_TOC_FOOTER_SIZE,
    FOOTER_SIZE,
    LEGACY_FOOTER_SIZE,
    TOC_TAR_NAME,
    format_modtime,
    go_text,
)
from estargz._source import RangeSource, as_source
from estargz._tar import BLOCK, ByteSource, TarReader
from estargz._util import PathLike, cpu_count
from estargz.errors import BlobFormatError, EStargzError, NativeError, VerificationError
from estargz.toc import TOC, TOCEntry, clean_name, parse_modtime

__all__ = ["Blob", "EntryFile", "VerifyReport", "open_blob"]

log = logging.getLogger(__name__)

# The largest uncompressed TOC accepted unless the caller says otherwise.
DEFAULT_MAX_TOC_SIZE = 512 << 20

BlobInput = Union[PathLike, BinaryIO, bytes, RangeSource]
TOCInput = Union[PathLike, BinaryIO, bytes, Callable[[], bytes]]


@dataclass(frozen=True)
class Footer:
    """What the blob's last bytes say."""

    format: str  # "estargz", "legacy" or "external"
    size: int
    toc_offset: int  # -1 for an external TOC


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of :meth:`Blob.verify` (raised as an error when it fails)."""

    toc_digest: str
    entries: int
    chunks: int
    uncompressed_bytes: int
    members: int
    # Bytes after the tar's end-of-archive marker (padding, or what a tar
    # given to keep-diff-id carried), and where the first non-zero one lies
    # (-1: none).  Runtimes stop at the marker; ``tar -i`` would not.
    trailing_bytes: int = 0
    trailing_data_at: int = -1


_HEX16 = re.compile(rb"[0-9a-fA-F]{16}")


def _hex_offset(text: bytes, where: str) -> int:
    # Sixteen hex digits, nothing else: int() would also take spaces, a sign
    # and underscores, which no writer puts there.
    if not _HEX16.fullmatch(text):
        raise BlobFormatError(f"{where}: TOC offset {text!r} is not hexadecimal")
    return int(text, 16)


def _gzip_extra(tail: bytes) -> Optional[bytes]:
    """The Extra field of a gzip header at the start of ``tail``, if any."""
    if len(tail) < 12 or tail[:3] != b"\x1f\x8b\x08" or not tail[3] & 0x04:
        return None
    length = int.from_bytes(tail[10:12], "little")
    if 12 + length > len(tail):
        return None
    return tail[12 : 12 + length]


def parse_footer(data: bytes) -> Footer:
    """Find which footer ends ``data`` (the last bytes of a blob).

    Tried in Go's order: eStargz (51 bytes), legacy stargz (47), external
    TOC (46).
    """
    if len(data) >= FOOTER_SIZE:
        extra = _gzip_extra(data[-FOOTER_SIZE:])
        if (
            extra is not None
            and len(extra) >= 4
            and extra[:2] == b"SG"
            and int.from_bytes(extra[2:4], "little") == 22
            and extra[4:26].endswith(b"STARGZ")
            and len(extra) >= 26
        ):
            offset = _hex_offset(extra[4:20], "eStargz footer")
            return Footer("estargz", FOOTER_SIZE, offset)
    if len(data) >= LEGACY_FOOTER_SIZE:
        extra = _gzip_extra(data[-LEGACY_FOOTER_SIZE:])
        if extra is not None and len(extra) == 22 and extra.endswith(b"STARGZ"):
            offset = _hex_offset(extra[:16], "legacy stargz footer")
            return Footer("legacy", LEGACY_FOOTER_SIZE, offset)
    if len(data) >= EXTERNAL_TOC_FOOTER_SIZE:
        extra = _gzip_extra(data[-EXTERNAL_TOC_FOOTER_SIZE:])
        if (
            extra is not None
            and len(extra) >= 4
            and extra[:2] == b"SG"
            and int.from_bytes(extra[2:4], "little") == 17
            and extra[4:21] == b"STARGZEXTERNALTOC"
        ):
            return Footer("external", EXTERNAL_TOC_FOOTER_SIZE, -1)
    shown = data[-16:].hex()
    raise BlobFormatError(
        "not an eStargz blob, or a truncated one: the last bytes are neither an "
        "eStargz (51-byte), legacy stargz (47-byte) nor external-TOC (46-byte) "
        f"footer (they end in {shown})"
    )


def _toc_json(tar_bytes: bytes, where: str) -> bytes:
    """The ``stargz.index.json`` payload of the little tar holding a TOC."""
    reader = TarReader(ByteSource(io.BytesIO(tar_bytes)))
    try:
        entry = next(reader)
    except StopIteration:
        raise BlobFormatError(f"{where}: the TOC tar is empty") from None
    except EStargzError as exc:
        raise BlobFormatError(f"{where}: the TOC tar is malformed: {exc}") from exc
    if entry.name != TOC_TAR_NAME:
        raise BlobFormatError(
            f"{where}: the TOC tar's first entry is {entry.display_name!r}, "
            f"not {TOC_TAR_NAME.decode()!r}"
        )
    start = entry.data_offset
    if start + entry.size > len(tar_bytes):
        raise BlobFormatError(
            f"{where}: the TOC entry declares {entry.size} bytes but only "
            f"{len(tar_bytes) - start} follow"
        )
    # Nothing may follow the index: a plain pull unpacks the TOC member's tar
    # too, so an entry hidden there would land in the root filesystem
    # unseen by the TOC (and by its digest).
    try:
        reader.skip_payload()
        extra = next(reader, None)
    except EStargzError as exc:
        raise BlobFormatError(
            f"{where}: the TOC tar is malformed after the index: {exc}"
        ) from exc
    if extra is not None:
        raise BlobFormatError(
            f"{where}: the TOC tar holds {extra.display_name!r} after "
            f"{TOC_TAR_NAME.decode()!r}; a plain pull would unpack it"
        )
    return tar_bytes[start : start + entry.size]


def _load_external(toc: TOCInput) -> bytes:
    if callable(toc):
        return toc()
    if isinstance(toc, (bytes, bytearray, memoryview)):
        return bytes(toc)
    if isinstance(toc, (str, os.PathLike)):
        try:
            with open(toc, "rb") as f:
                return f.read()
        except OSError as exc:
            raise BlobFormatError(
                f"cannot read external TOC {os.fspath(toc)!r}: {exc}"
            ) from exc
    return toc.read()


class _SourceStream(io.RawIOBase):
    """Sequential reads of ``[start, end)`` of a range source."""

    def __init__(self, source: RangeSource, start: int, end: int) -> None:
        self._source = source
        self._position = start
        self._end = end
        self._readinto_at = getattr(source, "readinto_at", None)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        size = min(len(view), self._end - self._position)
        if size <= 0:
            return 0
        if self._readinto_at is not None:
            n = int(self._readinto_at(self._position, view[:size]))
        else:
            data = self._source.read_at(self._position, size)
            n = len(data)
            if n > size:
                raise BlobFormatError(
                    f"blob: the source returned {n} bytes at offset "
                    f"{self._position}, {size} were asked for"
                )
            view[:n] = data
        if not n:
            raise BlobFormatError(
                f"blob: the source ends early, at offset {self._position}"
            )
        self._position += n
        return n


# Verify inflates the blob's members in groups of about this many compressed
# bytes, on worker threads; a group never splits a member.
VERIFY_GROUP = 512 << 10
# Each group's worker hands its bytes on in pieces of about this size and
# runs at most VERIFY_AHEAD pieces ahead of the reader, so memory stays
# bounded however well the members compress.
VERIFY_PIECE = 512 << 10
VERIFY_AHEAD = 12
# How much of what follows the tar's end-of-archive marker verify reads.
VERIFY_TRAILER = 64 << 20


class _Stopped(Exception):
    """The stream was closed while a worker still had bytes to hand on."""


class _Span:
    """A chunk being hashed as its bytes stream past."""

    __slots__ = ("end", "expected", "hasher", "row", "start")

    def __init__(self, row: int, start: int, size: int, expected: str) -> None:
        self.row = row
        self.start = start
        self.end = start + size
        self.expected = expected
        self.hasher: Any = (
            _native.Sha256()
            if expected.startswith("sha256:")
            else hashlib.new(expected.split(":", 1)[0])
        )

    def digest(self) -> str:
        return f"{self.expected.split(':', 1)[0]}:{self.hasher.hexdigest()}"


class _Open:
    """The chunks of the member being inflated that are not hashed yet:
    ``waiting`` sorted by start, those before ``next`` already begun and
    the unfinished of them in ``active``."""

    __slots__ = ("active", "next", "waiting")

    def __init__(self, waiting: list[_Span]) -> None:
        self.waiting = waiting
        self.next = 0
        self.active: list[_Span] = []

    def __bool__(self) -> bool:
        return bool(self.active) or self.next < len(self.waiting)

    def remaining(self) -> list[_Span]:
        return self.active + self.waiting[self.next :]


class _Inflated(io.RawIOBase):
    """The uncompressed stream of a blob's members, inflated in parallel.

    Groups of whole members are inflated on worker threads, which also check
    the digests of the chunks in them as the bytes stream past; this stream
    hands the bytes on in order and records where each member starts in it.
    """

    def __init__(self, blob: Blob, threads: int) -> None:
        self.blob = blob
        toc = blob.toc
        chunks = toc.chunks
        self.starts: dict[int, int] = {}
        self.start_positions: list[int] = []
        self.start_members: list[int] = []
        self.failures: dict[int, str] = {}
        self.verified: set[int] = set()
        self._rows: dict[int, list[int]] = {}
        for row, offset in enumerate(chunks.offset.tolist()):
            self._rows.setdefault(offset, []).append(row)
        # Group boundaries at member starts the TOC knows of.
        bounds = sorted({o for o in self._rows if 0 < o < blob.payload_end})
        self._groups: list[tuple[int, int]] = []
        begin = 0
        for bound in [*bounds, blob.payload_end]:
            if bound - begin >= VERIFY_GROUP or bound == blob.payload_end:
                if bound > begin:
                    self._groups.append((begin, bound))
                begin = bound
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="estargz-verify"
        )
        self._queues: collections.deque[tuple[Future[None], queue.Queue[Any]]] = (
            collections.deque()
        )
        self._next = 0
        self._depth = threads + 1
        self._data = memoryview(b"")
        self._base = 0  # stream offset of the group being handed on
        self._group_size = 0  # its bytes handed on so far
        # Piece buffers go back to the workers once read: no allocation (and
        # no page faults) per piece.
        self._spare: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._spare_limit = 2 * self._depth
        self._held: Optional[bytearray] = None

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        while len(self._queues) < self._depth and self._next < len(self._groups):
            pieces: queue.Queue[Any] = queue.Queue(maxsize=VERIFY_AHEAD)
            begin, end = self._groups[self._next]
            job = self._pool.submit(self._inflate, begin, end, pieces)
            self._queues.append((job, pieces))
            self._next += 1

    def _put(self, pieces: queue.Queue[Any], item: Any) -> None:
        while True:
            try:
                pieces.put(item, timeout=0.1)
                return
            except queue.Full:
                if self._stop.is_set():
                    raise _Stopped from None

    def _inflate(self, begin: int, end: int, pieces: queue.Queue[Any]) -> None:
        try:
            self._inflate_group(begin, end, pieces)
        except _Stopped:
            return
        except BaseException as exc:  # handed on, in order, to the reader
            self._put(pieces, exc)
            return
        self._put(pieces, None)

    def _inflate_group(self, begin: int, end: int, pieces: queue.Queue[Any]) -> None:
        # No NUL padding between members: Go's gzip reader (what a plain
        # pull uses) stops there.
        reader = _native.GzipReader(
            _SourceStream(self.blob.source, begin, end),
            block_size=1 << 18,
            offset=begin,
            allow_padding=False,
        )
        piece = self._piece_buffer()
        view = memoryview(piece)
        filled = 0
        marks: list[tuple[int, int]] = []  # (member offset, position in group)
        spans = _Open([])
        member = -1
        position = 0
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                n = reader.readinto(view[filled:])
            except NativeError as exc:
                raise VerificationError(
                    f"{self._member_owner(exc.offset)}{exc}"
                ) from exc
            if not n:
                break
            if reader.member_offset != member:
                member = reader.member_offset
                start = reader.member_uncompressed_offset
                marks.append((member, start))
                spans = self._spans(member, start)
            if spans:
                self._feed(spans, view[filled : filled + n], position)
            position += n
            filled += n
            if reader.at_member_end and spans:
                for span in spans.remaining():
                    missing = span.end - max(span.start, position)
                    self.failures[span.row] = f"its member ends {missing} bytes early"
                spans = _Open([])
            if filled == len(piece):
                self._put(pieces, (piece, filled, marks))
                piece = self._piece_buffer()
                view = memoryview(piece)
                filled, marks = 0, []
        if filled or marks:
            self._put(pieces, (piece, filled, marks))

    def _piece_buffer(self) -> bytearray:
        try:
            return self._spare.get_nowait()
        except queue.Empty:
            return bytearray(VERIFY_PIECE)

    def _spans(self, member: int, start: int) -> _Open:
        """The chunks that begin in a member, to be hashed as it streams."""
        chunks = self.blob.toc.chunks
        spans = []
        for row in self._rows.get(member, ()):
            expected = self.blob._expected_digest(row)
            if not expected:
                self.failures[row] = "the TOC gives no digest for it"
                continue
            span = _Span(
                row,
                start + int(chunks.inner_offset[row]),
                int(chunks.size[row]),
                expected,
            )
            if span.end == span.start:
                self._finish(span)
            else:
                spans.append(span)
        spans.sort(key=lambda span: span.start)
        return _Open(spans)

    def _feed(self, spans: _Open, data: memoryview, position: int) -> None:
        """Hash the parts of ``data`` (at ``position``) that chunks cover.
        Each chunk is looked at only while ``data`` can reach it, so a
        member holding a million chunks costs a million steps, not a
        million per piece."""
        end = position + len(data)
        waiting, active = spans.waiting, spans.active
        i = spans.next
        while i < len(waiting) and waiting[i].start < end:
            active.append(waiting[i])
            i += 1
        spans.next = i
        still = []
        for span in active:
            a = max(span.start, position)
            b = min(span.end, end)
            if a < b:
                span.hasher.update(data[a - position : b - position])
            if span.end <= end:
                self._finish(span)
            else:
                still.append(span)
        spans.active = still

    def _finish(self, span: _Span) -> None:
        found = span.digest()
        if found == span.expected:
            self.verified.add(span.row)
        else:
            self.failures[span.row] = f"digest {found}, the TOC says {span.expected}"

    def _member_owner(self, offset: int) -> str:
        """Who owns the member around a compressed offset, for messages."""
        starts = [o for o in self._rows if o <= offset]
        if not starts:
            return ""
        row = self._rows[max(starts)][0]
        return f"{self.blob.toc._owner(row)}: gzip member at offset {max(starts)}: "

    def _ready(self) -> bool:
        """Make sure unread bytes are at hand; False at the end."""
        while not len(self._data):
            self._fill()
            if not self._queues:
                return False
            item = self._queues[0][1].get()
            if item is None:
                self._queues.popleft()
                self._base += self._group_size
                self._group_size = 0
                continue
            if isinstance(item, BaseException):
                self._queues.popleft()
                raise item
            data, size, marks = item
            for member, start in marks:
                if member not in self.starts:
                    self.starts[member] = self._base + start
                    # In stream order: where each member starts, sorted.
                    self.start_positions.append(self._base + start)
                    self.start_members.append(member)
            self._group_size += size
            self._recycle()
            self._held = data
            self._data = memoryview(data)[:size]
        return True

    def _recycle(self) -> None:
        """Give the piece just read back to the workers.  (Everything read
        from it was copied out: ``read`` and ``readinto`` copy, ``skip``
        keeps nothing.)"""
        held, self._held = self._held, None
        self._data = memoryview(b"")
        if held is not None and self._spare.qsize() < self._spare_limit:
            self._spare.put(held)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if not self._ready():
            return 0
        n = min(len(view), len(self._data))
        view[:n] = self._data[:n]
        self._data = self._data[n:]
        return n

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            return self.readall()
        if not self._ready():
            return b""
        piece = bytes(self._data[:size])
        self._data = self._data[len(piece) :]
        return piece

    def feed(self, size: int, consume: Callable[[memoryview], object]) -> int:
        """Hand the next ``size`` bytes to ``consume`` in place (views of the
        piece at hand, valid only during the call)."""
        done = 0
        while done < size and self._ready():
            n = min(size - done, len(self._data))
            consume(self._data[:n])
            self._data = self._data[n:]
            done += n
        return done

    def skip(self, size: int) -> int:
        """Pass over ``size`` bytes without copying them."""
        done = 0
        while done < size and self._ready():
            n = min(size - done, len(self._data))
            self._data = self._data[n:]
            done += n
        return done

    def close(self) -> None:
        self._stop.set()
        for job, _ in self._queues:
            job.cancel()
        self._pool.shutdown(wait=True)
        super().close()


class Blob:
    """An opened eStargz blob.  Use :func:`open_blob` to make one.

    :ivar footer: the footer found (format, size, TOC offset)
    :ivar toc: the parsed :class:`~estargz.toc.TOC`
    :ivar toc_digest: ``sha256:`` digest of the TOC JSON, as stored
    :ivar toc_json: the TOC JSON bytes
    """

    def __init__(
        self,
        source: RangeSource,
        *,
        external_toc: Optional[TOCInput] = None,
        toc_digest: Optional[str] = None,
        max_toc_size: int = DEFAULT_MAX_TOC_SIZE,
        verify_chunks: bool = True,
    ) -> None:
        self.source = source
        self.verify_chunks = verify_chunks
        self._chunk_owners: Optional[tuple[list[TOCEntry], list[int]]] = None
        size = source.size
        tail = source.read_at(max(0, size - FOOTER_SIZE), min(size, FOOTER_SIZE))
        self.footer = parse_footer(tail)
        if self.footer.format == "external":
            if external_toc is None:
                raise BlobFormatError(
                    "blob: its TOC is kept outside it (external-TOC footer); "
                    "give the TOC with --external-toc"
                )
            self.payload_end = size - self.footer.size
            self.toc_size = 0
            gzipped = _load_external(external_toc)
            where = "external TOC"
            try:
                tar_bytes = _native.inflate_stream(
                    gzipped, max_output=max_toc_size + 3 * BLOCK
                )
            except NativeError as exc:
                raise BlobFormatError(f"{where}: {exc}") from exc
        else:
            offset = self.footer.toc_offset
            end = size - self.footer.size
            if not 0 <= offset < end:
                raise BlobFormatError(
                    f"{self.footer.format} footer: TOC offset {offset} is outside the "
                    f"blob's {end} bytes before the footer"
                )
            self.payload_end = offset
            self.toc_size = end - offset
            where = f"TOC member at offset {offset}"
            member = source.read_at(offset, end - offset)
            try:
                tar_bytes = _native.inflate_member(
                    member, max_output=max_toc_size + 3 * BLOCK, base=offset
                )
            except NativeError as exc:
                raise BlobFormatError(f"{where}: {exc}") from exc
        self.toc_json = _toc_json(tar_bytes, where)
        if len(self.toc_json) > max_toc_size:
            raise BlobFormatError(
                f"{where}: the TOC is {len(self.toc_json)} bytes, "
                f"over the cap of {max_toc_size}"
            )
        self.toc_digest = "sha256:" + _native.Sha256(self.toc_json).hexdigest()
        if toc_digest is not None:
            self.verify_toc(toc_digest)
        self.toc = TOC(self.toc_json, self.payload_end)
        if self.footer.format == "legacy":
            log.info("opened a legacy stargz blob (47-byte footer)")

    @property
    def format(self) -> str:
        return self.footer.format

    def close(self) -> None:
        """Close the source if this blob opened it (a path)."""
        close = getattr(self.source, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Blob:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- TOC -----------------------------------------------------------------

    def verify_toc(self, expected: str) -> None:
        """Check the TOC against a ``sha256:`` digest (the layer's
        ``containerd.io/snapshot/stargz/toc.digest`` annotation)."""
        if not expected.startswith("sha256:") or len(expected) != 71:
            raise VerificationError(f"TOC digest {expected!r} is not a sha256 digest")
        if expected != self.toc_digest:
            raise VerificationError(
                f"TOC digest mismatch: the blob's TOC is {self.toc_digest}, "
                f"expected {expected}"
            )

    def lookup(self, name: str) -> TOCEntry:
        """The entry of ``name``; a hardlink resolves to its target."""
        entry = self.toc.lookup(name)
        if entry is None:
            raise FileNotFoundError(f"{name!r} is not in the blob")
        if entry.type == "hardlink":
            if entry.target is None:
                raise BlobFormatError(
                    f"{entry.raw_name!r} is a hardlink to {entry.link_name!r}, "
                    "which is not in the blob"
                )
            return entry.target
        return entry

    def listdir(self, name: str = "") -> list[str]:
        """Names inside the directory ``name``, sorted."""
        entry = self.lookup(name)
        if entry.type != "dir":
            raise NotADirectoryError(f"{name!r} is not a directory")
        return sorted(entry.children or {})

    # -- reading -------------------------------------------------------------

    def read_chunk(self, row: int) -> bytes:
        """Inflate one chunk (a row of ``toc.chunks``) and check its digest."""
        chunks = self.toc.chunks
        offset = int(chunks.offset[row])
        end = int(chunks.member_end[row])
        inner = int(chunks.inner_offset[row])
        size = int(chunks.size[row])
        data = self.source.read_at(offset, end - offset)
        try:
            plain = _native.inflate_member(
                data, 0, skip=inner, size=size, max_output=size, base=offset
            )
        except NativeError as exc:
            raise VerificationError(
                f"{self._chunk_place(row)}: {exc.args[0]} "
                f"(member bytes {offset}..{end})"
            ) from exc
        if self.verify_chunks:
            self._check_chunk(row, plain)
        return plain

    def _chunk_place(self, row: int) -> str:
        chunks = self.toc.chunks
        return (
            f"{self.toc._owner(row)}: chunk at file offset "
            f"{int(chunks.file_offset[row])} "
            f"(compressed offset {int(chunks.offset[row])}, innerOffset "
            f"{int(chunks.inner_offset[row])})"
        )

    def _expected_digest(self, row: int) -> str:
        """The digest a chunk must have: its ``chunkDigest``, or, as Go falls
        back, the ``digest`` of a regular file that is one chunk; "" when
        the TOC gives neither."""
        expected = self.toc.chunks.digest_of(row)
        if expected:
            return expected
        owners = self._chunk_owners
        if owners is None:
            # Built once, published whole: verify's workers may get here
            # at the same time.
            with_chunks = [e for e in self.toc.entries if e.chunk_count]
            owners = (with_chunks, [e.chunk_start for e in with_chunks])
            self._chunk_owners = owners
        entries, starts = owners
        i = bisect.bisect_right(starts, row) - 1
        if i >= 0:
            owner = entries[i]
            if owner.chunk_count == 1 and owner.chunk_start == row:
                return owner.digest
        return ""

    def _check_chunk(self, row: int, plain: bytes) -> None:
        expected = self._expected_digest(row)
        if not expected:
            raise VerificationError(
                f"{self._chunk_place(row)}: the TOC gives no digest to check it "
                "against (open the blob with verify_chunks=False to read it anyway)"
            )
        if expected.startswith("sha256:"):
            found = "sha256:" + _native.Sha256(plain).hexdigest()
        else:
            algorithm = expected.split(":", 1)[0]
            found = f"{algorithm}:" + hashlib.new(algorithm, plain).hexdigest()
        if found != expected:
            raise VerificationError(
                f"{self._chunk_place(row)}: digest {found}, the TOC says {expected}"
            )

    def open(self, name: str) -> EntryFile:
        """A seekable, read-only file object over a regular file."""
        entry = self.lookup(name)
        if entry.type != "reg":
            raise IsADirectoryError(f"{name!r} is a {entry.type}, not a regular file")
        return EntryFile(self, entry)

    def read(self, name: str) -> bytes:
        """The whole content of a regular file, every chunk verified."""
        with self.open(name) as f:
            return f.read()

    def extract(self, target: PathLike, *, xattrs: bool = True) -> Any:
        """Extract every entry under ``target`` (see
        :func:`estargz._extract.extract`); returns an ``ExtractReport``."""
        from estargz._extract import extract

        return extract(self, target, xattrs=xattrs)

    def unpack(self, output: Union[PathLike, BinaryIO]) -> int:
        """Write the layer as a plain tar without the TOC; returns its size."""
        from estargz._extract import unpack

        return unpack(self, output)

    # -- verification ----------------------------------------------------------

    def verify(
        self, toc_digest: Optional[str] = None, threads: Optional[int] = None
    ) -> VerifyReport:
        """Read the whole blob once and check all of it: the TOC (against
        ``toc_digest`` when given), every chunk's digest and every file's,
        that every chunk sits where the TOC says, and that the tar stream in
        the blob holds exactly the TOC's entries (names, types, sizes,
        payload positions).

        Members are inflated, and their chunks checked, on ``threads`` worker
        threads (default: all CPUs) while one thread walks the tar stream.

        :raises VerificationError: at the first problem, naming the entry
            and the offset
        """
        if toc_digest is not None:
            self.verify_toc(toc_digest)
        for entry in self.toc.entries:
            if entry.type == "hardlink" and entry.target is None:
                # The tar holds the same dangling link: the blob is faithful to
                # a broken layer.  (Go's reader refuses to open such a blob.)
                log.warning(
                    "%r is a hardlink to %r, which is not in the layer",
                    entry.raw_name,
                    entry.link_name,
                )
        members = _Inflated(self, threads or cpu_count())
        try:
            return _StreamCheck(self, members, members).run()
        finally:
            members.close()


class _Metadata:
    """What a tar header says about an entry beyond its type, size and
    link: a plain pull takes it from the header, a lazy pull from the TOC,
    so the two must agree.  (Kept raw; only compared at the end.)"""

    __slots__ = ("devices", "gid", "mode", "mtime_ns", "uid", "xattrs")

    def __init__(self, tar_entry: Any, kind: str) -> None:
        self.mode = tar_entry.mode
        self.uid = tar_entry.uid
        self.gid = tar_entry.gid
        self.mtime_ns = tar_entry.mtime_ns
        self.devices = (
            (tar_entry.devmajor, tar_entry.devminor)
            if kind in ("char", "block")
            else (0, 0)
        )
        self.xattrs = tar_entry.xattrs

    def differs(self, entry: TOCEntry) -> str:
        """How ``entry`` disagrees with the header ("" if it does not)."""
        if self.mode != entry.mode:
            return f"mode {self.mode:04o} in the tar, {entry.mode:04o} in the TOC"
        if (self.uid, self.gid) != (entry.uid, entry.gid):
            return (
                f"owner {self.uid}:{self.gid} in the tar, "
                f"{entry.uid}:{entry.gid} in the TOC"
            )
        if self.devices != (entry.dev_major, entry.dev_minor):
            return (
                f"device {self.devices[0]},{self.devices[1]} in the tar, "
                f"{entry.dev_major},{entry.dev_minor} in the TOC"
            )
        modtime = format_modtime(self.mtime_ns)
        if modtime != entry.modtime and not _same_time(modtime, entry.modtime):
            return (
                f"modification time {modtime or 'none'} in the tar, "
                f"{entry.modtime or 'none'} in the TOC"
            )
        if self.xattrs or entry.xattrs:
            xattrs = {go_text(key): self.xattrs[key] for key in sorted(self.xattrs)}
            if xattrs != entry.xattrs:
                keys = sorted(set(xattrs) | set(entry.xattrs))
                key = next(k for k in keys if xattrs.get(k) != entry.xattrs.get(k))
                return f"extended attribute {key!r} differs between the tar and the TOC"
        return ""


def _same_time(a: str, b: str) -> bool:
    """Whether two TOC modification times agree within a second (writers
    round or truncate the fraction), none and the epoch alike (Go writes
    neither)."""
    times = []
    for text in (a, b):
        value = parse_modtime(text)
        times.append(None if value is None else value.timestamp())
    first, second = (None if t is not None and abs(t) < 1 else t for t in times)
    if first is None or second is None:
        return first is second
    return abs(first - second) <= 1


# Names with more TOC files than this are matched by place, not one by one.
_FEW = 8


class _StreamCheck:
    """Walks the tar stream of a blob against its TOC (see Blob.verify).

    Tar semantics let a later entry replace an earlier one of the same name,
    and a TOC may list only the last (Go removes the earlier ones, estargz
    keeps them in the stream).  So for every name, the TOC's entries must
    match the *last* tar entries of that name, in order; a regular file is
    matched by where its data lies, which the TOC fixes exactly.
    """

    def __init__(self, blob: Blob, members: _Inflated, plain: Any) -> None:
        self.blob = blob
        self.toc = blob.toc
        self.members = members
        self.reader = TarReader(ByteSource(plain), negative_ids=True)
        self.by_name: dict[str, list[TOCEntry]] = {}
        for entry in self.toc.entries:
            self.by_name.setdefault(entry.name, []).append(entry)
        # Per name, the last tar entries seen: (stream index, type, size,
        # link, metadata).
        self.seen: dict[
            str, collections.deque[tuple[int, str, int, str, _Metadata]]
        ] = {}
        # Stream index of the tar entry whose data each TOC file was matched to.
        self.matched: dict[int, int] = {}
        self.chunks_checked = 0
        # Per much-repeated name: its TOC files by where their data starts.
        self._places: dict[str, dict[tuple[int, int], TOCEntry]] = {}

    def _fail(self, message: str) -> VerificationError:
        return VerificationError(f"tar stream: {message}")

    def run(self) -> VerifyReport:
        toc_name = TOC_TAR_NAME.decode()
        index = -1
        for index, tar_entry in enumerate(self._tar_entries()):
            name = go_text(tar_entry.name)
            cleaned = clean_name(name)
            candidates = self.by_name.get(cleaned)
            where = f"entry {name!r} at uncompressed offset {tar_entry.header_offset}"
            if not candidates:
                if cleaned == toc_name:
                    self.reader.skip_payload()
                    continue
                raise self._fail(f"{where} is not in the TOC")
            kind = _TAR_TYPES.get(tar_entry.typeflag, "?")
            if kind == "reg" and tar_entry.size:
                self._check_data(tar_entry, candidates, index)
            else:
                self.reader.read_padding()
            link = (
                go_text(tar_entry.linkname) if kind in ("symlink", "hardlink") else ""
            )
            seen = self.seen.setdefault(
                cleaned, collections.deque(maxlen=len(candidates))
            )
            seen.append(
                (
                    index,
                    kind,
                    tar_entry.size if kind == "reg" else 0,
                    link,
                    _Metadata(tar_entry, kind),
                )
            )
        for name, entries in self.by_name.items():
            seen = self.seen.get(name, collections.deque())
            if len(seen) < len(entries):
                missing = entries[len(seen) - len(entries)]
                raise self._fail(
                    f"TOC entry {missing.raw_name!r} is not in the tar stream"
                )
            for entry, (stream_index, kind, size, link, meta) in zip(entries, seen):
                what = f"entry {entry.raw_name!r}"
                if kind != entry.type:
                    raise self._fail(
                        f"{what} is a {kind} in the tar, a {entry.type} in the TOC"
                    )
                if entry.type == "reg" and size != entry.size:
                    raise self._fail(
                        f"{what} has {size} bytes in the tar, {entry.size} in the TOC"
                    )
                if link != (
                    entry.link_name if entry.type in ("symlink", "hardlink") else ""
                ):
                    raise self._fail(
                        f"{what} links to {link!r} in the tar, "
                        f"{entry.link_name!r} in the TOC"
                    )
                differs = meta.differs(entry)
                if differs:
                    raise self._fail(f"{what}: {differs}")
                if (
                    entry.type == "reg"
                    and entry.size
                    and self.matched.get(id(entry)) != stream_index
                ):
                    raise self._fail(
                        f"{what}: the last tar entry of that name holds other data"
                    )
        order = [self._stream_index(entry) for entry in self.toc.entries]
        if order != sorted(order):
            raise self._fail("the TOC lists the entries in another order than the tar")
        trailing, data_at = self._trailer()
        return VerifyReport(
            toc_digest=self.blob.toc_digest,
            entries=len(self.toc.entries),
            chunks=self.chunks_checked,
            uncompressed_bytes=self.reader.source.offset,
            members=len(self.members.starts),
            trailing_bytes=trailing,
            trailing_data_at=data_at,
        )

    def _trailer(self) -> tuple[int, int]:
        """Read what follows the end-of-archive marker; warn about data there."""
        start = self.reader.end_offset
        eoa = 2 * BLOCK
        size = 0
        data_at = -1
        complete = True
        for block in self._blocks(self.reader.read_trailer()):
            if size > eoa + VERIFY_TRAILER:
                # Real trailers are record padding, a few KiB; past this
                # much, a blob of zeros would only cost time.
                complete = False
                break
            if data_at < 0:
                # The marker itself is zeros (the tar reader checked).
                body = block[max(0, eoa - size) :]
                stripped = body.lstrip(b"\0")
                if stripped:
                    data_at = start + size + len(block) - len(stripped)
            size += len(block)
        trailing = max(0, size - eoa)
        if not complete:
            log.warning(
                "more than %d bytes follow the tar's end-of-archive marker; "
                "verify read no further",
                trailing,
            )
        if data_at >= 0:
            log.warning(
                "%d bytes follow the tar's end-of-archive marker, with data at "
                "uncompressed offset %d: runtimes stop at the marker, `tar -i` "
                "would read on",
                trailing,
                data_at,
            )
        return trailing, data_at

    def _blocks(self, blocks: Iterator[bytes]) -> Iterator[bytes]:
        try:
            yield from blocks
        except EStargzError as exc:
            if isinstance(exc, VerificationError):
                raise
            raise self._fail(str(exc)) from exc

    def _stream_index(self, entry: TOCEntry) -> int:
        entries = self.by_name[entry.name]
        seen = self.seen[entry.name]
        return seen[entries.index(entry)][0]

    def _tar_entries(self) -> Iterator[Any]:
        try:
            yield from self.reader
        except EStargzError as exc:
            if isinstance(exc, VerificationError):
                raise
            raise self._fail(str(exc)) from exc

    def _member_position(self, row: int) -> Optional[int]:
        chunks = self.toc.chunks
        start = self.members.starts.get(int(chunks.offset[row]))
        return None if start is None else start + int(chunks.inner_offset[row])

    def _candidate_at(
        self, tar_entry: Any, candidates: list[TOCEntry]
    ) -> Optional[TOCEntry]:
        """Which of many same-named TOC files starts where ``tar_entry``'s
        data does: looked up by (member, innerOffset), not by trying each
        (a TOC may repeat a name thousands of times)."""
        by_place = self._places.get(candidates[0].name)
        if by_place is None:
            chunks = self.toc.chunks
            by_place = {}
            for candidate in candidates:
                if candidate.type == "reg" and candidate.chunk_count:
                    row = candidate.chunk_start
                    place = (int(chunks.offset[row]), int(chunks.inner_offset[row]))
                    by_place.setdefault(place, candidate)
            self._places[candidates[0].name] = by_place
        members = self.members
        at = tar_entry.data_offset
        i = bisect.bisect_right(members.start_positions, at) - 1
        if i < 0:
            return None
        place = (members.start_members[i], at - members.start_positions[i])
        return by_place.get(place)

    def _check_data(
        self, tar_entry: Any, candidates: list[TOCEntry], index: int
    ) -> None:
        """Read a regular file's data; if a TOC entry of its name puts its
        first chunk exactly there, check all of that entry's chunks."""
        chunks = self.toc.chunks
        first = self.reader.read_payload(1)
        entry = None
        if len(candidates) > _FEW:
            entry = self._candidate_at(tar_entry, candidates)
        else:
            for candidate in candidates:
                if (
                    candidate.type == "reg"
                    and candidate.chunk_count
                    and self._member_position(candidate.chunk_start)
                    == tar_entry.data_offset
                ):
                    entry = candidate
                    break
        if entry is None or entry.size != tar_entry.size:
            # An earlier copy that a later entry replaces, or a mismatch that
            # the end of the walk reports.
            self.reader.skip_payload()
            return
        # Chunk digests were checked by the thread that inflated them; here
        # only positions, and the digest of a file of several chunks.
        whole_file = entry.chunk_count > 1 or (
            bool(entry.digest) and entry.digest != chunks.digest_of(entry.chunk_start)
        )
        file_hash = _native.Sha256() if whole_file else None
        for row in range(entry.chunk_start, entry.chunk_start + entry.chunk_count):
            size = int(chunks.size[row])
            at = tar_entry.data_offset + int(chunks.file_offset[row])
            # Read the chunk's first byte (the file's is read already): then
            # the member that holds it has been seen, and its place is known.
            head = first if row == entry.chunk_start else self.reader.read_payload(1)
            found = self._member_position(row)
            if found != at:
                place = self.blob._chunk_place(row)
                if found is None:
                    raise self._fail(f"{place}: no gzip member starts there")
                raise self._fail(
                    f"{place}: the TOC puts it at uncompressed offset {found}, "
                    f"the tar stream at {at}"
                )
            if file_hash is None:
                # Nothing to hash here: pass over the bytes uncopied.
                self.reader.skip_bytes(size - 1)
            else:
                file_hash.update(head)
                self.reader.feed_payload(size - 1, file_hash.update)
            failure = self.members.failures.get(row)
            if failure is None and row not in self.members.verified:
                failure = "its digest was never checked"
            if failure is not None:
                raise VerificationError(f"{self.blob._chunk_place(row)}: {failure}")
            self.chunks_checked += 1
        self.reader.read_padding()
        if file_hash is not None and entry.digest.startswith("sha256:"):
            found_digest = "sha256:" + file_hash.hexdigest()
            if found_digest != entry.digest:
                raise VerificationError(
                    f"TOC: {entry.raw_name!r}: file digest {found_digest}, "
                    f"the TOC says {entry.digest}"
                )
        self.matched[id(entry)] = index


_TAR_TYPES = {
    b"0": "reg",
    b"7": "reg",
    b"1": "hardlink",
    b"2": "symlink",
    b"3": "char",
    b"4": "block",
    b"5": "dir",
    b"6": "fifo",
}


class EntryFile(io.RawIOBase):
    """A regular file of a blob, read lazily chunk by chunk (verified)."""

    def __init__(self, blob: Blob, entry: TOCEntry) -> None:
        self._blob = blob
        self.entry = entry
        self._position = 0
        self._row = -1
        self._chunk = b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {
            io.SEEK_SET: 0,
            io.SEEK_CUR: self._position,
            io.SEEK_END: self.entry.size,
        }
        position = base[whence] + offset
        if position < 0:
            raise ValueError("negative seek position")
        self._position = position
        return position

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` as far as the file allows (across chunks)."""
        view = memoryview(buffer).cast("B")
        entry = self.entry
        chunks = self._blob.toc.chunks
        done = 0
        while done < len(view) and self._position < entry.size:
            row = chunks.find(entry, self._position)
            if row != self._row:
                self._chunk = self._blob.read_chunk(row)
                self._row = row
            start = self._position - int(chunks.file_offset[row])
            n = min(len(view) - done, len(self._chunk) - start)
            view[done : done + n] = self._chunk[start : start + n]
            self._position += n
            done += n
        return done

    def readall(self) -> bytes:
        parts = []
        while self._position < self.entry.size:
            # In pieces: the size is the TOC's claim, not yet what is there.
            part = self.read(min(self.entry.size - self._position, 1 << 22))
            if not part:
                break
            parts.append(part)
        return b"".join(parts)


def open_blob(
    blob: BlobInput,
    *,
    external_toc: Optional[TOCInput] = None,
    toc_digest: Optional[str] = None,
    max_toc_size: int = DEFAULT_MAX_TOC_SIZE,
    verify_chunks: bool = True,
) -> Blob:
    """Open an eStargz, legacy stargz or external-TOC blob.

    :param blob: a path, a binary file object, bytes, or any
        :class:`~estargz._source.RangeSource`
    :param external_toc: the TOC of an external-TOC blob (the gzip-compressed
        TOC tar): a path, bytes, a file object or a callable returning bytes
    :param toc_digest: check the TOC against this ``sha256:`` digest
    :param max_toc_size: refuse TOCs larger than this (uncompressed)
    :param verify_chunks: check each chunk's digest as it is read
    :raises BlobFormatError: not an eStargz blob, or a malformed footer or TOC
    :raises VerificationError: the TOC does not match ``toc_digest``
    """
    source = as_source(blob)
    try:
        return Blob(
            source,
            external_toc=external_toc,
            toc_digest=toc_digest,
            max_toc_size=max_toc_size,
            verify_chunks=verify_chunks,
        )
    except BaseException:
        if source is not blob:
            close = getattr(source, "close", None)
            if close is not None:
                close()
        raise
