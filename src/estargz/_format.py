"""Byte-level pieces of the eStargz format shared by the writer and reader:
the TOC's JSON text as Go writes it, names, footers and small tar headers.
"""

from __future__ import annotations

import datetime
import functools
import posixpath
import re
import struct
from base64 import b64encode
from typing import Optional

TOC_TAR_NAME = b"stargz.index.json"
PREFETCH_LANDMARK = b".prefetch.landmark"
NO_PREFETCH_LANDMARK = b".no.prefetch.landmark"
LANDMARK_CONTENTS = b"\x0f"
DEFAULT_CHUNK_SIZE = 4 << 20

FOOTER_SIZE = 51
LEGACY_FOOTER_SIZE = 47
EXTERNAL_TOC_FOOTER_SIZE = 46

# eStargz footer, 51 bytes: an empty gzip member whose Extra field holds
# the TOC offset.
#   0-9    1f 8b 08 04 00000000 00 ff  header, FLG = FEXTRA, MTIME 0, OS 255
#   10-11  1a 00                       XLEN = 26
#   12-13  'S' 'G'                     subfield id
#   14-15  16 00                       subfield length 22
#   16-37  %016x offset + "STARGZ"
#   38-42  01 00 00 ff ff              final stored block, empty
#   43-50  CRC-32 0, ISIZE 0
_FOOTER_HEAD = bytes.fromhex("1f8b08040000000000ff")
_EMPTY_FINAL_STORED = bytes.fromhex("010000ffff")
_EMPTY_TRAILER = bytes(8)

# External-TOC footer, 46 bytes: the same shape with XLEN 21, subfield
# length 17 and the marker "STARGZEXTERNALTOC"; it carries no offset.
EXTERNAL_TOC_FOOTER = (
    _FOOTER_HEAD
    + struct.pack("<H", 21)
    + b"SG"
    + struct.pack("<H", 17)
    + b"STARGZEXTERNALTOC"
    + _EMPTY_FINAL_STORED
    + _EMPTY_TRAILER
)


def footer(toc_offset: int) -> bytes:
    """The 51-byte eStargz footer pointing at the TOC member."""
    extra = b"SG" + struct.pack("<H", 22) + b"%016xSTARGZ" % toc_offset
    return (
        _FOOTER_HEAD
        + struct.pack("<H", len(extra))
        + extra
        + _EMPTY_FINAL_STORED
        + _EMPTY_TRAILER
    )


def legacy_footer(toc_offset: int) -> bytes:
    """The 47-byte footer of the original stargz (CRFS): bare Extra field."""
    extra = b"%016xSTARGZ" % toc_offset
    return (
        _FOOTER_HEAD
        + struct.pack("<H", len(extra))
        + extra
        + _EMPTY_FINAL_STORED
        + _EMPTY_TRAILER
    )


def clean_name(name: bytes) -> bytes:
    """The name a reader uses for an entry: Go's ``path.Clean("/"+name)``
    without the leading slash, so ``./a``, ``/a``, ``../a`` and ``a/`` are
    all ``a`` and the root is empty."""
    if (
        name
        and not name.startswith((b"/", b"./", b"../"))
        and not name.endswith((b"/", b"/.", b"/.."))
        and b"//" not in name
        and b"/./" not in name
        and b"/../" not in name
        and name not in (b".", b"..")
    ):
        return name  # clean already (most names): normpath would return it
    return posixpath.normpath(b"/" + name).lstrip(b"/")


# -- JSON text as Go's encoding/json writes it --------------------------------

_PLAIN = re.compile(rb'[^\x20-\x7e]|["\\<>&]')
_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\b": "\\b",
    "\f": "\\f",
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
for _code in range(0x20):
    _ESCAPES.setdefault(chr(_code), f"\\u{_code:04x}")
for _code in range(0xDC80, 0xDD00):
    # A byte that is not part of valid UTF-8 (kept by surrogateescape):
    # Go writes U+FFFD in its place, one per byte.
    _ESCAPES[chr(_code)] = "\\ufffd"
_ESCAPE_TABLE = str.maketrans(_ESCAPES)


def json_string(value: bytes) -> str:
    """``value`` as a JSON string literal, byte for byte as Go would write it
    (HTML-safe escapes, raw UTF-8, ``\\ufffd`` for invalid UTF-8)."""
    if not _PLAIN.search(value):
        return '"' + value.decode("ascii") + '"'
    text = value.decode("utf-8", "surrogateescape")
    return '"' + text.translate(_ESCAPE_TABLE) + '"'


_INVALID_BYTES = {code: "\ufffd" for code in range(0xDC80, 0xDD00)}


def go_text(value: bytes) -> str:
    """What bytes become after a trip through Go's JSON: every byte that is
    not part of valid UTF-8 turns into U+FFFD, one per byte."""
    try:
        return value.decode("utf-8")  # the common case, and much faster
    except UnicodeDecodeError:
        return value.decode("utf-8", "surrogateescape").translate(_INVALID_BYTES)


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


@functools.lru_cache(maxsize=1 << 12)
def format_modtime(mtime_ns: int) -> str:
    """Go's ``formatModtime``: nothing for the epoch second, else UTC
    rounded to the second (halves up) in RFC 3339."""
    if mtime_ns // 1_000_000_000 == 0:
        return ""
    seconds = (mtime_ns + 500_000_000) // 1_000_000_000
    try:
        m = _EPOCH + datetime.timedelta(seconds=seconds)
    except OverflowError:
        # Limitation: times outside years 1-9999 are left out of the TOC.
        return ""
    return (
        f"{m.year:04d}-{m.month:02d}-{m.day:02d}T"
        f"{m.hour:02d}:{m.minute:02d}:{m.second:02d}Z"
    )


class TOCRecord:
    """One TOC entry on the writer's side, in Go's field order.

    Zero values are left out of the JSON, as Go's ``omitempty`` does.
    """

    __slots__ = (
        "chunk_digest",
        "chunk_offset",
        "chunk_size",
        "devmajor",
        "devminor",
        "digest",
        "gid",
        "gname",
        "inner_offset",
        "linkname",
        "mode",
        "modtime",
        "name",
        "offset",
        "size",
        "type",
        "uid",
        "uname",
        "xattrs",
    )

    def __init__(self, name: bytes, type: str) -> None:
        self.name = name
        self.type = type
        self.size = 0
        self.modtime = ""
        self.linkname = b""
        self.mode = 0
        self.uid = 0
        self.gid = 0
        self.uname = b""
        self.gname = b""
        self.offset = 0
        self.inner_offset = 0
        self.devmajor = 0
        self.devminor = 0
        self.xattrs: Optional[dict[bytes, bytes]] = None
        self.digest = ""
        self.chunk_offset = 0
        self.chunk_size = 0
        self.chunk_digest = ""

    def encode(self, uname: bytes, gname: bytes) -> str:
        """The entry as an element of the indented ``entries`` array.

        ``uname``/``gname`` are what to write for the names (empty when the
        previous entry of the same id already carried them).
        """
        t = "\t\t\t"
        parts = [
            f'\t\t{{\n{t}"name": {json_string(self.name)},\n{t}"type": "{self.type}"'
        ]
        if self.size:
            parts.append(f'{t}"size": {self.size}')
        if self.modtime:
            parts.append(f'{t}"modtime": "{self.modtime}"')
        if self.linkname:
            parts.append(f'{t}"linkName": {json_string(self.linkname)}')
        if self.mode:
            parts.append(f'{t}"mode": {self.mode}')
        if self.uid:
            parts.append(f'{t}"uid": {self.uid}')
        if self.gid:
            parts.append(f'{t}"gid": {self.gid}')
        if uname:
            parts.append(f'{t}"userName": {json_string(uname)}')
        if gname:
            parts.append(f'{t}"groupName": {json_string(gname)}')
        if self.offset:
            parts.append(f'{t}"offset": {self.offset}')
        if self.inner_offset:
            parts.append(f'{t}"innerOffset": {self.inner_offset}')
        if self.devmajor:
            parts.append(f'{t}"devMajor": {self.devmajor}')
        if self.devminor:
            parts.append(f'{t}"devMinor": {self.devminor}')
        if self.xattrs:
            items = ",\n".join(
                f"\t\t\t\t{json_string(key)}: "
                f'"{b64encode(self.xattrs[key]).decode("ascii")}"'
                for key in sorted(self.xattrs)
            )
            parts.append(f'{t}"xattrs": {{\n{items}\n{t}}}')
        if self.digest:
            parts.append(f'{t}"digest": "{self.digest}"')
        if self.chunk_offset:
            parts.append(f'{t}"chunkOffset": {self.chunk_offset}')
        if self.chunk_size:
            parts.append(f'{t}"chunkSize": {self.chunk_size}')
        if self.chunk_digest:
            parts.append(f'{t}"chunkDigest": "{self.chunk_digest}"')
        return ",\n".join(parts) + "\n\t\t}"


def encode_toc_pieces(records: list[TOCRecord]) -> list[bytes]:
    """The TOC JSON exactly as Go's ``json.MarshalIndent(toc, "", "\\t")``
    writes it, as pieces to join or stream: user and group names only where
    they change."""
    if not records:
        return [b'{\n\t"version": 1,\n\t"entries": null\n}']
    users: dict[int, bytes] = {}
    groups: dict[int, bytes] = {}
    pieces = [b'{\n\t"version": 1,\n\t"entries": [\n']
    last = len(records) - 1
    for i, record in enumerate(records):
        uname = gname = b""
        if record.type != "chunk":
            if record.uname and users.get(record.uid) != record.uname:
                users[record.uid] = uname = record.uname
            if record.gname and groups.get(record.gid) != record.gname:
                groups[record.gid] = gname = record.gname
        text = record.encode(uname, gname) + (",\n" if i < last else "\n\t]\n}")
        pieces.append(text.encode("utf-8"))
    return pieces


def encode_toc(records: list[TOCRecord]) -> bytes:
    """The whole TOC JSON (see :func:`encode_toc_pieces`)."""
    return b"".join(encode_toc_pieces(records))


# -- small tar headers -------------------------------------------------------


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\x00" % (width - 1, value)


def ustar_header(
    name: bytes,
    size: int,
    typeflag: bytes = b"0",
    mode: int = 0,
    mtime: int = 0,
) -> bytes:
    """A USTAR header block laid out as Go's ``archive/tar`` writes it.

    Only what the writer synthesizes needs it (the TOC entry and landmark
    files), so names must fit the 100-byte field.
    """
    if len(name) > 100:
        raise ValueError(f"name {name!r} does not fit a USTAR header")
    block = bytearray(512)
    block[0 : len(name)] = name
    block[100:108] = _octal(mode, 8)
    block[108:116] = _octal(0, 8)
    block[116:124] = _octal(0, 8)
    block[124:136] = _octal(size, 12)
    block[136:148] = _octal(mtime, 12)
    block[148:156] = b" " * 8
    block[156:157] = typeflag
    block[257:263] = b"ustar\x00"
    block[263:265] = b"00"
    block[329:337] = _octal(0, 8)
    block[337:345] = _octal(0, 8)
    checksum = sum(block)
    block[148:156] = b"%06o\x00 " % checksum
    return bytes(block)


def toc_tar(toc_json: bytes) -> bytes:
    """The tar that carries the TOC: its header, the JSON, padding, and the
    two end-of-archive blocks."""
    header = ustar_header(TOC_TAR_NAME, len(toc_json))
    return header + toc_json + bytes(-len(toc_json) % 512) + bytes(1024)
