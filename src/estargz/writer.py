"""Convert a container layer (tar, tar.gz or tar.zst) into an eStargz blob.

How the blob is cut, and why its bytes do not depend on the thread count:

The uncompressed stream is cut into *segments* in front of every chunk of
file data, so each segment is a chunk followed by the padding and headers
that come after it (the first segment holds the headers before the first
chunk).  That is where Go's writer may start a new gzip member.  Segments
are compressed on worker threads in batches, each from a fresh deflate
state, so their bytes depend only on their content.  The main thread reads
the input, hashes the stream (diffID), and afterwards decides which
segments share a member, writes the members in order and fills in the TOC.

* Without a minimum chunk size every chunk starts a member: a worker turns
  each segment straight into a complete gzip member.
* With a minimum chunk size (and for chunks larger than 4 MiB, which are
  split into several segments) workers produce sync-flushed raw deflate
  segments, primed with the 32 KiB before them so small files still compress
  against their neighbours; the main thread then groups them into members
  with Go's rule (a new member when the open one already holds
  ``min_chunk_size`` compressed bytes) and joins each group with
  ``crc32_combine``.  A primed segment that ends up first in its member is
  compressed again without the dictionary before it is written.
"""

from __future__ import annotations

import collections
import errno
import io
import json
import logging
import os
import sys
import tempfile
import threading
from array import array
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Optional, Union, cast

from estargz import _native
from estargz._format import (
    DEFAULT_CHUNK_SIZE,
    EXTERNAL_TOC_FOOTER,
    LANDMARK_CONTENTS,
    NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
    TOC_TAR_NAME,
    TOCRecord,
    clean_name,
    encode_toc_pieces,
    footer,
    format_modtime,
    ustar_header,
)
from estargz._tar import BLOCK, ByteSource, TarEntry, TarReader
from estargz._util import AtomicOutput, PathLike, cpu_count
from estargz.errors import ConversionError, InputError, NativeError

__all__ = ["ConvertResult", "convert", "read_prioritized_files"]

log = logging.getLogger(__name__)

EMPTY_DIGEST = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
TYPES = {
    b"0": "reg",
    b"7": "reg",  # contiguous file: a regular file to every reader we know
    b"1": "hardlink",
    b"2": "symlink",
    b"3": "char",
    b"4": "block",
    b"5": "dir",
    b"6": "fifo",
}
# A batch handed to a worker holds at least this many uncompressed bytes.
BATCH_BYTES = 1 << 20
# Chunks above this size are compressed as several segments of one member,
# which keeps the memory of a batch small whatever the chunk size.
SEGMENT_LIMIT = 512 << 10
# Segments below this size are primed with the 32 KiB before them.
PRIME_LIMIT = 64 << 10
DICTIONARY = 32 << 10
# A batch never outgrows this: it is closed at the first cut past
# BATCH_BYTES, and no segment is longer than SEGMENT_LIMIT.
BATCH_CAPACITY = DICTIONARY + BATCH_BYTES + SEGMENT_LIMIT
# A compressed batch fits this unless deflate expands it a lot (it then
# comes back as new bytes).
COMPRESSED_CAPACITY = BATCH_CAPACITY + (BATCH_CAPACITY >> 4)
# Assembled batches queued for writing at most.
WRITES_AHEAD = 2

Source = Union[PathLike, BinaryIO]


@dataclass(frozen=True)
class ConvertResult:
    """What a conversion produced.  Digests are ``sha256:<hex>`` strings."""

    toc_digest: str
    diff_id: str
    blob_digest: str
    blob_size: int
    uncompressed_size: int
    external_toc_digest: Optional[str] = None
    external_toc_size: Optional[int] = None

    def to_json(self) -> dict[str, Any]:
        """The report with the key names ``ctr-remote`` users know."""
        report: dict[str, Any] = {
            "tocDigest": self.toc_digest,
            "diffID": self.diff_id,
            "blobDigest": self.blob_digest,
            "blobSize": self.blob_size,
            "uncompressedSize": self.uncompressed_size,
        }
        if self.external_toc_digest is not None:
            report["externalTOCDigest"] = self.external_toc_digest
            report["externalTOCSize"] = self.external_toc_size
        return report


def _digest(hasher: _native.Sha256) -> str:
    return "sha256:" + hasher.hexdigest()


# -- input -------------------------------------------------------------------


class _Counting(io.RawIOBase):
    """Counts the compressed bytes read, so errors can name an offset."""

    def __init__(self, stream: BinaryIO, head: bytes) -> None:
        self._stream = stream
        self._head = head
        self.offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._head:
            n = min(len(view), len(self._head))
            view[:n] = self._head[:n]
            self._head = self._head[n:]
        else:
            reader = getattr(self._stream, "readinto", None)
            if reader is not None:
                n = reader(view) or 0
            else:
                data = self._stream.read(len(view))
                n = len(data)
                view[:n] = data
        self.offset += n
        return n


class _Inflating(io.RawIOBase):
    """A decompressor as a raw stream, its errors turned into InputError."""

    def __init__(self, reader: Any, counter: _Counting, kind: str) -> None:
        self._reader = reader
        self._counter = counter
        self._kind = kind

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            return int(self._reader.readinto(buffer))
        except NativeError as exc:
            raise InputError(f"input: {exc}") from exc
        except Exception as exc:
            if type(exc).__name__ != "ZstdError":
                raise
            raise InputError(
                f"input: corrupt zstd data near compressed offset "
                f"{self._counter.offset}: {exc}"
            ) from exc


@dataclass
class _Input:
    stream: Any  # a binary stream: a file or a BufferedReader
    kind: str  # "tar", "gzip" or "zstd"
    seekable_tar: bool


def _open_input(source: Source, stack: list[Any]) -> _Input:
    if isinstance(source, (str, os.PathLike)):
        if os.fspath(source) == "-":
            raw: BinaryIO = sys.stdin.buffer
        else:
            try:
                raw = open(source, "rb", buffering=1 << 16)
            except OSError as exc:
                raise InputError(
                    f"cannot open input {os.fspath(source)!r}: {exc}"
                ) from exc
            stack.append(raw)
    else:
        raw = source
    head = b""
    while len(head) < 4:
        more = raw.read(4 - len(head))
        if not more:
            break
        head += more
    counter = _Counting(raw, head)
    if head[:3] == b"\x1f\x8b\x08":
        reader: Any = _native.GzipReader(io.BufferedReader(counter, 1 << 20))
        stream = io.BufferedReader(_Inflating(reader, counter, "gzip"), 1 << 20)
        return _Input(stream, "gzip", False)
    if head == b"\x28\xb5\x2f\xfd":
        try:
            import zstandard
        except ImportError as exc:
            raise InputError("input is zstd-compressed: pip install zstandard") from exc
        reader = zstandard.ZstdDecompressor().stream_reader(
            cast(BinaryIO, counter), read_across_frames=True
        )
        stream = io.BufferedReader(_Inflating(reader, counter, "zstd"), 1 << 20)
        return _Input(stream, "zstd", False)
    seekable = False
    try:
        seekable = bool(
            getattr(raw, "seekable", lambda: False)()
        ) and raw.tell() == len(head)
    except (OSError, ValueError, AttributeError):
        seekable = False
    if seekable:
        raw.seek(0)
        return _Input(raw, "tar", True)
    return _Input(io.BufferedReader(counter, 1 << 20), "tar", False)


def read_prioritized_files(path: PathLike) -> list[str]:
    """Paths from a prioritized-files list: one path per line, or the JSON
    record stream that ``ctr-remote optimize --record-out`` writes (its
    ``path`` fields, first occurrence kept)."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError as exc:
        raise InputError(
            f"cannot read prioritized files {os.fspath(path)!r}: {exc}"
        ) from exc
    paths: list[str] = []
    if text.lstrip().startswith("{"):
        decoder = json.JSONDecoder()
        position = 0
        while True:
            while position < len(text) and text[position].isspace():
                position += 1
            if position >= len(text):
                break
            try:
                record, position = decoder.raw_decode(text, position)
            except json.JSONDecodeError as exc:
                raise InputError(f"{os.fspath(path)}: bad record: {exc}") from exc
            if not isinstance(record, dict) or not isinstance(record.get("path"), str):
                raise InputError(f"{os.fspath(path)}: a record has no 'path' string")
            paths.append(record["path"])
    else:
        paths = [line for line in text.splitlines() if line.strip()]
    seen: set[str] = set()
    unique = []
    for p in paths:
        if p not in seen:
            seen.add(p)
            unique.append(p)
    return unique


# -- compression pipeline ----------------------------------------------------

_START = _native.KIND_START
_CHUNK = _native.KIND_CHUNK
_LANDMARK = _native.KIND_LANDMARK
_CONTINUATION = _native.KIND_CONTINUATION


class _Batch:
    """Segments on their way to a worker: the bytes and what each one is."""

    __slots__ = (
        "begin",
        "buffer",
        "ends",
        "hash_jobs",
        "kinds",
        "output",
        "records",
        "size",
        "span_records",
        "spans",
        "view",
    )

    def __init__(self, buffer: bytearray, history: Any) -> None:
        self.buffer = buffer
        self.view = memoryview(buffer)
        self.begin = self.size = len(history)
        self.view[: self.size] = history
        self.ends = array("Q")
        # One more entry than ``ends``: the last describes the open segment.
        self.kinds = bytearray([_START])
        self.records: list[Optional[TOCRecord]] = [None]
        self.spans = array("Q")
        self.span_records: list[TOCRecord] = []
        # Sequential digests the hashing thread computes: (start, end, chunk
        # hash, file hash or None, record whose chunk digest is now complete,
        # record whose file digest is now complete).
        self.hash_jobs: list[tuple[int, int, Any, Any, Any, Any]] = []
        # Where the worker puts the compressed bytes.
        self.output: Optional[bytearray] = None


class _BlobBuilder:
    """Compresses the uncompressed stream into gzip members (see the module
    docstring) and writes them, in order, to ``out``."""

    def __init__(
        self,
        out: BinaryIO,
        level: int,
        min_chunk_size: int,
        threads: int,
        executor: Optional[ThreadPoolExecutor] = None,
    ) -> None:
        self.out = out
        self.level = level
        self.min_chunk_size = min_chunk_size
        self.threads = threads
        self.diff_hash = _native.Sha256()
        self.blob_hash = _native.Sha256()
        self.blob_size = 0
        self.uncompressed_size = 0
        self._local = threading.local()
        # Compression workers; conversions running side by side may share one
        # pool (an image's layers), which keeps every thread of the budget busy.
        self._own_pool = executor is None
        self._pool = executor or ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="estargz"
        )
        # The diffID and digests that span segments are sequential: one thread
        # computes them, batch after batch, beside the compressing workers.
        self._hasher = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="estargz-sha"
        )
        # Blob writes handed to that thread, not yet done.
        self._writes: collections.deque[Future[None]] = collections.deque()
        # Buffers for compressed batches, reused: fresh megabytes would each
        # be faulted in page by page.
        self._compressed_spare: list[bytearray] = []
        self._inflight: collections.deque[
            tuple[
                Future[tuple[Union[bytes, memoryview], bytes, bytes, bytes]],
                Future[None],
                _Batch,
            ]
        ] = collections.deque()
        # Batch buffers are allocated once and reused: no growth, no copies.
        self._spare: list[bytearray] = []
        self._batch = _Batch(self._buffer(), b"")
        self._seg_start = 0
        # The member being assembled.
        self._member_open = False
        self._member_offset = 0
        self._member_crc = 0
        self._member_usize = 0

    def _buffer(self) -> bytearray:
        if self._spare:
            return self._spare.pop()
        return _native.uninitialised_bytearray(BATCH_CAPACITY)

    # producer side ----------------------------------------------------------

    def append(self, data: Any) -> None:
        """Add bytes to the stream, in the open segment (a segment never grows
        past ``SEGMENT_LIMIT``: the excess opens a continuation)."""
        size = len(data)
        if not size:
            return
        self.uncompressed_size += size
        batch = self._batch
        room = SEGMENT_LIMIT - (batch.size - self._seg_start)
        if size <= room:
            batch.view[batch.size : batch.size + size] = data
            batch.size += size
            return
        data = memoryview(data)
        done = 0
        while done < size:
            batch = self._batch
            room = SEGMENT_LIMIT - (batch.size - self._seg_start)
            if room <= 0:
                self._cut(_CONTINUATION, None)
                continue
            take = min(room, size - done)
            batch.view[batch.size : batch.size + take] = data[done : done + take]
            batch.size += take
            done += take

    def _cut(self, kind: int, record: Optional[TOCRecord]) -> None:
        """Close the open segment; the next one is of ``kind``."""
        batch = self._batch
        if batch.size > self._seg_start:
            batch.ends.append(batch.size)
            if batch.size - batch.begin >= BATCH_BYTES:
                self._submit(kind)
                batch = self._batch
            else:
                batch.kinds.append(kind)
                batch.records.append(record)
                self._seg_start = batch.size
                return
        # The open segment is empty: it becomes the new one.
        batch.kinds[-1] = kind
        batch.records[-1] = record

    def add_chunk(
        self,
        record: TOCRecord,
        read_into: Callable[[memoryview], None],
        size: int,
        file_hash: Optional[_native.Sha256] = None,
        landmark: bool = False,
    ) -> None:
        """Add one chunk of file data, read by ``read_into`` straight into the
        batch; it starts a new segment (several when it is larger than a
        segment may be)."""
        self.uncompressed_size += size
        if size <= SEGMENT_LIMIT and file_hash is None:
            # One segment: the worker compressing it hashes it too.
            self._cut(_LANDMARK if landmark else _CHUNK, record)
            batch = self._batch
            start = batch.size
            read_into(batch.view[start : start + size])
            batch.size += size
            batch.spans.append(start)
            batch.spans.append(start + size)
            batch.span_records.append(record)
            return
        chunk_hash = _native.Sha256()
        done = 0
        while done < size:
            take = min(size - done, SEGMENT_LIMIT)
            first = _LANDMARK if landmark else _CHUNK
            self._cut(_CONTINUATION if done else first, record)
            batch = self._batch
            start = batch.size
            read_into(batch.view[start : start + take])
            batch.size += take
            done += take
            batch.hash_jobs.append(
                (
                    start,
                    start + take,
                    chunk_hash,
                    file_hash,
                    record if done == size else None,
                    None,
                )
            )

    def finish_file(self, record: TOCRecord, file_hash: _native.Sha256) -> None:
        """The file whose last chunk was just added gets its digest once the
        hashing thread reaches it."""
        jobs = self._batch.hash_jobs
        start, end, chunk_hash, _, chunk_record, _ = jobs[-1]
        jobs[-1] = (start, end, chunk_hash, file_hash, chunk_record, record)

    def _hash(self, batch: _Batch) -> None:
        """The sequential digests of one batch: the diffID over all of it, and
        chunks and files that span segments, in one pass where they overlap."""
        view = batch.view
        position = batch.begin
        diff = self.diff_hash
        for (
            start,
            end,
            chunk_hash,
            file_hash,
            chunk_record,
            file_record,
        ) in batch.hash_jobs:
            if position < start:
                diff.update(view[position:start])
            diff.update_with(chunk_hash, view[start:end], file_hash)
            position = end
            if chunk_record is not None:
                chunk_record.chunk_digest = _digest(chunk_hash)
            if file_record is not None:
                file_record.digest = _digest(file_hash)
        if position < batch.size:
            diff.update(view[position : batch.size])

    def _submit(self, next_kind: Optional[int]) -> None:
        batch = self._batch
        del batch.kinds[len(batch.ends) :]
        hashing = self._hasher.submit(self._hash, batch)
        if self._compressed_spare:
            batch.output = self._compressed_spare.pop()
        else:
            batch.output = _native.uninitialised_bytearray(COMPRESSED_CAPACITY)
        job = self._pool.submit(
            self._work,
            batch.view[: batch.size],
            batch.begin,
            batch.ends,
            bytes(batch.kinds),
            next_kind == _CONTINUATION,
            batch.spans,
            batch.output,
        )
        self._inflight.append((job, hashing, batch))
        # The next batch keeps the last 32 KiB, the dictionary of a member
        # carried over, and describes the segment that is now open.
        history = batch.view[max(0, batch.size - DICTIONARY) : batch.size]
        following = _Batch(self._buffer(), history)
        following.kinds[0] = next_kind if next_kind is not None else _START
        del batch.records[len(batch.ends) :]
        self._batch = following
        self._seg_start = following.begin
        while len(self._inflight) > self.threads + 1:
            self._collect()

    def _work(
        self,
        data: memoryview,
        begin: int,
        ends: array[int],
        kinds: bytes,
        open_at_end: bool,
        spans: array[int],
        output: bytearray,
    ) -> tuple[Union[bytes, memoryview], bytes, bytes, bytes]:
        compressor = getattr(self._local, "compressor", None)
        if compressor is None:
            compressor = self._local.compressor = _native.MemberCompressor(self.level)
        return compressor.compress_layer(
            data,
            begin,
            ends,
            kinds,
            self.min_chunk_size,
            open_at_end,
            spans,
            output,
            framed=True,
        )

    # consumer side ----------------------------------------------------------

    def _write(self, data: memoryview, buffer: Optional[bytearray]) -> None:
        """Write and hash ``data`` (a view of ``buffer``) on the sequential
        thread, in order, so the main thread goes back to parsing the tar
        while the kernel copies; ``buffer`` is reused afterwards."""
        self.blob_size += len(data)
        self._writes.append(self._hasher.submit(self._write_now, data, buffer))
        while len(self._writes) > WRITES_AHEAD:
            self._writes.popleft().result()

    def _write_now(
        self, data: Union[bytes, memoryview], buffer: Optional[bytearray] = None
    ) -> None:
        self.out.write(data)
        self.blob_hash.update(data)
        if isinstance(data, memoryview):
            data.release()
        self._recycle_output(buffer)

    def _drain(self) -> None:
        while self._writes:
            self._writes.popleft().result()

    def _collect(self) -> None:
        job, hashing, batch = self._inflight.popleft()
        compressed, raw_pieces, raw_positions, digests = job.result()
        hashing.result()
        for i, chunk in enumerate(batch.span_records):
            chunk.chunk_digest = "sha256:" + digests[32 * i : 32 * i + 32].hex()
        pieces = memoryview(raw_pieces).cast("Q")
        positions = memoryview(raw_positions).cast("Q")
        # The worker wrote the members' headers and left room for their
        # trailers: the bytes are the blob's once the trailers are in.
        if isinstance(compressed, memoryview):
            out, reuse = compressed, batch.output
        else:
            # They did not fit the batch's output buffer.
            out, reuse = memoryview(bytearray(compressed)), None
            self._recycle_output(batch.output)
        # Where each piece's member starts in the blob, and how many
        # uncompressed bytes of that member came before the piece.
        piece_member: list[tuple[int, int]] = []
        previous = 0
        for p in range(len(pieces) // 4):
            end, usize, crc, flags = pieces[4 * p : 4 * p + 4]
            if flags & 1:
                if self._member_open:
                    raise AssertionError("a member opened inside an open one")
                self._member_open = True
                self._member_offset = self.blob_size + previous
                self._member_crc = 0
                self._member_usize = 0
            piece_member.append((self._member_offset, self._member_usize))
            previous = end
            self._member_crc = _native.crc32_combine(self._member_crc, crc, usize)
            self._member_usize += usize
            if flags & 2:
                out[end - 8 : end] = _native.gzip_trailer(
                    self._member_crc, self._member_usize
                )
                self._member_open = False
        for i, record in enumerate(batch.records):
            if record is not None and batch.kinds[i] != _CONTINUATION:
                member_offset, before = piece_member[positions[2 * i]]
                record.offset = member_offset
                record.inner_offset = before + positions[2 * i + 1]
        self._write(out, reuse)
        if len(self._spare) < 2:
            self._spare.append(batch.buffer)

    def _recycle_output(self, buffer: Optional[bytearray]) -> None:
        if buffer is not None and len(self._compressed_spare) < 2:
            self._compressed_spare.append(buffer)

    def finish(self) -> None:
        """Compress and write everything still pending."""
        batch = self._batch
        if batch.size > self._seg_start:
            batch.ends.append(batch.size)
        if len(batch.ends):
            self._submit(None)
        while self._inflight:
            self._collect()
        self._drain()

    def close(self) -> None:
        for job, hashing, _ in self._inflight:
            job.cancel()
            hashing.cancel()
        if self._own_pool:
            self._pool.shutdown(wait=True)
        else:
            for job, _, _ in self._inflight:
                if not job.cancelled():
                    job.exception()
        self._hasher.shutdown(wait=True)

    def write_raw(self, data: bytes) -> None:
        self._drain()
        self._write_now(data)
        self.blob_size += len(data)


# -- layer conversion --------------------------------------------------------


class _Converter:
    def __init__(
        self,
        builder: _BlobBuilder,
        chunk_size: int,
        lossless: bool,
    ) -> None:
        self.builder = builder
        self.chunk_size = chunk_size
        self.lossless = lossless
        self.records: list[TOCRecord] = []
        self.dropped: list[bool] = []
        self.by_name: dict[bytes, tuple[int, int]] = {}

    def add_landmark(self, name: bytes) -> None:
        record = TOCRecord(name, "reg")
        record.size = 1
        record.digest = (
            "sha256:dc0e9c3658a1a3ed1ec94274d8b19925c93e1abb7ddba294923ad9bde30f8cb8"
        )
        self._add_records([record], clean_name(name))
        self.builder.append(ustar_header(name, 1))

        def fill(view: memoryview) -> None:
            view[:] = LANDMARK_CONTENTS

        self.builder.add_chunk(record, fill, 1, landmark=True)
        self.builder.append(bytes(BLOCK - 1))

    def _add_records(self, records: list[TOCRecord], name: bytes) -> None:
        first = len(self.records)
        self.records.extend(records)
        self.dropped.extend([False] * len(records))
        earlier = self.by_name.get(name)
        if earlier is not None and not self.lossless:
            for i in range(*earlier):
                self.dropped[i] = True
        self.by_name[name] = (first, len(self.records))

    def entry(self, entry: TarEntry, reader: TarReader) -> None:
        """Convert one entry: its TOC records and its bytes in the stream."""
        name = clean_name(entry.name)
        if name in (PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK) and not self.lossless:
            self.builder.append(entry.globals)
            reader.skip_payload()
            return
        if name == TOC_TAR_NAME:
            if self.lossless:
                raise InputError(
                    f"tar: entry {entry.display_name!r} "
                    f"at offset {entry.header_offset}: "
                    "the input already holds an eStargz TOC; keep-diff-id cannot "
                    "drop it (decompress the layer first)"
                )
            self.builder.append(entry.globals)
            reader.skip_payload()
            return
        if entry.sparse:
            raise InputError(
                f"tar: entry {entry.display_name!r} at offset {entry.header_offset}: "
                f"sparse files ({entry.sparse} format) are not supported"
            )
        kind = TYPES.get(entry.typeflag)
        if kind is None:
            raise InputError(
                f"tar: entry {entry.display_name!r} at offset {entry.header_offset}: "
                f"unsupported entry type {entry.typeflag.decode('latin-1')!r}"
            )

        record = TOCRecord(entry.name, kind)
        record.modtime = format_modtime(entry.mtime_ns)
        record.mode = entry.mode
        record.uid = entry.uid
        record.gid = entry.gid
        record.uname = entry.uname
        record.gname = entry.gname
        if entry.xattrs:
            record.xattrs = entry.xattrs
        if kind in ("hardlink", "symlink"):
            record.linkname = entry.linkname
        elif kind in ("char", "block"):
            record.devmajor = entry.devmajor
            record.devminor = entry.devminor
        self.builder.append(entry.raw_header)

        if kind != "reg":
            self._add_records([record], name)
            padding = reader.read_padding()
            if self.lossless:
                self.builder.append(padding)
            return

        size = entry.size
        record.size = size
        if size == 0:
            record.digest = EMPTY_DIGEST
            self._add_records([record], name)
            padding = reader.read_padding()
            if self.lossless:
                self.builder.append(padding)
            return

        records = []
        file_hash = _native.Sha256() if size > self.chunk_size else None
        position = 0
        current = record
        while position < size:
            take = min(self.chunk_size, size - position)
            if position:
                current = TOCRecord(entry.name, "chunk")
                current.chunk_offset = position
            if size - position >= self.chunk_size:
                current.chunk_size = self.chunk_size
            self.builder.add_chunk(current, reader.readinto_payload, take, file_hash)
            records.append(current)
            position += take
        if file_hash is not None:
            self.builder.finish_file(record, file_hash)
        padding = reader.read_padding()
        self.builder.append(padding if self.lossless else bytes(len(padding)))
        # Digests arrive later, from the threads: a multi-chunk file's from
        # the hashing thread, a single-chunk file's is its chunk's (copied by
        # finish_records).
        self._add_records(records, name)

    def finish_records(self) -> list[TOCRecord]:
        kept = []
        for record, dropped in zip(self.records, self.dropped):
            if dropped:
                continue
            if record.type == "reg" and record.size and not record.digest:
                record.digest = record.chunk_digest
            kept.append(record)
        return kept


def _scan(stream: BinaryIO) -> list[tuple[TarEntry, dict[bytes, bytes]]]:
    """First pass for reordering: every entry's header and where it starts."""
    source = ByteSource(stream)
    reader = TarReader(source)
    entries = []
    for entry in reader:
        entry.raw_header = b""  # read again in the second pass
        entries.append((entry, reader.global_pax))
        skip = entry.payload_size + entry.padding
        stream.seek(skip, os.SEEK_CUR)
        source.offset += skip
        reader._pending = 0
    return entries


def _sorted_entries(
    entries: list[tuple[TarEntry, dict[bytes, bytes]]],
    prioritized: Sequence[str],
    allow_missing: bool,
) -> tuple[list[tuple[TarEntry, dict[bytes, bytes]]], list[str]]:
    """Go's ``sortEntries``: duplicates removed (the later wins, at its own
    place), prioritized paths moved first with their parents and hardlink
    targets, landmarks of the input dropped."""
    stream: dict[bytes, tuple[TarEntry, dict[bytes, bytes]]] = {}
    for item in entries:
        name = clean_name(item[0].name)
        if name in (PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK):
            continue
        stream.pop(name, None)
        stream[name] = item
    moved: dict[bytes, tuple[TarEntry, dict[bytes, bytes]]] = {}
    missing: list[str] = []

    def move(name: bytes) -> Optional[bytes]:
        """Move ``name`` to the front after its parents and, for a hardlink,
        its target (Go's ``moveRec``, without recursion: paths can be
        thousands of directories deep).  Returns the name found missing."""
        stack = [(clean_name(name), 0)]
        active: set[bytes] = set()
        while stack:
            current, stage = stack.pop()
            if stage == 0:
                if current == b"":
                    if current in stream:
                        moved[current] = stream.pop(current)
                    continue
                if current not in stream and current not in moved:
                    return current
                if current in active:
                    continue  # hardlinks in a circle (Go would never return)
                active.add(current)
                stack.append((current, 1))
                parent = current.rsplit(b"/", 1)[0] if b"/" in current else b""
                stack.append((parent, 0))
            elif stage == 1:
                stack.append((current, 2))
                item = stream.get(current)
                if item is not None and item[0].typeflag == b"1":
                    stack.append((clean_name(item[0].linkname), 0))
            else:
                active.discard(current)
                item = stream.pop(current, None)
                if item is not None:
                    moved[current] = item
        return None

    for path in prioritized:
        wanted = path.encode("utf-8", "surrogateescape")
        absent = move(wanted)
        if absent is not None:
            if not allow_missing:
                if absent == clean_name(wanted):
                    raise InputError(
                        f"prioritized file {path!r} is not in the layer "
                        "(--allow-missing-prioritized skips such paths)"
                    )
                shown = absent.decode("utf-8", "backslashreplace")
                raise InputError(
                    f"prioritized file {path!r}: {shown!r}, which must come "
                    "before it (a parent directory or a hardlink's target), has "
                    "no entry in the layer (--allow-missing-prioritized skips it)"
                )
            missing.append(path)
    landmark: list[tuple[Any, dict[bytes, bytes]]] = [(None, {})]
    return [*moved.values(), *landmark, *stream.values()], missing


def _same_file(a: object, b: object) -> bool:
    if not isinstance(a, (str, os.PathLike)) or not isinstance(b, (str, os.PathLike)):
        return a is b and a is not None
    if os.fspath(a) == "-" or os.fspath(b) == "-":
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _check_distinct(source: object, output: object, external_toc: object) -> None:
    """Refuse to write over the input, or the blob and TOC into one file."""
    if _same_file(source, output):
        raise ConversionError(f"input and output are the same file: {output!s}")
    if external_toc is not None:
        if _same_file(external_toc, output):
            raise ConversionError(
                "the external TOC and the blob would be the same file"
            )
        if _same_file(external_toc, source):
            raise ConversionError("the external TOC would overwrite the input")


def _write_toc(
    builder: _BlobBuilder,
    records: list[TOCRecord],
    level: int,
    external: Optional[BinaryIO],
) -> tuple[str, int, _native.Sha256]:
    """Write the TOC tar as one gzip member, streaming: into the blob (and
    the diffID), or into ``external``.  Returns the TOC digest and the size
    and hash of the member."""
    pieces = encode_toc_pieces(records)
    json_size = sum(len(piece) for piece in pieces)
    toc_hash = _native.Sha256()
    member_hash = _native.Sha256()
    member_size = 0
    writer = _native.MemberWriter(level)
    pending: list[bytes] = []
    pending_size = 0

    def emit(compressed: bytes) -> None:
        nonlocal member_size
        member_hash.update(compressed)
        member_size += len(compressed)
        if external is not None:
            external.write(compressed)
        else:
            builder.write_raw(compressed)

    def flush() -> None:
        nonlocal pending_size
        data = b"".join(pending)
        pending.clear()
        pending_size = 0
        if external is None:
            builder.diff_hash.update(data)
            builder.uncompressed_size += len(data)
        emit(writer.write(data))

    def add(data: bytes) -> None:
        nonlocal pending_size
        pending.append(data)
        pending_size += len(data)
        if pending_size >= 1 << 18:
            flush()

    add(ustar_header(TOC_TAR_NAME, json_size))
    for piece in pieces:
        toc_hash.update(piece)
        add(piece)
    add(bytes(-json_size % BLOCK) + bytes(2 * BLOCK))
    flush()
    emit(writer.finish())
    return _digest(toc_hash), member_size, member_hash


def convert(
    source: Source,
    output: Union[PathLike, BinaryIO],
    *,
    compression_level: int = 9,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    min_chunk_size: int = 0,
    prioritized_files: Optional[Iterable[str]] = None,
    allow_missing_prioritized: bool = False,
    external_toc: Optional[Union[PathLike, BinaryIO]] = None,
    keep_diff_id: bool = False,
    threads: Optional[int] = None,
    executor: Optional[ThreadPoolExecutor] = None,
) -> ConvertResult:
    """Convert a layer into an eStargz blob.

    :param source: the layer: a path (``-`` for standard input) or a binary
        file object holding a tar, tar.gz or tar.zst
    :param output: where the blob goes: a path, written atomically (``-``
        for standard output), or a binary file object
    :param compression_level: gzip level 0-9, as ``ctr-remote`` (default 9)
    :param chunk_size: largest piece of a file in one chunk (default 4 MiB)
    :param min_chunk_size: compressed bytes a gzip member holds before a new
        one starts; above 0, several files share a member (``innerOffset``)
    :param prioritized_files: paths to place first, followed by the
        ``.prefetch.landmark`` file
    :param allow_missing_prioritized: skip prioritized paths that are not in
        the layer instead of failing
    :param external_toc: keep the TOC out of the blob and write it here, as
        the gzip-compressed tar that goes into the TOC image
    :param keep_diff_id: make the uncompressed blob equal the input tar byte
        for byte, so the layer's diffID does not change (needs
        ``external_toc``; no prioritized files)
    :param threads: compression threads (default: all CPUs)
    :param executor: compress on this thread pool instead of one of our own
        (several conversions at once may share one; ``threads`` then only
        sets how much work each keeps queued)
    :raises InputError: the layer is malformed or holds what cannot be
        converted; the message names the entry and the byte offset
    :raises ConversionError: the options do not fit together
    """
    if not 0 <= compression_level <= 9:
        raise ConversionError(f"compression level must be 0-9, got {compression_level}")
    if chunk_size < 0:
        raise ConversionError(f"chunk size must not be negative, got {chunk_size}")
    chunk_size = chunk_size or DEFAULT_CHUNK_SIZE
    if min_chunk_size < 0:
        raise ConversionError(
            f"min chunk size must not be negative, got {min_chunk_size}"
        )
    prioritized = list(prioritized_files or [])
    if keep_diff_id and external_toc is None:
        raise ConversionError("keep-diff-id needs an external TOC (--external-toc)")
    if keep_diff_id and prioritized:
        raise ConversionError(
            "keep-diff-id cannot reorder files: drop the prioritized files"
        )
    threads = threads or cpu_count()
    if threads < 1:
        raise ConversionError(f"threads must be at least 1, got {threads}")
    _check_distinct(source, output, external_toc)

    stack: list[Any] = []
    outputs: list[AtomicOutput] = []
    try:
        if isinstance(output, (str, os.PathLike)):
            blob_output = AtomicOutput(output)
            outputs.append(blob_output.__enter__())
            out: BinaryIO = blob_output.file  # type: ignore[assignment]
        else:
            out = output
        toc_file: Optional[BinaryIO] = None
        if isinstance(external_toc, (str, os.PathLike)):
            toc_output = AtomicOutput(external_toc)
            outputs.append(toc_output.__enter__())
            toc_file = toc_output.file
        elif external_toc is not None:
            toc_file = external_toc

        result = _convert(
            source,
            out,
            toc_file,
            stack,
            level=compression_level,
            chunk_size=chunk_size,
            min_chunk_size=min_chunk_size,
            prioritized=prioritized,
            allow_missing=allow_missing_prioritized,
            external=external_toc is not None,
            lossless=keep_diff_id,
            threads=threads,
            executor=executor,
        )
        for target in outputs:
            target.commit()
        return result
    except OSError as exc:
        if exc.filename is None and exc.errno in _WRITE_ERRORS:
            # Raised by a write: say where.
            written = [
                os.fspath(o)
                for o in (output, external_toc)
                if isinstance(o, (str, os.PathLike))
            ]
            where = " or ".join(repr(name) for name in written) or "the output"
            raise type(exc)(exc.errno, f"cannot write {where}: {exc.strerror}") from exc
        raise
    finally:
        # The threads stop (no write still pending) before the outputs go.
        for item in reversed(stack):
            item.close()
        for target in outputs:
            target.discard()


_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def _convert(
    source: Source,
    out: BinaryIO,
    toc_file: Optional[BinaryIO],
    stack: list[Any],
    *,
    level: int,
    chunk_size: int,
    min_chunk_size: int,
    prioritized: list[str],
    allow_missing: bool,
    external: bool,
    lossless: bool,
    threads: int,
    executor: Optional[ThreadPoolExecutor],
) -> ConvertResult:
    opened = _open_input(source, stack)
    builder = _BlobBuilder(out, level, min_chunk_size, threads, executor)
    stack.append(builder)
    converter = _Converter(builder, chunk_size, lossless)

    if prioritized:
        stream = opened.stream
        if not opened.seekable_tar:
            spool = tempfile.TemporaryFile(prefix="estargz-layer-")
            stack.append(spool)
            while True:
                block = stream.read(1 << 20)
                if not block:
                    break
                spool.write(block)
            spool.seek(0)
            stream = spool
        order, missing = _sorted_entries(_scan(stream), prioritized, allow_missing)
        if missing:
            log.warning("prioritized files not in the layer: %s", ", ".join(missing))
        for entry, global_pax in order:
            if entry is None:
                converter.add_landmark(PREFETCH_LANDMARK)
                continue
            stream.seek(entry.header_offset)
            reader = TarReader(ByteSource(stream, entry.header_offset))
            reader.global_pax = dict(global_pax)
            converter.entry(next(reader), reader)
    else:
        reader = TarReader(ByteSource(opened.stream))
        if not lossless:
            converter.add_landmark(NO_PREFETCH_LANDMARK)
        for entry in reader:
            converter.entry(entry, reader)
        if lossless:
            for block in reader.read_trailer():
                builder.append(block)
            if builder.uncompressed_size != reader.source.offset:
                raise ConversionError(
                    f"internal error: {builder.uncompressed_size} bytes written for "
                    f"{reader.source.offset} bytes read in keep-diff-id mode"
                )
        elif opened.kind != "tar":
            # A compressed input is read to its end, as Go reads it: the last
            # member's CRC is checked, and garbage after the stream refused
            # in every mode alike.
            while opened.stream.read(1 << 20):
                pass

    builder.finish()
    records = converter.finish_records()
    external_digest = None
    external_size = None
    toc_digest, toc_member_size, toc_member_hash = _write_toc(
        builder, records, level, toc_file if external else None
    )
    if external:
        external_digest = _digest(toc_member_hash)
        external_size = toc_member_size
        builder.write_raw(EXTERNAL_TOC_FOOTER)
    else:
        builder.write_raw(footer(builder.blob_size - toc_member_size))
    log.info(
        "converted a layer: %d TOC entries, %d bytes in, %d bytes out",
        len(records),
        builder.uncompressed_size,
        builder.blob_size,
    )
    return ConvertResult(
        toc_digest=toc_digest,
        diff_id=_digest(builder.diff_hash),
        blob_digest=_digest(builder.blob_hash),
        blob_size=builder.blob_size,
        uncompressed_size=builder.uncompressed_size,
        external_toc_digest=external_digest,
        external_toc_size=external_size,
    )
