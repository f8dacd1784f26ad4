"""The exception tree of estargz.

Every error the package raises on purpose derives from :class:`EStargzError`.
Subclasses are grouped by what a caller can do about them; several also derive
from a built-in class (``ValueError``, ``OSError``) so that generic handlers
keep working.
"""

from __future__ import annotations

__all__ = [
    "BlobFormatError",
    "ConversionError",
    "EStargzError",
    "InputError",
    "NativeError",
    "RegistryError",
    "UnsafePathError",
    "VerificationError",
]


class EStargzError(Exception):
    """Base class of every error raised by estargz."""


class NativeError(EStargzError, ValueError):
    """A failure inside the native core (deflate, inflate, gzip framing).

    :param message: what failed, with the byte offsets involved
    :param code: the zlib-ng status code, or 0 when the failure is ours
    :param offset: the compressed byte offset reached in the input buffer,
        or -1 when it does not apply
    """

    def __init__(self, message: str, code: int = 0, offset: int = -1) -> None:
        super().__init__(message)
        self.code = code
        self.offset = offset


class InputError(EStargzError, ValueError):
    """The input layer (a tar, tar.gz or tar.zst) is malformed or unsupported."""


class BlobFormatError(EStargzError, ValueError):
    """A blob, footer or TOC is malformed, or an unknown format."""


class VerificationError(EStargzError):
    """Content does not match its digest (TOC, chunk, file or tar stream)."""


class UnsafePathError(EStargzError, ValueError):
    """Extraction would write outside the target directory."""


class ConversionError(EStargzError):
    """An image or layer conversion cannot proceed as asked."""


class RegistryError(EStargzError, OSError):
    """A registry, OCI layout or docker archive refused or failed a request."""
