"""Reading eStargz: estargz against the Go harness on the same blobs.

The blobs are written by Go stargz (Debian's 0.12, level 9) from the real
layers of ``bench/layers/`` (or, when there are none, from the Python
standard library), so both readers read the reference format.

* ``verify-<layer>``: verify everything (the TOC, every chunk; ours also the
  tar stream against the TOC) as processes side by side; the bytes counted
  are the files' data.
* ``read-small-<layer>``: one small file read lazily, its chunk verified,
  with the blob already open: ours timed by pytest-benchmark, Go by its own
  loop (``read-latency``) in the same run.
* ``toc-million``: a TOC of a million chunks: time to parse it, memory per
  chunk of the index, and finding a chunk by file offset.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from _support import (
    add_target,
    go_harness,
    member_pieces,
    record_ceiling,
    record_peer,
    run_ceiling,
    run_measured,
)
from test_bench_convert import LAYERS

import estargz
from estargz.toc import TOC


@pytest.fixture(scope="module")
def go_blobs() -> Iterator[dict[str, Path]]:
    with tempfile.TemporaryDirectory(prefix="estargz-bench-read-") as tmp:
        blobs = {}
        for name, layer in LAYERS.items():
            blob = Path(tmp) / f"{name}.esgz"
            subprocess.run(
                [str(go_harness()), "convert", "-workers", "2", str(layer), str(blob)],
                check=True,
                capture_output=True,
            )
            blobs[name] = blob
        yield blobs


def _file_bytes(blob: Path) -> int:
    with estargz.open_blob(blob) as opened:
        return int(opened.toc.chunks.size.sum())


@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("impl", ["ours", "go"])
def test_verify(
    benchmark: object, go_blobs: dict[str, Path], layer: str, impl: str
) -> None:
    blob = go_blobs[layer]
    group = f"verify-{layer}"
    benchmark.group = group  # type: ignore[attr-defined]
    if impl == "ours":
        command = [sys.executable, "-m", "estargz", "verify", str(blob), "--json"]
        add_target(group, "go", 2.0, "verify-all against Go's reader")
    else:
        command = [str(go_harness()), "verify", str(blob)]
    measured: dict[str, object] = {}

    def run() -> None:
        _, rss, out = run_measured(command)
        measured.update(json.loads(out), rss=rss)

    benchmark.pedantic(run, rounds=int(os.environ.get("ESTARGZ_BENCH_ROUNDS", "1")))  # type: ignore[attr-defined]
    benchmark.extra_info.update(
        impl=impl, bytes=_file_bytes(blob), peak_rss_kb=measured["rss"]
    )  # type: ignore[attr-defined]
    if impl == "ours":
        # The ceiling: zlib-ng alone inflating the same members on the same
        # two threads; the floor adds the chunk digests verify must check.
        add_target(group, "ceiling", 0.9, "zlib-ng alone, same members, same threads")
        add_target(group, "floor", 0.9, "zlib-ng plus the chunk digests")
        pieces, sizes = member_pieces(blob)
        for kind, c_mode in (("ceiling", "inflate"), ("floor", "inflate-sha")):
            reference = run_ceiling(
                c_mode, pieces, threads=2, rounds=3, uncompressed_sizes=sizes
            )
            record_ceiling(group, reference["seconds"], _file_bytes(blob), kind)


@pytest.mark.parametrize("layer", list(LAYERS))
def test_read_small_file(
    benchmark: object, go_blobs: dict[str, Path], layer: str
) -> None:
    blob = go_blobs[layer]
    group = f"read-small-{layer}"
    benchmark.group = group  # type: ignore[attr-defined]
    with estargz.open_blob(blob) as opened:
        small = next(
            e.name for e in opened.toc.entries if e.type == "reg" and 0 < e.size <= 4096
        )
        expected = opened.read(small)
        benchmark.extra_info.update(impl="ours", bytes=0, per_read=True)  # type: ignore[attr-defined]
        assert benchmark(opened.read, small) == expected  # type: ignore[operator]
    reads = 300
    out = subprocess.run(
        [str(go_harness()), "read-latency", "-n", str(reads), str(blob), small],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    record_peer(group, "go", json.loads(out)["secondsPerRead"], 0)
    add_target(group, "go", 1.0, "a small file's read latency, blob open")


def million_chunk_toc() -> bytes:
    """1000 files of 1000 chunks each, as a writer would list them."""
    digest = "sha256:" + "ab" * 32
    entries = []
    offset = 0
    for f in range(1000):
        size = 1000 * 4096
        for c in range(1000):
            offset += 1500
            base = {
                "offset": offset,
                "chunkOffset": c * 4096,
                "chunkSize": 4096,
                "chunkDigest": digest,
            }
            if c == 0:
                entry = {
                    "name": f"d/f{f:04d}",
                    "type": "reg",
                    "size": size,
                    "digest": digest,
                    **base,
                }
                del entry["chunkOffset"]
            else:
                entry = {"name": f"d/f{f:04d}", "type": "chunk", **base}
            entries.append(entry)
    return json.dumps({"version": 1, "entries": entries}, indent="\t").encode()


def test_toc_million(benchmark: object) -> None:
    data = million_chunk_toc()
    benchmark.group = "toc-million"  # type: ignore[attr-defined]
    tracemalloc.start()
    toc = TOC(data, 1 << 40)
    _, peak = tracemalloc.get_traced_memory()
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    chunks = len(toc.chunks)
    assert chunks == 1_000_000
    entry = toc.lookup("d/f0500")
    assert entry is not None
    row = toc.chunks.find(entry, 2_000_000)
    assert int(toc.chunks.file_offset[row]) == 2_000_000 // 4096 * 4096
    benchmark.extra_info.update(  # type: ignore[attr-defined]
        impl="ours",
        bytes=0,
        per_read=True,
        bytes_per_chunk=toc.chunks.nbytes / chunks,
        toc_json_bytes=len(data),
        python_bytes_after_parse=held,
        parse_peak_bytes=peak,
    )
    # A lookup by file offset: binary search in the file's slice of the index.
    benchmark(toc.chunks.find, entry, 2_000_000)  # type: ignore[operator]
