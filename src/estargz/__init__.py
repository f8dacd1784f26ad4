"""estargz: convert container image layers to eStargz and read them back.

The byte work runs in a native core over zlib-ng (:mod:`estargz._native`);
the names re-exported here are the public API.
"""

from __future__ import annotations

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

__version__ = "0.1.0"

__all__ = [
    "BlobFormatError",
    "ConversionError",
    "EStargzError",
    "GzipReader",
    "InputError",
    "MemberCompressor",
    "MemberWriter",
    "NativeError",
    "RegistryError",
    "Sha256",
    "UnsafePathError",
    "VerificationError",
    "__version__",
    "crc32",
    "crc32_combine",
    "inflate_member",
    "inflate_stream",
    "sha256_implementation",
    "zlib_ng_version",
]
