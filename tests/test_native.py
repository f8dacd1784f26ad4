"""The native core: gzip members, segments, inflate at an offset, SHA-256.

The standard library (gzip, zlib, hashlib) is the oracle throughout.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import threading
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

import estargz
from estargz import _native

LEVELS = list(range(10))

# Data that compresses somewhat, like real files: runs of words from a small
# vocabulary mixed with random bytes.
compressible = st.lists(
    st.one_of(
        st.sampled_from([b"estargz ", b"chunk ", b"\x00" * 64, b"member\n", b"toc"]),
        st.binary(max_size=40),
    ),
    max_size=400,
).map(b"".join)
payloads = st.one_of(st.binary(max_size=5000), compressible)


def member_of(data: bytes, level: int = 6) -> bytes:
    return _native.MemberCompressor(level).compress(data)


# -- version and build -------------------------------------------------------


def test_zlib_ng_version_is_2_3() -> None:
    assert estargz.zlib_ng_version().startswith("2.3.")


def test_sha256_uses_cpu_instructions_when_present() -> None:
    with open("/proc/cpuinfo") as f:
        flags = f.read()
    expected = {"sha_ni": "x86-sha", " sha2": "armv8-sha2"}
    for flag, name in expected.items():
        if flag in flags:
            assert estargz.sha256_implementation() == name
            return
    assert estargz.sha256_implementation() == "portable"


# -- whole members -----------------------------------------------------------


@given(data=payloads, level=st.sampled_from(LEVELS))
def test_member_round_trips_through_gzip_module(data: bytes, level: int) -> None:
    member = member_of(data, level)
    assert gzip.decompress(member) == data
    assert _native.inflate_member(member) == data


@pytest.mark.parametrize("level", LEVELS)
def test_member_header_is_reproducible(level: int) -> None:
    member = member_of(b"payload", level)
    xfl = 2 if level == 9 else 4 if level < 2 else 0
    assert member[:10] == bytes([0x1F, 0x8B, 8, 0, 0, 0, 0, 0, xfl, 0xFF])
    assert member[:10] == _native.gzip_header(level)
    assert member == member_of(b"payload", level)


def test_one_compressor_serves_thousands_of_members(rng: random.Random) -> None:
    compressor = _native.MemberCompressor(9)
    pieces = [
        rng.randbytes(rng.randrange(0, 300)) * rng.randrange(1, 4) for _ in range(2000)
    ]
    members = [compressor.compress(p) for p in pieces]
    assert [gzip.decompress(m) for m in members] == pieces
    # Reset, not carried state: the same input gives the same member again.
    assert compressor.compress(pieces[7]) == members[7]


def prose(rng: random.Random, size: int) -> bytes:
    """Text from a small vocabulary: many long-distance matches, as in
    source files."""
    words = [
        bytes(rng.choices(b"abcdefghij", k=rng.randint(2, 9))) for _ in range(3000)
    ]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + (b"\n" if rng.random() < 0.1 else b" ")
    return bytes(out[:size])


def test_earlier_work_never_shapes_the_output(rng: random.Random) -> None:
    """A state that compressed something else first gives the same bytes as a
    fresh one, also on the paths that sync-flush mid-member and carry on
    (min-chunk grouping, continuations, primed segments, MemberWriter.flush):
    zlib-ng's reset keeps old window bytes that such streams can read."""
    import array

    def layer(comp: _native.MemberCompressor, data: bytes, begin: int = 0) -> bytes:
        ends = array.array("Q", [*range(begin + 1000, len(data), 1000), len(data)])
        kinds = bytes(
            [_native.KIND_CONTINUATION if begin else _native.KIND_START]
            + [_native.KIND_CHUNK] * (len(ends) - 1)
        )
        return comp.compress_layer(data, begin, ends, kinds, 20000, begin == 0)[0]

    def written(writer: _native.MemberWriter, data: bytes) -> bytes:
        out = b"".join(
            writer.write(data[i : i + 700]) + writer.flush()
            for i in range(0, len(data), 700)
        )
        return out + writer.finish()

    for _ in range(6):
        data, other = prose(rng, 1 << 19), prose(rng, 1 << 19)
        used = _native.MemberCompressor(9)
        layer(used, other)
        assert layer(used, data) == layer(_native.MemberCompressor(9), data)
        layer(used, other, 40000)
        assert layer(used, data, 40000) == layer(
            _native.MemberCompressor(9), data, 40000
        )
        used.compress_segment(other, dictionary=other[:50000])
        assert used.compress_segment(
            data[50000:], dictionary=data[:50000]
        ) == _native.MemberCompressor(9).compress_segment(
            data[50000:], dictionary=data[:50000]
        )
        writer = _native.MemberWriter(9)
        written(writer, other)
        assert written(writer, data) == written(_native.MemberWriter(9), data)


@pytest.mark.parametrize("room", [0, 100, 1 << 20])
@pytest.mark.parametrize("min_chunk", [0, 3000])
def test_framed_layer_batches_are_gzip_members_in_place(
    rng: random.Random, room: int, min_chunk: int
) -> None:
    """With ``framed`` the pieces carry their gzip headers and room for the
    trailers; in ``into`` when they fit (else as bytes, even when they
    outgrow it midway), the same bytes either way."""
    import array

    data = prose(rng, 200_000) + rng.randbytes(50_000)
    ends = array.array("Q", [*range(1000, len(data), 1000), len(data)])
    kinds = bytes([_native.KIND_START] + [_native.KIND_CHUNK] * (len(ends) - 1))
    plain = _native.MemberCompressor(6).compress_layer(
        data, 0, ends, kinds, min_chunk, False
    )
    into = _native.uninitialised_bytearray(room)
    compressed, raw_pieces, _, _ = _native.MemberCompressor(6).compress_layer(
        data, 0, ends, kinds, min_chunk, False, None, into, framed=True
    )
    # The same members as unframed, each 18 bytes longer.
    unframed = memoryview(plain[1]).cast("Q")
    assert len(raw_pieces) == len(plain[1])
    framed = memoryview(raw_pieces).cast("Q")
    for p in range(len(framed) // 4):
        assert framed[4 * p + 1 : 4 * p + 4] == unframed[4 * p + 1 : 4 * p + 4]
        assert framed[4 * p] == unframed[4 * p] + 18 * (p + 1)
    assert isinstance(compressed, memoryview) == (room >= len(compressed))
    if isinstance(compressed, memoryview):
        assert compressed.obj is into
    out = bytearray(compressed)
    pieces = memoryview(raw_pieces).cast("Q")
    previous = 0
    members = []
    for p in range(len(pieces) // 4):
        end, usize, crc, flags = pieces[4 * p : 4 * p + 4]
        assert flags == 3  # each piece is a whole member here
        assert out[previous : previous + 10] == _native.gzip_header(6)
        assert out[end - 8 : end] == bytes(8)
        out[end - 8 : end] = _native.gzip_trailer(crc, usize)
        members.append(bytes(out[previous:end]))
        previous = end
    assert previous == len(out)
    assert gzip.decompress(bytes(out)) == data
    if min_chunk:
        assert 1 < len(members) < len(ends)
    else:
        assert len(members) == len(ends)


def test_level_is_checked() -> None:
    with pytest.raises(ValueError, match="compression level must be 0-9, got 10"):
        _native.MemberCompressor(10)
    with pytest.raises(ValueError, match="got -1"):
        _native.MemberWriter(-1)


def test_buffers_of_any_kind_are_accepted() -> None:
    data = b"buffer protocol " * 100
    for buffer in (data, bytearray(data), memoryview(data)):
        assert gzip.decompress(member_of(buffer)) == data  # type: ignore[arg-type]


# -- streaming writer --------------------------------------------------------


@given(parts=st.lists(payloads, max_size=8), level=st.sampled_from(LEVELS))
def test_member_writer_streams_one_member(parts: list[bytes], level: int) -> None:
    writer = _native.MemberWriter(level)
    out = bytearray()
    written = 0
    for part in parts:
        out += writer.write(part)
        written += len(part)
        assert writer.uncompressed_size == written
    out += writer.flush()
    produced = writer.compressed_size
    assert produced == len(out)
    out += writer.finish()
    assert gzip.decompress(bytes(out)) == b"".join(parts)
    assert writer.compressed_size == 0 and writer.uncompressed_size == 0


def test_member_writer_counts_and_restarts() -> None:
    writer = _native.MemberWriter(9)
    first = writer.write(b"a" * 1000)
    assert writer.uncompressed_size == 1000
    assert writer.compressed_size == len(first)
    first += writer.finish()
    second = writer.write(b"b" * 10) + writer.finish()
    assert gzip.decompress(first + second) == b"a" * 1000 + b"b" * 10


# -- segments joined into one member ------------------------------------------


def join(
    segments: list[tuple[bytes, int]],
    lengths: list[int],
    level: int,
    closed: bool = False,
) -> bytes:
    crc = 0
    for (_, part_crc), length in zip(segments, lengths):
        crc = estargz.crc32_combine(crc, part_crc, length)
    body = b"".join(seg for seg, _ in segments)
    tail = b"" if closed else _native.FINAL_EMPTY_BLOCK
    return (
        _native.gzip_header(level)
        + body
        + tail
        + _native.gzip_trailer(crc, sum(lengths))
    )


@given(parts=st.lists(payloads, min_size=1, max_size=6), level=st.sampled_from(LEVELS))
def test_segments_from_many_threads_form_one_member(
    parts: list[bytes], level: int
) -> None:
    # Each segment on its own compressor, as worker threads would do it.
    segments = [_native.MemberCompressor(level).compress_segment(p) for p in parts]
    for (_, crc), part in zip(segments, parts):
        assert crc == zlib.crc32(part)
    member = join(segments, [len(p) for p in parts], level)
    assert gzip.decompress(member) == b"".join(parts)


@given(parts=st.lists(payloads, min_size=1, max_size=6), level=st.sampled_from(LEVELS))
def test_last_segment_may_close_the_member(parts: list[bytes], level: int) -> None:
    compressor = _native.MemberCompressor(level)
    segments = [compressor.compress_segment(p) for p in parts[:-1]]
    segments.append(compressor.compress_segment(parts[-1], last=True))
    member = join(segments, [len(p) for p in parts], level, closed=True)
    assert gzip.decompress(member) == b"".join(parts)


@given(
    parts=st.lists(compressible, min_size=2, max_size=5), level=st.sampled_from(LEVELS)
)
def test_segments_primed_with_the_previous_bytes(
    parts: list[bytes], level: int
) -> None:
    compressor = _native.MemberCompressor(level)
    segments = []
    seen = b""
    for part in parts:
        segments.append(compressor.compress_segment(part, dictionary=seen or None))
        seen += part
    member = join(segments, [len(p) for p in parts], level)
    assert gzip.decompress(member) == seen


def test_priming_shrinks_repetitive_segments() -> None:
    text = b"the same sentence over and over. " * 200
    compressor = _native.MemberCompressor(9)
    plain, _ = compressor.compress_segment(text)
    primed, _ = compressor.compress_segment(text, dictionary=text)
    assert len(primed) < len(plain)


def test_crc32_matches_zlib(rng: random.Random) -> None:
    data = rng.randbytes(100_000)
    assert estargz.crc32(data) == zlib.crc32(data)
    assert estargz.crc32(data[500:], estargz.crc32(data[:500])) == zlib.crc32(data)
    assert estargz.crc32(b"", 12345) == 12345
    a, b = data[:777], data[777:]
    combined = estargz.crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b))
    assert combined == zlib.crc32(data)
    with pytest.raises(ValueError, match="must not be negative"):
        estargz.crc32_combine(1, 2, -1)


# -- inflate at an offset ----------------------------------------------------


@given(
    prefix=st.binary(max_size=50),
    data=payloads,
    level=st.sampled_from(LEVELS),
    cut=st.data(),
)
def test_inflate_at_inner_offset_equals_slicing(
    prefix: bytes, data: bytes, level: int, cut: st.DataObject
) -> None:
    blob = prefix + member_of(data, level) + b"trailing bytes"
    skip = cut.draw(st.integers(0, len(data)))
    size = cut.draw(st.integers(0, len(data) - skip))
    got = _native.inflate_member(blob, offset=len(prefix), skip=skip, size=size)
    assert got == data[skip : skip + size]
    rest = _native.inflate_member(blob, offset=len(prefix), skip=skip)
    assert rest == data[skip:]


def test_inflate_member_reads_only_its_member() -> None:
    blob = member_of(b"first") + member_of(b"second")
    assert _native.inflate_member(blob) == b"first"
    assert _native.inflate_member(blob, offset=len(member_of(b"first"))) == b"second"


def test_inflate_short_member_is_located() -> None:
    member = member_of(b"x" * 1000)
    with pytest.raises(
        estargz.NativeError,
        match=r"gzip member at offset 0 ends before uncompressed byte 1001 "
        r"\(skip 999, size 2\)",
    ):
        _native.inflate_member(member, skip=999, size=2)
    with pytest.raises(estargz.NativeError, match="ends before uncompressed byte 1001"):
        _native.inflate_member(member, skip=1001)


def test_inflate_truncated_member_names_the_offset() -> None:
    member = member_of(bytes(range(256)) * 40)
    cut = member[: len(member) // 2]
    with pytest.raises(
        estargz.NativeError, match="truncated at compressed offset"
    ) as info:
        _native.inflate_member(cut)
    assert 0 < info.value.offset <= len(cut)
    with pytest.raises(estargz.NativeError, match="truncated"):
        _native.inflate_member(cut, size=5000)


def test_inflate_corrupt_member_names_the_offset(rng: random.Random) -> None:
    data = rng.randbytes(5000)
    member = bytearray(member_of(data))
    member[-6] ^= 0xFF  # inside the CRC-32 of the trailer
    with pytest.raises(
        estargz.NativeError, match=r"incorrect data check.*offset"
    ) as info:
        _native.inflate_member(bytes(member))
    assert info.value.code == -3  # Z_DATA_ERROR
    with pytest.raises(
        estargz.NativeError, match="no gzip member starts at compressed offset 3"
    ):
        _native.inflate_member(b"abcdef", offset=3)


def test_output_cap_holds_against_a_bomb() -> None:
    bomb = member_of(bytes(50 << 20), 9)  # 50 MiB of zeros in ~50 KB
    assert len(bomb) < 100_000
    with pytest.raises(estargz.NativeError, match="more than the cap of 1048576 bytes"):
        _native.inflate_member(bomb, max_output=1 << 20)
    with pytest.raises(estargz.NativeError, match="more than the cap of 1048576"):
        _native.inflate_stream(bomb, max_output=1 << 20)
    with pytest.raises(estargz.NativeError, match="more than the cap"):
        _native.inflate_member(bomb, size=2 << 20, max_output=1 << 20)
    # Reading a bounded range inside it stays cheap and allowed.
    assert _native.inflate_member(bomb, skip=40 << 20, size=10) == bytes(10)


def test_inflate_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="outside the 3-byte buffer"):
        _native.inflate_member(b"abc", offset=4)
    with pytest.raises(ValueError, match="skip must not be negative"):
        _native.inflate_member(member_of(b"a"), skip=-1)


# -- multi-member streams ----------------------------------------------------


@given(
    parts=st.lists(payloads, max_size=6),
    block=st.sampled_from([64, 100, 4096, 1 << 18]),
)
def test_gzip_reader_walks_members(parts: list[bytes], block: int) -> None:
    members = [member_of(p) for p in parts]
    stream = b"".join(members)
    reader = _native.GzipReader(io.BytesIO(stream), block_size=block)
    starts = []
    out = bytearray()
    buffer = bytearray(777)
    while True:
        n = reader.readinto(buffer)
        if not n:
            break
        starts.append(reader.member_offset)
        out += buffer[:n]
    assert bytes(out) == b"".join(parts)
    assert reader.members == len(parts)
    expected_starts = []
    position = 0
    for member, part in zip(members, parts):
        if part:
            expected_starts.append(position)
        position += len(member)
    assert sorted(set(starts)) == expected_starts
    assert _native.inflate_stream(stream) == b"".join(parts)
    assert gzip.decompress(stream) == b"".join(parts)


def test_gzip_reader_tolerates_nul_padding_only() -> None:
    stream = member_of(b"one") + member_of(b"two")
    assert _native.inflate_stream(stream + bytes(100)) == b"onetwo"
    with pytest.raises(
        estargz.NativeError,
        match=f"no gzip member starts at compressed offset {len(stream) + 2}",
    ):
        _native.inflate_stream(stream + b"\0\0junk")
    with pytest.raises(estargz.NativeError, match="truncated"):
        _native.inflate_stream(stream[:-3])


@pytest.mark.parametrize("block", [64, 100, 1 << 18])
def test_nul_padding_holds_only_nuls_to_the_end_whatever_the_blocks(
    block: int,
) -> None:
    # The NULs end exactly on a read-block boundary, then a member follows:
    # still refused, as gzip(1) would.
    one = member_of(b"one")
    pad = bytes(max(1, block - len(one)))
    stream = one + pad + member_of(b"two")
    reader = _native.GzipReader(io.BytesIO(stream), block_size=block)
    with pytest.raises(
        estargz.NativeError,
        match=f"no gzip member starts at compressed offset {len(one) + len(pad)}",
    ):
        reader.read()


def test_gzip_reader_can_refuse_nul_padding() -> None:
    stream = member_of(b"one") + member_of(b"two")
    strict = _native.GzipReader(io.BytesIO(stream), allow_padding=False)
    assert strict.read() == b"onetwo"
    padded = _native.GzipReader(io.BytesIO(stream + bytes(8)), allow_padding=False)
    with pytest.raises(
        estargz.NativeError,
        match=f"no gzip member starts at compressed offset {len(stream)}",
    ):
        padded.read()


def test_gzip_reader_reports_offsets_with_a_base() -> None:
    stream = member_of(b"a" * 10) + member_of(b"b" * 10)
    reader = _native.GzipReader(io.BytesIO(stream), offset=1000)
    assert reader.read(100) == b"a" * 10
    assert reader.at_member_end
    assert reader.read(100) == b"b" * 10
    assert reader.member_offset == 1000 + len(member_of(b"a" * 10))
    assert reader.read(100) == b""
    assert reader.compressed_offset == 1000 + len(stream)


def test_gzip_reader_accepts_read_only_sources() -> None:
    class ReadOnly:
        def __init__(self, data: bytes) -> None:
            self.io = io.BytesIO(data)

        def read(self, n: int = -1) -> bytes:
            return self.io.read(min(n, 7))

    reader = _native.GzipReader(ReadOnly(member_of(b"slow source" * 30)))
    assert reader.read() == b"slow source" * 30


# -- SHA-256 -----------------------------------------------------------------

# FIPS 180-2 appendix B and the NIST CAVS short-message vectors.
NIST_VECTORS = [
    (b"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    (b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
    (
        b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
    ),
    (
        b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmno"
        b"ijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
        "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1",
    ),
    (
        b"a" * 1_000_000,
        "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
    ),
]


@pytest.mark.parametrize("portable", [False, True], ids=["cpu", "portable"])
@pytest.mark.parametrize(
    "message,expected",
    NIST_VECTORS,
    ids=lambda v: str(len(v)) if isinstance(v, bytes) else None,
)
def test_sha256_nist_vectors(message: bytes, expected: str, portable: bool) -> None:
    _native._force_portable_sha256(portable)
    try:
        assert estargz.Sha256(message).hexdigest() == expected
    finally:
        _native._force_portable_sha256(False)


@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(0, 3000), max_size=6))
def test_sha256_incremental_equals_hashlib(data: bytes, cuts: list[int]) -> None:
    ours = estargz.Sha256()
    start = 0
    for cut in sorted(c for c in cuts if c <= len(data)):
        ours.update(data[start:cut])
        start = cut
    ours.update(data[start:])
    assert ours.digest() == hashlib.sha256(data).digest()
    assert ours.length == len(data)


def test_sha256_large_random_data(rng: random.Random) -> None:
    data = rng.randbytes(8 << 20)
    assert estargz.Sha256(data).digest() == hashlib.sha256(data).digest()
    _native._force_portable_sha256(True)
    try:
        assert (
            estargz.Sha256(data[: 1 << 20]).digest()
            == hashlib.sha256(data[: 1 << 20]).digest()
        )
    finally:
        _native._force_portable_sha256(False)


def test_sha256_copy_and_continue() -> None:
    first = estargz.Sha256(b"abc")
    second = first.copy()
    second.update(b"def")
    assert first.hexdigest() == hashlib.sha256(b"abc").hexdigest()
    assert second.hexdigest() == hashlib.sha256(b"abcdef").hexdigest()
    assert first.digest() == first.digest()  # digest does not finalize
    assert (first.name, first.digest_size, first.block_size) == ("sha256", 32, 64)


# -- threads -----------------------------------------------------------------


@pytest.mark.timeout(120)
def test_many_threads_compress_and_hash_in_parallel(rng: random.Random) -> None:
    pieces = [rng.randbytes(rng.randrange(1, 200_000)) for _ in range(48)]
    expected = [member_of(p, 6) for p in pieces]
    results: dict[int, tuple[bytes, bytes]] = {}
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            compressor = _native.MemberCompressor(6)
            for i in range(worker, len(pieces), 16):
                results[i] = (
                    compressor.compress(pieces[i]),
                    estargz.Sha256(pieces[i]).digest(),
                )
        except BaseException as exc:  # re-raised in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, piece in enumerate(pieces):
        assert results[i] == (expected[i], hashlib.sha256(piece).digest())


@pytest.mark.timeout(120)
def test_sharing_one_object_between_threads_is_refused() -> None:
    shared = estargz.Sha256()
    big = bytes(256 << 20)
    barrier = threading.Barrier(2)
    refused: list[str] = []

    def hash_big() -> None:
        barrier.wait()
        try:
            shared.update(big)
        except RuntimeError as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=hash_big) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert refused == ["this object is in use by another thread"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["compressor", "writer", "digest", "copy"])
def test_an_object_in_use_cannot_be_reset_or_read(kind: str) -> None:
    """Re-running __init__, digest() or copy() while another thread works on
    the object raises instead of freeing or reading state under it."""
    big = bytes(128 << 20)
    obj: object
    if kind == "compressor":
        obj = _native.MemberCompressor(1)
        work, poke = (lambda: obj.compress(big)), (lambda: obj.__init__(1))  # type: ignore[attr-defined,misc]
    elif kind == "writer":
        obj = _native.MemberWriter(1)
        work, poke = (lambda: obj.write(big)), (lambda: obj.__init__(1))  # type: ignore[attr-defined,misc]
    else:
        obj = _native.Sha256()
        work = lambda: obj.update(big)  # type: ignore[attr-defined]  # noqa: E731
        poke = (lambda: obj.digest()) if kind == "digest" else (lambda: obj.copy())  # type: ignore[attr-defined]
    started = threading.Event()
    done = threading.Event()

    def run() -> None:
        started.set()
        work()
        done.set()

    thread = threading.Thread(target=run)
    thread.start()
    started.wait()
    refused = 0
    while not done.is_set():
        try:
            poke()
        except RuntimeError as exc:
            assert "in use by another thread" in str(exc)
            refused += 1
    thread.join()
    assert refused  # the work lasts long enough to be caught busy


def test_none_is_not_an_empty_buffer() -> None:
    import array

    member = member_of(b"abc")
    calls = [
        lambda: _native.MemberCompressor(6).compress(None),  # type: ignore[arg-type]
        lambda: _native.MemberCompressor(6).compress_segment(None),  # type: ignore[arg-type]
        lambda: _native.MemberCompressor(6).compress_layer(
            None, 0, array.array("Q"), b"", 0, False
        ),  # type: ignore[arg-type]
        lambda: _native.MemberWriter(6).write(None),  # type: ignore[arg-type]
        lambda: _native.crc32(None),  # type: ignore[arg-type]
        lambda: _native.inflate_member(None),  # type: ignore[arg-type]
        lambda: _native.inflate_stream(None),  # type: ignore[arg-type]
        lambda: _native.Sha256().update(None),  # type: ignore[arg-type]
        lambda: _native.Sha256().update_with(None, b"abc"),  # type: ignore[arg-type]
        lambda: _native.GzipReader(io.BytesIO(member)).readinto(None),
    ]
    for call in calls:
        with pytest.raises(TypeError):
            call()


def test_inflate_arguments_are_checked() -> None:
    member = member_of(b"abc" * 100)
    with pytest.raises(ValueError, match="size must be -1"):
        _native.inflate_member(member, size=-2)
    with pytest.raises(ValueError, match="max_output must not be negative"):
        _native.inflate_stream(member, max_output=-5)
    assert _native.inflate_stream(member, max_output=2**63 - 1) == b"abc" * 100


def test_a_claimed_size_does_not_allocate_memory() -> None:
    # A TOC may claim a chunk of a terabyte; memory follows what the member
    # really holds.
    member = member_of(b"x" * 5000)
    with pytest.raises(estargz.NativeError, match="ends before uncompressed byte"):
        _native.inflate_member(member, size=2**40, max_output=2**40)
    big = bytes(range(256)) * 40_000  # 10 MiB: the growing path
    assert _native.inflate_member(member_of(big), skip=7, size=len(big) - 7) == big[7:]
    with pytest.raises(estargz.NativeError, match="ends before uncompressed byte"):
        _native.inflate_member(member_of(big), skip=7, size=len(big))


def test_gzip_reader_refuses_a_source_that_lies_about_its_count() -> None:
    member = member_of(bytes(1000))

    class Liar(io.RawIOBase):
        def readinto(self, buffer: object) -> int:
            memoryview(buffer)[:15] = member[:15]  # type: ignore[call-overload]
            return 1 << 30

    with pytest.raises(ValueError, match="readinto returned 1073741824"):
        _native.GzipReader(Liar()).read()

    class Greedy:
        def read(self, size: int) -> bytes:
            return bytes(size + 10)

    with pytest.raises(ValueError, match="bytes, .* were asked for"):
        _native.GzipReader(Greedy()).read()


# -- tar header numbers --------------------------------------------------------

_FIELD_BYTES = st.sampled_from([*b"01234567 \x00", ord("8"), ord("x"), 0x80, 0xFF])


@given(
    fields=st.lists(
        st.lists(_FIELD_BYTES, min_size=12, max_size=12), min_size=8, max_size=8
    ),
    rest=st.binary(min_size=512, max_size=512),
)
def test_tar_header_numbers_agree_with_the_python_reader(
    fields: list[list[int]], rest: bytes
) -> None:
    """Each field parsed natively equals the reader's own parse, or is None
    exactly where that parse is not plain octal (base-256 or an error)."""
    from estargz._tar import ByteSource, TarReader

    block = bytearray(rest)
    places = [(124, 12), (100, 8), (108, 8), (116, 8), (136, 12), (329, 8), (337, 8)]
    places.append((148, 8))
    for (start, length), field in zip(places, fields):
        block[start : start + length] = bytes(field[:length])
    numbers = _native.tar_header_numbers(bytes(block))
    reader = TarReader(ByteSource(io.BytesIO(b"")))
    for (start, length), found in zip(places, numbers):
        field = bytes(block[start : start + length])
        try:
            expected = reader._numeric(field, "field", 0)
        except estargz.EStargzError:
            assert found is None
            continue
        if field[0] & 0x80:
            assert found is None
        else:
            assert found == expected
    unsigned = sum(block) - sum(block[148:156]) + 256
    signed = unsigned - 256 * sum(b >= 0x80 for b in block)
    signed += 256 * sum(b >= 0x80 for b in block[148:156])
    assert numbers[8:] == (unsigned, signed)
    with pytest.raises(ValueError, match="512 bytes"):
        _native.tar_header_numbers(bytes(511))
