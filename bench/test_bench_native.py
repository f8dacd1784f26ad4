"""Primitives of the native core against the standard library and zlib-ng's
own Python binding, on real data: the Python standard library's ``.py`` files.

Groups (each reported as same-run ratios, see ``conftest.py``):

* ``member-<size>-L<level>``: gzip members of 1 KiB (512 per round), 64 KiB
  (32 per round) and 4 MiB (2 per round); ours reuses one deflate state,
  the bindings build one per call.  The C ceiling deflates the same pieces.
* ``inflate-<size>``: whole members inflated back.
* ``inner-offset``: 64 KiB read 2 MiB into a 4 MiB member.
* ``sha256-<size>``: ours against ``hashlib``.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable

import pytest
from _support import add_target, record_ceiling, run_ceiling, stdlib_corpus
from zlib_ng import zlib_ng

from estargz import _native

SHAPES = {"1KiB": (1 << 10, 512), "64KiB": (64 << 10, 32), "4MiB": (4 << 20, 2)}
LEVELS = [1, 6, 9]


@pytest.fixture(scope="module")
def corpus() -> bytes:
    return stdlib_corpus(12 << 20)


def pieces_of(corpus: bytes, shape: str) -> list[bytes]:
    size, count = SHAPES[shape]
    # Spread the pieces over the corpus so they are different files.
    stride = (len(corpus) - size) // count
    return [corpus[i * stride : i * stride + size] for i in range(count)]


def run_group(
    benchmark: object, impl: str, pieces: list[bytes], work: Callable[[bytes], object]
) -> None:
    def one_round() -> None:
        for piece in pieces:
            work(piece)

    benchmark.extra_info["impl"] = impl  # type: ignore[attr-defined]
    benchmark.extra_info["bytes"] = sum(len(p) for p in pieces)  # type: ignore[attr-defined]
    benchmark(one_round)  # type: ignore[operator]


IMPLS = ["ours", "zlib_ng", "zlib"]


@pytest.mark.parametrize("level", LEVELS, ids=lambda v: f"L{v}")
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("impl", IMPLS)
def test_member(
    benchmark: object, corpus: bytes, shape: str, level: int, impl: str
) -> None:
    group = f"member-{shape}-L{level}"
    benchmark.group = group  # type: ignore[attr-defined]
    pieces = pieces_of(corpus, shape)
    if impl == "ours":
        compressor = _native.MemberCompressor(level)
        work: Callable[[bytes], object] = compressor.compress
        ceiling = run_ceiling("deflate", pieces, level=level, threads=1)
        record_ceiling(group, ceiling["seconds"], int(ceiling["uncompressed_bytes"]))
        if shape == "1KiB":
            add_target(group, "zlib_ng", 1.0, "tiny members: no per-call setup")
        if shape == "4MiB":
            add_target(group, "zlib_ng", 0.95, "within 5%")
        add_target(group, "ceiling", 0.9)
    elif impl == "zlib_ng":
        work = lambda piece: zlib_ng.compress(piece, level, wbits=31)  # noqa: E731
    else:
        work = lambda piece: zlib.compress(piece, level, wbits=31)  # noqa: E731
    run_group(benchmark, impl, pieces, work)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("impl", IMPLS)
def test_inflate(benchmark: object, corpus: bytes, shape: str, impl: str) -> None:
    group = f"inflate-{shape}"
    benchmark.group = group  # type: ignore[attr-defined]
    originals = pieces_of(corpus, shape)
    compressor = _native.MemberCompressor(9)
    members = [compressor.compress(p) for p in originals]
    if impl == "ours":
        work: Callable[[bytes], object] = _native.inflate_member
        ceiling = run_ceiling(
            "inflate",
            members,
            threads=1,
            uncompressed_sizes=[len(p) for p in originals],
        )
        record_ceiling(group, ceiling["seconds"], int(ceiling["uncompressed_bytes"]))
        add_target(group, "ceiling", 0.9)
    elif impl == "zlib_ng":
        work = lambda member: zlib_ng.decompress(member, wbits=31)  # noqa: E731
    else:
        work = lambda member: zlib.decompress(member, wbits=31)  # noqa: E731
    benchmark.extra_info["impl"] = impl  # type: ignore[attr-defined]
    benchmark.extra_info["bytes"] = sum(len(p) for p in originals)  # type: ignore[attr-defined]

    def one_round() -> None:
        for member in members:
            work(member)

    benchmark(one_round)  # type: ignore[operator]


SKIP = 2 << 20
TAKE = 64 << 10


@pytest.mark.parametrize("impl", IMPLS)
def test_inner_offset(benchmark: object, corpus: bytes, impl: str) -> None:
    benchmark.group = "inner-offset"  # type: ignore[attr-defined]
    member = _native.MemberCompressor(9).compress(corpus[: 4 << 20])
    expected = corpus[SKIP : SKIP + TAKE]

    if impl == "ours":

        def read() -> bytes:
            return _native.inflate_member(member, skip=SKIP, size=TAKE)

    else:
        module = zlib_ng if impl == "zlib_ng" else zlib

        def read() -> bytes:
            inflater = module.decompressobj(31)
            return inflater.decompress(member, SKIP + TAKE)[SKIP:]

    assert read() == expected
    benchmark.extra_info["impl"] = impl  # type: ignore[attr-defined]
    benchmark.extra_info["bytes"] = SKIP + TAKE  # type: ignore[attr-defined]
    benchmark(read)  # type: ignore[operator]


@pytest.mark.parametrize("shape", ["1KiB", "4MiB"])
@pytest.mark.parametrize("impl", ["ours", "hashlib"])
def test_sha256(benchmark: object, corpus: bytes, shape: str, impl: str) -> None:
    group = f"sha256-{shape}"
    benchmark.group = group  # type: ignore[attr-defined]
    pieces = pieces_of(corpus, shape)
    if impl == "ours":
        add_target(group, "hashlib", 1.0, "at least hashlib's speed")
        work: Callable[[bytes], object] = lambda p: _native.Sha256(p).digest()  # noqa: E731
    else:
        work = lambda p: hashlib.sha256(p).digest()  # noqa: E731
    run_group(benchmark, impl, pieces, work)
