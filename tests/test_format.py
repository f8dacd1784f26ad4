"""Byte-level format pieces: Go's JSON text, modtimes, names, footers, and
the tar reader on every tricky input (against Python's tarfile)."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import pytest
from helpers import MALFORMED, plain_tar, tricky_tars
from hypothesis import given
from hypothesis import strategies as st

import estargz
from estargz import _format
from estargz._tar import ByteSource, TarReader


@pytest.mark.parametrize(
    "raw, text",
    [
        (b"plain/name.txt", '"plain/name.txt"'),
        (b'q"b\\s', '"q\\"b\\\\s"'),
        (b"<&>", '"\\u003c\\u0026\\u003e"'),
        (b"\x01\x7f\n\r\t\x08\x0c", '"\\u0001\x7f\\n\\r\\t\\b\\f"'),
        ("é日😀".encode(), '"é日😀"'),
        ("\u2028\u2029".encode(), '"\\u2028\\u2029"'),
        (b"bad-\xff\xfe", '"bad-\\ufffd\\ufffd"'),
        (b"cut-\xe6\x97A", '"cut-\\ufffd\\ufffdA"'),
        (b"\xed\xa0\x80", '"\\ufffd\\ufffd\\ufffd"'),
    ],
)
def test_json_strings_as_go_writes_them(raw: bytes, text: str) -> None:
    assert _format.json_string(raw) == text
    # Any JSON reader reads back what Go's would.
    assert json.loads(text) == _format.go_text(raw)


@given(st.binary(max_size=40))
def test_json_strings_are_valid_json(raw: bytes) -> None:
    assert json.loads(_format.json_string(raw)) == _format.go_text(raw)


@pytest.mark.parametrize(
    "nanoseconds, text",
    [
        (0, ""),
        (999_999_999, ""),  # still the epoch second: Go leaves it out
        (1_000_000_000, "1970-01-01T00:00:01Z"),
        (1_700_000_000_500_000_000, "2023-11-14T22:13:21Z"),  # halves round up
        (1_700_000_000_499_999_999, "2023-11-14T22:13:20Z"),
        (-1_000_000_000, "1969-12-31T23:59:59Z"),
        (-500_000_000, "1970-01-01T00:00:00Z"),  # Unix() is -1, so kept
        (-315_619_200 * 10**9, "1960-01-01T00:00:00Z"),
    ],
)
def test_modtimes_as_go_formats_them(nanoseconds: int, text: str) -> None:
    assert _format.format_modtime(nanoseconds) == text


@pytest.mark.parametrize(
    "raw, clean",
    [
        (b"./a", b"a"),
        (b"/a/", b"a"),
        (b"../a", b"a"),
        (b"a/../../b", b"b"),
        (b"./", b""),
        (b"/", b""),
        (b"a//b/./c", b"a/b/c"),
    ],
)
def test_clean_name(raw: bytes, clean: bytes) -> None:
    assert _format.clean_name(raw) == clean


def test_footers_are_valid_empty_gzip_members() -> None:
    for data in (
        _format.footer(0x1234),
        _format.legacy_footer(77),
        _format.EXTERNAL_TOC_FOOTER,
    ):
        assert gzip.decompress(data) == b""
    assert (
        len(_format.footer(5)) == 51
        and _format.footer(0xABC)[16:38] == b"0000000000000abcSTARGZ"
    )
    assert len(_format.EXTERNAL_TOC_FOOTER) == 46


def test_toc_tar_as_go_writes_it() -> None:
    tar = _format.toc_tar(b'{"version": 1}')
    header = tar[:512]
    assert header[:17] == b"stargz.index.json" and header[156:157] == b"0"
    assert header[100:108] == b"0000000\x00" and header[257:265] == b"ustar\x0000"
    assert len(tar) == 512 + 512 + 1024
    member = tarfile.open(fileobj=io.BytesIO(tar)).getmember("stargz.index.json")
    assert member.size == 14 and member.mode == 0


@pytest.mark.parametrize(
    "path", [p for p in tricky_tars() if p.name not in MALFORMED], ids=lambda p: p.name
)
def test_tar_reader_agrees_with_tarfile(path) -> None:  # type: ignore[no-untyped-def]
    data = plain_tar(path)
    ours = []
    reader = TarReader(ByteSource(io.BytesIO(data)))
    for entry in reader:
        ours.append(
            (
                entry.name.decode("utf-8", "surrogateescape"),
                entry.size if entry.typeflag in (b"0", b"7") else 0,
                entry.uid,
                entry.gid,
            )
        )
        reader.skip_payload()
    theirs = []
    with tarfile.open(
        fileobj=io.BytesIO(data), encoding="utf-8", errors="surrogateescape"
    ) as tar:
        for member in tar:
            if member.type in (tarfile.XGLTYPE,):
                continue
            name = member.name
            if (
                member.isdir()
                and not name.endswith("/")
                and any(e[0] == name + "/" for e in ours)
            ):
                name += "/"
            theirs.append(
                (name, member.size if member.isreg() else 0, member.uid, member.gid)
            )
    if path.name.startswith("sparse"):
        # tarfile reports the expanded size of sparse files; we keep the
        # stored entry and let the writer refuse it.
        assert [e[0] for e in ours] == [e[0] for e in theirs]
        return
    assert [e[0].rstrip("/") for e in ours] == [e[0].rstrip("/") for e in theirs]
    assert [e[1:] for e in ours] == [e[1:] for e in theirs]


def test_tar_reader_offsets_and_raw_bytes() -> None:
    data = plain_tar(next(p for p in tricky_tars() if p.name == "pax-long-name.tar"))
    reader = TarReader(ByteSource(io.BytesIO(data)))
    position = 0
    for entry in reader:
        assert entry.header_offset == position
        assert data[entry.header_offset : entry.data_offset] == entry.raw_header
        payload = reader.read_payload(entry.payload_size)
        padding = reader.read_padding()
        position = entry.data_offset + len(payload) + len(padding)
    assert reader.end_offset == position


def test_pax_global_header_applies_to_later_entries() -> None:
    data = plain_tar(
        next(p for p in tricky_tars() if p.name == "pax-global-header.tar")
    )
    reader = TarReader(ByteSource(io.BytesIO(data)))
    entries = []
    for entry in reader:
        entries.append(entry)
        reader.skip_payload()
    # Both entries take the global mtime (their own headers say 1700000000);
    # the global header's bytes travel with the first entry.
    assert [(e.name, e.mtime_ns) for e in entries] == [
        (b"a.txt", 1_600_000_000 * 10**9),
        (b"b.txt", 1_600_000_000 * 10**9),
    ]
    assert len(entries[0].globals) == 1024 and entries[1].globals == b""
    assert reader.global_pax[b"comment"] == b"8b1a9953c4611296a827abf8c47804d7e6c49c6b"


def test_malformed_headers_are_located() -> None:
    with pytest.raises(estargz.InputError, match=r"tar: at offset 0: .*"):
        list(TarReader(ByteSource(io.BytesIO(b"\x01" * 512))))
    block = bytearray(tarfile.TarInfo("x").tobuf())
    block[124:136] = b"0000000009x\x00"  # size field
    reader = TarReader(ByteSource(io.BytesIO(bytes(block) + bytes(1024))))
    with pytest.raises(estargz.InputError, match="checksum|not an octal number"):
        next(reader)
    zero_then_junk = bytes(512) + b"\x01" * 512
    with pytest.raises(
        estargz.InputError, match="a zero block is followed by a non-zero block"
    ):
        list(TarReader(ByteSource(io.BytesIO(zero_then_junk))))
