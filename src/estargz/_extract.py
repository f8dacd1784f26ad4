"""Extraction of a blob to a directory, and unpacking to a plain tar.

Every path is opened one component at a time from the target directory with
``O_NOFOLLOW``, so nothing is ever written through a symlink, and names are
cleaned as Go cleans them, so ``..`` and absolute names stay inside.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import shutil
import stat
from dataclasses import dataclass
from typing import BinaryIO, Optional, Union

from estargz import _native
from estargz._tar import ByteSource, TarReader
from estargz._util import AtomicOutput, PathLike
from estargz.errors import EStargzError, UnsafePathError, VerificationError
from estargz.reader import Blob, _SourceStream
from estargz.toc import TOCEntry

log = logging.getLogger(__name__)

_LANDMARKS = {".prefetch.landmark", ".no.prefetch.landmark"}
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


@dataclass
class ExtractReport:
    """What :func:`extract` did."""

    files: int = 0
    directories: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    devices: int = 0
    fifos: int = 0
    skipped_devices: int = 0
    dangling_hardlinks: int = 0
    xattr_failures: int = 0
    bytes: int = 0


class _Tree:
    """The target directory, walked without following symlinks."""

    def __init__(self, target: str) -> None:
        try:
            os.makedirs(target, exist_ok=True)
            self.root = os.open(target, _DIR_FLAGS)
        except OSError as exc:
            raise UnsafePathError(
                f"cannot extract into {target!r}: {exc.strerror or exc}"
            ) from exc
        self._dirs: dict[str, int] = {"": self.root}

    def close(self) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()

    def directory(self, path: str, entry_name: str) -> int:
        """A descriptor of directory ``path`` (made when missing)."""
        fd = self._dirs.get(path)
        if fd is not None:
            return fd
        parent_path, _, base = path.rpartition("/")
        parent = self.directory(parent_path, entry_name)
        try:
            fd = os.open(base, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            os.mkdir(base, 0o755, dir_fd=parent)
            fd = os.open(base, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafePathError(
                    f"{entry_name!r}: {path!r} is a symlink or not a directory; "
                    "refusing to write through it"
                ) from exc
            raise
        self._dirs[path] = fd
        return fd

    def place(self, name: str) -> tuple[int, str]:
        """The parent descriptor and last component of ``name``."""
        parent_path, _, base = name.rpartition("/")
        if not base or base in (".", ".."):
            raise UnsafePathError(f"{name!r} is not a path inside the target")
        return self.directory(parent_path, name), base

    def clear(self, name: str, parent: int, base: str, keep_dir: bool) -> None:
        """Remove what stands at ``name`` (a directory only if not kept)."""
        try:
            info = os.stat(base, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(info.st_mode):
            if keep_dir:
                return
            for path in [
                p for p in self._dirs if p == name or p.startswith(name + "/")
            ]:
                os.close(self._dirs.pop(path))
            shutil.rmtree(base, dir_fd=parent)
        else:
            os.unlink(base, dir_fd=parent)


def _times(entry: TOCEntry) -> Optional[tuple[int, int]]:
    moment = entry.mtime
    if moment is None:
        return None
    ns = int(moment.timestamp()) * 1_000_000_000
    return (ns, ns)


def extract(blob: Blob, target: PathLike, *, xattrs: bool = True) -> ExtractReport:
    """Extract every entry of ``blob`` under ``target``.

    Regular files are read chunk by chunk and each chunk is verified.  Modes,
    times and extended attributes are applied; owners, device files and
    ownership only when running as root.  Whiteout files (``.wh.*``) are
    extracted as the plain files they are.

    :raises UnsafePathError: an entry would be written through a symlink
    :raises VerificationError: a chunk does not match its digest
    """
    root_user = os.geteuid() == 0
    report = ExtractReport()
    tree = _Tree(os.fspath(target))
    toc = blob.toc
    directories: list[tuple[str, TOCEntry]] = []
    try:
        # Later entries of the same name win, as in tar; links come last so
        # their targets exist.  The landmark files only mark the prefetch
        # boundary for lazy pulling; like the snapshotter, leave them out.
        latest = [
            e
            for e in toc.entries
            if toc.by_name.get(e.name) is e and e.name and e.name not in _LANDMARKS
        ]
        for entry in [e for e in latest if e.type != "hardlink"] + [
            e for e in latest if e.type == "hardlink"
        ]:
            _extract_one(blob, tree, entry, root_user, xattrs, report, directories)
        for name, entry in sorted(
            directories, key=lambda item: item[0].count("/"), reverse=True
        ):
            fd = tree.directory(name, name)
            _finish(fd, entry, root_user, xattrs, report)
    finally:
        tree.close()
    return report


def _extract_one(
    blob: Blob,
    tree: _Tree,
    entry: TOCEntry,
    root_user: bool,
    xattrs: bool,
    report: ExtractReport,
    directories: list[tuple[str, TOCEntry]],
) -> None:
    name = entry.name
    parent, base = tree.place(name)
    kind = entry.type
    if kind == "dir":
        tree.clear(name, parent, base, keep_dir=True)
        tree.directory(name, name)
        directories.append((name, entry))
        report.directories += 1
        return
    tree.clear(name, parent, base, keep_dir=False)
    if kind == "reg":
        fd = os.open(
            base,
            os.O_WRONLY
            | os.O_CREAT
            | os.O_EXCL
            | os.O_NOFOLLOW
            | getattr(os, "O_CLOEXEC", 0),
            0o600,
            dir_fd=parent,
        )
        try:
            with blob.open(name) as source:
                while True:
                    block = source.read(1 << 20)
                    if not block:
                        break
                    os.write(fd, block)
                    report.bytes += len(block)
            _finish(fd, entry, root_user, xattrs, report)
        finally:
            os.close(fd)
        report.files += 1
    elif kind == "symlink":
        os.symlink(entry.link_name, base, dir_fd=parent)
        if root_user:
            os.chown(base, entry.uid, entry.gid, dir_fd=parent, follow_symlinks=False)
        times = _times(entry)
        if times:
            os.utime(base, ns=times, dir_fd=parent, follow_symlinks=False)
        report.symlinks += 1
    elif kind == "hardlink":
        source_entry = entry.target
        if source_entry is None:
            # As tar does: the rest of the layer is still extracted.
            log.warning(
                "skipping %r: a hardlink to %r, which is not in the layer",
                entry.raw_name,
                entry.link_name,
            )
            report.dangling_hardlinks += 1
            return
        source_parent, source_base = tree.place(source_entry.name)
        os.link(
            source_base,
            base,
            src_dir_fd=source_parent,
            dst_dir_fd=parent,
            follow_symlinks=False,
        )
        report.hardlinks += 1
    elif kind in ("char", "block", "fifo"):
        if kind == "fifo":
            os.mkfifo(base, 0o600, dir_fd=parent)
            report.fifos += 1
        elif root_user:
            device_type = stat.S_IFCHR if kind == "char" else stat.S_IFBLK
            os.mknod(
                base,
                0o600 | device_type,
                os.makedev(entry.dev_major, entry.dev_minor),
                dir_fd=parent,
            )
            report.devices += 1
        else:
            report.skipped_devices += 1
            return
        _finish_path(base, parent, entry, root_user)
    else:
        raise VerificationError(
            f"{entry.raw_name!r}: cannot extract an entry of type {kind!r}"
        )


def _finish(
    fd: int, entry: TOCEntry, root_user: bool, xattrs: bool, report: ExtractReport
) -> None:
    """Owner, mode, extended attributes and times of an open file or directory."""
    if root_user:
        os.fchown(fd, entry.uid, entry.gid)
    os.fchmod(fd, entry.mode & 0o7777)
    if xattrs:
        for key, value in entry.xattrs.items():
            try:
                os.setxattr(fd, key, value)
            except OSError as exc:
                report.xattr_failures += 1
                if report.xattr_failures == 1:
                    log.warning(
                        "cannot set extended attribute %s on %r: %s",
                        key,
                        entry.name,
                        exc,
                    )
    times = _times(entry)
    if times:
        os.utime(fd, ns=times)


def _finish_path(base: str, parent: int, entry: TOCEntry, root_user: bool) -> None:
    if root_user:
        os.chown(base, entry.uid, entry.gid, dir_fd=parent, follow_symlinks=False)
    os.chmod(base, entry.mode & 0o7777, dir_fd=parent)
    times = _times(entry)
    if times:
        os.utime(base, ns=times, dir_fd=parent, follow_symlinks=False)


class _Tee(io.RawIOBase):
    def __init__(self, stream: BinaryIO, out: BinaryIO) -> None:
        self._stream = stream
        self._out = out

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: object) -> int:
        view = memoryview(buffer).cast("B")  # type: ignore[arg-type]
        n = self._stream.readinto(view)  # type: ignore[attr-defined]
        if n:
            self._out.write(view[:n])
        return int(n or 0)


def unpack(blob: Blob, output: Union[PathLike, BinaryIO]) -> int:
    """Write the blob's tar stream without the TOC: the layer as a plain tar.

    The stream of an eStargz blob ends without the end-of-archive marker
    (the TOC entry came after it); one is added.  A keep-diff-id blob
    already holds the original tar, which is written byte for byte.

    :returns: the number of bytes written
    """
    if isinstance(output, (str, os.PathLike)):
        with AtomicOutput(output) as target:
            assert target.file is not None
            written = _unpack_to(blob, target.file)
            target.commit()
            return written
    return _unpack_to(blob, output)


def _unpack_to(blob: Blob, out: BinaryIO) -> int:
    stream = _SourceStream(blob.source, 0, blob.payload_end)
    plain = _native.GzipReader(io.BufferedReader(stream, 1 << 20))
    counting = _Counter(out)
    tee = io.BufferedReader(_Tee(plain, counting), 1 << 16)  # type: ignore[arg-type]
    reader = TarReader(ByteSource(tee))
    try:
        for _ in reader:
            reader.skip_payload()
        for _ in reader.read_trailer():
            pass
    except EStargzError as exc:
        raise VerificationError(f"tar stream: {exc}") from exc
    if not getattr(reader, "_eoa", b""):
        counting.write(bytes(1024))
    return counting.count


class _Counter:
    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.count = 0

    def write(self, data: Union[bytes, bytearray, memoryview]) -> None:
        self._out.write(data)
        self.count += len(data)
