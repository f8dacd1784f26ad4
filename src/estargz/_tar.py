"""A streaming tar reader that keeps the raw bytes of every header.

It reads the formats a container layer may hold (V7, USTAR, PAX with local
and global headers, GNU with long names, STAR), interpreting them as Go's
``archive/tar`` does, since the TOC must describe each entry as the Go
reference would.  Unlike Go's reader it also hands back the exact header
bytes and padding of each entry, which lets the writer copy them verbatim
(keep-diff-id) and name the byte offset of anything malformed.

Names and other strings stay ``bytes``: tar does not promise any encoding.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, BinaryIO, Callable, Optional

from estargz import _native
from estargz.errors import InputError

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
# Largest PAX or GNU long-name header this reader accepts, as Go's does.
MAX_SPECIAL_SIZE = 1 << 20

_DECIMAL = re.compile(rb"-?[0-9]+")

MAGIC_USTAR = b"ustar\x00"
MAGIC_GNU = b"ustar "
VERSION_GNU = b" \x00"
TRAILER_STAR = b"tar\x00"

# Types whose size field does not announce a payload (Go: isHeaderOnlyType).
HEADER_ONLY = frozenset([b"1", b"2", b"3", b"4", b"5", b"6"])
# Types that describe the next header rather than an entry.
META_TYPES = frozenset([b"x", b"g", b"L", b"K"])

SCHILY_XATTR = b"SCHILY.xattr."
# Global PAX records describe the archive, not one file: these are not
# applied to every later entry.  (Go ignores global headers altogether.)
PER_FILE_ONLY = frozenset([b"path", b"linkpath", b"size"])


class TarEntry:
    """One tar entry as Go's reader would report it, plus where it lies."""

    __slots__ = (
        "data_offset",
        "devmajor",
        "devminor",
        "gid",
        "globals",
        "gname",
        "header_offset",
        "linkname",
        "mode",
        "mtime_ns",
        "name",
        "raw_header",
        "size",
        "sparse",
        "typeflag",
        "uid",
        "uname",
        "xattrs",
    )

    def __init__(self) -> None:
        self.name = b""
        self.linkname = b""
        self.typeflag = b"0"
        self.mode = 0
        self.uid = 0
        self.gid = 0
        self.uname = b""
        self.gname = b""
        self.mtime_ns = 0
        self.devmajor = 0
        self.devminor = 0
        self.size = 0
        self.xattrs: dict[bytes, bytes] = {}
        self.sparse: Optional[str] = None
        self.header_offset = 0
        self.data_offset = 0
        self.raw_header = b""
        self.globals = b""

    @property
    def payload_size(self) -> int:
        """Bytes of payload that follow the header in the archive."""
        return 0 if self.typeflag in HEADER_ONLY else self.size

    @property
    def padding(self) -> int:
        return -self.payload_size % BLOCK

    @property
    def display_name(self) -> str:
        return self.name.decode("utf-8", "backslashreplace")

    def __repr__(self) -> str:
        return (
            f"TarEntry({self.name!r}, type={self.typeflag!r}, size={self.size}, "
            f"offset={self.header_offset})"
        )


class ByteSource:
    """Exact reads from a binary stream, counting the offset reached."""

    def __init__(self, stream: BinaryIO, offset: int = 0) -> None:
        self._stream = stream
        self.offset = offset

    def read(self, size: int) -> bytes:
        """Return up to ``size`` bytes; fewer only at the end of the stream."""
        data = self._stream.read(size)
        while len(data) < size:
            more = self._stream.read(size - len(data))
            if not more:
                break
            data += more
        self.offset += len(data)
        return data

    def readinto(self, view: memoryview) -> int:
        """Fill ``view`` as far as the stream allows; return the count."""
        total = 0
        size = len(view)
        while total < size:
            n = self._stream.readinto(view[total:])  # type: ignore[attr-defined]
            if not n:
                break
            total += n
        self.offset += total
        return total

    def skip(self, size: int) -> int:
        """Pass over ``size`` bytes; return how many there were."""
        skipper = getattr(self._stream, "skip", None)
        if skipper is not None:
            done = int(skipper(size))
        else:
            done = 0
            while done < size:
                got = len(self._stream.read(min(size - done, 1 << 20)))
                if not got:
                    break
                done += got
        self.offset += done
        return done

    def feed(self, size: int, consume: Callable[[memoryview], object]) -> int:
        """Hand the next ``size`` bytes to ``consume``; return how many there
        were."""
        feeder = getattr(self._stream, "feed", None)
        if feeder is not None:
            done = int(feeder(size, consume))
        else:
            done = 0
            while done < size:
                data = self._stream.read(min(size - done, 1 << 20))
                if not data:
                    break
                consume(memoryview(data))
                done += len(data)
        self.offset += done
        return done

    def read_rest(self, block: int = 1 << 20) -> bytes:
        """Return one block of whatever follows; b"" at the end."""
        return self.read(block)


def _cstring(field: bytes) -> bytes:
    end = field.find(b"\x00")
    return field if end < 0 else field[:end]


class TarReader:
    """Iterate over the entries of a tar stream.

    After each entry the caller consumes exactly its payload and padding
    (:meth:`read_payload`, :meth:`skip_payload`, :meth:`read_padding`)
    before asking for the next one.  When iteration ends,
    :attr:`end_offset` is where the end-of-archive marker (or the end of the
    stream) begins; :meth:`read_trailer` returns what follows the last entry.
    """

    def __init__(self, source: ByteSource, *, negative_ids: bool = False) -> None:
        self.source = source
        # Go's reader takes negative (base-256) ids; our writer refuses them,
        # readers of what Go wrote must not.
        self.negative_ids = negative_ids
        self.global_pax: dict[bytes, bytes] = {}
        self.end_offset = -1
        self._pending = 0

    # -- errors ------------------------------------------------------------

    def _error(self, message: str, offset: int, name: bytes = b"") -> InputError:
        where = f"entry {name.decode('utf-8', 'backslashreplace')!r} " if name else ""
        return InputError(f"tar: {where}at offset {offset}: {message}")

    # -- numbers -----------------------------------------------------------

    def _numeric(self, field: bytes, what: str, offset: int, name: bytes = b"") -> int:
        if field[0] & 0x80:
            # Base-256 (GNU), two's complement when bit 6 of the first byte is set.
            negative = bool(field[0] & 0x40)
            value = int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
            if negative:
                value -= 1 << (len(field) * 8 - 1)
            if not -(1 << 63) <= value < (1 << 63):
                raise self._error(f"{what} field overflows", offset, name)
            return value
        text = field.strip(b" \x00")
        end = text.find(b"\x00")
        if end >= 0:
            text = text[:end]
        if not text:
            return 0
        if text.translate(None, b"01234567"):
            raise self._error(
                f"{what} field {field!r} is not an octal number", offset, name
            )
        return int(text, 8)

    # -- headers -----------------------------------------------------------

    def _read_block(self, entry_offset: int) -> Optional[bytes]:
        block = self.source.read(BLOCK)
        if not block:
            return None
        if len(block) < BLOCK:
            raise self._error(
                f"archive ends inside a header block ({len(block)} of 512 bytes)",
                entry_offset,
            )
        return block

    def _check(self, block: bytes, offset: int, numbers: tuple[Any, ...]) -> None:
        stored = numbers[7]
        if stored is None:
            # (An unchecked header's name may be any junk: not named here.)
            if block[148] & 0x80:
                # Go reads the checksum as octal only.
                raise self._error(
                    f"checksum field {block[148:156]!r} is not an octal number",
                    offset,
                )
            stored = self._numeric(block[148:156], "checksum", offset)
        unsigned, signed = numbers[8], numbers[9]
        if stored != unsigned and stored != signed:
            raise self._error(
                f"header checksum is {stored:o}, the header sums to {unsigned:o}",
                offset,
                _cstring(block[:100]),
            )

    def _special(self, block: bytes, offset: int, kind: str) -> bytes:
        size = self._numeric(block[124:136], "size", offset, _cstring(block[:100]))
        if size > MAX_SPECIAL_SIZE:
            raise self._error(f"{kind} of {size} bytes is over the 1 MiB limit", offset)
        data = self.source.read(size + (-size % BLOCK))
        if len(data) < size + (-size % BLOCK):
            raise self._error(f"archive ends inside a {kind}", offset)
        return data[:size]

    def _parse_pax(self, data: bytes, offset: int) -> list[tuple[bytes, bytes]]:
        records = []
        position = 0
        while position < len(data):
            space = data.find(b" ", position)
            if space < 0 or not data[position:space].isdigit():
                raise self._error("malformed PAX record length", offset)
            length = int(data[position:space])
            end = position + length
            if (
                length <= space - position + 1
                or end > len(data)
                or data[end - 1] != 0x0A
            ):
                raise self._error("malformed PAX record", offset)
            key, sep, value = data[space + 1 : end - 1].partition(b"=")
            if not sep or not key:
                raise self._error("malformed PAX record", offset)
            records.append((key, value))
            position = end
        return records

    def __iter__(self) -> TarReader:
        return self

    def __next__(self) -> TarEntry:
        if self._pending:
            raise RuntimeError("payload of the previous entry was not consumed")
        entry_offset = self.source.offset
        raw = bytearray()
        globals_raw = bytearray()
        local: dict[bytes, bytes] = {}
        sparse_records: list[tuple[bytes, bytes]] = []
        long_name: Optional[bytes] = None
        long_link: Optional[bytes] = None
        while True:
            header_offset = self.source.offset
            block = self._read_block(entry_offset)
            if block is None:
                if raw:
                    raise self._error(
                        "archive ends after an extended header", entry_offset
                    )
                self.end_offset = header_offset
                raise StopIteration
            if block == ZERO_BLOCK:
                if raw:
                    raise self._error(
                        "zero block after an extended header", header_offset
                    )
                second = self.source.read(BLOCK)
                if second.strip(b"\x00"):
                    raise self._error(
                        "a zero block is followed by a non-zero block", header_offset
                    )
                self.end_offset = header_offset
                self._eoa = block + second
                raise StopIteration
            numbers = _native.tar_header_numbers(block)
            self._check(block, header_offset, numbers)
            raw += block
            typeflag = block[156:157]
            if typeflag in META_TYPES:
                kind = {
                    b"x": "PAX header",
                    b"g": "PAX global header",
                    b"L": "GNU long name",
                    b"K": "GNU long link",
                }[typeflag]
                data = self._special(block, header_offset, kind)
                raw += data + bytes(-len(data) % BLOCK)
                if typeflag == b"g":
                    globals_raw += block + data + bytes(-len(data) % BLOCK)
                if typeflag == b"L":
                    long_name = _cstring(data)
                elif typeflag == b"K":
                    long_link = _cstring(data)
                else:
                    records = self._parse_pax(data, header_offset)
                    for key, value in records:
                        if key in (b"GNU.sparse.offset", b"GNU.sparse.numbytes"):
                            sparse_records.append((key, value))
                        if typeflag == b"x":
                            local[key] = value
                        elif key not in PER_FILE_ONLY:
                            # Replaced, not changed in place: entries keep
                            # the global records in force when they were read.
                            self.global_pax = {**self.global_pax, key: value}
                continue
            entry = self._entry(block, header_offset, numbers)
            entry.header_offset = entry_offset
            self._merge_pax(entry, {**self.global_pax, **local}, header_offset)
            if long_name is not None:
                entry.name = long_name
            if long_link is not None:
                entry.linkname = long_link
            if entry.typeflag == b"\x00":
                entry.typeflag = b"5" if entry.name.endswith(b"/") else b"0"
            merged = {**self.global_pax, **local}
            if typeflag == b"S":
                entry.sparse = "old GNU"
            elif any(k.startswith(b"GNU.sparse.") for k in merged) or sparse_records:
                entry.sparse = "PAX GNU.sparse"
            if entry.size < 0:
                raise self._error("negative size", header_offset, entry.name)
            for what in ("size", "uid", "gid"):
                value = getattr(entry, what)
                low = -(1 << 63) if self.negative_ids and what != "size" else 0
                if not low <= value < 1 << 63:
                    # Negative ids come from base-256 fields; the TOC (and
                    # every reader of it) wants them non-negative.
                    raise self._error(
                        f"{what} {value} is outside 0..2**63-1",
                        header_offset,
                        entry.name,
                    )
            if b"\x00" in entry.name or b"\x00" in entry.linkname:
                raise self._error(
                    "a NUL byte in the name or link name", header_offset, entry.name
                )
            entry.raw_header = bytes(raw)
            entry.globals = bytes(globals_raw)
            entry.data_offset = self.source.offset
            self._pending = entry.payload_size + entry.padding
            self._pending_entry = entry
            return entry

    def _entry(self, block: bytes, offset: int, numbers: tuple[Any, ...]) -> TarEntry:
        entry = TarEntry()
        magic = block[257:263]
        if magic == MAGIC_USTAR and block[508:512] == TRAILER_STAR:
            fmt = "star"
        elif magic == MAGIC_USTAR:
            fmt = "ustar"
        elif magic == MAGIC_GNU and block[263:265] == VERSION_GNU:
            fmt = "gnu"
        else:
            fmt = "v7"
        entry.typeflag = block[156:157]
        entry.name = _cstring(block[0:100])
        entry.linkname = _cstring(block[157:257])
        # Plain octal fields come parsed (numbers); the rest take the slow
        # path, which also names what is wrong with them.
        size, mode, uid, gid, mtime, devmajor, devminor = numbers[:7]
        if size is None:
            size = self._numeric(block[124:136], "size", offset, entry.name)
        if mode is None:
            mode = self._numeric(block[100:108], "mode", offset, entry.name)
        if uid is None:
            uid = self._numeric(block[108:116], "uid", offset, entry.name)
        if gid is None:
            gid = self._numeric(block[116:124], "gid", offset, entry.name)
        if mtime is None:
            mtime = self._numeric(block[136:148], "mtime", offset, entry.name)
        entry.size = size
        entry.mode = mode
        entry.uid = uid
        entry.gid = gid
        entry.mtime_ns = mtime * 1_000_000_000
        if fmt != "v7":
            entry.uname = _cstring(block[265:297])
            entry.gname = _cstring(block[297:329])
            if devmajor is None:
                devmajor = self._numeric(block[329:337], "devmajor", offset, entry.name)
            if devminor is None:
                devminor = self._numeric(block[337:345], "devminor", offset, entry.name)
            entry.devmajor = devmajor
            entry.devminor = devminor
            prefix = b""
            if fmt == "ustar":
                prefix = _cstring(block[345:500])
            elif fmt == "star":
                prefix = _cstring(block[345:476])
            if prefix:
                entry.name = prefix + b"/" + entry.name
        return entry

    def _merge_pax(
        self, entry: TarEntry, records: dict[bytes, bytes], offset: int
    ) -> None:
        for key, value in records.items():
            if not value and not key.startswith(SCHILY_XATTR):
                # An empty value keeps the header's own (Go's mergePAX); an
                # xattr may be empty (Go keeps it, from PAXRecords).
                continue
            if key == b"path":
                entry.name = value
            elif key == b"linkpath":
                entry.linkname = value
            elif key == b"uname":
                entry.uname = value
            elif key == b"gname":
                entry.gname = value
            elif key in (b"uid", b"gid", b"size"):
                if not _DECIMAL.fullmatch(value):
                    raise self._error(
                        f"PAX {key.decode()} {value!r} is not a number",
                        offset,
                        entry.name,
                    )
                setattr(entry, key.decode(), int(value))
            elif key == b"mtime":
                entry.mtime_ns = self._pax_time(value, offset, entry.name)
            elif key.startswith(SCHILY_XATTR):
                entry.xattrs[key[len(SCHILY_XATTR) :]] = value

    def _pax_time(self, value: bytes, offset: int, name: bytes = b"") -> int:
        whole, _, fraction = value.partition(b".")
        negative = whole.startswith(b"-")
        digits = whole[1:] if negative else whole
        if not digits.isdigit() or (fraction and not fraction.isdigit()):
            raise self._error(f"PAX time {value!r} is not a number", offset, name)
        nanos = int((fraction[:9] + b"000000000")[:9]) if fraction else 0
        total = int(digits) * 1_000_000_000 + nanos
        return -total if negative else total

    # -- payload -----------------------------------------------------------

    def read_payload(self, size: int) -> bytes:
        """Return the next ``size`` payload bytes of the current entry."""
        entry = self._pending_entry
        data = self.source.read(size)
        if len(data) < size:
            self._truncated(entry)
        self._pending -= size
        return data

    def readinto_payload(self, view: memoryview) -> None:
        """Fill ``view`` with the next payload bytes of the current entry."""
        entry = self._pending_entry
        got = self.source.readinto(view)
        self._pending -= got
        if got < len(view):
            self._truncated(entry)

    def read_padding(self) -> bytes:
        """Return the padding after the current entry's payload."""
        size = self._pending
        data = self.source.read(size)
        if len(data) < size:
            self._truncated(self._pending_entry)
        self._pending = 0
        return data

    def skip_payload(self) -> bytes:
        """Skip what is left of the current entry; return the padding."""
        self.skip_bytes(self._pending - self._pending_entry.padding)
        return self.read_padding()

    def feed_payload(self, size: int, consume: Callable[[memoryview], object]) -> None:
        """Hand the next ``size`` payload bytes to ``consume`` in pieces,
        without copying them where the stream allows."""
        if size > 0:
            done = self.source.feed(size, consume)
            self._pending -= done
            if done < size:
                self._truncated(self._pending_entry)

    def skip_bytes(self, size: int) -> None:
        """Pass over the next ``size`` payload bytes of the current entry."""
        if size > 0:
            done = self.source.skip(size)
            self._pending -= done
            if done < size:
                self._truncated(self._pending_entry)

    def _truncated(self, entry: TarEntry) -> None:
        end = self.source.offset
        raise self._error(
            f"archive ends at offset {end}, inside the payload of "
            f"{entry.payload_size} bytes that starts at offset {entry.data_offset}",
            entry.header_offset,
            entry.name,
        )

    def read_trailer(self) -> Iterator[bytes]:
        """After the last entry: the end-of-archive marker and anything after
        it, in blocks of at most 1 MiB."""
        eoa = getattr(self, "_eoa", b"")
        if eoa:
            yield eoa
        while True:
            block = self.source.read(1 << 20)
            if not block:
                return
            yield block
