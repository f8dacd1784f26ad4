"""Fuzzing the parsers (footer, TOC, gzip members) with hypothesis: hostile
bytes get an estargz error, never a crash, a hang or another exception.

Bounded: each target runs a fixed number of examples (more under the ``ci``
profile), with no time limit per example.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from helpers import GO_BLOBS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import estargz
from estargz import _native
from estargz._extract import extract
from estargz._format import footer, toc_tar
from estargz.reader import open_blob, parse_footer
from estargz.toc import TOC

BLOB = (GO_BLOBS / "default.esgz").read_bytes()
MIN_CHUNK = (GO_BLOBS / "min-chunk.esgz").read_bytes()
TOC_OFFSET = int(BLOB[-51 + 16 : -51 + 32], 16)
EXPECTED_ERRORS = (
    estargz.EStargzError,
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
)
FUZZ = settings(
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


def exercise(data: bytes) -> None:
    try:
        with open_blob(data) as blob:
            for entry in blob.toc.entries[:20]:
                if entry.type == "reg":
                    blob.read(entry.name)
            blob.verify()
    except EXPECTED_ERRORS:
        pass


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    exercise(data)


@FUZZ
@given(st.binary(min_size=51, max_size=51))
def test_random_footers(tail: bytes) -> None:
    try:
        parse_footer(tail)
    except estargz.BlobFormatError:
        pass
    exercise(BLOB[:-51] + tail)


@FUZZ
@given(st.data())
def test_mutated_blobs(data: st.DataObject) -> None:
    source = data.draw(st.sampled_from([BLOB, MIN_CHUNK]))
    changed = bytearray(source)
    for _ in range(data.draw(st.integers(1, 4))):
        # Mostly the TOC member and footer, sometimes the data.
        start = data.draw(st.sampled_from([0, len(source) - 4000]))
        position = data.draw(st.integers(max(0, start), len(source) - 1))
        changed[position] = data.draw(st.integers(0, 255))
    exercise(bytes(changed))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 1 << 40) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
entry_like = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["a", "a/b", "./", "../x", "c"]),
        "type": st.sampled_from(["reg", "dir", "chunk", "hardlink", "symlink", "x"]),
    },
    optional={
        "size": st.integers(-1, 100),
        "offset": st.integers(0, 200),
        "innerOffset": st.integers(0, 50),
        "chunkOffset": st.integers(0, 100),
        "chunkSize": st.integers(0, 100),
        "linkName": st.sampled_from(["a", "c", "a/b", "zz"]),
        "chunkDigest": st.sampled_from(["sha256:" + "0" * 64, "sha256:xx", "md5:1"]),
        "xattrs": st.dictionaries(
            st.text(max_size=3), st.sampled_from(["", "YQ==", "!!", 3])
        ),
        "extra": json_values,
    },
)


@FUZZ
@given(
    st.one_of(
        json_values,
        st.fixed_dictionaries(
            {"version": st.integers(0, 2), "entries": st.lists(entry_like, max_size=8)}
        ),
    )
)
def test_random_tocs(document: object) -> None:
    text = json.dumps(document).encode()
    try:
        TOC(text, 150)
    except estargz.BlobFormatError:
        pass
    payload = _native.MemberCompressor(1).compress(bytes(200))[:150].ljust(150, b"\0")
    member = _native.MemberCompressor(1).compress(toc_tar(text))
    exercise(payload + member + footer(150))


# Values no system call takes: odd names, numbers past any C type, very deep
# paths.  Reading, verifying and extracting them gives an estargz error (or,
# for what the OS refuses, an OSError), never another exception.
hostile_names = st.sampled_from(
    [
        "a",
        "a\x00b",
        "\ud800",
        "a\udc80",
        "\udcc3\udca9",
        "d/" * 1500 + "f",
        "n" * 300,
        "\u00e9",
    ]
)
hostile_numbers = st.one_of(
    st.integers(0, 5),
    st.sampled_from([(1 << 31), (1 << 32) - 1, 1 << 32, 1 << 40, (1 << 63) - 1]),
    st.sampled_from([1 << 63, 1 << 64, 10**400, -1]),
)
hostile_entry = st.fixed_dictionaries(
    {
        "name": hostile_names,
        "type": st.sampled_from(["reg", "dir", "symlink", "hardlink", "char", "fifo"]),
    },
    optional={
        "size": hostile_numbers,
        "mode": hostile_numbers,
        "uid": hostile_numbers,
        "gid": hostile_numbers,
        "devMajor": hostile_numbers,
        "devMinor": hostile_numbers,
        "offset": hostile_numbers,
        "linkName": hostile_names,
        "xattrs": st.dictionaries(hostile_names, st.just("YQ=="), max_size=2),
        "modtime": st.sampled_from(["9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z"]),
    },
)


@FUZZ
@given(st.integers(0, 2), st.lists(hostile_entry, max_size=4))
def test_hostile_values_read_and_extract(version: int, entries: list[object]) -> None:
    text = json.dumps({"version": version, "entries": entries}).encode()
    try:
        TOC(text, 150)
    except estargz.BlobFormatError:
        pass
    payload = _native.MemberCompressor(1).compress(bytes(200))[:150].ljust(150, b"\0")
    member = _native.MemberCompressor(1).compress(toc_tar(text))
    data = payload + member + footer(150)
    with tempfile.TemporaryDirectory() as parent:
        try:
            with open_blob(data) as blob:
                list(blob.toc.walk())
                try:
                    blob.verify()
                except estargz.VerificationError:
                    pass
                # (Files are read by extraction, a block at a time: Blob.read
                # would take the whole of a declared size at once.)
                extract(blob, Path(parent) / "root")
        except (*EXPECTED_ERRORS, OSError):
            pass
        # Deep trees are beyond shutil.rmtree before Python 3.12.
        if os.path.exists(Path(parent) / "root"):
            from estargz._extract import _remove_tree

            fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                _remove_tree(fd, "root")
            finally:
                os.close(fd)


@FUZZ
@given(
    st.sampled_from(["version", "size", "offset", "uid", "devMajor", "x"]),
    st.integers(1, 6000),
)
def test_numbers_of_any_length(key: str, digits: int) -> None:
    number = "1" + "0" * (digits - 1)
    if key == "version":
        text = '{"version": ' + number + ', "entries": []}'
    else:
        entry = '{"name": "a", "type": "reg", "' + key + '": ' + number + "}"
        text = '{"version": 1, "entries": [' + entry + "]}"
    try:
        TOC(text.encode(), 150)
    except estargz.BlobFormatError:
        pass


@FUZZ
@given(st.binary(max_size=400), st.integers(0, 500), st.integers(-1, 500))
def test_random_members(data: bytes, skip: int, size: int) -> None:
    try:
        _native.inflate_member(data, 0, skip=skip, size=size, max_output=1 << 16)
    except (estargz.NativeError, ValueError):
        pass
    try:
        _native.inflate_stream(data, max_output=1 << 16)
    except estargz.NativeError:
        pass


def test_fuzz_inputs_exist() -> None:
    assert Path(GO_BLOBS / "default.esgz").exists() and TOC_OFFSET > 0
