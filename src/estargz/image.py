"""Convert whole images to eStargz: OCI layouts, docker archives, registries.

Images are addressed as skopeo addresses them:

* ``oci:DIR[:REF]``: an OCI image layout (REF is a ``ref.name`` annotation);
* ``docker-archive:FILE[:NAME:TAG|:@N]``: what ``docker save`` writes (source only);
* ``docker://HOST[:PORT]/REPO[:TAG|@DIGEST]``: a registry.

Every layer of the chosen platforms is converted (concurrently, within one
thread budget; a layer used twice converts once); its descriptor gets the
``containerd.io/snapshot/stargz/toc.digest`` and
``io.containers.estargz.uncompressed-size`` annotations, the config's
``rootfs.diff_ids`` follow the new layers, and other blobs are copied as
they are.  With an external TOC, the TOC image (DST's tag plus
``-esgztoc``) is written next to the image, as ``ctr-remote`` does.

Sources are not trusted: every manifest, index and config is checked for
its structure and read whole only up to 4 MiB, and every blob is checked
against its digest and size as it streams, from a registry, an OCI layout
or a docker archive alike.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import platform as host_platform
import re
import shutil
import stat
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional, Protocol, Union, cast

from estargz import _native
from estargz._registry import (
    DIGEST,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    MANIFEST_TYPES,
    MAX_DOCUMENT,
    OCI_INDEX,
    OCI_MANIFEST,
    RegistryClient,
    new_hasher,
)
from estargz._util import cpu_count, file_mode
from estargz.errors import ConversionError, EStargzError, InputError, RegistryError
from estargz.writer import ConvertResult, convert

__all__ = [
    "ImageReference",
    "ImageReport",
    "LayerReport",
    "convert_image",
    "parse_reference",
]

log = logging.getLogger(__name__)

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
# Layers converted to eStargz; anything else (foreign or non-distributable
# layers, artifacts) is copied unchanged.
CONVERTIBLE = {
    OCI_LAYER: "oci",
    OCI_LAYER_GZIP: "oci",
    OCI_LAYER_ZSTD: "oci",
    DOCKER_LAYER: "docker",
    DOCKER_LAYER_GZIP: "docker",
}
TOC_DIGEST = "containerd.io/snapshot/stargz/toc.digest"
UNCOMPRESSED_SIZE = "io.containers.estargz.uncompressed-size"
LAYER_DIGEST = "containerd.io/snapshot/stargz/layer.digest"
REF_NAME = "org.opencontainers.image.ref.name"
TOC_IMAGE_SUFFIX = "-esgztoc"
EMPTY_CONFIG = b"{}"


# -- references ----------------------------------------------------------------

# The distribution spec's grammar for repository names and tags.
_REPOSITORY = re.compile(
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
)
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class ImageReference:
    """Where an image is: a transport and its address."""

    transport: str  # "oci", "docker-archive" or "docker"
    path: str = ""  # layout directory or archive file
    name: Optional[str] = None  # layout ref name, or archive NAME:TAG / @N
    host: str = ""
    repository: str = ""
    tag: Optional[str] = None
    digest: Optional[str] = None

    def __str__(self) -> str:
        if self.transport == "docker":
            suffix = f"@{self.digest}" if self.digest else f":{self.tag or 'latest'}"
            return f"docker://{self.host}/{self.repository}{suffix}"
        return f"{self.transport}:{self.path}" + (f":{self.name}" if self.name else "")

    def toc_image(self) -> ImageReference:
        """Where the TOC image of this image goes (``ctr-remote``'s rule)."""
        if self.transport == "docker":
            if self.digest and not self.tag:
                raise ConversionError(
                    f"{self}: an external TOC needs a tag to name its TOC image after"
                )
            return ImageReference(
                "docker",
                host=self.host,
                repository=self.repository,
                tag=(self.tag or "latest") + TOC_IMAGE_SUFFIX,
            )
        if self.transport == "oci":
            return ImageReference(
                "oci", path=self.path, name=(self.name or "latest") + TOC_IMAGE_SUFFIX
            )
        raise ConversionError(f"{self}: cannot hold a TOC image")


def parse_reference(text: str) -> ImageReference:
    """Parse ``oci:DIR[:REF]``, ``docker-archive:FILE[:REF]`` or
    ``docker://HOST[:PORT]/REPO[:TAG|@DIGEST]``."""
    if text.startswith("docker://"):
        return _docker_reference(text, text[len("docker://") :])
    for transport in ("oci", "docker-archive"):
        if text.startswith(transport + ":"):
            rest = text[len(transport) + 1 :]
            path, _, name = rest.partition(":")
            if not path:
                raise ConversionError(f"{text!r}: no path")
            return ImageReference(transport, path=path, name=name or None)
    raise ConversionError(
        f"{text!r}: not an image address (oci:DIR[:REF], docker-archive:FILE[:REF] or "
        "docker://HOST/REPO[:TAG])"
    )


def _docker_reference(text: str, rest: str) -> ImageReference:
    digest = None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not digest.startswith("sha256:") or len(digest) != 71:
            raise ConversionError(f"{text!r}: {digest!r} is not a sha256 digest")
    tag = None
    last = rest.rsplit("/", 1)[-1]
    if ":" in last:
        rest, tag = rest.rsplit(":", 1)
    first, _, remainder = rest.partition("/")
    if remainder and ("." in first or ":" in first or first == "localhost"):
        host, repository = first, remainder
    else:
        host, repository = "docker.io", rest
        if "/" not in repository:
            repository = "library/" + repository
    if not _REPOSITORY.fullmatch(repository):
        raise ConversionError(
            f"{text!r}: {repository!r} is not a valid repository name"
        )
    if tag is not None and not _TAG.fullmatch(tag):
        raise ConversionError(f"{text!r}: {tag!r} is not a valid tag")
    return ImageReference(
        "docker", host=host, repository=repository, tag=tag, digest=digest
    )


# -- documents -------------------------------------------------------------------


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_EXPECTED = {dict: "an object", list: "a list", str: "a string", int: "an integer"}


class _Document:
    """Checks the structure of one JSON document of an image (a manifest,
    an index, a config, a docker archive's manifest.json).  Every problem is
    a one-line :class:`ConversionError` naming the document and the field."""

    def __init__(self, what: str) -> None:
        self.what = what

    def error(self, field: str, problem: str) -> ConversionError:
        return ConversionError(f"{self.what}: {field} {problem}")

    def load(self, data: bytes) -> dict[str, Any]:
        try:
            document = json.loads(data)
        except (ValueError, RecursionError) as exc:
            problem = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
            raise ConversionError(f"{self.what}: not valid JSON: {problem}") from exc
        if not isinstance(document, dict):
            raise ConversionError(
                f"{self.what}: the document is {_kind(document)}, not a JSON object"
            )
        return document

    def field(
        self,
        obj: dict[str, Any],
        key: str,
        path: str,
        expected: type,
        required: bool = False,
    ) -> Any:
        """``obj[key]`` when it is of type ``expected``; None when absent
        (or null) and not ``required``."""
        name = f"{path}.{key}" if path else key
        value = obj.get(key)
        if value is None:
            if required:
                problem = "is missing" if key not in obj else "is null"
                raise self.error(name, problem)
            return None
        if not isinstance(value, expected) or (
            expected is int and isinstance(value, bool)
        ):
            raise self.error(name, f"is {_kind(value)}, not {_EXPECTED[expected]}")
        return value

    def strings(self, obj: dict[str, Any], key: str, path: str) -> None:
        """An optional list of strings."""
        values = self.field(obj, key, path, list)
        for i, value in enumerate(values or []):
            if not isinstance(value, str):
                name = f"{path}.{key}" if path else key
                raise self.error(f"{name}[{i}]", f"is {_kind(value)}, not a string")

    def string_map(self, obj: dict[str, Any], key: str, path: str) -> None:
        """An optional object of strings (annotations, labels)."""
        values = self.field(obj, key, path, dict)
        for name, value in (values or {}).items():
            if not isinstance(value, str):
                where = f"{path}.{key}" if path else key
                raise self.error(
                    f"{where}[{_show(name)}]", f"is {_kind(value)}, not a string"
                )

    def digest(self, obj: dict[str, Any], key: str, path: str) -> str:
        value: str = self.field(obj, key, path, str, required=True)
        if not DIGEST.fullmatch(value):
            name = f"{path}.{key}" if path else key
            raise self.error(
                name,
                f"is {_show(value)}, not a digest (sha256: and 64 lowercase hex "
                "digits, or sha512: and 128)",
            )
        return value

    def descriptor(self, value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(path, f"is {_kind(value)}, not a descriptor object")
        self.field(value, "mediaType", path, str)
        self.digest(value, "digest", path)
        size = self.field(value, "size", path, int, required=True)
        if size < 0:
            raise self.error(f"{path}.size", f"is negative ({size})")
        self.string_map(value, "annotations", path)
        self.strings(value, "urls", path)
        platform = self.field(value, "platform", path, dict)
        if platform is not None:
            where = f"{path}.platform"
            self.field(platform, "architecture", where, str, required=True)
            self.field(platform, "os", where, str, required=True)
            self.field(platform, "variant", where, str)
            self.field(platform, "os.version", where, str)
            self.strings(platform, "os.features", where)
            self.strings(platform, "features", where)
        return value

    def schema(self, document: dict[str, Any]) -> None:
        version = self.field(document, "schemaVersion", "", int)
        if version is not None and version != 2:
            raise self.error(
                "schemaVersion", f"is {version}, not 2 (only schema 2 is supported)"
            )
        self.field(document, "mediaType", "", str)
        self.string_map(document, "annotations", "")


def _parse_manifest(data: bytes, what: str) -> dict[str, Any]:
    """An image manifest (OCI or Docker schema 2), its structure checked."""
    doc = _Document(what)
    manifest = doc.load(data)
    doc.schema(manifest)
    if "manifests" in manifest and "config" not in manifest:
        raise ConversionError(f"{what}: an index, not an image manifest")
    doc.descriptor(doc.field(manifest, "config", "", dict, required=True), "config")
    layers = doc.field(manifest, "layers", "", list, required=True)
    for i, layer in enumerate(layers):
        doc.descriptor(layer, f"layers[{i}]")
    return manifest


def _parse_index(data: bytes, what: str) -> dict[str, Any]:
    """An image index (or Docker manifest list), its structure checked."""
    doc = _Document(what)
    index = doc.load(data)
    doc.schema(index)
    manifests = doc.field(index, "manifests", "", list, required=True)
    for i, manifest in enumerate(manifests):
        doc.descriptor(manifest, f"manifests[{i}]")
    return index


def _parse_config(data: bytes, what: str) -> dict[str, Any]:
    """An image config: an object whose ``rootfs.diff_ids`` are digests."""
    doc = _Document(what)
    config = doc.load(data)
    rootfs = doc.field(config, "rootfs", "", dict)
    if rootfs is not None:
        doc.field(rootfs, "type", "rootfs", str)
        for i, diff_id in enumerate(
            doc.field(rootfs, "diff_ids", "rootfs", list) or []
        ):
            if not isinstance(diff_id, str) or not DIGEST.fullmatch(diff_id):
                raise doc.error(
                    f"rootfs.diff_ids[{i}]", f"is {_show(diff_id)}, not a digest"
                )
    return config


def _is_index(media_type: str, document: dict[str, Any]) -> bool:
    if media_type in (OCI_INDEX, DOCKER_LIST):
        return True
    if media_type in (OCI_MANIFEST, DOCKER_MANIFEST):
        return False
    return "manifests" in document and "config" not in document


def _check_media_type(document: dict[str, Any], claimed: str, what: str) -> None:
    """A document's own mediaType must not contradict what its descriptor
    (or the registry) says it is: an index for a manifest, or the reverse.
    (Docker and OCI types of the same kind pass, as containerd lets them.)"""
    own = document.get("mediaType")
    indexes = (OCI_INDEX, DOCKER_LIST)
    if (
        own in MANIFEST_TYPES
        and claimed in MANIFEST_TYPES
        and (own in indexes) != (claimed in indexes)
    ):
        raise ConversionError(
            f"{what}: its mediaType is {own}, its descriptor says {claimed}"
        )


# -- stores ----------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return "sha256:" + _native.Sha256(data).hexdigest()


def _media_type_of(data: bytes, default: str) -> str:
    try:
        value = json.loads(data).get("mediaType")
    except (ValueError, AttributeError, RecursionError):
        return default
    return value if isinstance(value, str) else default


class _BlobStream(Protocol):
    """A blob being read: ``finish`` reads what is left and checks it
    against its digest (and size)."""

    def readinto(self, buffer: Any, /) -> int: ...

    def finish(self) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc_info: Any) -> Any: ...


def _read_upto(stream: _BlobStream, size: int) -> bytes:
    """At most ``size`` bytes of a stream."""
    data = bytearray(size)
    view = memoryview(data)
    done = 0
    while done < size:
        n = stream.readinto(view[done:])
        if not n:
            break
        done += n
    view.release()
    del data[done:]
    return bytes(data)


class _Verified(io.RawIOBase):
    """A blob read from a local file (an OCI layout's, a docker archive's
    member), checked against its digest and size as it streams: the bytes a
    digest names are the only ones that get converted or copied."""

    def __init__(
        self, inner: Any, digest: str, size: Optional[int], where: str
    ) -> None:
        self._inner = inner
        self._digest = digest
        self._size = size
        self._where = where
        self._hash = new_hasher(digest)
        self._count = 0
        self._checked = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._checked or not len(view):
            return 0
        if self._size is not None:
            # Never more than one byte past the size.
            view = view[: self._size - self._count + 1]
        n: int = self._inner.readinto(view) or 0
        if n:
            self._hash.update(view[:n])
            self._count += n
            if self._size is not None and self._count > self._size:
                raise ConversionError(
                    f"{self._where}: longer than the {self._size} bytes its "
                    "descriptor gives"
                )
            return n
        self._check()
        return 0

    def _check(self) -> None:
        if self._size is not None and self._count != self._size:
            raise ConversionError(
                f"{self._where}: {self._count} bytes, its descriptor says {self._size}"
            )
        algorithm = self._digest.partition(":")[0]
        found = f"{algorithm}:{self._hash.hexdigest()}"
        if found != self._digest:
            raise ConversionError(
                f"{self._where}: the content's digest is {found}, not "
                f"{self._digest} (modified or corrupt)"
            )
        self._checked = True

    def finish(self) -> None:
        buffer = bytearray(1 << 20)
        while self.readinto(buffer):
            pass
        if not self._checked:
            self._check()

    def close(self) -> None:
        if not self.closed:
            self._inner.close()
        super().close()


class _Store:
    """Where blobs and manifests of an image are read or written.  Every
    blob read by digest is checked against that digest (and its size, when
    the descriptor gives one)."""

    reference: ImageReference

    def resolve(self) -> tuple[bytes, str, str]:
        """The image's manifest or index: ``(bytes, media type, digest)``."""
        raise NotImplementedError

    def manifest(self, digest: str, media_type: str, size: Optional[int]) -> bytes:
        raise NotImplementedError

    def open_blob(self, digest: str, size: Optional[int] = None) -> _BlobStream:
        raise NotImplementedError

    def read_blob(self, digest: str, size: Optional[int] = None) -> bytes:
        """A small blob (a manifest, a config) whole: at most
        :data:`MAX_DOCUMENT` bytes."""
        if size is not None and size > MAX_DOCUMENT:
            raise ConversionError(
                f"{self.reference}: blob {digest} is {size} bytes, more than the "
                f"limit of {MAX_DOCUMENT} for a manifest or config"
            )
        with self.open_blob(digest, size) as f:
            data = _read_upto(f, MAX_DOCUMENT + 1)
            if len(data) > MAX_DOCUMENT:
                raise ConversionError(
                    f"{self.reference}: blob {digest} is more than the limit of "
                    f"{MAX_DOCUMENT} bytes for a manifest or config"
                )
            f.finish()
        return data

    def has_blob(self, digest: str) -> bool:
        raise ConversionError(f"{self.reference}: cannot be written to")

    def put_blob(self, path: Path, digest: str, size: int) -> None:
        raise ConversionError(f"{self.reference}: cannot be written to")

    def copy_blob(self, source: _Store, digest: str, size: int, work: Path) -> str:
        """Copy a blob from ``source`` (checked as it is read); returns what
        was done."""
        if self.has_blob(digest):
            return "present"
        spool = work / f"copy-{digest.partition(':')[2]}"
        try:
            with source.open_blob(digest, size) as f, spool.open("wb") as out:
                buffer = bytearray(1 << 20)
                view = memoryview(buffer)
                while True:
                    n = f.readinto(view)
                    if not n:
                        break
                    out.write(view[:n])
                f.finish()
            self.put_blob(spool, digest, size)
        finally:
            spool.unlink(missing_ok=True)
        return "copied"

    def put_manifest(self, data: bytes, media_type: str, tag: Optional[str]) -> str:
        raise ConversionError(f"{self.reference}: cannot be written to")

    def commit(self) -> None:
        """Make what was written visible (a destination, after success)."""

    def abort(self) -> None:
        """Undo what was written (a destination, after a failure)."""


def _read_file(path: Path, limit: int, what: str) -> bytes:
    with path.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ConversionError(f"{what}: more than the limit of {limit} bytes")
    return data


class OCILayout(_Store):
    """An OCI image layout directory.

    As a destination (``create``) nothing is written before the first blob,
    and ``index.json`` changes only in :meth:`commit`; :meth:`abort` removes
    every file and directory this run created, so a failed conversion
    leaves no layout behind, and an existing one as it was.
    """

    def __init__(self, reference: ImageReference, create: bool = False) -> None:
        self.reference = reference
        self.root = Path(reference.path)
        self._lock = threading.Lock()
        # What this run created (files, then directories), for abort.
        self._created: list[Path] = []
        self._created_dirs: list[Path] = []
        # Tags to add to index.json at commit: ref name -> descriptor.
        self._tags: dict[str, dict[str, Any]] = {}
        if create:
            if (self.root / "index.json").exists():
                self._index()  # a broken layout fails now, not after the work
            elif self.root.exists() and not self.root.is_dir():
                raise ConversionError(f"{reference}: {self.root} is not a directory")
        elif not (self.root / "index.json").is_file():
            raise InputError(f"{reference}: not an OCI layout (no index.json)")

    def _index(self) -> dict[str, Any]:
        what = f"{self.reference}: index.json"
        try:
            data = _read_file(self.root / "index.json", MAX_DOCUMENT, what)
        except OSError as exc:
            raise InputError(f"{what}: cannot be read: {exc}") from exc
        return _parse_index(data, what)

    def _write_index(self, index: dict[str, Any]) -> None:
        path = self.root / "index.json"
        fd, partial = tempfile.mkstemp(prefix=".index.json.", dir=self.root)
        try:
            os.fchmod(fd, file_mode())  # as open() would make it, not 0600
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(index, separators=(",", ":")))
            os.replace(partial, path)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise

    def _blob_path(self, digest: str) -> Path:
        if not DIGEST.fullmatch(digest):
            raise InputError(f"{self.reference}: {digest!r} is not a digest")
        algorithm, _, hex_digest = digest.partition(":")
        return self.root / "blobs" / algorithm / hex_digest

    def _mkdirs(self, path: Path) -> None:
        """``mkdir -p``, remembering the directories it made."""
        missing = []
        while not path.exists():
            missing.append(path)
            if path.parent == path:
                break
            path = path.parent
        for directory in reversed(missing):
            try:
                directory.mkdir()
            except FileExistsError:
                continue
            self._created_dirs.append(directory)

    def _prepare(self, directory: Path) -> None:
        """The layout's skeleton and ``directory`` (under blobs/), made when
        the first blob is written."""
        with self._lock:
            self._mkdirs(directory)
            layout = self.root / "oci-layout"
            if not layout.exists():
                layout.write_text('{"imageLayoutVersion":"1.0.0"}')
                self._created.append(layout)

    def _write_blob(self, digest: str, write: Callable[[Path], None]) -> None:
        target = self._blob_path(digest)
        if target.exists():
            return
        self._prepare(target.parent)
        fd, name = tempfile.mkstemp(prefix=f".{target.name[:16]}.", dir=target.parent)
        try:
            os.fchmod(fd, file_mode())  # as open() would make it, not 0600
        finally:
            os.close(fd)
        partial = Path(name)
        try:
            write(partial)
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        with self._lock:
            self._created.append(target)

    def resolve(self) -> tuple[bytes, str, str]:
        manifests = self._index()["manifests"]
        name = self.reference.name
        if name:
            found = [
                m
                for m in manifests
                if (m.get("annotations") or {}).get(REF_NAME) == name
            ]
        else:
            found = manifests if len(manifests) == 1 else []
        if len(found) != 1:
            names = sorted(
                str((m.get("annotations") or {}).get(REF_NAME)) for m in manifests
            )
            what = f"no image named {name!r}" if name else f"{len(manifests)} images"
            raise InputError(
                f"{self.reference}: {what}; it holds {', '.join(names) or 'none'}"
            )
        descriptor = found[0]
        data = self.read_blob(descriptor["digest"], descriptor["size"])
        return (
            data,
            descriptor.get("mediaType") or _media_type_of(data, OCI_MANIFEST),
            descriptor["digest"],
        )

    def manifest(self, digest: str, media_type: str, size: Optional[int]) -> bytes:
        return self.read_blob(digest, size)

    def open_blob(self, digest: str, size: Optional[int] = None) -> _BlobStream:
        path = self._blob_path(digest)
        where = f"{self.reference}: blob {digest}"
        try:
            f = path.open("rb", buffering=0)
        except OSError as exc:
            raise InputError(f"{where} is missing: {exc}") from exc
        if size is not None:
            # A different length shows before a byte is read.
            info = os.fstat(f.fileno())
            if stat.S_ISREG(info.st_mode) and info.st_size != size:
                f.close()
                raise ConversionError(
                    f"{where}: {info.st_size} bytes, its descriptor says {size} "
                    "(modified or corrupt)"
                )
        return _Verified(f, digest, size, where)

    def has_blob(self, digest: str) -> bool:
        return self._blob_path(digest).exists()

    def put_blob(self, path: Path, digest: str, size: int) -> None:
        def write(partial: Path) -> None:
            shutil.copyfile(path, partial)

        self._write_blob(digest, write)

    def put_manifest(self, data: bytes, media_type: str, tag: Optional[str]) -> str:
        digest = _sha256(data)

        def write(partial: Path) -> None:
            partial.write_bytes(data)

        self._write_blob(digest, write)
        if tag is not None:
            with self._lock:
                self._tags[tag] = {
                    "mediaType": media_type,
                    "digest": digest,
                    "size": len(data),
                    "annotations": {REF_NAME: tag},
                }
        return digest

    def commit(self) -> None:
        """Write the new tags into ``index.json`` (created when new)."""
        with self._lock:
            if not self._tags and not self._created:
                return
            self._mkdirs(self.root)
            if (self.root / "index.json").exists():
                index = self._index()
            else:
                index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
            manifests = [
                m
                for m in index["manifests"]
                if (m.get("annotations") or {}).get(REF_NAME) not in self._tags
            ]
            index["manifests"] = manifests + list(self._tags.values())
            self._write_index(index)
            self._tags.clear()
            self._created.clear()
            self._created_dirs.clear()

    def abort(self) -> None:
        """Remove what this run created; index.json was not touched."""
        with self._lock:
            for path in reversed(self._created):
                try:
                    path.unlink(missing_ok=True)
                except OSError as exc:
                    log.warning("cannot remove %s: %s", path, exc)
            for directory in reversed(self._created_dirs):
                try:
                    directory.rmdir()
                except OSError:
                    pass  # not empty: someone else wrote there too
            self._tags.clear()
            self._created.clear()
            self._created_dirs.clear()


class _Slice:
    """A read-only window of a file: one member of a docker archive."""

    def __init__(self, path: str, offset: int, size: int) -> None:
        self._file = open(path, "rb")
        self._file.seek(offset)
        self._left = size

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > self._left:
            size = self._left
        data = self._file.read(size)
        self._left -= len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")[: self._left]
        n = self._file.readinto(view)
        self._left -= n
        return n

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> _Slice:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_HEX64 = re.compile(r"[a-f0-9]{64}")


def _archive_name(name: str) -> str:
    """A member name of an archive without leading "./" and "/" (but with
    the dot of a name such as ".hidden")."""
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


class DockerArchive(_Store):
    """A ``docker save`` archive, read in place (source only)."""

    def __init__(self, reference: ImageReference) -> None:
        self.reference = reference
        self.path = reference.path
        try:
            with tarfile.open(self.path, "r:") as archive:
                self._members = {
                    _archive_name(m.name): (m.offset_data, m.size)
                    for m in archive
                    if m.isfile()
                }
        except (OSError, tarfile.TarError) as exc:
            raise InputError(f"{reference}: not a docker archive: {exc}") from exc
        if "manifest.json" not in self._members:
            raise InputError(f"{reference}: not a docker archive (no manifest.json)")
        what = f"{reference}: manifest.json"
        try:
            entries = json.loads(self._read_member("manifest.json"))
        except (ValueError, RecursionError) as exc:
            raise ConversionError(f"{what}: not valid JSON") from exc
        if not isinstance(entries, list):
            raise ConversionError(f"{what}: is {_kind(entries)}, not a list")
        doc = _Document(what)
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise doc.error(f"[{i}]", f"is {_kind(entry)}, not an object")
            doc.field(entry, "Config", f"[{i}]", str, required=True)
            doc.strings(entry, "Layers", f"[{i}]")
            doc.strings(entry, "RepoTags", f"[{i}]")
        self._entry = self._choose(entries)
        self._blobs: dict[str, str] = {}

    def _read_member(self, name: str) -> bytes:
        """A small member (manifest.json, a config) whole."""
        offset, size = self._member(name)
        if size > MAX_DOCUMENT:
            raise ConversionError(
                f"{self.reference}: {name} is {size} bytes, more than the limit "
                f"of {MAX_DOCUMENT}"
            )
        with _Slice(self.path, offset, size) as f:
            return f.read()

    def _member(self, name: str) -> tuple[int, int]:
        try:
            return self._members[_archive_name(name)]
        except KeyError:
            raise ConversionError(
                f"{self.reference}: manifest.json names {name!r}, which the "
                "archive does not hold"
            ) from None

    def _choose(self, entries: list[dict[str, Any]]) -> dict[str, Any]:
        name = self.reference.name
        if name and name.startswith("@"):
            number = name[1:]
            if not number.isdigit() or int(number) >= len(entries):
                raise InputError(
                    f"{self.reference}: no image {name} "
                    f"(it holds {len(entries)}: @0 to @{len(entries) - 1})"
                )
            return entries[int(number)]
        if name:
            wanted = {name, f"docker.io/{name}", f"docker.io/library/{name}"}
            for entry in entries:
                if wanted & set(entry.get("RepoTags") or []):
                    return entry
            raise InputError(f"{self.reference}: no image tagged {name!r}")
        if len(entries) != 1:
            raise InputError(
                f"{self.reference}: holds {len(entries)} images; name one "
                "(docker-archive:FILE:NAME:TAG or :@N)"
            )
        return entries[0]

    def resolve(self) -> tuple[bytes, str, str]:
        config_name = self._entry["Config"]
        config = self._read_member(config_name)
        config_digest = _sha256(config)
        self._blobs[config_digest] = config_name
        diff_ids = (
            _parse_config(config, f"{self.reference}: config {config_name}").get(
                "rootfs"
            )
            or {}
        ).get("diff_ids") or []
        layers = []
        for i, layer_name in enumerate(self._entry.get("Layers") or []):
            offset, size = self._member(layer_name)
            with _Slice(self.path, offset, min(size, 4)) as f:
                head = f.read(4)
            compressed = head[:2] == b"\x1f\x8b" or head == b"\x28\xb5\x2f\xfd"
            base = _archive_name(layer_name)
            if base.startswith("blobs/sha256/") and _HEX64.fullmatch(base[13:]):
                digest = "sha256:" + base[13:]  # checked as it is read
            elif not compressed and i < len(diff_ids):
                digest = diff_ids[i]  # checked against the bytes as they are read
            else:
                hasher = _native.Sha256()
                with _Slice(self.path, offset, size) as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        hasher.update(block)
                digest = "sha256:" + hasher.hexdigest()
            self._blobs[digest] = layer_name
            layers.append(
                {
                    "mediaType": DOCKER_LAYER_GZIP if compressed else DOCKER_LAYER,
                    "size": size,
                    "digest": digest,
                }
            )
        manifest = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {
                "mediaType": DOCKER_CONFIG,
                "size": len(config),
                "digest": config_digest,
            },
            "layers": layers,
        }
        data = json.dumps(manifest, separators=(",", ":")).encode()
        return data, DOCKER_MANIFEST, _sha256(data)

    def open_blob(self, digest: str, size: Optional[int] = None) -> _BlobStream:
        name = self._blobs.get(digest)
        if name is None:
            raise InputError(f"{self.reference}: no blob {digest}")
        offset, member_size = self._member(name)
        where = f"{self.reference}: {name} (blob {digest})"
        if size is not None and size != member_size:
            raise ConversionError(
                f"{where}: {member_size} bytes, its descriptor says {size}"
            )
        return _Verified(
            _Slice(self.path, offset, member_size), digest, member_size, where
        )


class Registry(_Store):
    """A repository of a registry."""

    def __init__(self, reference: ImageReference, client: RegistryClient) -> None:
        self.reference = reference
        self.client = client
        self.repository = reference.repository

    def resolve(self) -> tuple[bytes, str, str]:
        target = self.reference.digest or self.reference.tag or "latest"
        return self.client.get_manifest(self.repository, target)

    def manifest(self, digest: str, media_type: str, size: Optional[int]) -> bytes:
        data, _, _ = self.client.get_manifest(self.repository, digest)
        if size is not None and len(data) != size:
            raise RegistryError(
                f"{self.reference}: manifest {digest} is {len(data)} bytes, "
                f"its descriptor says {size}"
            )
        return data

    def read_blob(self, digest: str, size: Optional[int] = None) -> bytes:
        return self.client.get_blob(self.repository, digest, size)

    def open_blob(self, digest: str, size: Optional[int] = None) -> _BlobStream:
        return self.client.open_blob(self.repository, digest, size)

    def has_blob(self, digest: str) -> bool:
        return self.client.blob_size(self.repository, digest) is not None

    def put_blob(self, path: Path, digest: str, size: int) -> None:
        if self.has_blob(digest):
            return
        with path.open("rb") as f:
            self.client.upload(self.repository, f, digest, size)

    def copy_blob(self, source: _Store, digest: str, size: int, work: Path) -> str:
        if self.has_blob(digest):
            return "present"
        if (
            isinstance(source, Registry)
            and source.client.host == self.client.host
            and source.repository != self.repository
            and self.client.mount(self.repository, digest, source.repository)
        ):
            return "mounted"
        return super().copy_blob(source, digest, size, work)

    def put_manifest(self, data: bytes, media_type: str, tag: Optional[str]) -> str:
        return self.client.put_manifest(
            self.repository, tag or _sha256(data), data, media_type
        )


def _open_store(
    reference: ImageReference,
    write: bool,
    clients: dict[str, RegistryClient],
    plain_http: bool,
    credentials: Optional[tuple[str, str]],
) -> _Store:
    if reference.transport == "oci":
        return OCILayout(reference, create=write)
    if reference.transport == "docker-archive":
        if write:
            raise ConversionError(
                "docker-archive: can only be a source; write oci: or docker://"
            )
        return DockerArchive(reference)
    client = clients.get(reference.host)
    if client is None:
        client = clients[reference.host] = RegistryClient(
            reference.host, plain_http=plain_http, credentials=credentials
        )
    return Registry(reference, client)


# -- platforms -------------------------------------------------------------------


def host_platform_name() -> str:
    machine = host_platform.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(
        machine, machine
    )
    return f"linux/{arch}"


def _platform_matches(wanted: str, descriptor: dict[str, Any]) -> bool:
    platform = descriptor.get("platform") or {}
    parts = wanted.split("/")
    if len(parts) < 2:
        raise ConversionError(f"platform {wanted!r} is not OS/ARCH[/VARIANT]")
    if platform.get("os") != parts[0] or platform.get("architecture") != parts[1]:
        return False
    return len(parts) < 3 or platform.get("variant", "") == parts[2]


# -- reports ---------------------------------------------------------------------


@dataclass
class LayerReport:
    """What happened to one layer."""

    source_digest: str
    digest: str
    size: int
    action: str  # "converted", "reused" (same layer seen before), "copied", ...
    toc_digest: Optional[str] = None
    diff_id: Optional[str] = None
    uncompressed_size: Optional[int] = None
    seconds: float = 0.0
    toc_blob_digest: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        return {
            "sourceDigest": self.source_digest,
            "digest": self.digest,
            "size": self.size,
            "action": self.action,
            "tocDigest": self.toc_digest,
            "diffID": self.diff_id,
            "uncompressedSize": self.uncompressed_size,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class ImageReport:
    """What :func:`convert_image` produced."""

    source: str
    source_digest: str
    destination: str
    digest: str
    media_type: str
    layers: list[LayerReport] = field(default_factory=list)
    toc_image: Optional[str] = None
    toc_image_digest: Optional[str] = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        report: dict[str, Any] = {
            "source": {"reference": self.source, "digest": self.source_digest},
            "destination": {
                "reference": self.destination,
                "digest": self.digest,
                "mediaType": self.media_type,
            },
            "layers": [layer.to_json() for layer in self.layers],
            "seconds": round(self.seconds, 3),
        }
        if self.toc_image:
            report["tocImage"] = {
                "reference": self.toc_image,
                "digest": self.toc_image_digest,
            }
        return report


# -- conversion --------------------------------------------------------------------


@dataclass
class _Options:
    compression_level: int
    chunk_size: int
    min_chunk_size: int
    prioritized_files: list[str]
    allow_missing_prioritized: bool
    external_toc: bool
    keep_diff_id: bool
    oci: bool
    threads: int
    jobs: int


class _Converter:
    def __init__(
        self,
        source: _Store,
        destination: _Store,
        options: _Options,
        work: Path,
        progress: Optional[Callable[[dict[str, Any]], None]],
    ) -> None:
        self.source = source
        self.destination = destination
        self.options = options
        self.work = work
        self.progress = progress
        self._layers: dict[str, LayerReport] = {}
        self._lock = threading.Lock()
        self.reports: list[LayerReport] = []
        self.toc_blobs: dict[
            str, tuple[str, int, Path]
        ] = {}  # layer digest -> toc blob
        # One pool of compression threads shared by every layer in flight.
        self.pool: Optional[ThreadPoolExecutor] = None

    def _event(self, **event: Any) -> None:
        if self.progress is not None:
            self.progress(event)

    # -- layers --

    def convert_layer(self, descriptor: dict[str, Any], family: str) -> LayerReport:
        digest = descriptor["digest"]
        options = self.options
        started = time.perf_counter()
        self._event(
            kind="layer",
            digest=digest,
            state="converting",
            size=descriptor.get("size", 0),
        )
        blob = self.work / f"layer-{digest[7:]}.esgz"
        toc = (
            self.work / f"layer-{digest[7:]}.toc.tar.gz"
            if options.external_toc
            else None
        )
        try:
            with self.source.open_blob(digest, descriptor["size"]) as stream:
                try:
                    result: ConvertResult = convert(
                        cast(BinaryIO, stream),
                        blob,
                        compression_level=options.compression_level,
                        chunk_size=options.chunk_size,
                        min_chunk_size=options.min_chunk_size,
                        prioritized_files=options.prioritized_files,
                        allow_missing_prioritized=options.allow_missing_prioritized,
                        external_toc=toc,
                        keep_diff_id=options.keep_diff_id,
                        threads=options.threads,
                        executor=self.pool,
                    )
                except EStargzError:
                    if isinstance(stream, _Verified):
                        # A local blob that does not convert may have been
                        # replaced: that is the error to report, if so.
                        stream.finish()
                    raise
                # The converter stops at the end of the tar; what follows is
                # part of the blob and its digest too.
                stream.finish()
        except EStargzError as exc:
            raise type(exc)(f"layer {digest}: {exc}") from exc
        self.destination.put_blob(blob, result.blob_digest, result.blob_size)
        blob.unlink()
        report = LayerReport(
            source_digest=digest,
            digest=result.blob_digest,
            size=result.blob_size,
            action="converted",
            toc_digest=result.toc_digest,
            diff_id=result.diff_id,
            uncompressed_size=result.uncompressed_size,
            seconds=time.perf_counter() - started,
        )
        if toc is not None:
            assert (
                result.external_toc_digest is not None
                and result.external_toc_size is not None
            )
            report.toc_blob_digest = result.external_toc_digest
            with self._lock:
                self.toc_blobs[result.blob_digest] = (
                    result.external_toc_digest,
                    result.external_toc_size,
                    toc,
                )
        self._event(kind="layer", digest=digest, state="done", report=report)
        return report

    def copy_layer(self, descriptor: dict[str, Any]) -> LayerReport:
        digest = descriptor["digest"]
        started = time.perf_counter()
        action = self.destination.copy_blob(
            self.source, digest, descriptor["size"], self.work
        )
        self._event(kind="layer", digest=digest, state=action)
        return LayerReport(
            digest,
            digest,
            descriptor["size"],
            action,
            seconds=time.perf_counter() - started,
        )

    def layers(self, descriptors: Iterable[dict[str, Any]]) -> dict[str, LayerReport]:
        """Convert (or copy) every distinct layer, concurrently."""
        unique: dict[str, dict[str, Any]] = {}
        for descriptor in descriptors:
            first = unique.setdefault(descriptor["digest"], descriptor)
            if first["size"] != descriptor["size"]:
                raise ConversionError(
                    f"layer {descriptor['digest']}: described with sizes "
                    f"{first['size']} and {descriptor['size']}"
                )
        results: dict[str, LayerReport] = {}

        def job(descriptor: dict[str, Any]) -> LayerReport:
            media_type = descriptor.get("mediaType", "")
            annotations = descriptor.get("annotations") or {}
            if media_type in CONVERTIBLE and TOC_DIGEST not in annotations:
                return self.convert_layer(descriptor, CONVERTIBLE[media_type])
            return self.copy_layer(descriptor)

        with (
            ThreadPoolExecutor(
                max_workers=self.options.threads, thread_name_prefix="estargz"
            ) as compressors,
            ThreadPoolExecutor(
                max_workers=self.options.jobs, thread_name_prefix="estargz-layer"
            ) as layers,
        ):
            self.pool = compressors
            futures = {digest: layers.submit(job, d) for digest, d in unique.items()}
            for digest, future in futures.items():
                results[digest] = future.result()
        return results

    # -- manifests --

    def config(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """The config of a manifest, read and checked."""
        descriptor = manifest["config"]
        return _parse_config(
            self.source.read_blob(descriptor["digest"], descriptor["size"]),
            f"{self.source.reference}: config {descriptor['digest']}",
        )

    def manifest(
        self,
        manifest: dict[str, Any],
        media_type: str,
        results: dict[str, LayerReport],
        config: dict[str, Any],
    ) -> tuple[bytes, str]:
        """The converted manifest (bytes, media type); its blobs are written.
        ``manifest`` has been through :func:`_parse_manifest`, ``config``
        through :func:`_parse_config`."""
        oci = self.options.oci or media_type == OCI_MANIFEST
        config_descriptor = manifest["config"]
        config = copy.deepcopy(config)
        diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
        if diff_ids and len(diff_ids) != len(manifest["layers"]):
            raise ConversionError(
                f"config {config_descriptor['digest']}: {len(diff_ids)} diff_ids for "
                f"{len(manifest['layers'])} layers"
            )
        layers = []
        for i, layer in enumerate(manifest["layers"]):
            report = results[layer["digest"]]
            if (
                report.action not in ("converted", "reused")
                and report.toc_digest is None
            ):
                new_layer = copy.deepcopy(layer)
                if oci and layer.get("mediaType") in _DOCKER_TO_OCI:
                    new_layer["mediaType"] = _DOCKER_TO_OCI[layer["mediaType"]]
                layers.append(new_layer)
                continue
            family = (
                "oci" if oci else CONVERTIBLE.get(layer.get("mediaType", ""), "oci")
            )
            annotations = {
                k: v
                for k, v in (layer.get("annotations") or {}).items()
                if k not in (TOC_DIGEST, UNCOMPRESSED_SIZE)
            }
            annotations[TOC_DIGEST] = report.toc_digest
            annotations[UNCOMPRESSED_SIZE] = str(report.uncompressed_size)
            new_layer = {
                "mediaType": OCI_LAYER_GZIP if family == "oci" else DOCKER_LAYER_GZIP,
                "digest": report.digest,
                "size": report.size,
                "annotations": annotations,
            }
            for key in ("urls", "platform"):
                if key in layer:
                    new_layer[key] = layer[key]
            layers.append(new_layer)
            if i < len(diff_ids):
                if self.options.keep_diff_id and diff_ids[i] != report.diff_id:
                    raise ConversionError(
                        f"layer {layer['digest']}: keep-diff-id gave {report.diff_id}, "
                        f"the config says {diff_ids[i]}"
                    )
                diff_ids[i] = report.diff_id
        if diff_ids:
            if not isinstance(config.get("rootfs"), dict):
                config["rootfs"] = {}
            config["rootfs"]["diff_ids"] = diff_ids
        config_bytes = json.dumps(config, separators=(",", ":")).encode()
        config_digest = self._put_bytes(config_bytes)
        new_config = dict(config_descriptor)
        new_config.update(
            mediaType=OCI_CONFIG
            if oci
            else config_descriptor.get("mediaType", DOCKER_CONFIG),
            digest=config_digest,
            size=len(config_bytes),
        )
        new_manifest = dict(manifest)
        new_media_type = OCI_MANIFEST if oci else media_type
        if "mediaType" in manifest or not oci:
            new_manifest["mediaType"] = new_media_type
        new_manifest["config"] = new_config
        new_manifest["layers"] = layers
        return json.dumps(new_manifest, separators=(",", ":")).encode(), new_media_type

    def _put_bytes(self, data: bytes) -> str:
        digest = _sha256(data)
        if not self.destination.has_blob(digest):
            path = self.work / f"blob-{digest[7:]}"
            path.write_bytes(data)
            try:
                self.destination.put_blob(path, digest, len(data))
            finally:
                path.unlink(missing_ok=True)
        return digest

    def toc_image(self) -> tuple[bytes, str]:
        """The TOC image: config ``{}``, one layer per converted layer."""
        config_digest = self._put_bytes(EMPTY_CONFIG)
        layers = []
        for layer_digest, (toc_digest, toc_size, path) in self.toc_blobs.items():
            self.destination.put_blob(path, toc_digest, toc_size)
            layers.append(
                {
                    "mediaType": OCI_LAYER_GZIP,
                    "digest": toc_digest,
                    "size": toc_size,
                    "annotations": {LAYER_DIGEST: layer_digest},
                }
            )
        layers.sort(key=lambda layer: str(layer["digest"]))
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": config_digest,
                "size": len(EMPTY_CONFIG),
            },
            "layers": layers,
        }
        return json.dumps(manifest, separators=(",", ":")).encode(), OCI_MANIFEST


_DOCKER_TO_OCI = {
    DOCKER_LAYER: OCI_LAYER,
    DOCKER_LAYER_GZIP: OCI_LAYER_GZIP,
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": (
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
    ),
}


def convert_image(
    source: Union[str, ImageReference],
    destination: Union[str, ImageReference],
    *,
    compression_level: int = 9,
    chunk_size: int = 0,
    min_chunk_size: int = 0,
    prioritized_files: Optional[Sequence[str]] = None,
    allow_missing_prioritized: bool = False,
    external_toc: bool = False,
    keep_diff_id: bool = False,
    oci: bool = False,
    platforms: Optional[Sequence[str]] = None,
    all_platforms: bool = False,
    threads: Optional[int] = None,
    plain_http: bool = False,
    credentials: Optional[tuple[str, str]] = None,
    progress: Optional[Callable[[dict[str, Any]], None]] = None,
    work_dir: Optional[str] = None,
) -> ImageReport:
    """Convert an image to eStargz and write it to ``destination``.

    Layer options mean what they mean for :func:`estargz.convert`.

    :param oci: turn Docker media types into OCI ones (which keeps
        annotations); without it Docker-typed images keep their types
    :param platforms: ``os/arch[/variant]`` to convert from an index
        (default: this machine's); ``all_platforms`` takes them all
    :param external_toc: keep TOCs out of the layers and write the TOC image
        next to the image, named after its tag plus ``-esgztoc``
    :param plain_http: talk to registries over http://
    :param credentials: ``(user, password)`` for registries (default: the
        docker config file)
    :param progress: called with a dict per event (layer started, done...)
    :raises ConversionError: options or addresses that do not fit; a
        malformed manifest, index or config (the message names the document
        and the field); a blob of an OCI layout or docker archive whose bytes
        do not match its digest or size
    :raises InputError: a malformed source layer, a missing blob
    :raises RegistryError: a registry refused a request, or answered with
        too much, too slowly or the wrong bytes

    Nothing is tagged at the destination unless the whole conversion
    succeeds; a destination OCI layout gets its ``index.json`` entries last,
    and a failed run removes every file and directory it created there.
    """
    started = time.perf_counter()
    src_ref = parse_reference(source) if isinstance(source, str) else source
    dst_ref = (
        parse_reference(destination) if isinstance(destination, str) else destination
    )
    if dst_ref.transport == "oci" and not oci:
        # An OCI layout holds OCI media types; tools reading layouts (skopeo
        # among them) do not look for Docker ones there.
        oci = True
    if keep_diff_id and not external_toc:
        raise ConversionError("keep-diff-id needs an external TOC (--external-toc)")
    if keep_diff_id and prioritized_files:
        raise ConversionError(
            "keep-diff-id cannot reorder files: drop the prioritized files"
        )
    budget = threads or cpu_count()
    options = _Options(
        compression_level=compression_level,
        chunk_size=chunk_size,
        min_chunk_size=min_chunk_size,
        prioritized_files=list(prioritized_files or []),
        allow_missing_prioritized=allow_missing_prioritized,
        external_toc=external_toc,
        keep_diff_id=keep_diff_id,
        oci=oci,
        threads=budget,
        jobs=1,
    )
    clients: dict[str, RegistryClient] = {}
    src = _open_store(src_ref, False, clients, plain_http, credentials)
    dst = _open_store(dst_ref, True, clients, plain_http, credentials)
    try:
        with tempfile.TemporaryDirectory(prefix="estargz-image-", dir=work_dir) as tmp:
            converter = _Converter(src, dst, options, Path(tmp), progress)
            report = _convert_image(
                src, dst, converter, options, platforms, all_platforms
            )
        # A layout's index.json names the new image only now.
        dst.commit()
    except BaseException:
        dst.abort()
        raise
    report.seconds = time.perf_counter() - started
    log.info("converted %s to %s (%d layers)", src_ref, dst_ref, len(report.layers))
    return report


def _convert_image(
    src: _Store,
    dst: _Store,
    converter: _Converter,
    options: _Options,
    platforms: Optional[Sequence[str]],
    all_platforms: bool,
) -> ImageReport:
    src_ref = src.reference
    dst_ref = dst.reference
    oci = options.oci
    budget = options.threads
    top, top_type, top_digest = src.resolve()
    kind = "index" if top_type in (OCI_INDEX, DOCKER_LIST) else "manifest"
    top_document = _Document(f"{src_ref}: {kind} {top_digest}").load(top)
    if top_type in (DOCKER_MANIFEST, DOCKER_LIST) and not oci:
        log.warning(
            "%s has Docker media types; converting without --oci keeps them, "
            "and some registries drop the eStargz annotations of Docker manifests",
            src_ref,
        )
    # The manifests to convert: (descriptor, bytes, parsed).
    manifests: list[tuple[dict[str, Any], bytes, dict[str, Any]]]
    index: Optional[dict[str, Any]] = None
    if _is_index(top_type, top_document):
        what = f"{src_ref}: index {top_digest}"
        _check_media_type(top_document, top_type, what)
        index = _parse_index(top, what)
        wanted = list(platforms or [host_platform_name()])
        chosen = [
            m
            for m in index["manifests"]
            if all_platforms or any(_platform_matches(p, m) for p in wanted)
        ]
        if not chosen:
            raise ConversionError(
                f"{src_ref}: no manifest for {', '.join(wanted)}; "
                "use --platform or --all-platforms"
            )
        manifests = []
        for m in chosen:
            data = src.manifest(
                m["digest"], m.get("mediaType", OCI_MANIFEST), m["size"]
            )
            manifests.append((m, data, {}))
    else:
        manifests = [({"digest": top_digest, "mediaType": top_type}, top, {})]
    for i, (descriptor, data, _) in enumerate(manifests):
        what = f"{src_ref}: manifest {descriptor['digest']}"
        media = descriptor.get("mediaType") or _media_type_of(data, OCI_MANIFEST)
        if media not in (OCI_MANIFEST, DOCKER_MANIFEST):
            raise ConversionError(
                f"{src_ref}: {descriptor['digest']} is a {media}, not an image manifest"
            )
        parsed = _parse_manifest(data, what)
        _check_media_type(parsed, media, what)
        manifests[i] = (descriptor, data, parsed)
    # Configs before any work, so that a broken one fails early.
    configs = [converter.config(parsed) for _, _, parsed in manifests]
    # Layers, all at once: concurrent, each distinct one converted once.
    layer_descriptors = [
        layer for _, _, parsed in manifests for layer in parsed["layers"]
    ]
    # Layers are read, converted and written side by side (a few at a
    # time: downloads and uploads overlap with compression), all on one
    # pool of ``budget`` compression threads.
    distinct = len({layer["digest"] for layer in layer_descriptors})
    options.jobs = max(1, min(distinct, budget + 1, 4))
    options.threads = budget
    results = converter.layers(layer_descriptors)
    seen: set[str] = set()
    reports = []
    for layer in layer_descriptors:
        layer_report = copy.copy(results[layer["digest"]])
        if layer["digest"] in seen and layer_report.action == "converted":
            layer_report.action = "reused"
        seen.add(layer["digest"])
        reports.append(layer_report)
    # Manifests, then the index; tags come last, the TOC image's before the
    # image's, so that a tag never names something half written.
    new_descriptors = []
    tag = (
        dst_ref.name
        if dst_ref.transport == "oci"
        else (dst_ref.tag if not dst_ref.digest else None)
    )
    for (descriptor, data, parsed), config in zip(manifests, configs):
        media = descriptor.get("mediaType") or _media_type_of(data, OCI_MANIFEST)
        new_data, new_media = converter.manifest(parsed, media, results, config)
        digest = dst.put_manifest(new_data, new_media, None)
        new_descriptor = {
            k: v
            for k, v in descriptor.items()
            if k not in ("digest", "size", "mediaType")
        }
        new_descriptor.update(mediaType=new_media, digest=digest, size=len(new_data))
        new_descriptors.append((new_descriptor, new_data, new_media, digest))
    if index is not None:
        new_index = dict(index)
        index_media = OCI_INDEX if (oci or top_type == OCI_INDEX) else DOCKER_LIST
        if "mediaType" in index or index_media == DOCKER_LIST:
            new_index["mediaType"] = index_media
        new_index["manifests"] = [d for d, _, _, _ in new_descriptors]
        out_data = json.dumps(new_index, separators=(",", ":")).encode()
        out_media = index_media
    else:
        _, out_data, out_media, _ = new_descriptors[0]
    report = ImageReport(
        source=str(src_ref),
        source_digest=top_digest,
        destination=str(dst_ref),
        digest="",
        media_type=out_media,
        layers=reports,
    )
    if options.external_toc:
        toc_ref = dst_ref.toc_image()
        toc_data, toc_media = converter.toc_image()
        toc_tag = toc_ref.name if toc_ref.transport == "oci" else toc_ref.tag
        report.toc_image = str(toc_ref)
        report.toc_image_digest = dst.put_manifest(toc_data, toc_media, toc_tag)
    report.digest = dst.put_manifest(out_data, out_media, tag or "latest")
    return report
