"""Helpers shared by the benchmark suites: real input data and the C ceiling."""

from __future__ import annotations

import glob
import io
import json
import os
import subprocess
import sysconfig
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build"

CEILINGS: dict[str, dict[str, Any]] = {}
TARGETS: dict[str, list[tuple[str, float, str]]] = defaultdict(list)


def record_ceiling(
    group: str, seconds: float, nbytes: int, kind: str = "ceiling"
) -> None:
    """Remember a C reference of ``group``: ``nbytes`` handled in ``seconds``.

    ``ceiling`` is zlib-ng alone; ``floor`` adds the digests no eStargz
    writer or verifier may skip.
    """
    CEILINGS.setdefault(group, {})[kind] = {"seconds": seconds, "bytes": nbytes}


PEERS: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)


def record_peer(
    group: str, impl: str, seconds: float, nbytes: int, **extra: Any
) -> None:
    """A peer's time measured by the peer itself (a Go loop, say), shown in
    the report as if pytest-benchmark had timed it."""
    PEERS[group][impl] = {"seconds": seconds, "bytes": nbytes, **extra}


def add_target(group: str, peer: str, ratio: float, why: str = "") -> None:
    """State that ``ours`` should reach ``ratio`` times ``peer``'s speed."""
    if (peer, ratio, why) not in TARGETS[group]:
        TARGETS[group].append((peer, ratio, why))


def stdlib_corpus(size: int) -> bytes:
    """The first ``size`` bytes of the Python standard library's own ``.py``
    files, concatenated in sorted path order: real, mixed source text."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts: list[bytes] = []
    total = 0
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts:
            continue
        data = path.read_bytes()
        parts.append(data)
        total += len(data)
        if total >= size:
            break
    corpus = b"".join(parts)[:size]
    if len(corpus) < size:
        raise RuntimeError(f"the standard library holds only {len(corpus)} bytes")
    return corpus


def zlib_ng_prefix() -> Path:
    """The static zlib-ng build that ``setup.py`` made (and linked us with)."""
    found = sorted(glob.glob(str(BUILD / "zlib-ng-2.3.*-*" / ".complete")))
    if not found:
        raise RuntimeError(
            "no zlib-ng build under build/; run `pip install -e .` first"
        )
    return Path(found[-1]).parent


def ceiling_binary() -> Path:
    """Compile ``bench/ceiling.c`` against that zlib-ng (once)."""
    prefix = zlib_ng_prefix()
    binary = BUILD / "bench" / "ceiling"
    source = REPO / "bench" / "ceiling.c"
    newest = max(
        source.stat().st_mtime, (REPO / "src" / "_native" / "sha256.c").stat().st_mtime
    )
    if binary.exists() and binary.stat().st_mtime > newest:
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    library = prefix / "lib" / "libz-ng.a"
    native = REPO / "src" / "_native"
    command = ["gcc", "-O2", "-pthread", "-o", str(binary), str(source)]
    command += [str(native / "sha256.c"), "-I", str(native)]
    command += ["-I", str(prefix / "include"), str(library)]
    subprocess.run(command, check=True)
    return binary


def run_ceiling(
    mode: str,
    pieces: Sequence[bytes],
    *,
    level: int = 0,
    threads: int = 1,
    rounds: int = 3,
    uncompressed_sizes: Sequence[int] | None = None,
) -> dict[str, float]:
    """Time zlib-ng alone on ``pieces``; return the C program's JSON report."""
    binary = ceiling_binary()
    with tempfile.TemporaryDirectory(prefix="estargz-ceiling-") as tmp:
        data = Path(tmp) / "data"
        sizes = Path(tmp) / "sizes"
        with data.open("wb") as f:
            for piece in pieces:
                f.write(piece)
        if mode.startswith("inflate"):
            assert uncompressed_sizes is not None
            lines = [f"{len(p)} {u}" for p, u in zip(pieces, uncompressed_sizes)]
        else:
            lines = [str(len(p)) for p in pieces]
        sizes.write_text("\n".join(lines) + "\n")
        command = [str(binary), mode, str(level), str(threads), str(rounds)]
        out = subprocess.run(
            [*command, str(data), str(sizes)],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        ).stdout
    result: dict[str, float] = json.loads(out)
    return result


def _spawn_binary() -> Path:
    binary = BUILD / "bench" / "spawn"
    source = REPO / "bench" / "spawn.c"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        binary.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(source)], check=True)
    return binary


def run_measured(command: Sequence[str]) -> tuple[float, int, str]:
    """Run ``command``; return its wall seconds, peak RSS in KiB and stdout.

    The command runs under ``bench/spawn.c``, a tiny launcher that reports
    the child's own peak RSS (a child forked straight from this large
    process would count this process's memory as its own).
    """
    with tempfile.TemporaryDirectory(prefix="estargz-run-") as tmp:
        report = Path(tmp) / "rusage"
        start = time.perf_counter()
        result = subprocess.run(
            [str(_spawn_binary()), str(report), *command], capture_output=True
        )
        seconds = time.perf_counter() - start
        if result.returncode:
            raise RuntimeError(
                f"{command[0]} failed ({result.returncode}): "
                + result.stderr.decode(errors="replace")[-2000:]
            )
        peak = int(report.read_text().split()[0])
        return seconds, peak, result.stdout.decode()


def _members(blob: Path) -> Iterator[tuple[bytes, bytes]]:
    """Each gzip member of a blob before its TOC (or external-TOC footer):
    its compressed bytes and what it inflates to."""
    from estargz import _native

    data = blob.read_bytes()
    tail = data[-51:]
    if tail[12:14] == b"SG" and tail[32:38] == b"STARGZ":
        end = int(tail[16:32], 16)
    else:
        end = len(data) - 46
    reader = _native.GzipReader(io.BytesIO(data[:end]))
    current = bytearray()
    buffer = bytearray(1 << 20)
    while True:
        n = reader.readinto(buffer)
        if not n:
            break
        current += buffer[:n]
        if reader.at_member_end:
            yield data[reader.member_offset : reader.compressed_offset], bytes(current)
            current = bytearray()


def member_pieces(blob: Path) -> tuple[list[bytes], list[int]]:
    """Every gzip member of a blob before its TOC, compressed, with its
    uncompressed size: what a verifier inflates."""
    pieces: list[bytes] = []
    sizes: list[int] = []
    for compressed, content in _members(blob):
        pieces.append(compressed)
        sizes.append(len(content))
    return pieces, sizes


def member_contents(blob: Path) -> list[bytes]:
    """The uncompressed content of every gzip member of a blob before its
    TOC: the pieces the writer compressed."""
    return [content for _, content in _members(blob)]


def stdlib_layer() -> Path:
    """A small real layer for quick runs: the Python standard library as a
    tar, made once (sorted, numeric owners, fixed mtimes)."""
    import tarfile

    target = BUILD / "bench" / "stdlib-layer.tar"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    root = Path(sysconfig.get_paths()["stdlib"])
    partial = target.with_suffix(".part")
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(root.rglob("*")):
            if "site-packages" in path.parts or "__pycache__" in path.parts:
                continue
            info = tar.gettarinfo(
                str(path), arcname="usr/lib/python3/" + str(path.relative_to(root))
            )
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 1704067200
            if info.isfile():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            elif info.isdir() or info.issym():
                tar.addfile(info)
    partial.replace(target)
    return target


def go_harness() -> Path:
    """The Go stargz harness (tests/goharness), built on first use."""
    binary = BUILD / "go" / "estargz-go"
    if not binary.exists():
        subprocess.run(
            ["bash", str(REPO / "tests" / "goharness" / "build.sh")], check=True
        )
    return binary
