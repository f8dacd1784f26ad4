"""The layer writer: every mode, every tricky input, read back and checked.

The checks use the standard library (gzip, tarfile, json) as the oracle for
what the blob holds, and estargz's own reader for chunk-level verification;
tests/test_interop.py adds Go stargz.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    GO_BLOBS,
    MALFORMED,
    convertible_tars,
    make_tar,
    members,
    plain_tar,
    sha256,
    tar_files,
    toc_of,
    tricky_tars,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import estargz
from estargz import writer
from estargz.reader import open_blob

MODES: dict[str, dict[str, Any]] = {
    "default": {},
    "level1": {"compression_level": 1},
    "chunk1000": {"chunk_size": 1000},
    "min-chunk": {"min_chunk_size": 4096},
    "external-toc": {"external": True},
    "keep-diff-id": {"external": True, "keep_diff_id": True},
    "keep-diff-id-min-chunk": {
        "external": True,
        "keep_diff_id": True,
        "min_chunk_size": 4096,
    },
}


def convert(
    source: Any, tmp_path: Path, name: str = "out", **options: Any
) -> tuple[Path, Any, Path | None]:
    external = options.pop("external", False)
    out = tmp_path / f"{name}.esgz"
    toc = tmp_path / f"{name}.toc.tar.gz" if external else None
    result = writer.convert(source, out, external_toc=toc, **options)
    return out, result, toc


def check_blob(
    blob_path: Path, toc_path: Path | None, source_tar: bytes, result: Any
) -> None:
    """Everything a converted blob must satisfy, checked independently."""
    blob = blob_path.read_bytes()
    external = toc_path.read_bytes() if toc_path else None
    # Reported digests and sizes are those of the bytes written.
    assert result.blob_digest == sha256(blob)
    assert result.blob_size == len(blob)
    uncompressed = gzip.decompress(blob)
    assert result.diff_id == sha256(uncompressed)
    assert result.uncompressed_size == len(uncompressed)
    toc = toc_of(blob, external)
    toc_json = (
        tarfile.open(fileobj=io.BytesIO(gzip.decompress(external)))
        .extractfile("stargz.index.json")
        .read()  # type: ignore[union-attr]
        if external
        else None
    )
    if external:
        assert result.external_toc_digest == sha256(external)
        assert result.external_toc_size == len(external)
        assert blob[-46:] == bytes.fromhex(
            "1f8b08040000000000ff1500534711005354415247"
            "5a45585445524e414c544f43010000ffff0000000000000000"
        )
        assert result.toc_digest == sha256(toc_json)  # type: ignore[arg-type]
    # The files read back through our reader (chunks verified) equal the
    # files tarfile finds in the input (later duplicates win).
    with open_blob(blob_path, external_toc=toc_path) as opened:
        assert opened.toc_digest == result.toc_digest
        expected_files = tar_files(source_tar)
        for name, content in expected_files.items():
            entry = opened.toc.lookup(name)
            if entry is None or entry.type != "reg":
                continue
            assert opened.read(name) == content, name
        opened.verify(result.toc_digest)
    assert toc["version"] == 1


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("path", convertible_tars(), ids=lambda p: p.name)
def test_every_tricky_tar_in_every_mode(path: Path, mode: str, tmp_path: Path) -> None:
    options = dict(MODES[mode])
    if (
        options.get("keep_diff_id")
        and b"stargz.index.json" in plain_tar(path)
        and "name-stargz" in path.name
    ):
        with pytest.raises(
            estargz.InputError,
            match=r"'stargz.index.json' at offset \d+: .*keep-diff-id",
        ):
            convert(path, tmp_path, **options)
        assert not list(tmp_path.iterdir())
        return
    out, result, toc = convert(path, tmp_path, **options)
    source = plain_tar(path)
    check_blob(out, toc, source, result)
    if options.get("keep_diff_id"):
        # Lossless: the uncompressed blob is the input tar, byte for byte.
        assert gzip.decompress(out.read_bytes()) == source
        assert result.diff_id == sha256(source)


@pytest.mark.parametrize("mode", list(MODES))
def test_output_is_the_same_for_any_thread_count(mode: str, tmp_path: Path) -> None:
    source = GO_BLOBS / "input.tar"
    runs = []
    for threads in (1, 2, 3, 8):
        options = {"chunk_size": 65536, **MODES[mode]}
        out, result, toc = convert(
            source, tmp_path, f"t{threads}", threads=threads, **options
        )
        runs.append((out.read_bytes(), toc.read_bytes() if toc else None, result))
    first = runs[0]
    for other in runs[1:]:
        assert other[0] == first[0]
        assert other[1] == first[1]
        assert other[2] == first[2]


def test_large_layer_is_reproducible_across_threads(tmp_path: Path, rng: Any) -> None:
    # Enough data for many batches, big files split into segments, and a
    # member carried over batches in min-chunk mode.
    files = [
        (
            f"dir{i % 7}/file{i}",
            rng.randbytes(rng.randrange(0, 40_000)) * rng.randrange(1, 3),
        )
        for i in range(300)
    ]
    files.append(("big/one", rng.randbytes(3_000_000) + bytes(2_000_000)))
    files.append(("big/two", bytes(range(256)) * 40_000))
    source = make_tar(files)
    layer = tmp_path / "layer.tar"
    layer.write_bytes(source)
    for options in (
        {},
        {"min_chunk_size": 50_000},
        {"chunk_size": 10 << 20},
        {"compression_level": 1},
    ):
        blobs = set()
        for threads in (1, 2, 5):
            out, result, _ = convert(
                layer, tmp_path, f"big{threads}", threads=threads, **options
            )
            blobs.add(out.read_bytes())
        assert len(blobs) == 1, options
        check_blob(out, None, source, result)


def test_text_layer_with_small_chunks_is_reproducible(tmp_path: Path, rng: Any) -> None:
    # Compressible text, many chunk boundaries inside members: the case where
    # a reused deflate state once leaked into the output.
    words = [
        bytes(rng.choices(b"abcdefghij", k=rng.randint(2, 9))) for _ in range(3000)
    ]

    def text(size: int) -> bytes:
        return b" ".join(rng.choice(words) for _ in range(size // 6))[:size]

    files = [(f"src/f{i}.txt", text(rng.randrange(1000, 60_000))) for i in range(120)]
    source = make_tar(files)
    layer = tmp_path / "layer.tar"
    layer.write_bytes(source)
    for options in (
        {"chunk_size": 1000, "min_chunk_size": 20_000},
        {"chunk_size": 3000, "min_chunk_size": 40_000, "compression_level": 1},
    ):
        blobs = set()
        for threads in (1, 2, 3, 2, 3):
            out, result, _ = convert(
                layer, tmp_path, f"txt{threads}", threads=threads, **options
            )
            blobs.add(out.read_bytes())
        assert len(blobs) == 1, options
        check_blob(out, None, source, result)


def test_matches_the_go_reference_toc(tmp_path: Path) -> None:
    """For Go's own test input, every mode gives Go's TOC but for offsets."""
    expected = json.loads((GO_BLOBS / "expected.json").read_text())
    cases = {
        "default.esgz": ({}, None),
        "min-chunk.esgz": ({"min_chunk_size": 16384}, None),
        "prioritized.esgz": (
            {"prioritized_files": ["usr/bin/sh", "usr/share/words.txt"]},
            None,
        ),
        "external-toc.esgz": ({"external": True}, "external-toc.toc.tar.gz"),
        "keep-diff-id.esgz": (
            {"external": True, "keep_diff_id": True},
            "keep-diff-id.toc.tar.gz",
        ),
        "keep-diff-id-min-chunk.esgz": (
            {"external": True, "keep_diff_id": True, "min_chunk_size": 16384},
            "keep-diff-id-min-chunk.toc.tar.gz",
        ),
    }

    def without_offsets(toc: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {k: v for k, v in e.items() if k not in ("offset", "innerOffset")}
            for e in toc["entries"]
        ]

    def members_of(toc: dict[str, Any]) -> int:
        return len(
            {
                e.get("offset", 0)
                for e in toc["entries"]
                if e["type"] in ("reg", "chunk") and e.get("size", 1)
            }
        )

    for name, (options, go_toc) in cases.items():
        out, result, toc = convert(
            GO_BLOBS / "input.tar", tmp_path, name, chunk_size=65536, **options
        )
        ours = toc_of(out.read_bytes(), toc.read_bytes() if toc else None)
        go_blob = (GO_BLOBS / name).read_bytes()
        theirs = toc_of(go_blob, (GO_BLOBS / go_toc).read_bytes() if go_toc else None)
        assert without_offsets(ours) == without_offsets(theirs), name
        # The same gzip member structure, so the same innerOffsets.
        assert members_of(ours) == members_of(theirs), name
        assert [e.get("innerOffset", 0) > 0 for e in ours["entries"]] == [
            e.get("innerOffset", 0) > 0 for e in theirs["entries"]
        ]
        assert result.uncompressed_size == expected[name]["uncompressedSize"]
        if options.get("keep_diff_id"):
            assert result.diff_id == expected[name]["diffID"]
        if name in (
            "default.esgz",
            "prioritized.esgz",
            "external-toc.esgz",
            "keep-diff-id.esgz",
        ):
            # Level 9 blobs no larger than Go's.
            assert result.blob_size <= expected[name]["blobSize"], name


def test_member_layout_follows_go(tmp_path: Path) -> None:
    source = make_tar(
        [("d", None), ("d/a", b"A" * 100), ("d/b", b""), ("d/c", b"C" * 5000)]
    )
    layer = tmp_path / "l.tar"
    layer.write_bytes(source)
    out, _result, _ = convert(layer, tmp_path)
    blob = out.read_bytes()
    toc = toc_of(blob)
    offset = int(blob[-51 + 16 : -51 + 32], 16)
    found = members(blob, offset)
    # Member 0 holds the landmark's header; every chunk starts a member.
    assert [e["name"] for e in toc["entries"]] == [
        ".no.prefetch.landmark",
        "d/",
        "d/a",
        "d/b",
        "d/c",
    ]
    starts = [start for start, _ in found]
    assert starts[0] == 0 and len(found[0][1]) == 512
    by_name = {e["name"]: e for e in toc["entries"]}
    for name in (".no.prefetch.landmark", "d/a", "d/c"):
        assert by_name[name]["offset"] in starts
    member_a = dict(found)[by_name["d/a"]["offset"]]
    # The payload starts the member; its padding and the next headers follow.
    assert member_a[:100] == b"A" * 100
    assert member_a[100:512] == bytes(412)
    assert len(member_a) == 512 + 512 + 512  # padding, then headers of d/b and d/c
    assert "offset" not in by_name["d/b"] and by_name["d/b"]["digest"] == sha256(b"")


def test_chunking_rules(tmp_path: Path) -> None:
    source = make_tar(
        [("exact", b"x" * 2000), ("plus", b"y" * 2001), ("under", b"z" * 999)]
    )
    layer = tmp_path / "l.tar"
    layer.write_bytes(source)
    out, _, _ = convert(layer, tmp_path, chunk_size=1000)
    entries = toc_of(out.read_bytes())["entries"]
    pieces: dict[str, list[dict[str, Any]]] = {}
    last = ""
    for e in entries:
        if e["type"] != "chunk":
            last = e["name"]
        pieces.setdefault(last, []).append(e)
    assert [
        (e["type"], e.get("chunkOffset", 0), e.get("chunkSize", 0))
        for e in pieces["exact"]
    ] == [
        ("reg", 0, 1000),
        ("chunk", 1000, 1000),
    ]
    assert [
        (e.get("chunkOffset", 0), e.get("chunkSize", 0)) for e in pieces["plus"]
    ] == [(0, 1000), (1000, 1000), (2000, 0)]
    assert [e.get("chunkSize", 0) for e in pieces["under"]] == [0]
    first = pieces["exact"][0]
    assert first["digest"] == sha256(b"x" * 2000) and first["chunkDigest"] == sha256(
        b"x" * 1000
    )


def test_go_json_text(tmp_path: Path) -> None:
    source = make_tar([("a<b>&c", b"1"), ("tab\tnew\nline", b"2"), ("日本", b"3")])
    layer = tmp_path / "l.tar"
    layer.write_bytes(source)
    out, result, _ = convert(layer, tmp_path)
    blob = out.read_bytes()
    offset = int(blob[-51 + 16 : -51 + 32], 16)
    text = (
        tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob[offset:-51])))
        .extractfile("stargz.index.json")
        .read()
    )  # type: ignore[union-attr]
    assert b'"name": "a\\u003cb\\u003e\\u0026c"' in text
    assert b'"name": "tab\\tnew\\nline"' in text
    assert '"name": "日本"'.encode() in text
    assert text.startswith(
        b'{\n\t"version": 1,\n\t"entries": [\n\t\t{\n\t\t\t"name": ".no.prefetch.landmark",'
    )
    assert text.endswith(b"\n\t\t}\n\t]\n}")
    assert result.toc_digest == sha256(text)


def test_invalid_utf8_names_become_replacement_characters(tmp_path: Path) -> None:
    """Go's choice, kept: the TOC names a file with U+FFFD where the tar name
    has bytes that are not UTF-8 (one per byte); the tar keeps the raw name,
    and reads and verify match the two up."""
    path = next(p for p in tricky_tars() if p.name == "name-invalid-utf8.tar")
    out, result, _ = convert(path, tmp_path)
    names = [e["name"] for e in toc_of(out.read_bytes())["entries"]]
    assert "bad-\ufffd\ufffd.txt" in names and "latin1-caf\ufffd.txt" in names
    with open_blob(out) as blob:
        assert blob.read("latin1-caf\ufffd.txt")
        blob.verify(result.toc_digest)


def test_prioritized_files_come_first_with_parents(tmp_path: Path) -> None:
    source = make_tar(
        [
            ("a", None),
            ("a/x", b"1"),
            ("b", None),
            ("b/c", None),
            ("b/c/y", b"2"),
            ("z", b"3"),
        ]
    )
    layer = tmp_path / "l.tar"
    layer.write_bytes(source)
    out, _, _ = convert(layer, tmp_path, prioritized_files=["./b/c/y", "/z"])
    names = [e["name"] for e in toc_of(out.read_bytes())["entries"]]
    assert names == ["b/", "b/c/", "b/c/y", "z", ".prefetch.landmark", "a/", "a/x"]


def test_missing_prioritized_file(tmp_path: Path) -> None:
    layer = tmp_path / "l.tar"
    layer.write_bytes(make_tar([("a", b"1")]))
    with pytest.raises(
        estargz.InputError, match="prioritized file 'nope' is not in the layer"
    ):
        convert(layer, tmp_path, prioritized_files=["nope"])
    assert not (tmp_path / "out.esgz").exists()
    out, _, _ = convert(
        layer, tmp_path, prioritized_files=["nope"], allow_missing_prioritized=True
    )
    # The list was not empty, so the prefetch landmark comes first (as Go).
    assert [e["name"] for e in toc_of(out.read_bytes())["entries"]] == [
        ".prefetch.landmark",
        "a",
    ]


def test_prioritized_from_gzip_and_hardlink_targets(tmp_path: Path) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("t", b"target"), ("other", b"o")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link")
        link.type = tarfile.LNKTYPE
        link.linkname = "t"
        tar.addfile(link)
    layer = tmp_path / "l.tar.gz"
    layer.write_bytes(gzip.compress(raw.getvalue()))
    out, _, _ = convert(layer, tmp_path, prioritized_files=["link"])
    names = [e["name"] for e in toc_of(out.read_bytes())["entries"]]
    assert names == ["t", "link", ".prefetch.landmark", "other"]


def test_duplicates_later_wins(tmp_path: Path) -> None:
    path = next(p for p in tricky_tars() if p.name == "duplicate-entries.tar")
    out, result, _ = convert(path, tmp_path)
    entries = toc_of(out.read_bytes())["entries"]
    assert [e["name"] for e in entries] == [
        ".no.prefetch.landmark",
        "dir/x",
        "dup.txt",
        "dir/",
    ]
    with open_blob(out) as blob:
        assert blob.read("dup.txt") == b"second (later wins)\n"
        blob.verify(result.toc_digest)
    # Prioritized mode removes the earlier copy from the stream too.
    out2, result2, _ = convert(path, tmp_path, "p", prioritized_files=["dup.txt"])
    stream = gzip.decompress(out2.read_bytes())
    assert stream.count(b"dup.txt\x00") == 1
    assert tar_files(stream)["dup.txt"] == b"second (later wins)\n"
    with open_blob(out2) as blob:
        blob.verify(result2.toc_digest)


@pytest.mark.parametrize("kind", ["gzip", "zstd", "stream"])
def test_compressed_and_streamed_inputs(kind: str, tmp_path: Path) -> None:
    source = (GO_BLOBS / "input.tar").read_bytes()
    reference, ref_result, _ = convert(
        GO_BLOBS / "input.tar", tmp_path, "ref", chunk_size=65536
    )
    if kind == "gzip":
        data: Any = io.BytesIO(gzip.compress(source))
    elif kind == "zstd":
        zstandard = pytest.importorskip(
            "zstandard", reason="Limitation: zstd input needs the zstandard package"
        )
        data = io.BytesIO(zstandard.ZstdCompressor().compress(source))
    else:

        class Pipe(io.RawIOBase):  # no seek, no tell: like standard input
            def __init__(self) -> None:
                self.inner = io.BytesIO(source)

            def readable(self) -> bool:
                return True

            def readinto(self, b: Any) -> int:
                return self.inner.readinto(memoryview(b)[:1000])

        data = Pipe()
    out, result, _ = convert(data, tmp_path, kind, chunk_size=65536)
    assert out.read_bytes() == reference.read_bytes()
    assert result == ref_result


def test_multimember_gzip_input(tmp_path: Path) -> None:
    path = next(p for p in tricky_tars() if p.name == "multimember-gzip.tar.gz")
    out, result, _ = convert(path, tmp_path)
    check_blob(out, None, plain_tar(path), result)


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_input_is_refused_and_leaves_nothing(
    name: str, tmp_path: Path
) -> None:
    path = next(p for p in tricky_tars() if p.name == name)
    messages = {
        "malformed-bad-checksum.tar": r"tar: entry 'bad.txt' at offset 0: header checksum is 7272, the header sums to 7271",
        "malformed-huge-size.tar": r"tar: entry 'huge.bin' at offset 0: archive ends at offset 612, inside the payload of 8589934591 bytes that starts at offset 512",
        "truncated-mid-file.tar": r"tar: entry 'cut.bin' at offset 1024: archive ends at offset 3536",
    }
    existing = tmp_path / "out.esgz"
    existing.write_bytes(b"keep me")
    with pytest.raises(estargz.InputError, match=messages[name]):
        convert(path, tmp_path, external=True)
    assert existing.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.esgz"]


def test_prioritized_file_whose_parent_has_no_entry(tmp_path: Path) -> None:
    # Go moves parents first and fails on one without an entry; say which.
    layer = tmp_path / "l.tar"
    layer.write_bytes(make_tar([("lib/json/decoder.py", b"x")]))
    with pytest.raises(
        estargz.InputError,
        match="prioritized file 'lib/json/decoder.py': 'lib/json', which must come "
        "before it .* has no entry",
    ):
        convert(layer, tmp_path, prioritized_files=["lib/json/decoder.py"])


def test_prioritized_paths_thousands_deep_and_hardlink_cycles(tmp_path: Path) -> None:
    deep = "/".join(["d"] * 1500)
    files: list[tuple[str, bytes | None]] = [
        ("/".join(["d"] * i), None) for i in range(1, 1501)
    ]
    files.append((deep + "/f", b"deep"))
    source = bytearray(make_tar(files)[:-1024])
    for name, target in (("l1", "l2"), ("l2", "l1")):
        info = tarfile.TarInfo(name)
        info.type = tarfile.LNKTYPE
        info.linkname = target
        source += info.tobuf(tarfile.PAX_FORMAT)
    layer = tmp_path / "l.tar"
    layer.write_bytes(bytes(source) + bytes(1024))
    out, _, _ = convert(layer, tmp_path, prioritized_files=[deep + "/f", "l1"])
    names = [e["name"] for e in toc_of(out.read_bytes())["entries"]]
    assert names[1500] == deep + "/f" and names[1501:1503] == ["l2", "l1"]


@pytest.mark.parametrize(
    "header, message",
    [
        ({"uid": -1}, "uid -1 is outside 0..2\\*\\*63-1"),
        ({"pax_headers": {"uid": "1" + "0" * 40}}, "uid 1000.* is outside"),
        ({"pax_headers": {"gid": str(1 << 63)}}, "gid 9223372036854775808 is outside"),
        ({"pax_headers": {"path": "a\x00b"}}, "a NUL byte in the name"),
    ],
)
def test_ids_and_names_no_reader_takes_are_refused(
    header: dict[str, Any], message: str, tmp_path: Path
) -> None:
    info = tarfile.TarInfo("f")
    info.size = 5
    if "uid" in header:
        # Base-256, two's complement: what GNU tar writes for a negative id.
        block = bytearray(info.tobuf(tarfile.GNU_FORMAT))
        block[108:116] = b"\xff" * 8
        block[148:156] = b" " * 8
        block[148:156] = b"%06o\x00 " % sum(block)
        raw = bytes(block)
    else:
        info.pax_headers = header["pax_headers"]
        raw = info.tobuf(tarfile.PAX_FORMAT)
    layer = tmp_path / "l.tar"
    layer.write_bytes(raw + b"hello" + bytes(507) + bytes(1024))
    with pytest.raises(estargz.InputError, match=message):
        convert(layer, tmp_path)
    assert not (tmp_path / "out.esgz").exists()


@pytest.mark.parametrize("lossless", [False, True])
def test_garbage_after_a_gzip_input_is_refused_in_every_mode(
    lossless: bool, tmp_path: Path
) -> None:
    layer = tmp_path / "l.tar.gz"
    layer.write_bytes(gzip.compress(make_tar([("a", b"1")])) + b"garbage!")
    options: dict[str, Any] = (
        {"keep_diff_id": True, "external": True} if lossless else {}
    )
    with pytest.raises(
        estargz.InputError, match="no gzip member starts at compressed offset"
    ):
        convert(layer, tmp_path, **options)
    # NUL padding after the stream is fine (gzip(1) takes it too).
    layer.write_bytes(gzip.compress(make_tar([("a", b"1")])) + bytes(100))
    convert(layer, tmp_path, **options)


@pytest.mark.parametrize("name", ["sparse-gnu-oldgnu.tar", "sparse-pax-0.0.tar"])
def test_sparse_files_are_refused_clearly(name: str, tmp_path: Path) -> None:
    path = next(p for p in tricky_tars() if p.name == name)
    with pytest.raises(
        estargz.InputError,
        match=r"entry './sparse.img' at offset 1536: sparse files .* are not supported",
    ):
        convert(path, tmp_path)
    assert not list(tmp_path.iterdir())


def test_not_a_tar(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tar archive at all" * 40)
    with pytest.raises(estargz.InputError, match="at offset 0"):
        convert(bad, tmp_path)
    with pytest.raises(estargz.InputError, match="cannot open input"):
        convert(tmp_path / "missing.tar", tmp_path)


def test_corrupt_gzip_input_names_the_offset(tmp_path: Path) -> None:
    data = bytearray(gzip.compress((GO_BLOBS / "input.tar").read_bytes()))
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(estargz.InputError, match=r"input: .*compressed offset \d+"):
        convert(io.BytesIO(bytes(data)), tmp_path)


def test_option_checks() -> None:
    with pytest.raises(
        estargz.ConversionError, match="keep-diff-id needs an external TOC"
    ):
        writer.convert(GO_BLOBS / "input.tar", io.BytesIO(), keep_diff_id=True)
    with pytest.raises(estargz.ConversionError, match="cannot reorder"):
        writer.convert(
            GO_BLOBS / "input.tar",
            io.BytesIO(),
            keep_diff_id=True,
            external_toc=io.BytesIO(),
            prioritized_files=["a"],
        )
    with pytest.raises(estargz.ConversionError, match="level must be 0-9, got 10"):
        writer.convert(GO_BLOBS / "input.tar", io.BytesIO(), compression_level=10)


def test_existing_toc_and_landmarks_are_dropped(tmp_path: Path) -> None:
    for name, dropped in (
        ("name-stargz-index-json.tar", "stargz.index.json"),
        ("name-prefetch-landmark.tar", ".prefetch.landmark"),
    ):
        path = next(p for p in tricky_tars() if p.name == name)
        out, _, _ = convert(path, tmp_path, name)
        names = [e["name"] for e in toc_of(out.read_bytes())["entries"]]
        assert dropped not in names[1:]
        # The tar stream of the blob holds the TOC entry only once, at the end.
        stream = gzip.decompress(out.read_bytes())
        assert stream.count(b"stargz.index.json\x00") == 1


def test_read_prioritized_files_formats(tmp_path: Path) -> None:
    lines = tmp_path / "list.txt"
    lines.write_text("a/b\n\n./c\na/b\n")
    assert writer.read_prioritized_files(lines) == ["a/b", "./c"]
    record = tmp_path / "record.json"
    record.write_text(
        '{"path":"x","manifestDigest":"sha256:00","layerIndex":0}\n{"path":"y"}\n{"path":"x"}\n'
    )
    assert writer.read_prioritized_files(record) == ["x", "y"]
    bad = tmp_path / "bad.json"
    bad.write_text('{"path": 1}')
    with pytest.raises(estargz.InputError, match="no 'path' string"):
        writer.read_prioritized_files(bad)


def test_empty_layer(tmp_path: Path) -> None:
    layer = tmp_path / "empty.tar"
    layer.write_bytes(bytes(1024))
    out, result, _ = convert(layer, tmp_path)
    assert [e["name"] for e in toc_of(out.read_bytes())["entries"]] == [
        ".no.prefetch.landmark"
    ]
    out, result, toc = convert(layer, tmp_path, "kd", external=True, keep_diff_id=True)
    assert result.diff_id == sha256(bytes(1024))
    assert toc_of(out.read_bytes(), toc.read_bytes())["entries"] is None  # type: ignore[union-attr]
    nothing = tmp_path / "nothing.tar"
    nothing.write_bytes(b"")
    out, result, toc = convert(
        nothing, tmp_path, "none", external=True, keep_diff_id=True
    )
    assert result.uncompressed_size == 0 and result.diff_id == sha256(b"")


names = st.text(
    alphabet=st.sampled_from("abcxyz/._- é"), min_size=1, max_size=20
).filter(lambda n: n.strip("/") not in ("", ".", "..") and "//" not in n)


@settings(max_examples=25, deadline=None)
@given(
    files=st.lists(st.tuples(names, st.binary(max_size=3000)), min_size=1, max_size=12),
    chunk=st.sampled_from([64, 1000, 4 << 20]),
    min_chunk=st.sampled_from([0, 200, 5000]),
)
def test_round_trip_property(
    files: list[tuple[str, bytes]], chunk: int, min_chunk: int, tmp_path_factory: Any
) -> None:
    tmp = tmp_path_factory.mktemp("prop")
    source = make_tar([(n.strip("/"), d) for n, d in files])
    layer = tmp / "l.tar"
    layer.write_bytes(source)
    out, result, _ = convert(layer, tmp, chunk_size=chunk, min_chunk_size=min_chunk)
    blob = open_blob(out.read_bytes())
    toc = blob.toc
    # Chunks tile each file exactly and inflating at an innerOffset gives the
    # file's bytes (checked by reading), and everything verifies.
    for name, content in tar_files(source).items():
        entry = toc.lookup(name)
        if entry is None or entry.type != "reg":
            continue
        assert blob.read(name) == content
        if entry.size:
            rows = range(entry.chunk_start, entry.chunk_start + entry.chunk_count)
            assert sum(int(toc.chunks.size[r]) for r in rows) == entry.size
    blob.verify(result.toc_digest)
    _out2, result2, _toc2 = convert(
        layer,
        tmp,
        "kd",
        chunk_size=chunk,
        min_chunk_size=min_chunk,
        external=True,
        keep_diff_id=True,
    )
    assert result2.diff_id == sha256(source)


@pytest.mark.slow
def test_memory_does_not_grow_with_layer_size(tmp_path: Path) -> None:
    """Peak RSS of a conversion of a 40 MB and a 400 MB layer differ little."""
    import subprocess
    import sys

    def layer(path: Path, megabytes: int) -> None:
        block = os.urandom(1 << 20)
        with tarfile.open(path, "w") as tar:
            for i in range(megabytes):
                info = tarfile.TarInfo(f"f{i:05d}")
                info.size = len(block)
                tar.addfile(
                    info,
                    io.BytesIO(
                        hashlib.sha256(block + bytes([i % 256])).digest() * 32768
                    ),
                )

    peaks = []
    for size in (40, 400):
        path = tmp_path / f"{size}.tar"
        layer(path, size)
        code = (
            "import resource, sys; from estargz.cli import main; "
            f"main(['-q', 'convert', {str(path)!r}, {str(tmp_path / 'o.esgz')!r}, '--compression-level', '1']); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True
        ).stdout
        peaks.append(int(out.splitlines()[-1]))
        path.unlink()
    assert peaks[1] < peaks[0] + 16 * 1024, peaks  # KiB


# -- what the adversarial pass of stop 7 found -------------------------------


def _pax(records: list[tuple[bytes, bytes]]) -> bytes:
    from estargz._format import ustar_header

    body = b""
    for key, value in records:
        record = b" " + key + b"=" + value + b"\n"
        size = len(record) + 1
        while len(str(size)) + len(record) != size:
            size += 1
        body += str(size).encode() + record
    return ustar_header(b"PaxHeader", len(body), b"x") + body + bytes(-len(body) % 512)


@pytest.mark.parametrize("key", [b"path", b"size", b"uid", b"mtime", b"linkpath"])
def test_an_empty_pax_value_keeps_the_header_value_as_go_does(
    key: bytes, tmp_path: Path
) -> None:
    from estargz._format import ustar_header

    data = b"abc"
    tar = _pax([(key, b"")]) + ustar_header(b"f", 3, mode=0o644, mtime=1700000000)
    tar += data + bytes(509) + bytes(1024)
    layer = tmp_path / "l.tar"
    layer.write_bytes(tar)
    out = tmp_path / "l.esgz"
    writer.convert(layer, out)
    with open_blob(out) as blob:
        blob.verify()
        assert blob.read("f") == data
        assert blob.lookup("f").mtime is not None


def test_a_base256_checksum_is_refused_as_go_refuses_it(tmp_path: Path) -> None:
    from estargz._format import ustar_header

    header = bytearray(ustar_header(b"f", 0))
    total = sum(header[:148]) + sum(header[156:]) + 256
    header[148:156] = bytes([0x80]) + total.to_bytes(7, "big")
    layer = tmp_path / "l.tar"
    layer.write_bytes(bytes(header) + bytes(1024))
    with pytest.raises(estargz.InputError, match="at offset 0: checksum field"):
        writer.convert(layer, tmp_path / "l.esgz")
    assert not list(tmp_path.glob("*.esgz*")) and not list(tmp_path.glob(".l.*"))


def test_a_bad_number_names_its_entry(tmp_path: Path) -> None:
    from estargz._format import ustar_header

    header = bytearray(ustar_header(b"some/file", 0))
    header[108:116] = b"00x0000\0"  # uid
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    layer = tmp_path / "l.tar"
    layer.write_bytes(bytes(header) + bytes(1024))
    with pytest.raises(
        estargz.InputError, match="entry 'some/file' at offset 0: uid field"
    ):
        writer.convert(layer, tmp_path / "l.esgz")


def test_outputs_that_are_not_regular_files_are_written_not_replaced(
    tmp_path: Path,
) -> None:
    import threading

    layer = tmp_path / "l.tar"
    layer.write_bytes(make_tar([("a", b"hello\n")]))
    # A symbolic link: the file it names is written, the link stays.
    (tmp_path / "link").symlink_to("target.esgz")
    writer.convert(layer, tmp_path / "link")
    assert (tmp_path / "link").is_symlink()
    with open_blob(tmp_path / "target.esgz") as blob:
        assert blob.read("a") == b"hello\n"
    # A FIFO: a reader on it gets the blob; the FIFO stays a FIFO.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    writer.convert(layer, fifo)
    reader.join(30)
    assert got and got[0] == (tmp_path / "target.esgz").read_bytes()
    assert fifo.is_fifo()


def test_a_failing_close_still_removes_the_temporary_file(tmp_path: Path) -> None:
    from estargz._util import AtomicOutput

    class Full(io.BytesIO):
        def close(self) -> None:
            super().close()
            raise OSError(28, "No space left on device")

    output = AtomicOutput(tmp_path / "o.esgz")
    with output:
        assert output.file is not None
        output.file.close()
        output.file = Full()  # type: ignore[assignment]
        temp = output._temp
        assert os.path.exists(temp)
    assert not os.path.exists(temp) and not (tmp_path / "o.esgz").exists()
