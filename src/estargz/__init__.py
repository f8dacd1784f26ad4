"""estargz: convert container image layers to eStargz and read them back.

The byte work runs in a native core over zlib-ng (:mod:`estargz._native`);
the names re-exported here are the public API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from estargz._native import (
    GzipReader,
    MemberCompressor,
    MemberWriter,
    Sha256,
    crc32,
    crc32_combine,
    inflate_member,
    inflate_stream,
    sha256_implementation,
    zlib_ng_version,
)
from estargz._source import BytesSource, CallableSource, FileSource, RangeSource
from estargz.errors import (
    BlobFormatError,
    ConversionError,
    EStargzError,
    InputError,
    NativeError,
    RegistryError,
    UnsafePathError,
    VerificationError,
)

if TYPE_CHECKING:
    from estargz.reader import Blob, EntryFile, VerifyReport, open_blob
    from estargz.toc import TOC, ChunkIndex, TOCEntry
    from estargz.writer import ConvertResult, convert, read_prioritized_files

# The reader's TOC model needs NumPy, which a conversion does not: these
# names are imported on first use, keeping ``estargz convert`` lean.
_LAZY = {
    "Blob": "estargz.reader",
    "EntryFile": "estargz.reader",
    "VerifyReport": "estargz.reader",
    "open_blob": "estargz.reader",
    "TOC": "estargz.toc",
    "ChunkIndex": "estargz.toc",
    "TOCEntry": "estargz.toc",
    "ConvertResult": "estargz.writer",
    "convert": "estargz.writer",
    "read_prioritized_files": "estargz.writer",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'estargz' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    # The lazily imported names too: dir() and tab completion show them.
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "TOC",
    "Blob",
    "BlobFormatError",
    "BytesSource",
    "CallableSource",
    "ChunkIndex",
    "ConversionError",
    "ConvertResult",
    "EStargzError",
    "EntryFile",
    "FileSource",
    "GzipReader",
    "InputError",
    "MemberCompressor",
    "MemberWriter",
    "NativeError",
    "RangeSource",
    "RegistryError",
    "Sha256",
    "TOCEntry",
    "UnsafePathError",
    "VerificationError",
    "VerifyReport",
    "__version__",
    "convert",
    "crc32",
    "crc32_combine",
    "inflate_member",
    "inflate_stream",
    "open_blob",
    "read_prioritized_files",
    "sha256_implementation",
    "zlib_ng_version",
]
