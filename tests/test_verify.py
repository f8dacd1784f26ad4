"""Whole-blob verification: what it must catch, and that its memory stays
bounded however well a blob's members compress."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
from pathlib import Path
from typing import Any

import pytest
from helpers import make_tar

import estargz
from estargz import _native, writer
from estargz._format import footer, toc_tar, ustar_header
from estargz.reader import open_blob


def member(data: bytes) -> bytes:
    return _native.MemberCompressor(6).compress(data)


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def hand_made(
    files: list[tuple[str, bytes]],
    *,
    algorithm: str = "sha256",
    digests: bool = True,
    after_toc: bytes = b"",
    extra_members: list[bytes] = (),  # type: ignore[assignment]
    payloads: dict[str, bytes] | None = None,
) -> bytes:
    """A blob made by hand: each file's header in one member, its data in
    the next (as Go lays them out), then the end-of-archive member, any
    ``extra_members``, the TOC member (its tar followed by ``after_toc``) and
    the footer.  ``payloads`` swaps the bytes stored for a file while the
    TOC keeps the digest of the original."""
    blob = bytearray()
    entries: list[dict[str, Any]] = []
    for name, data in files:
        blob += member(ustar_header(name.encode(), len(data)))
        entry: dict[str, Any] = {
            "name": name,
            "type": "reg",
            "size": len(data),
            "offset": len(blob),
        }
        if digests:
            digest = f"{algorithm}:" + hashlib.new(algorithm, data).hexdigest()
            entry["digest"] = digest
            entry["chunkDigest"] = digest
        entries.append(entry)
        stored = (payloads or {}).get(name, data)
        blob += member(padded(stored))
    blob += member(bytes(1024))
    for extra in extra_members:
        blob += extra
    toc_json = json.dumps({"version": 1, "entries": entries}).encode()
    tar = toc_tar(toc_json)
    if after_toc:
        # Drop the end-of-archive marker, then append more.
        tar = tar[: len(tar) - 1024] + after_toc
    payload_end = len(blob)
    blob += member(tar)
    return bytes(blob) + footer(payload_end)


def test_a_hand_made_blob_verifies() -> None:
    blob = hand_made([("a.txt", b"hello\n"), ("b.txt", b"world\n" * 100)])
    with open_blob(blob) as opened:
        report = opened.verify()
        assert opened.read("b.txt") == b"world\n" * 100
    assert report.entries == 2 and report.chunks == 2 and report.trailing_bytes == 0


def test_an_entry_hidden_after_the_index_in_the_toc_tar_is_refused() -> None:
    evil = ustar_header(b"etc/passwd", 5) + padded(b"root\n") + bytes(1024)
    blob = hand_made([("a.txt", b"hello\n")], after_toc=evil)
    with pytest.raises(estargz.BlobFormatError, match="holds 'etc/passwd' after"):
        open_blob(blob)


@pytest.mark.parametrize("algorithm", ["sha256", "sha384", "sha512"])
def test_chunks_are_checked_whatever_the_digest_algorithm(algorithm: str) -> None:
    files = [("a.txt", b"hello\n"), ("b.txt", b"other\n")]
    with open_blob(hand_made(files, algorithm=algorithm)) as opened:
        opened.verify()
    tampered = hand_made(files, algorithm=algorithm, payloads={"a.txt": b"HACKED"})
    with open_blob(tampered) as opened:
        with pytest.raises(
            estargz.VerificationError, match=f"'a.txt'.*digest {algorithm}:"
        ):
            opened.verify()
        with pytest.raises(estargz.VerificationError, match="'a.txt'"):
            opened.read("a.txt")


def test_a_chunk_without_a_digest_does_not_pass_as_verified() -> None:
    blob = hand_made([("a.txt", b"hello\n")], digests=False)
    with open_blob(blob) as opened:
        with pytest.raises(estargz.VerificationError, match="no digest"):
            opened.verify()
        with pytest.raises(estargz.VerificationError, match="no digest"):
            opened.read("a.txt")
    # Reading it anyway is a choice the caller makes.
    with open_blob(blob, verify_chunks=False) as opened:
        assert opened.read("a.txt") == b"hello\n"


def test_a_file_digest_stands_in_for_a_single_chunk_as_go_does() -> None:
    base = hand_made([("a.txt", b"hello\n")])
    with open_blob(base) as opened:
        toc = json.loads(opened.toc_json)
    del toc["entries"][0]["chunkDigest"]
    rebuilt = rebuild_with_toc(base, json.dumps(toc).encode())
    with open_blob(rebuilt) as opened:
        opened.verify()
        assert opened.read("a.txt") == b"hello\n"


def rebuild_with_toc(blob: bytes, toc_json: bytes) -> bytes:
    with open_blob(blob) as opened:
        payload_end = opened.payload_end
    return blob[:payload_end] + member(toc_tar(toc_json)) + footer(payload_end)


def test_data_after_the_end_of_archive_marker_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hidden = member(ustar_header(b"hidden", 5) + padded(b"evil\n"))
    blob = hand_made([("a.txt", b"hello\n")], extra_members=[hidden])
    with caplog.at_level(logging.WARNING), open_blob(blob) as opened:
        report = opened.verify()
    assert report.trailing_bytes == 1024 and report.trailing_data_at == 2048
    assert "with data at uncompressed offset 2048" in caplog.text


def test_a_blob_of_zeros_is_not_inflated_to_the_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 80 members of 1 MiB of zeros after an empty TOC's end-of-archive marker:
    # verify stops after its trailer allowance instead of inflating it all.
    zeros = member(bytes(1 << 20))
    blob = hand_made([], extra_members=[zeros] * 80)
    with caplog.at_level(logging.WARNING), open_blob(blob) as opened:
        report = opened.verify()
    assert report.trailing_data_at == -1
    assert 64 << 20 < report.trailing_bytes < 80 << 20
    assert "verify read no further" in caplog.text


class Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


@pytest.mark.timeout(300)
def test_a_highly_compressible_layer_verifies(tmp_path: Path) -> None:
    # 320 MiB of zeros in one file: the blob is a few hundred KiB, so verify
    # cannot size its buffers by the compressed bytes.
    size = 320 << 20
    layer = tmp_path / "zeros.tar"
    with tarfile.open(layer, "w") as tar:
        info = tarfile.TarInfo("zeros")
        info.size = size
        tar.addfile(info, io.BufferedReader(Zeros(size), 1 << 20))
    out = tmp_path / "zeros.esgz"
    writer.convert(layer, out, chunk_size=32 << 20)
    assert out.stat().st_size < 1 << 20
    with open_blob(out) as opened:
        report = opened.verify()
    # Ten chunks, and the landmark file's one.
    assert report.chunks == 11 and report.uncompressed_bytes >= size


def test_verify_of_a_real_layer_with_many_tiny_members(tmp_path: Path) -> None:
    files = [(f"d/f{i}", bytes([i % 251]) * (i % 700)) for i in range(3000)]
    layer = tmp_path / "l.tar"
    layer.write_bytes(make_tar(files))
    out = tmp_path / "l.esgz"
    writer.convert(layer, out, min_chunk_size=20000)
    with open_blob(out) as opened:
        report = opened.verify(threads=3)
    assert report.entries == 3001  # with the directory


def test_reading_a_file_the_toc_claims_is_huge_fails_cleanly() -> None:
    base = hand_made([("a.txt", b"hello\n")])
    with open_blob(base) as opened:
        toc = json.loads(opened.toc_json)
    toc["entries"][0]["size"] = 1 << 40  # a terabyte, in a six-byte member
    with open_blob(rebuild_with_toc(base, json.dumps(toc).encode())) as opened:
        with pytest.raises(estargz.VerificationError, match="'a.txt'"):
            opened.read("a.txt")


def test_nul_bytes_between_members_are_refused() -> None:
    # gzip(1) skips NULs after a member; Go's reader (a plain pull) stops
    # there and never reaches the TOC's next member, so verify refuses them.
    base = hand_made([("a.txt", b"hello\n")])
    blob = hand_made([("a.txt", b"hello\n")], extra_members=[bytes(100)])
    with open_blob(base) as opened:
        at = opened.payload_end
    with open_blob(blob) as opened:
        with pytest.raises(
            estargz.VerificationError,
            match=f"no gzip member starts at compressed offset {at}",
        ):
            opened.verify()


def test_a_source_that_returns_more_than_asked_is_refused() -> None:
    class Greedy:
        def __init__(self, data: bytes) -> None:
            self.data = data
            self.greedy = False

        @property
        def size(self) -> int:
            return len(self.data)

        def read_at(self, offset: int, size: int) -> bytes:
            extra = 7 if self.greedy else 0
            return self.data[offset : offset + size + extra]

    source = Greedy(hand_made([("a.txt", b"hello\n" * 1000)]))
    with open_blob(source) as opened:
        source.greedy = True
        with pytest.raises(estargz.EStargzError, match="were asked for"):
            opened.verify()


@pytest.mark.timeout(120)
def test_a_member_holding_many_chunks_verifies_in_linear_time() -> None:
    # 200 MiB of zeros in one member cut into 200k chunks: each chunk is
    # looked at while its bytes pass, not on every piece inflated (that walk
    # took minutes).
    size, chunk = 200 << 20, 1024
    header = ustar_header(b"zeros", size)
    data_member = member(header + bytes(size))
    digest = "sha256:" + hashlib.sha256(bytes(chunk)).hexdigest()
    entries: list[dict[str, Any]] = [
        {
            "name": "zeros",
            "type": "reg",
            "size": size,
            "offset": 0,
            "innerOffset": 512,
            "chunkSize": chunk,
            "chunkDigest": digest,
            "digest": "sha256:" + hashlib.sha256(bytes(size)).hexdigest(),
        }
    ]
    entries += [
        {
            "name": "zeros",
            "type": "chunk",
            "offset": 0,
            "innerOffset": 512 + at,
            "chunkOffset": at,
            "chunkSize": chunk,
            "chunkDigest": digest,
        }
        for at in range(chunk, size, chunk)
    ]
    blob = data_member + member(bytes(1024))
    end = len(blob)
    toc_json = json.dumps({"version": 1, "entries": entries}).encode()
    blob += member(toc_tar(toc_json)) + footer(end)
    with open_blob(blob) as opened:
        report = opened.verify(threads=2)
    assert report.chunks == size // chunk


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("mode", 0o4755, "mode 0000 in the tar, 4755 in the TOC"),
        ("uid", 1000, "owner 0:0 in the tar, 1000:0 in the TOC"),
        ("gid", 7, "owner 0:0 in the tar, 0:7 in the TOC"),
        ("modtime", "2020-01-01T00:00:00Z", "modification time none in the tar"),
        ("xattrs", {"security.capability": "AQ=="}, "extended attribute 'security"),
    ],
)
def test_tar_headers_and_toc_must_agree_on_metadata(
    field: str, value: Any, message: str
) -> None:
    # A plain pull takes these from the tar header, a lazy pull from the
    # TOC: a blob where they differ gives two different files.
    base = hand_made([("a.txt", b"hello\n")])
    with open_blob(base) as opened:
        toc = json.loads(opened.toc_json)
    toc["entries"][0][field] = value
    with open_blob(rebuild_with_toc(base, json.dumps(toc).encode())) as opened:
        with pytest.raises(
            estargz.VerificationError, match=f"entry 'a.txt': {message}"
        ):
            opened.verify()


def test_a_modification_time_written_another_way_is_the_same_time() -> None:
    files = [("a.txt", b"hello\n")]
    blob = bytearray(hand_made(files))
    with open_blob(bytes(blob)) as opened:
        toc = json.loads(opened.toc_json)
    # The header's time is zero, which Go leaves out; an explicit
    # "+00:00" form of a real time must match the header's.
    toc["entries"][0]["modtime"] = "2020-01-01T00:00:00+00:00"
    header = ustar_header(b"a.txt", 6, mtime=1577836800)
    rebuilt = member(header) + member(padded(b"hello\n")) + member(bytes(1024))
    end = len(rebuilt)
    toc["entries"][0]["offset"] = len(member(header))
    rebuilt += member(toc_tar(json.dumps(toc).encode())) + footer(end)
    with open_blob(rebuilt) as opened:
        assert opened.verify().entries == 1
    # Within a second is the same time (rounded or truncated), not beyond.
    toc["entries"][0]["modtime"] = "2020-01-01T00:00:01+00:00"
    with open_blob(rebuild_with_toc(rebuilt, json.dumps(toc).encode())) as opened:
        opened.verify()
    toc["entries"][0]["modtime"] = "2020-01-01T00:00:02+00:00"
    with open_blob(rebuild_with_toc(rebuilt, json.dumps(toc).encode())) as opened:
        with pytest.raises(estargz.VerificationError, match="modification time"):
            opened.verify()


def test_a_read_error_names_the_member_by_its_offset_in_the_blob() -> None:
    # The TOC points at an empty member; the data follows in the next one.
    data = b"hello\n"
    blob = member(ustar_header(b"a.txt", len(data)))
    at = len(blob)
    blob += member(b"") + member(padded(data)) + member(bytes(1024))
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    entry = {"name": "a.txt", "type": "reg", "size": 6, "offset": at}
    entry |= {"digest": digest, "chunkDigest": digest}
    end = len(blob)
    toc_json = json.dumps({"version": 1, "entries": [entry]}).encode()
    blob += member(toc_tar(toc_json)) + footer(end)
    with open_blob(blob) as opened:
        with pytest.raises(
            estargz.VerificationError,
            match=f"'a.txt'.*gzip member at offset {at} ends before uncompressed byte 6",
        ):
            opened.read("a.txt")


def test_a_name_repeated_thousands_of_times_is_matched_by_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each tar entry of the name is matched to its TOC file by where its data
    # starts, not by trying every TOC file of that name (quadratic before).
    from estargz.reader import _StreamCheck

    calls = 0
    original = _StreamCheck._member_position

    def counted(self: Any, row: int) -> Any:
        nonlocal calls
        calls += 1
        return original(self, row)

    monkeypatch.setattr(_StreamCheck, "_member_position", counted)
    n = 2000
    files = [("same", f"copy {i}\n".encode()) for i in range(n)]
    with open_blob(hand_made(files)) as opened:
        report = opened.verify()
    assert report.entries == n and report.chunks == n
    assert calls < 4 * n
    tampered = hand_made(files, payloads={"same": b"HACKED"})
    with open_blob(tampered) as opened:
        with pytest.raises(estargz.VerificationError, match="'same'"):
            opened.verify()


def test_a_negative_uid_as_go_writes_it_reads_and_verifies() -> None:
    # A base-256 uid of -1 in the tar; Go's TOC then says "uid": -1.  Our
    # writer refuses such input, but blobs Go wrote must still read.
    data = b"hello\n"
    header = bytearray(ustar_header(b"a.txt", len(data)))
    header[108:116] = b"\xff" * 8
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    blob = member(bytes(header))
    at = len(blob)
    blob += member(padded(data)) + member(bytes(1024))
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    entry = {"name": "a.txt", "type": "reg", "size": 6, "offset": at, "uid": -1}
    entry |= {"digest": digest, "chunkDigest": digest}
    end = len(blob)
    toc_json = json.dumps({"version": 1, "entries": [entry]}).encode()
    blob += member(toc_tar(toc_json)) + footer(end)
    with open_blob(blob) as opened:
        assert opened.lookup("a.txt").uid == -1
        assert opened.verify().entries == 1
        assert opened.read("a.txt") == data
    entry["uid"] = -2
    toc_json = json.dumps({"version": 1, "entries": [entry]}).encode()
    with open_blob(rebuild_with_toc(blob, toc_json)) as opened:
        with pytest.raises(estargz.VerificationError, match="owner -1:0 in the tar"):
            opened.verify()
