"""The table of contents (TOC) of an eStargz blob, as a reader sees it.

Parsing follows Go's reader (``initFields``): names are cleaned, ``chunk``
entries belong to the file before them, user and group names missing on an
entry are filled from the last name seen for the same id, parent directories
the TOC leaves out are made up (mode 0755), hardlinks are resolved to their
target, and a later entry of the same name wins.  Unknown keys are ignored.

Chunks live in compact NumPy arrays, one row per chunk of the whole layer,
so a TOC of a million chunks costs tens of bytes per chunk rather than a
Python object each; a file's chunk for a given offset is found by binary
search.
"""

from __future__ import annotations

import datetime
import gc
import json
import posixpath
import re
from array import array
from base64 import b64decode
from collections.abc import Iterator
from typing import Any, Callable, Optional

import numpy as np

from estargz.errors import BlobFormatError

__all__ = ["TOC", "ChunkIndex", "TOCEntry"]

ENTRY_TYPES = frozenset(
    ["dir", "reg", "symlink", "hardlink", "char", "block", "fifo", "chunk"]
)
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
_OTHER_DIGEST = re.compile(r"(sha384:[0-9a-f]{96}|sha512:[0-9a-f]{128})")
_INT_KEYS = (
    "size",
    "mode",
    "uid",
    "gid",
    "offset",
    "innerOffset",
    "devMajor",
    "devMinor",
    "chunkOffset",
    "chunkSize",
)
# Numbers in the TOC are Go int64s; the TOC's version is a small number.
_INT64_MAX = (1 << 63) - 1
_INT64_MIN = -(1 << 63)
_VERSION_MAX = (1 << 31) - 1
# The names of the directories a TOC leaves out, which the reader makes up,
# may take at most this many characters together.  Each is a prefix of an
# entry's name, so a deep name costs the square of its length: without a
# bound, a small hostile TOC would take any amount of memory.
MADE_UP_NAMES_MAX = 1 << 27
_STR_KEYS = (
    "name",
    "type",
    "modtime",
    "linkName",
    "userName",
    "groupName",
    "digest",
    "chunkDigest",
)


def clean_name(name: str) -> str:
    """Go's ``cleanEntryName``: ``path.Clean("/"+name)`` minus the leading
    slash, so ``./a``, ``/a``, ``../a`` and ``a/`` all name ``a``."""
    if (
        name
        and not name.startswith(("/", "./", "../"))
        and not name.endswith(("/", "/.", "/.."))
        and "//" not in name
        and "/./" not in name
        and "/../" not in name
        and name not in (".", "..")
    ):
        return name  # clean already (most names): normpath would return it
    return posixpath.normpath("/" + name).lstrip("/")


def _parent(name: str) -> str:
    return posixpath.dirname(name)


def _shown(value: Any) -> str:
    """A number for a message, without printing thousands of digits."""
    if isinstance(value, int) and value.bit_length() > 256:
        return f"({value.bit_length()}-bit number)"
    return repr(value)


def _bad_number(key: str, value: Any) -> str:
    if type(value) is int and value > 0:
        return f"{key} {_shown(value)} is larger than {_INT64_MAX} (2^63-1)"
    if key in ("uid", "gid") and type(value) is int:
        return f"{key} {_shown(value)} is smaller than {_INT64_MIN} (-2^63)"
    return f"{key} {_shown(value)} is not a non-negative integer"


def _text_problem(text: str) -> Optional[str]:
    """Why ``text`` cannot name a file (or xattr) on this system, or None.

    A NUL byte cannot be passed to the OS at all.  A lone surrogate (JSON
    ``"\\ud800"``) has no UTF-8 form; the ones Python uses for undecodable
    bytes (U+DC80..U+DCFF) stand for those bytes, which is taken only when
    the bytes decode back to the same text (otherwise two names would be one
    file)."""
    if "\0" in text:
        return "holds a NUL character"
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")
        if raw.decode("utf-8", "surrogateescape") == text:
            return None
    except UnicodeError:
        pass
    return "holds a lone UTF-16 surrogate, which no file name can carry"


def _digits_error(exc: Exception) -> str:
    """Python's refusal of a huge integer literal, minus its advice."""
    return str(exc).split(";")[0]


class TOCEntry:
    """A file, directory, link, device or fifo of the layer.

    ``name`` is the cleaned name ("" for the root); the other attributes are
    the TOC's fields under Python names.  ``chunk_start``/``chunk_count``
    locate a regular file's chunks in the TOC's :class:`ChunkIndex`.
    """

    __slots__ = (
        "children",
        "chunk_count",
        "chunk_start",
        "dev_major",
        "dev_minor",
        "digest",
        "gid",
        "group_name",
        "link_name",
        "mode",
        "modtime",
        "name",
        "num_link",
        "raw_name",
        "size",
        "target",
        "type",
        "uid",
        "user_name",
        "xattrs",
    )

    def __init__(self, name: str, type: str) -> None:
        self.name = name
        self.raw_name = name
        self.type = type
        self.size = 0
        self.modtime = ""
        self.link_name = ""
        self.mode = 0
        self.uid = 0
        self.gid = 0
        self.user_name = ""
        self.group_name = ""
        self.dev_major = 0
        self.dev_minor = 0
        self.xattrs: dict[str, bytes] = {}
        self.digest = ""
        self.num_link = 0
        self.chunk_start = 0
        self.chunk_count = 0
        self.children: Optional[dict[str, TOCEntry]] = None
        # For a hardlink: the entry it names, once resolved (None if missing).
        self.target: Optional[TOCEntry] = None

    @property
    def mtime(self) -> Optional[datetime.datetime]:
        """The modification time, or None when the TOC has none (or a bad one)."""
        return parse_modtime(self.modtime)

    def is_dir(self) -> bool:
        return self.type == "dir"

    def is_reg(self) -> bool:
        return self.type == "reg"

    def __repr__(self) -> str:
        return f"TOCEntry({self.name!r}, {self.type}, size={self.size})"


def parse_modtime(text: str) -> Optional[datetime.datetime]:
    if not text:
        return None
    try:
        value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if value.tzinfo is None:
        return None
    return value


class ChunkIndex:
    """Every chunk of the layer, one row each, in compact arrays.

    ``file_offset`` is where the chunk starts inside its file, ``size`` its
    length, ``offset`` the compressed offset of the gzip member holding it,
    ``inner_offset`` where it starts in that member's uncompressed bytes,
    ``digest`` its SHA-256 (``has_digest`` tells whether the TOC gave one)
    and ``member_end`` where the member's compressed bytes end at the latest
    (the next member's start).
    """

    def __init__(self) -> None:
        self.file_offset = np.zeros(0, np.int64)
        self.size = np.zeros(0, np.int64)
        self.offset = np.zeros(0, np.int64)
        self.inner_offset = np.zeros(0, np.int64)
        self.member_end = np.zeros(0, np.int64)
        self.digest = np.zeros((0, 32), np.uint8)
        self.has_digest = np.zeros(0, np.bool_)
        # Digests other than sha256 (allowed by Go's reader), by row.
        self.other_digests: dict[int, str] = {}

    def __len__(self) -> int:
        return int(self.size.shape[0])

    @property
    def nbytes(self) -> int:
        """Memory the arrays take."""
        return int(
            sum(
                a.nbytes
                for a in (
                    self.file_offset,
                    self.size,
                    self.offset,
                    self.inner_offset,
                    self.member_end,
                    self.digest,
                    self.has_digest,
                )
            )
        )

    def digest_of(self, row: int) -> str:
        """The chunk's digest as the TOC wrote it ("" when absent)."""
        if row in self.other_digests:
            return self.other_digests[row]
        if not self.has_digest[row]:
            return ""
        raw: bytes = self.digest[row].tobytes()
        return "sha256:" + raw.hex()

    def find(self, entry: TOCEntry, position: int) -> int:
        """The row of ``entry``'s chunk that holds byte ``position``."""
        start, count = entry.chunk_start, entry.chunk_count
        offsets = self.file_offset[start : start + count]
        i = int(np.searchsorted(offsets, position, side="right")) - 1
        return start + max(i, 0)


class _Builder:
    """Turns the TOC's entries, in order, into entries and chunk rows."""

    def __init__(self) -> None:
        self.entries: list[TOCEntry] = []
        self.by_name: dict[str, TOCEntry] = {}
        self.file_offset = array("q")
        self.size = array("q")
        self.offset = array("q")
        self.inner = array("q")
        self.digests = bytearray()
        self.has_digest = bytearray()
        self.other_digests: dict[int, str] = {}
        self.users: dict[int, str] = {}
        self.groups: dict[int, str] = {}
        self.last: Optional[TOCEntry] = None
        self.last_reg: Optional[TOCEntry] = None
        self.version = 0
        self.count = 0

    def _fail(self, index: int, raw: dict[str, Any], message: str) -> BlobFormatError:
        name = raw.get("name")
        what = f"entry {index}" + (f" ({name!r})" if isinstance(name, str) else "")
        return BlobFormatError(f"TOC {what}: {message}")

    def _check(self, index: int, raw: Any) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise BlobFormatError(f"TOC entry {index}: not a JSON object")
        for key in _INT_KEYS:
            value = raw.get(key)
            # type() rather than isinstance(): JSON gives plain ints, and a
            # bool is no number here.  Go writes the ids of a tar header as
            # they are, negative ones included.
            low = _INT64_MIN if key in ("uid", "gid") else 0
            if value is not None and (
                type(value) is not int or not low <= value <= _INT64_MAX
            ):
                raise self._fail(index, raw, _bad_number(key, value))
        for key in _STR_KEYS:
            value = raw.get(key)
            if value is not None and not isinstance(value, str):
                raise self._fail(index, raw, f"{key} {value!r} is not a string")
        if raw.get("type") not in ENTRY_TYPES:
            raise self._fail(index, raw, f"unknown type {raw.get('type')!r}")
        return raw

    def _digest_row(self, index: int, raw: dict[str, Any], text: Optional[str]) -> None:
        row = len(self.size)
        if not text:
            self.digests += bytes(32)
            self.has_digest.append(0)
        elif _SHA256.fullmatch(text):
            self.digests += bytes.fromhex(text[7:])
            self.has_digest.append(1)
        elif _OTHER_DIGEST.fullmatch(text):
            self.digests += bytes(32)
            self.has_digest.append(0)
            self.other_digests[row] = text
        else:
            raise self._fail(index, raw, f"chunkDigest {text!r} is not a valid digest")

    def add(self, raw: Any) -> None:
        index = self.count
        self.count += 1
        raw = self._check(index, raw)
        kind = raw["type"]
        if kind == "chunk":
            owner = self.last
            if owner is None or owner.type != "reg":
                raise self._fail(
                    index, raw, "a chunk entry that follows no regular file"
                )
            if owner.chunk_count == 0:
                raise self._fail(
                    index, raw, "a chunk entry for a file that is not chunked"
                )
            chunk_offset = raw.get("chunkOffset", 0)
            size = raw.get("chunkSize", 0) or owner.size - chunk_offset
            self._digest_row(index, raw, raw.get("chunkDigest"))
            self.file_offset.append(chunk_offset)
            self.size.append(size)
            self.offset.append(raw.get("offset", 0))
            self.inner.append(raw.get("innerOffset", 0))
            owner.chunk_count += 1
            return

        raw_name = raw.get("name") or ""
        problem = _text_problem(raw_name)
        if problem is not None:
            raise self._fail(index, raw, f"the name {problem}")
        entry = TOCEntry(clean_name(raw_name), kind)
        entry.raw_name = raw_name
        entry.size = raw.get("size", 0)
        entry.modtime = raw.get("modtime", "")
        entry.link_name = raw.get("linkName", "")
        if entry.link_name:
            problem = _text_problem(entry.link_name)
            if problem is not None:
                raise self._fail(index, raw, f"linkName {problem}")
        entry.mode = raw.get("mode", 0)
        entry.uid = raw.get("uid", 0)
        entry.gid = raw.get("gid", 0)
        entry.dev_major = raw.get("devMajor", 0)
        entry.dev_minor = raw.get("devMinor", 0)
        entry.digest = raw.get("digest", "")
        if entry.digest and not (
            _SHA256.fullmatch(entry.digest) or _OTHER_DIGEST.fullmatch(entry.digest)
        ):
            raise self._fail(
                index, raw, f"digest {entry.digest!r} is not a valid digest"
            )
        xattrs = raw.get("xattrs")
        if xattrs:
            if not isinstance(xattrs, dict):
                raise self._fail(index, raw, "xattrs is not an object")
            for key, value in xattrs.items():
                problem = _text_problem(key)
                if problem is not None:
                    raise self._fail(index, raw, f"xattr {key!r} {problem}")
                if not isinstance(value, str):
                    raise self._fail(
                        index, raw, f"xattr {key!r} is not a base64 string"
                    )
                try:
                    entry.xattrs[key] = b64decode(value, validate=True)
                except ValueError as exc:
                    raise self._fail(
                        index, raw, f"xattr {key!r} is not base64"
                    ) from exc
        # User and group names appear only when they change (section 2.3).
        user = raw.get("userName")
        if user:
            self.users[entry.uid] = user
        entry.user_name = user or self.users.get(entry.uid, "")
        group = raw.get("groupName")
        if group:
            self.groups[entry.gid] = group
        entry.group_name = group or self.groups.get(entry.gid, "")

        if kind == "reg" and entry.size > 0:
            chunk_size = raw.get("chunkSize", 0)
            if raw.get("chunkOffset", 0):
                raise self._fail(
                    index, raw, "a regular file's first chunk must start at 0"
                )
            self._digest_row(index, raw, raw.get("chunkDigest"))
            entry.chunk_start = len(self.size)
            entry.chunk_count = 1
            self.file_offset.append(0)
            self.size.append(chunk_size if 0 < chunk_size < entry.size else entry.size)
            self.offset.append(raw.get("offset", 0))
            self.inner.append(raw.get("innerOffset", 0))
        self.last = entry
        self.entries.append(entry)

    def finish(self) -> tuple[list[TOCEntry], ChunkIndex]:
        chunks = ChunkIndex()
        chunks.file_offset = np.frombuffer(self.file_offset, np.int64).copy()
        chunks.size = np.frombuffer(self.size, np.int64).copy()
        chunks.offset = np.frombuffer(self.offset, np.int64).copy()
        chunks.inner_offset = np.frombuffer(self.inner, np.int64).copy()
        chunks.digest = (
            np.frombuffer(bytes(self.digests), np.uint8).reshape(-1, 32).copy()
        )
        chunks.has_digest = np.frombuffer(bytes(self.has_digest), np.bool_).copy()
        chunks.other_digests = self.other_digests
        return self.entries, chunks


def _scan_toc(text: str, on_entry: Callable[[Any], None]) -> int:
    """Walk the TOC JSON one entry at a time (no list of every entry is ever
    built); return its version."""
    decoder = json.JSONDecoder()
    skip = _WHITESPACE.match
    version = 0

    def expect(position: int, char: str) -> int:
        position = skip(text, position).end()  # type: ignore[union-attr]
        if text[position : position + 1] != char:
            raise json.JSONDecodeError(f"expected {char!r}", text, position)
        return position + 1

    i = expect(0, "{")
    i = skip(text, i).end()  # type: ignore[union-attr]
    if text[i : i + 1] == "}":
        return version
    count = 0  # entries decoded, for messages
    while True:
        key, i = decoder.raw_decode(text, skip(text, i).end())  # type: ignore[union-attr]
        if not isinstance(key, str):
            raise json.JSONDecodeError("expected a key", text, i)
        i = skip(text, expect(i, ":")).end()  # type: ignore[union-attr]
        if key == "entries" and text[i : i + 1] == "[":
            i = skip(text, i + 1).end()  # type: ignore[union-attr]
            if text[i : i + 1] == "]":
                i += 1
            else:
                while True:
                    try:
                        value, i = decoder.raw_decode(text, i)
                    except json.JSONDecodeError:
                        raise
                    except ValueError as exc:  # a number of too many digits
                        raise BlobFormatError(
                            f"TOC entry {count} (at character {i}): "
                            f"{_digits_error(exc)}"
                        ) from exc
                    count += 1
                    on_entry(value)
                    i = skip(text, i).end()  # type: ignore[union-attr]
                    if text[i : i + 1] == ",":
                        i = skip(text, i + 1).end()  # type: ignore[union-attr]
                        continue
                    i = expect(i, "]")
                    break
        else:
            try:
                value, i = decoder.raw_decode(text, i)
            except json.JSONDecodeError:
                raise
            except ValueError as exc:  # a number of too many digits
                raise BlobFormatError(
                    f"TOC: {key!r} (at character {i}): {_digits_error(exc)}"
                ) from exc
            if key == "version":
                if type(value) is not int:
                    raise BlobFormatError(
                        f"TOC: version {_shown(value)} is not an integer"
                    )
                if not 0 <= value <= _VERSION_MAX:
                    raise BlobFormatError(
                        f"TOC: version {_shown(value)} is out of range "
                        f"(0..{_VERSION_MAX})"
                    )
                version = value
            elif key == "entries" and value is not None:
                raise BlobFormatError("TOC: entries is neither a list nor null")
        i = skip(text, i).end()  # type: ignore[union-attr]
        if text[i : i + 1] == ",":
            i += 1
            continue
        i = expect(i, "}")
        break
    if skip(text, i).end() != len(text):  # type: ignore[union-attr]
        raise json.JSONDecodeError("extra data after the TOC", text, i)
    return version


class TOC:
    """A parsed TOC: entries by name, the directory tree, and the chunks.

    :param data: the TOC JSON, as stored in ``stargz.index.json``
    :param payload_end: where the blob's gzip members end (the TOC member's
        offset, or the footer's for an external TOC), bounding the last member
    :raises BlobFormatError: bad JSON, wrong field types, malformed digests
        or chunks that do not tile their file; messages name the entry
    """

    def __init__(self, data: bytes, payload_end: int) -> None:
        # Parsing makes many objects and no cycles: the collector's passes
        # over them would only cost time.
        collecting = gc.isenabled()
        gc.disable()
        try:
            self._parse(data, payload_end)
        finally:
            if collecting:
                gc.enable()

    def _parse(self, data: bytes, payload_end: int) -> None:
        builder = _Builder()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BlobFormatError(f"TOC: not UTF-8 at byte {exc.start}") from exc
        try:
            self.version = _scan_toc(text, builder.add)
        except json.JSONDecodeError as exc:
            raise BlobFormatError(
                f"TOC: bad JSON at line {exc.lineno} column {exc.colno} "
                f"(character {exc.pos}): {exc.msg}"
            ) from exc
        except RecursionError as exc:
            raise BlobFormatError("TOC: JSON nested too deeply") from exc
        except BlobFormatError:
            raise
        except (ValueError, OverflowError) as exc:
            # Nothing known gets here; still a malformed TOC, not a crash.
            raise BlobFormatError(f"TOC: {_digits_error(exc)}") from exc
        self.entries, self.chunks = builder.finish()
        self._check_chunks(payload_end)
        self.by_name: dict[str, TOCEntry] = {}
        for entry in self.entries:
            self.by_name[entry.name] = entry
        self._link_memo: dict[str, Optional[TOCEntry]] = {}
        self.root = self._tree()
        del self._link_memo

    def _check_chunks(self, payload_end: int) -> None:
        chunks = self.chunks
        if not len(chunks):
            return
        bad = np.nonzero(chunks.offset >= payload_end)[0]
        if bad.size:
            row = int(bad[0])
            raise BlobFormatError(
                f"TOC: {self._owner(row)}: chunk at compressed offset "
                f"{int(chunks.offset[row])} lies beyond the blob's data, which ends at "
                f"{payload_end}"
            )
        for entry in self.entries:
            if not entry.chunk_count:
                continue
            start, count = entry.chunk_start, entry.chunk_count
            offsets = chunks.file_offset[start : start + count]
            sizes = chunks.size[start : start + count]
            ends = offsets + sizes
            if (
                offsets[0] != 0
                or (sizes <= 0).any()
                or (offsets[1:] != ends[:-1]).any()
                or ends[-1] != entry.size
            ):
                raise BlobFormatError(
                    f"TOC: {entry.raw_name!r}: its chunks do not cover its "
                    f"{entry.size} "
                    "bytes exactly once, in order"
                )
        # Each member ends where the next one starts (or where the data ends).
        starts = np.unique(np.append(chunks.offset, payload_end))
        chunks.member_end = starts[np.searchsorted(starts, chunks.offset, side="right")]

    def _owner(self, row: int) -> str:
        for entry in self.entries:
            if entry.chunk_start <= row < entry.chunk_start + entry.chunk_count:
                return repr(entry.raw_name)
        return f"chunk {row}"

    def _tree(self) -> TOCEntry:
        """Go's second pass: attach every entry to its parent directory,
        making up the directories the TOC leaves out."""
        by_name = self.by_name
        made_up = 0  # characters of the names of made-up directories

        def directory(name: str, below: Optional[TOCEntry] = None) -> TOCEntry:
            nonlocal made_up
            entry = by_name.get(name)
            if entry is None:
                # Climb to the nearest ancestor that exists (iteratively: a
                # path may be thousands of directories deep), then make the
                # missing ones top down.
                missing = [name]
                made_up += len(name)
                parent = None
                while missing[-1]:
                    if made_up > MADE_UP_NAMES_MAX:
                        what = repr(below.raw_name) if below else repr(name)
                        raise BlobFormatError(
                            f"TOC: {what}: the parent directories the TOC leaves "
                            f"out have names of more than {MADE_UP_NAMES_MAX} "
                            "characters together (paths too deep)"
                        )
                    up = _parent(missing[-1])
                    parent = by_name.get(up)
                    if parent is not None:
                        break
                    missing.append(up)
                    made_up += len(up)
                for path in reversed(missing):
                    made = TOCEntry(path, "dir")
                    made.mode = 0o755
                    made.num_link = 2
                    made.children = {}
                    by_name[path] = made
                    if parent is not None:
                        if parent.children is None:
                            parent.children = {}
                        parent.children[posixpath.basename(path)] = made
                    parent = made
                entry = by_name[name]
            if entry.children is None:
                entry.children = {}
            return entry

        for entry in self.entries:
            if entry.type == "dir":
                entry.num_link += 1  # its own "."
        for entry in self.entries:
            if entry.name == _parent(entry.name):
                continue  # the root itself ("./", "/")
            parent = directory(_parent(entry.name), entry)
            entry.num_link += 1
            node = entry
            if entry.type == "hardlink":
                entry.target = self._resolve(entry)
                if entry.target is not None:
                    entry.target.num_link += 1
                    node = entry.target
            assert parent.children is not None
            parent.children[posixpath.basename(entry.name)] = node
        return directory("")

    def _resolve(self, entry: TOCEntry) -> Optional[TOCEntry]:
        """A hardlink's final target, following chains; None when missing or
        circular.  Every link met on the way resolves to the same answer, so
        all of them are remembered: long chains cost linear time."""
        memo = self._link_memo
        path: list[str] = []
        seen = {entry.name}
        current: Optional[TOCEntry] = entry
        while current is not None and current.type == "hardlink":
            name = clean_name(current.link_name)
            if name in memo:
                current = memo[name]
                break
            if name in seen:
                current = None
                break
            seen.add(name)
            path.append(name)
            current = self.by_name.get(name)
        for name in path:
            memo[name] = current
        return current

    def lookup(self, name: str) -> Optional[TOCEntry]:
        """The entry of a path (cleaned as Go does), links not followed."""
        return self.by_name.get(clean_name(name))

    def walk(self) -> Iterator[tuple[str, TOCEntry]]:
        """Every path of the tree below the root, parents before children,
        siblings sorted.  A hardlink yields its target under the link's path."""
        stack: list[tuple[str, TOCEntry]] = [("", self.root)]
        while stack:
            path, entry = stack.pop()
            if path:
                yield path, entry
            # Descend only through a directory's own path, never through a
            # link to it, so a loop in a hostile TOC cannot trap the walk.
            if entry.children and entry.name == path:
                for child in sorted(entry.children, reverse=True):
                    child_path = f"{path}/{child}" if path else child
                    stack.append((child_path, entry.children[child]))
