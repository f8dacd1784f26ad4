"""The ``estargz`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable, Optional

from estargz.errors import EStargzError

log = logging.getLogger("estargz")

if TYPE_CHECKING:
    from estargz.reader import Blob


class EStargzErrorForCLI(Exception):
    """A user error the CLI reports in one line (a missing path, say)."""


def _size(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from exc
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} GB"


def _add_layer_options(parser: argparse.ArgumentParser) -> None:
    """The per-layer options of ``ctr-remote``, under both spellings."""
    parser.add_argument(
        "--compression-level",
        "--estargz-compression-level",
        type=int,
        default=9,
        choices=range(10),
        metavar="N",
        help="gzip level 0-9 (default 9)",
    )
    parser.add_argument(
        "--chunk-size",
        "--estargz-chunk-size",
        type=_size,
        default=0,
        metavar="BYTES",
        help="largest chunk of a file (default 0 = 4 MiB)",
    )
    parser.add_argument(
        "--min-chunk-size",
        "--estargz-min-chunk-size",
        type=_size,
        default=0,
        metavar="BYTES",
        help="compressed bytes a gzip member holds before the next starts; "
        "above 0 several files share a member (default 0)",
    )
    parser.add_argument(
        "--prioritized-files",
        metavar="FILE",
        help="paths to place first, one per line, or a ctr-remote record file",
    )
    parser.add_argument(
        "--estargz-record-in",
        metavar="FILE",
        help="ctr-remote's record file; missing paths are allowed",
    )
    parser.add_argument(
        "--allow-missing-prioritized",
        action="store_true",
        help="skip prioritized paths that are not in the layer",
    )
    parser.add_argument(
        "--keep-diff-id",
        "--estargz-keep-diff-id",
        action="store_true",
        help="keep the uncompressed bytes identical to the input (needs "
        "--external-toc)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="compression threads (default: all CPUs)",
    )


def _prioritized(args: argparse.Namespace) -> tuple[list[str], bool]:
    from estargz.writer import read_prioritized_files

    paths: list[str] = []
    allow = bool(args.allow_missing_prioritized)
    if args.prioritized_files:
        paths += read_prioritized_files(args.prioritized_files)
    if args.estargz_record_in:
        paths += read_prioritized_files(args.estargz_record_in)
        allow = True
    return paths, allow


def _layer_options(args: argparse.Namespace) -> dict[str, Any]:
    """The layer options `convert` and `image convert` share."""
    paths, allow = _prioritized(args)
    return {
        "compression_level": args.compression_level,
        "chunk_size": args.chunk_size,
        "min_chunk_size": args.min_chunk_size,
        "prioritized_files": paths,
        "allow_missing_prioritized": allow,
        "external_toc": args.external_toc,
        "keep_diff_id": args.keep_diff_id,
        "threads": args.threads,
    }


def _cmd_convert(args: argparse.Namespace) -> int:
    from estargz.writer import convert

    result = convert(args.input, args.output, **_layer_options(args))
    stream = sys.stderr if args.output == "-" else sys.stdout
    if args.json:
        print(json.dumps(result.to_json()), file=stream)
        return 0
    if args.quiet:
        return 0
    where = "standard output" if args.output == "-" else args.output
    print(
        f"wrote {where}: {_human(result.blob_size)} blob, "
        f"{_human(result.uncompressed_size)} uncompressed",
        file=stream,
    )
    print(f"  TOC digest   {result.toc_digest}", file=stream)
    print(f"  diffID       {result.diff_id}", file=stream)
    print(f"  blob digest  {result.blob_digest}", file=stream)
    if result.external_toc_digest:
        print(
            f"  external TOC {args.external_toc}: {result.external_toc_size} bytes, "
            f"{result.external_toc_digest}",
            file=stream,
        )
    return 0


# What the command opened, closed when it ends (blobs, sources).
_OPENED: list[Any] = []


def _open(args: argparse.Namespace, **options: object) -> Blob:
    from estargz.reader import open_blob

    source: object = args.blob
    if args.blob == "-":
        # Reading needs random access: standard input is kept in a temporary
        # file first.
        import tempfile

        spool = tempfile.TemporaryFile(prefix="estargz-blob-")
        while True:
            block = sys.stdin.buffer.read(1 << 20)
            if not block:
                break
            spool.write(block)
        spool.seek(0)
        source = spool
    blob = open_blob(source, external_toc=args.external_toc, **options)  # type: ignore[arg-type]
    _OPENED.append(blob)
    if args.external_toc and blob.format != "external":
        log.warning("the blob holds its own TOC; --external-toc is not used")
    return blob


def _cmd_info(args: argparse.Namespace) -> int:
    blob = _open(args)
    toc = blob.toc
    types: dict[str, int] = {}
    for entry in toc.entries:
        types[entry.type] = types.get(entry.type, 0) + 1
    members = len(set(toc.chunks.offset.tolist()))
    report = {
        "format": blob.format,
        "blobSize": blob.source.size,
        "footerSize": blob.footer.size,
        "tocOffset": blob.footer.toc_offset,
        "tocCompressedSize": blob.toc_size,
        "tocSize": len(blob.toc_json),
        "tocDigest": blob.toc_digest,
        "tocVersion": toc.version,
        "entries": len(toc.entries),
        "entriesByType": dict(sorted(types.items())),
        "chunks": len(toc.chunks),
        "members": members,
        "fileBytes": int(toc.chunks.size.sum()),
    }
    if args.json:
        print(json.dumps(report))
        return 0
    width = max(len(key) for key in report)
    for key, value in report.items():
        shown = (
            ", ".join(f"{n} {t}" for t, n in types.items())
            if key == "entriesByType"
            else value
        )
        print(f"{key:<{width}}  {shown}")
    return 0


# Control characters in names would drive the terminal; show them escaped.
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(32), 0x7F]}


def _shown(text: str) -> str:
    """A name as one printable line: control characters and lone surrogates
    (undecodable bytes) escaped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").translate(_CONTROL)


def _cmd_ls(args: argparse.Namespace) -> int:
    import stat as st

    blob = _open(args)
    type_bits = {
        "dir": st.S_IFDIR,
        "reg": st.S_IFREG,
        "symlink": st.S_IFLNK,
        "hardlink": st.S_IFREG,
        "char": st.S_IFCHR,
        "block": st.S_IFBLK,
        "fifo": st.S_IFIFO,
    }
    for entry in blob.toc.entries:
        mode = st.filemode(type_bits.get(entry.type, 0) | (entry.mode & 0o7777))
        if entry.type == "hardlink":
            mode = "h" + mode[1:]
        owner = f"{entry.user_name or entry.uid}/{entry.group_name or entry.gid}"
        moment = entry.mtime
        when = moment.strftime("%Y-%m-%d %H:%M") if moment else "                "
        size = (
            f"{entry.dev_major},{entry.dev_minor}"
            if entry.type in ("char", "block")
            else str(entry.size)
        )
        owner = _shown(owner)
        line = f"{mode} {owner:<17} {size:>10} {when} {_shown(entry.raw_name)}"
        if entry.type == "symlink":
            line += f" -> {_shown(entry.link_name)}"
        elif entry.type == "hardlink":
            line += f" link to {_shown(entry.link_name)}"
        print(line)
    return 0


def _cmd_cat(args: argparse.Namespace) -> int:
    blob = _open(args)
    try:
        source = blob.open(args.path)
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise EStargzErrorForCLI(str(exc)) from exc
    out = sys.stdout.buffer
    with source:
        while True:
            block = source.read(1 << 20)
            if not block:
                break
            out.write(block)
    out.flush()
    return 0


def _cmd_toc(args: argparse.Namespace) -> int:
    blob = _open(args)
    sys.stdout.buffer.write(blob.toc_json)
    sys.stdout.buffer.flush()
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    blob = _open(args)
    report = blob.verify(toc_digest=args.toc_digest)
    if args.json:
        print(
            json.dumps(
                {
                    "ok": True,
                    "format": blob.format,
                    "tocDigest": report.toc_digest,
                    "entries": report.entries,
                    "chunks": report.chunks,
                    "members": report.members,
                    "uncompressedBytes": report.uncompressed_bytes,
                }
            )
        )
    elif not args.quiet:
        checked = "TOC digest matches, " if args.toc_digest else ""
        print(
            f"ok: {checked}{report.entries} entries, {report.chunks} chunks in "
            f"{report.members} gzip members verified "
            f"({_human(report.uncompressed_bytes)} "
            f"of tar stream agree with the TOC)"
        )
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    from estargz._extract import extract

    blob = _open(args)
    report = extract(blob, args.directory, xattrs=not args.no_xattrs)
    if not args.quiet:
        skipped = (
            f", {report.skipped_devices} device files skipped (not root)"
            if report.skipped_devices
            else ""
        )
        print(
            f"extracted {report.files} files ({_human(report.bytes)}), "
            f"{report.directories} directories, {report.symlinks} symlinks, "
            f"{report.hardlinks} hardlinks, "
            f"{report.devices + report.fifos} devices and "
            f"fifos{skipped}",
            file=sys.stderr,
        )
    return 0


def _cmd_unpack(args: argparse.Namespace) -> int:
    from estargz._extract import unpack, unpack_payload

    written = -1
    if not args.external_toc and args.blob != "-":
        # An external-TOC blob is the whole layer before its footer: no TOC
        # needed to unpack it.
        from estargz._format import FOOTER_SIZE
        from estargz._source import FileSource
        from estargz.reader import parse_footer

        source = FileSource(args.blob)
        _OPENED.append(source)
        size = source.size
        footer = parse_footer(source.read_at(max(0, size - FOOTER_SIZE), FOOTER_SIZE))
        if footer.format == "external":
            written = unpack_payload(source, size - footer.size, args.output)
    if written < 0:
        written = unpack(_open(args), args.output)
    if args.output != "-" and not args.quiet:
        print(f"wrote {args.output}: {_human(written)} tar", file=sys.stderr)
    return 0


def _cmd_image_convert(args: argparse.Namespace) -> int:
    from estargz.image import convert_image

    options = _layer_options(args)
    credentials = None
    if args.creds:
        user, sep, password = args.creds.partition(":")
        if not sep:
            raise EStargzErrorForCLI("--creds wants USER:PASS")
        credentials = (user, password)
    progress = _ImageProgress() if sys.stderr.isatty() and not args.quiet else None
    report = convert_image(
        args.source,
        args.destination,
        **options,
        oci=args.oci,
        platforms=args.platform,
        all_platforms=args.all_platforms,
        plain_http=args.plain_http,
        credentials=credentials,
        progress=progress,
    )
    if progress is not None:
        progress.finish()
    if args.json:
        print(json.dumps(report.to_json()))
        return 0
    if args.quiet:
        return 0
    converted = sum(1 for layer in report.layers if layer.action == "converted")
    print(
        f"{report.destination}: {report.digest} "
        f"({converted} layer{'' if converted == 1 else 's'} converted, "
        f"{report.seconds:.1f} s)"
    )
    if report.toc_image:
        print(f"{report.toc_image}: {report.toc_image_digest}")
    return 0


class _ImageProgress:
    """One status line on standard error, redrawn as layers move on."""

    def __init__(self) -> None:
        self.started: set[str] = set()
        self.done: set[str] = set()

    def __call__(self, event: dict[str, object]) -> None:
        digest = str(event.get("digest", ""))
        if event.get("state") == "converting":
            self.started.add(digest)
        else:
            self.done.add(digest)
        working = len(self.started - self.done)
        sys.stderr.write(f"\r\033[Klayers: {len(self.done)} done, {working} converting")
        sys.stderr.flush()

    def finish(self) -> None:
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()


def _common() -> argparse.ArgumentParser:
    """Options every command takes, before or after its name."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="say more"
    )
    common.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print only errors",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="estargz",
        description="Convert container image layers to eStargz and read them back.",
        parents=[_common()],
    )
    parser.add_argument("--version", action="store_true", help="print versions")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    convert = commands.add_parser(
        "convert",
        parents=[_common()],
        help="convert a layer (tar, tar.gz, tar.zst) into an eStargz blob",
        description="Convert a layer into an eStargz blob that Go stargz reads.",
    )
    convert.add_argument(
        "input", metavar="IN", help="the layer, or - for standard input"
    )
    convert.add_argument(
        "output", metavar="OUT", help="the blob, or - for standard output"
    )
    _add_layer_options(convert)
    convert.add_argument(
        "--external-toc",
        "--estargz-external-toc",
        metavar="TOC_OUT",
        help="keep the TOC out of the blob; write it (gzip-compressed tar) here",
    )
    convert.add_argument("--json", action="store_true", help="print one JSON report")
    convert.set_defaults(func=_cmd_convert, subparser=convert)

    def reader_command(
        name: str, help: str, func: Callable[[argparse.Namespace], int]
    ) -> argparse.ArgumentParser:
        command = commands.add_parser(
            name,
            help=help,
            description=help[0].upper() + help[1:] + ".",
            parents=[_common()],
        )
        command.add_argument(
            "blob", metavar="BLOB", help="an eStargz or legacy stargz blob"
        )
        command.add_argument(
            "--external-toc",
            metavar="FILE",
            help="the TOC of a blob that keeps it outside (gzip-compressed TOC tar)",
        )
        command.set_defaults(func=func)
        return command

    info = reader_command(
        "info", "show a blob's format, footer, TOC and counts", _cmd_info
    )
    info.add_argument("--json", action="store_true", help="print one JSON object")
    reader_command("ls", "list a blob's entries, like tar tv", _cmd_ls)
    cat = reader_command("cat", "write one file of a blob to standard output", _cmd_cat)
    cat.add_argument("path", metavar="PATH")
    reader_command("toc", "write the TOC JSON exactly as stored", _cmd_toc)
    verify = reader_command(
        "verify", "check the TOC, every chunk and the tar stream of a blob", _cmd_verify
    )
    verify.add_argument(
        "--toc-digest", metavar="DIGEST", help="the expected TOC digest"
    )
    verify.add_argument("--json", action="store_true", help="print one JSON object")
    extract = reader_command("extract", "extract a blob into a directory", _cmd_extract)
    extract.add_argument("directory", metavar="DIR")
    extract.add_argument(
        "--no-xattrs", action="store_true", help="do not set extended attributes"
    )
    unpack = reader_command(
        "unpack", "write the blob's layer as a plain tar, without the TOC", _cmd_unpack
    )
    unpack.add_argument(
        "output", metavar="OUT", help="the tar, or - for standard output"
    )
    _add_image_commands(commands)
    return parser


def _add_image_commands(commands: Any) -> None:
    image = commands.add_parser(
        "image", help="convert whole images", parents=[_common()]
    )
    image_commands = image.add_subparsers(dest="image_command", metavar="COMMAND")
    image_convert = image_commands.add_parser(
        "convert",
        parents=[_common()],
        help="convert an image to eStargz",
        description="Convert an image to eStargz.  Addresses: oci:DIR[:REF], "
        "docker-archive:FILE[:NAME:TAG] (source only), "
        "docker://HOST[:PORT]/REPO[:TAG].",
    )
    image_convert.add_argument("source", metavar="SRC")
    image_convert.add_argument("destination", metavar="DST")
    _add_layer_options(image_convert)
    image_convert.add_argument(
        "--external-toc",
        "--estargz-external-toc",
        action="store_true",
        help="keep TOCs out of the layers, in a TOC image named DST's tag + -esgztoc",
    )
    image_convert.add_argument(
        "--oci", action="store_true", help="turn Docker media types into OCI ones"
    )
    image_convert.add_argument(
        "--platform",
        action="append",
        metavar="OS/ARCH[/VARIANT]",
        help="platform to convert from a multi-platform image (repeatable; "
        "default: this machine's)",
    )
    image_convert.add_argument(
        "--all-platforms", action="store_true", help="convert every platform"
    )
    image_convert.add_argument(
        "--plain-http", action="store_true", help="talk to registries over http://"
    )
    image_convert.add_argument(
        "--creds",
        metavar="USER:PASS",
        help="registry credentials (default: docker config)",
    )
    image_convert.add_argument(
        "--json", action="store_true", help="print one JSON report"
    )
    image_convert.set_defaults(func=_cmd_image_convert, subparser=image_convert)


def _bound_malloc() -> None:
    """Keep large transient buffers out of glibc's heap arenas.

    glibc raises its mmap threshold each time a large block is freed, after
    which megabyte-sized batch buffers come from per-thread arenas that keep
    them; pinning the threshold returns them to the system when freed, which
    keeps peak memory flat.  Harmless elsewhere (musl has no such knob).
    """
    try:
        import ctypes
        import platform

        if platform.libc_ver()[0] == "glibc":
            libc = ctypes.CDLL(None)
            m_mmap_threshold = -3
            libc.mallopt(m_mmap_threshold, 128 * 1024)
    except (OSError, AttributeError, ValueError):
        pass


def _describe(exc: BaseException) -> str:
    """One line for an error: an OS error without its "[Errno N]" prefix."""
    if isinstance(exc, OSError) and exc.strerror:
        if exc.filename is not None:
            return f"{exc.filename!r}: {exc.strerror}"
        return str(exc.strerror)
    return str(exc)


def main(argv: Optional[Sequence[str]] = None) -> int:
    _bound_malloc()
    # NumPy (the TOC's chunk index) does no linear algebra here; without
    # this its BLAS starts a spinning thread per core that steals CPU time.
    for knob in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(knob, "1")
    for stream in (sys.stdout, sys.stderr):
        # Names from a layer may not fit the terminal's encoding: escape,
        # never fail.
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    args.verbose = getattr(args, "verbose", 0)
    args.quiet = getattr(args, "quiet", False)
    if getattr(args, "keep_diff_id", False) and not getattr(args, "external_toc", None):
        getattr(args, "subparser", parser).error("--keep-diff-id needs --external-toc")
    level = logging.WARNING - 10 * args.verbose
    if args.quiet:
        level = logging.ERROR
    logging.basicConfig(level=level, format="estargz: %(levelname)s: %(message)s")
    # urllib3 narrates its retries; our errors say what failed.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    if args.version:
        import estargz

        print(f"estargz {estargz.__version__} (zlib-ng {estargz.zlib_ng_version()})")
        return 0
    func: Optional[Callable[[argparse.Namespace], int]] = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return func(args)
    except BrokenPipeError:
        return 1
    except (EStargzError, EStargzErrorForCLI, OSError) as exc:
        # User and environment errors: one line.  (Anything else is a bug in
        # estargz and keeps its traceback.)
        message = _describe(exc)
        blob = getattr(args, "blob", None)
        if (
            blob
            and not isinstance(exc, EStargzErrorForCLI)
            and str(blob) not in message
        ):
            message = f"{blob}: {message}"
        print(f"estargz: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("estargz: interrupted", file=sys.stderr)
        return 130
    finally:
        while _OPENED:
            _OPENED.pop().close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
