"""Builders and checks shared by the test modules."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional, Union

from estargz import _native
from estargz.reader import Blob, open_blob

DATA = Path(__file__).resolve().parent / "data"
TARS = DATA / "tars"
GO_BLOBS = DATA / "go-blobs"

# Inputs the Go reference refuses (see tests/data/tars/README.md and the
# interop tests): truncated or corrupt archives, and formats it cannot take.
MALFORMED = {
    "malformed-bad-checksum.tar",
    "malformed-huge-size.tar",
    "truncated-mid-file.tar",
}
UNSUPPORTED = {"sparse-gnu-oldgnu.tar", "sparse-pax-0.0.tar"}


def tricky_tars() -> list[Path]:
    return sorted(p for p in TARS.iterdir() if p.name.endswith((".tar", ".tar.gz")))


def convertible_tars() -> list[Path]:
    return [p for p in tricky_tars() if p.name not in MALFORMED | UNSUPPORTED]


def plain_tar(path: Path) -> bytes:
    """The uncompressed bytes of a test tar."""
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def make_tar(
    files: Iterable[tuple[str, Union[bytes, str, None]]],
    *,
    fmt: int = tarfile.PAX_FORMAT,
    mtime: int = 1700000000,
) -> bytes:
    """A tar of ``(name, content)``: bytes make a file, None a directory, and
    a string starting with "->" a symlink."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for name, content in files:
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            info.uname = info.gname = "root"
            if content is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            elif isinstance(content, str):
                info.type = tarfile.SYMTYPE
                info.linkname = content[2:]
                tar.addfile(info)
            else:
                info.size = len(content)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


def tar_files(data: bytes) -> dict[str, bytes]:
    """Regular files of a tar by name (later entries win), via tarfile."""
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            if member.isfile():
                extracted = tar.extractfile(member)
                assert extracted is not None
                files[member.name] = extracted.read()
    return files


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def toc_of(blob: bytes, external: Optional[bytes] = None) -> dict[str, Any]:
    """The TOC JSON of a blob, read with the standard library only."""
    if external is not None:
        tar_bytes = gzip.decompress(external)
    else:
        offset = int(blob[-51 + 16 : -51 + 32], 16)
        tar_bytes = gzip.decompress(blob[offset:-51])
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        member = tar.getmember("stargz.index.json")
        extracted = tar.extractfile(member)
        assert extracted is not None
        result: dict[str, Any] = json.loads(extracted.read())
        return result


def open_written(blob: Path, toc: Optional[Path] = None) -> Blob:
    return open_blob(blob, external_toc=toc)


def members(blob: bytes, end: Optional[int] = None) -> list[tuple[int, bytes]]:
    """Every gzip member of ``blob[:end]``: (offset, uncompressed bytes)."""
    reader = _native.GzipReader(io.BytesIO(blob[:end] if end is not None else blob))
    found: list[tuple[int, bytes]] = []
    current = bytearray()
    start = 0
    buffer = bytearray(1 << 16)
    while True:
        n = reader.readinto(buffer)
        if not n:
            break
        if not current:
            start = reader.member_offset
        current += buffer[:n]
        if reader.at_member_end:
            found.append((start, bytes(current)))
            current = bytearray()
    return found
