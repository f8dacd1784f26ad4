"""The public API surface is pinned: a change here is a deliberate one."""

from __future__ import annotations

import estargz
from estargz import errors

PUBLIC = {
    "TOC",
    "Blob",
    "BytesSource",
    "CallableSource",
    "ChunkIndex",
    "ConvertResult",
    "EntryFile",
    "FileSource",
    "RangeSource",
    "TOCEntry",
    "VerifyReport",
    "convert",
    "open_blob",
    "read_prioritized_files",
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
}


def test_all_lists_the_public_names() -> None:
    assert set(estargz.__all__) == PUBLIC
    for name in estargz.__all__:
        assert hasattr(estargz, name), name


def test_dir_shows_the_lazily_imported_names() -> None:
    # A fresh interpreter: nothing imported on first use yet.
    import subprocess
    import sys

    code = "import estargz; print(sorted(set(estargz.__all__) - set(dir(estargz))))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_one_exception_tree() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, estargz.EStargzError)
    assert issubclass(estargz.NativeError, ValueError)
    assert issubclass(estargz.RegistryError, OSError)
    error = estargz.NativeError("boom", code=-3, offset=12)
    assert (str(error), error.code, error.offset) == ("boom", -3, 12)
