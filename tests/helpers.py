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


def make_oci_image(
    root: Path,
    layers: list[bytes],
    *,
    tag: str = "latest",
    platforms: tuple[str, ...] = ("linux/amd64",),
    docker_types: bool = False,
    compress: bool = True,
) -> None:
    """An image layout at ``root`` with ``layers`` (uncompressed tars), for
    one platform (a manifest) or several (an index)."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')

    def put(data: bytes) -> str:
        digest = sha256(data)
        (blobs / digest[7:]).write_bytes(data)
        return digest

    layer_type = (
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
        if docker_types
        else "application/vnd.oci.image.layer.v1.tar+gzip"
    )
    if not compress:
        layer_type = layer_type.replace("+gzip", "").replace(".gzip", "")
    descriptors = []
    for layer in layers:
        blob = gzip.compress(layer, mtime=0) if compress else layer
        descriptors.append(
            {"mediaType": layer_type, "digest": put(blob), "size": len(blob)}
        )
    diff_ids = [sha256(layer) for layer in layers]
    manifests = []
    for platform_name in platforms:
        os_name, arch = platform_name.split("/")[:2]
        config = json.dumps(
            {
                "architecture": arch,
                "os": os_name,
                "config": {"Env": ["PATH=/usr/bin"]},
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
                "history": [{"created_by": f"layer {i}"} for i in range(len(layers))],
            }
        ).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": (
                "application/vnd.docker.distribution.manifest.v2+json"
                if docker_types
                else "application/vnd.oci.image.manifest.v1+json"
            ),
            "config": {
                "mediaType": (
                    "application/vnd.docker.container.image.v1+json"
                    if docker_types
                    else "application/vnd.oci.image.config.v1+json"
                ),
                "digest": put(config),
                "size": len(config),
            },
            "layers": descriptors,
        }
        data = json.dumps(manifest).encode()
        manifests.append(
            {
                "mediaType": manifest["mediaType"],
                "digest": put(data),
                "size": len(data),
                "platform": {"os": os_name, "architecture": arch},
            }
        )
    if len(platforms) == 1:
        top = manifests[0]
        top.pop("platform")
    else:
        index = {
            "schemaVersion": 2,
            "mediaType": (
                "application/vnd.docker.distribution.manifest.list.v2+json"
                if docker_types
                else "application/vnd.oci.image.index.v1+json"
            ),
            "manifests": manifests,
        }
        data = json.dumps(index).encode()
        top = {"mediaType": index["mediaType"], "digest": put(data), "size": len(data)}
    top["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (root / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [top],
            }
        )
    )
