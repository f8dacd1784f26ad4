"""Helpers shared by the benchmark suites: real input data and the C ceiling."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sysconfig
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build"

CEILINGS: dict[str, dict[str, Any]] = {}
TARGETS: dict[str, list[tuple[str, float, str]]] = defaultdict(list)


def record_ceiling(group: str, seconds: float, nbytes: int, note: str = "") -> None:
    """Remember the C ceiling of ``group``: ``nbytes`` handled in ``seconds``."""
    CEILINGS[group] = {"seconds": seconds, "bytes": nbytes, "note": note}


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
    if binary.exists() and binary.stat().st_mtime > source.stat().st_mtime:
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    library = prefix / "lib" / "libz-ng.a"
    command = ["gcc", "-O2", "-pthread", "-o", str(binary), str(source)]
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
        if mode == "inflate":
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
