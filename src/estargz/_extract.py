"""Extraction of a blob to a directory, and unpacking to a plain tar.

Every path is opened one component at a time from the target directory with
``O_NOFOLLOW``, so nothing is ever written through a symlink, and names are
cleaned as Go cleans them, so ``..`` and absolute names stay inside.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import io
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Optional, Union

from estargz import _native
from estargz._source import RangeSource
from estargz._tar import ByteSource, TarReader
from estargz._util import AtomicOutput, PathLike
from estargz.errors import (
    BlobFormatError,
    EStargzError,
    UnsafePathError,
    VerificationError,
)
from estargz.reader import Blob, _SourceStream
from estargz.toc import TOCEntry

log = logging.getLogger(__name__)

_LANDMARKS = {".prefetch.landmark", ".no.prefetch.landmark"}
# Directory descriptors kept open for reuse while extracting.
_OPEN_DIRS = 256
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
    """The target directory, walked without following symlinks.

    Descriptors of the directories met are kept for reuse, at most
    ``_OPEN_DIRS`` of them besides the target's own (the least recently used
    are closed), so neither a wide layer nor a deep one exhausts the
    process's descriptors.  A descriptor handed out stays open until the
    next call that opens directories.
    """

    def __init__(self, target: str) -> None:
        try:
            os.makedirs(target, exist_ok=True)
            self.root = os.open(target, _DIR_FLAGS)
        except OSError as exc:
            raise UnsafePathError(
                f"cannot extract into {target!r}: {exc.strerror or exc}"
            ) from exc
        self._dirs: collections.OrderedDict[str, int] = collections.OrderedDict()

    def close(self) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()
        os.close(self.root)

    def directory(self, path: str, entry_name: str) -> int:
        """A descriptor of directory ``path`` (made when missing)."""
        if not path:
            return self.root
        fd = self._dirs.get(path)
        if fd is not None:
            self._dirs.move_to_end(path)
            return fd
        # The nearest ancestor already open (or the target), then down one
        # component at a time: no recursion, however deep the path.
        start = len(path)
        fd = self.root
        while True:
            start = path.rfind("/", 0, start)
            if start < 0:
                break
            cached = self._dirs.get(path[:start])
            if cached is not None:
                fd = cached
                break
        while start < len(path):
            end = path.find("/", start + 1)
            if end < 0:
                end = len(path)
            fd = self._open_child(fd, path[start + 1 : end], path[:end], entry_name)
            start = end
        return fd

    def _open_child(self, parent: int, base: str, path: str, entry_name: str) -> int:
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
        # Only the newest descriptor is needed to go on; older ones may go.
        while len(self._dirs) > _OPEN_DIRS:
            os.close(self._dirs.popitem(last=False)[1])
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
            _remove_tree(parent, base)
        else:
            os.unlink(base, dir_fd=parent)


def _remove_tree(parent: int, base: str) -> None:
    """Remove the directory ``base`` of ``parent`` and all below it, never
    following a symlink, iteratively (``shutil.rmtree`` recurses once per
    level before Python 3.12, which a deep tree exhausts).  One descriptor
    is open per level being emptied."""
    # Per level: its descriptor, the names left to look at, and its own name
    # in the level above.
    fd = os.open(base, _DIR_FLAGS, dir_fd=parent)
    stack: list[tuple[int, list[str], str]] = [(fd, os.listdir(fd), base)]
    try:
        while stack:
            fd, names, own = stack[-1]
            if names:
                name = names.pop()
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                    stack.append((child, os.listdir(child), name))
                else:
                    os.unlink(name, dir_fd=fd)
                continue
            stack.pop()
            os.close(fd)
            above = stack[-1][0] if stack else parent
            os.rmdir(own, dir_fd=above)
    finally:
        for fd, _names, _name in stack:
            os.close(fd)


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
            with _located(entry):
                _extract_one(blob, tree, entry, root_user, xattrs, report, directories)
        for name, entry in sorted(
            directories, key=lambda item: item[0].count("/"), reverse=True
        ):
            with _located(entry):
                fd = tree.directory(name, name)
                _finish(fd, entry, root_user, xattrs, report)
    finally:
        tree.close()
    return report


@contextlib.contextmanager
def _located(entry: TOCEntry) -> Iterator[None]:
    """Name the entry in any failure while extracting it.

    A TOC can hold values no system call takes (odd names, huge numbers);
    whatever slips past the checks becomes an estargz error naming the
    entry rather than a traceback, and an OS error names the entry too.
    """
    try:
        yield
    except EStargzError:
        raise
    except OSError as exc:
        if exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, entry.raw_name) from exc
    except (ValueError, OverflowError) as exc:  # UnicodeError is a ValueError
        raise BlobFormatError(f"{entry.raw_name!r}: cannot extract it: {exc}") from exc


# What chown takes: a uid_t, minus (uid_t)-1, which means "leave unchanged".
_MAX_ID = (1 << 32) - 2


def _ids(entry: TOCEntry) -> tuple[int, int]:
    """The entry's owner and group, if the system can take them."""
    for what, value in (("uid", entry.uid), ("gid", entry.gid)):
        if not 0 <= value <= _MAX_ID:
            raise BlobFormatError(
                f"{entry.raw_name!r}: {what} {value} is outside what this system "
                f"takes (0..{_MAX_ID})"
            )
    return entry.uid, entry.gid


def _device(entry: TOCEntry) -> int:
    """The entry's device number, if the system can take it."""
    try:
        return os.makedev(entry.dev_major, entry.dev_minor)
    except (OverflowError, ValueError) as exc:
        raise BlobFormatError(
            f"{entry.raw_name!r}: device number {entry.dev_major},{entry.dev_minor} "
            "is outside what this system takes"
        ) from exc


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
            uid, gid = _ids(entry)
            os.chown(base, uid, gid, dir_fd=parent, follow_symlinks=False)
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
        # Opening the source's directory may close older descriptors, the
        # link's own directory among them: hold a copy of it.
        parent = os.dup(parent)
        try:
            source_parent, source_base = tree.place(source_entry.name)
            os.link(
                source_base,
                base,
                src_dir_fd=source_parent,
                dst_dir_fd=parent,
                follow_symlinks=False,
            )
        finally:
            os.close(parent)
        report.hardlinks += 1
    elif kind in ("char", "block", "fifo"):
        if kind == "fifo":
            os.mkfifo(base, 0o600, dir_fd=parent)
            report.fifos += 1
        elif root_user:
            device_type = stat.S_IFCHR if kind == "char" else stat.S_IFBLK
            os.mknod(base, 0o600 | device_type, _device(entry), dir_fd=parent)
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
        os.fchown(fd, *_ids(entry))
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
        uid, gid = _ids(entry)
        os.chown(base, uid, gid, dir_fd=parent, follow_symlinks=False)
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
    return unpack_payload(blob.source, blob.payload_end, output)


def unpack_payload(
    source: RangeSource, payload_end: int, output: Union[PathLike, BinaryIO]
) -> int:
    """:func:`unpack` from the blob's bytes alone: what precedes the TOC
    (``payload_end``) is the whole layer, so an external-TOC blob unpacks
    without its TOC."""
    if isinstance(output, (str, os.PathLike)):
        with AtomicOutput(output) as target:
            assert target.file is not None
            written = _unpack_to(source, payload_end, target.file)
            target.commit()
            return written
    return _unpack_to(source, payload_end, output)


def _unpack_to(source: RangeSource, payload_end: int, out: BinaryIO) -> int:
    stream = _SourceStream(source, 0, payload_end)
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
