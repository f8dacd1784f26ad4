"""Layer conversion: estargz against Go stargz, run side by side.

Inputs are real layers made by ``bench/make_layers.py`` (a Debian minbase
root filesystem, a numpy/pandas/scipy site-packages tree, a layer of large
shared libraries) in ``bench/layers/`` or ``$ESTARGZ_BENCH_LAYERS``.  When
none is there (CI), the Python standard library as a tar stands in.

Each group ``convert-<layer>-<mode>`` runs ``estargz convert`` and the Go
harness (``tests/goharness``, Debian's stargz-snapshotter 0.12) as child
processes, both with 2 workers, and reports ours against Go: speed ratio over
the input tar's bytes, blob size ratio and each one's peak RSS.  The ceiling
is zlib-ng alone in C compressing the very members our blob holds, at the
same level, on the same 2 threads (``bench/ceiling.c``).

Modes: levels 9, 6 and 1; min-chunk-size 50000 and keep-diff-id at level 9.
Go 0.12 knows neither of the last two; the newest Go runs them on one
thread, so their peer here is Go's default mode at level 9 on one worker,
the closest stand-in 0.12 offers.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import pytest
from _support import (
    REPO,
    add_target,
    go_harness,
    member_contents,
    record_ceiling,
    run_ceiling,
    run_measured,
    stdlib_layer,
)

REAL_LAYERS = ["debian-minbase", "site-packages", "shared-libs"]
THREADS = 2

# mode: (extra estargz options, level, Go workers, speed target vs Go)
MODES = {
    "L9": ([], 9, THREADS, 4.0),
    "L6": ([], 6, THREADS, 5.0),
    "L1": ([], 1, THREADS, 9.0),
    "mc50000": (["--min-chunk-size", "50000"], 9, 1, 8.0),
    "keepdiff": (["--keep-diff-id"], 9, 1, 8.0),
}


def layers() -> dict[str, Path]:
    root = Path(os.environ.get("ESTARGZ_BENCH_LAYERS", REPO / "bench" / "layers"))
    found = {
        name: root / f"{name}.tar"
        for name in REAL_LAYERS
        if (root / f"{name}.tar").exists()
    }
    if not found:
        found = {"stdlib": stdlib_layer()}
    return found


LAYERS = layers()


@pytest.fixture(scope="module")
def workdir() -> Path:
    with tempfile.TemporaryDirectory(prefix="estargz-bench-") as tmp:
        yield Path(tmp)


def _group(layer: str, mode: str) -> str:
    return f"convert-{layer}-{mode}"


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("impl", ["ours", "go"])
def test_convert(
    benchmark: object, workdir: Path, layer: str, mode: str, impl: str
) -> None:
    options, level, go_workers, target = MODES[mode]
    source = LAYERS[layer]
    blob = workdir / f"{layer}-{mode}-{impl}.esgz"
    group = _group(layer, mode)
    benchmark.group = group  # type: ignore[attr-defined]
    if impl == "ours":
        command = [sys.executable, "-m", "estargz", "convert", str(source), str(blob)]
        command += [
            "--json",
            "--threads",
            str(THREADS),
            "--compression-level",
            str(level),
        ]
        command += options
        if "--keep-diff-id" in options:
            command += ["--external-toc", str(workdir / f"{layer}-{mode}.toc.tar.gz")]
    else:
        command = [str(go_harness()), "convert", "-level", str(level)]
        command += ["-workers", str(go_workers), str(source), str(blob)]

    measured: dict[str, object] = {}

    def run() -> None:
        seconds, rss, out = run_measured(command)
        measured.update(json.loads(out), rss=rss, seconds=seconds)

    benchmark.pedantic(run, rounds=int(os.environ.get("ESTARGZ_BENCH_ROUNDS", "1")))  # type: ignore[attr-defined]
    info = benchmark.extra_info  # type: ignore[attr-defined]
    info.update(
        impl=impl,
        bytes=source.stat().st_size,
        blob_size=measured["blobSize"],
        peak_rss_kb=measured["rss"],
    )
    if impl == "ours":
        add_target(group, "go", target, "throughput over Go stargz")
        add_target(group, "ceiling", 0.9, "zlib-ng alone, same members, same threads")
        add_target(group, "floor", 0.9, "zlib-ng plus the digests eStargz requires")
        pieces = member_contents(blob)
        for kind, c_mode in (("ceiling", "deflate"), ("floor", "deflate-sha")):
            reference = run_ceiling(
                c_mode, pieces, level=level, threads=THREADS, rounds=1
            )
            record_ceiling(
                group, reference["seconds"], int(reference["uncompressed_bytes"]), kind
            )
        if mode == "keepdiff":
            digest = measured["diffID"]
            import hashlib

            assert digest == "sha256:" + hashlib.sha256(source.read_bytes()).hexdigest()
