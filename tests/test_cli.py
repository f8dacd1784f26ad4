"""The ``estargz`` command line, run as a real process."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import GO_BLOBS, sha256, tar_files, tricky_tars

INPUT = GO_BLOBS / "input.tar"
EXPECTED = json.loads((GO_BLOBS / "expected.json").read_text())


def estargz(
    *args: str, stdin: bytes = b"", check: bool = True
) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(
        [sys.executable, "-m", "estargz", *args], input=stdin, capture_output=True
    )
    if check and result.returncode:
        raise AssertionError(f"estargz {args} failed: {result.stderr.decode()}")
    return result


def test_convert_json_report(tmp_path: Path) -> None:
    out = tmp_path / "b.esgz"
    report = json.loads(estargz("convert", str(INPUT), str(out), "--json").stdout)
    assert set(report) == {
        "tocDigest",
        "diffID",
        "blobDigest",
        "blobSize",
        "uncompressedSize",
    }
    data = out.read_bytes()
    assert report["blobDigest"] == sha256(data) and report["blobSize"] == len(data)
    assert report["diffID"] == sha256(gzip.decompress(data))


def test_convert_external_toc_and_keep_diff_id_with_ctr_remote_names(
    tmp_path: Path,
) -> None:
    out, toc = tmp_path / "b.esgz", tmp_path / "toc.tar.gz"
    report = json.loads(
        estargz(
            "convert",
            str(INPUT),
            str(out),
            "--json",
            "--estargz-external-toc",
            str(toc),
            "--estargz-keep-diff-id",
            "--estargz-chunk-size",
            "65536",
            "--estargz-min-chunk-size",
            "16384",
            "--estargz-compression-level",
            "9",
        ).stdout
    )
    assert set(report) == {
        "tocDigest",
        "diffID",
        "blobDigest",
        "blobSize",
        "uncompressedSize",
        "externalTOCDigest",
        "externalTOCSize",
    }
    assert report["diffID"] == EXPECTED["input.tar"]["sha256"].join(["sha256:", ""])
    assert report["externalTOCDigest"] == sha256(toc.read_bytes())


def test_convert_human_summary_and_stdin_stdout(tmp_path: Path) -> None:
    out = tmp_path / "b.esgz"
    text = estargz("convert", str(INPUT), str(out)).stdout.decode()
    assert f"wrote {out}" in text and "TOC digest   sha256:" in text
    piped = estargz(
        "convert", "-", "-", "--json", stdin=gzip.compress(INPUT.read_bytes())
    )
    assert piped.stdout == out.read_bytes()
    # With the blob on standard output, the report goes to standard error.
    assert json.loads(piped.stderr)["blobSize"] == len(piped.stdout)


def test_record_in_allows_missing(tmp_path: Path) -> None:
    record = tmp_path / "record.json"
    record.write_text('{"path": "usr/bin/sh"}\n{"path": "not/there"}\n')
    out = tmp_path / "b.esgz"
    estargz("convert", str(INPUT), str(out), "--estargz-record-in", str(record))
    lines = estargz("ls", str(out)).stdout.decode().splitlines()
    names = [line.split(" -> ")[0].split()[-1] for line in lines[:4]]
    assert names == ["usr/", "usr/bin/", "usr/bin/sh", ".prefetch.landmark"]


@pytest.mark.parametrize(
    "name, message",
    [
        (
            "malformed-bad-checksum.tar",
            "estargz: error: tar: entry 'bad.txt' at offset 0: header checksum",
        ),
        (
            "truncated-mid-file.tar",
            "estargz: error: tar: entry 'cut.bin' at offset 1024: archive ends at offset 3536",
        ),
        ("sparse-pax-0.0.tar", "sparse files"),
    ],
)
def test_user_errors_are_one_line_without_traceback(
    name: str, message: str, tmp_path: Path
) -> None:
    path = next(p for p in tricky_tars() if p.name == name)
    result = estargz("convert", str(path), str(tmp_path / "b.esgz"), check=False)
    assert result.returncode == 1
    err = result.stderr.decode()
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_bad_arguments(tmp_path: Path) -> None:
    result = estargz(
        "convert", str(INPUT), str(tmp_path / "b"), "--keep-diff-id", check=False
    )
    assert (
        result.returncode == 2
        and b"--keep-diff-id needs --external-toc" in result.stderr
        and result.stderr.startswith(b"usage: estargz convert ")
    )
    result = estargz("convert", str(INPUT), str(INPUT), check=False)
    assert (
        result.returncode == 1
        and b"input and output are the same file" in result.stderr
    )
    result = estargz(
        "convert",
        str(INPUT),
        str(tmp_path / "b"),
        "--external-toc",
        str(tmp_path / "b"),
        check=False,
    )
    assert result.returncode == 1 and b"would be the same file" in result.stderr
    result = estargz(
        "convert", str(INPUT), str(tmp_path / "no" / "dir" / "b"), check=False
    )
    assert (
        result.returncode == 1
        and b"cannot write" in result.stderr
        and b".part" not in result.stderr
    )
    result = estargz(
        "convert",
        str(INPUT),
        str(tmp_path / "b"),
        "--compression-level",
        "12",
        check=False,
    )
    assert result.returncode == 2
    result = estargz(
        "convert", str(INPUT), str(tmp_path / "b"), "--chunk-size", "lots", check=False
    )
    assert result.returncode == 2
    result = estargz(
        "convert", str(tmp_path / "missing.tar"), str(tmp_path / "b"), check=False
    )
    assert result.returncode == 1 and b"cannot open input" in result.stderr
    result = estargz("info", str(INPUT), check=False)
    assert result.returncode == 1 and b"not an eStargz blob" in result.stderr
    assert b"Traceback" not in result.stderr


def test_reader_commands(tmp_path: Path) -> None:
    blob = GO_BLOBS / "min-chunk.esgz"
    info = json.loads(estargz("info", str(blob), "--json").stdout)
    assert (
        info["format"] == "estargz"
        and info["tocDigest"] == EXPECTED["min-chunk.esgz"]["tocDigest"]
    )
    assert info["chunks"] == 50 and info["members"] < 10
    listing = estargz("ls", str(blob)).stdout.decode()
    assert "usr/bin/sh -> tool" in listing and "link to usr/bin/tool" in listing
    files = tar_files(INPUT.read_bytes())
    assert (
        estargz("cat", str(blob), "usr/share/words.txt").stdout
        == files["usr/share/words.txt"]
    )
    assert (
        sha256(estargz("toc", str(blob)).stdout)
        == EXPECTED["min-chunk.esgz"]["tocDigest"]
    )
    ok = estargz(
        "verify", str(blob), "--toc-digest", EXPECTED["min-chunk.esgz"]["tocDigest"]
    )
    assert ok.stdout.startswith(b"ok: TOC digest matches")
    bad = estargz(
        "verify", str(blob), "--toc-digest", "sha256:" + "1" * 64, check=False
    )
    assert bad.returncode == 1 and b"TOC digest mismatch" in bad.stderr
    missing = estargz("cat", str(blob), "no/such", check=False)
    assert missing.returncode == 1 and b"'no/such' is not in the blob" in missing.stderr
    target = tmp_path / "x"
    estargz("extract", str(blob), str(target))
    assert (target / "usr/share/words.txt").read_bytes() == files["usr/share/words.txt"]
    estargz("unpack", str(blob), str(tmp_path / "l.tar"))
    assert (
        tar_files((tmp_path / "l.tar").read_bytes())["etc/hosts"] == files["etc/hosts"]
    )


def test_external_toc_commands() -> None:
    blob, toc = GO_BLOBS / "keep-diff-id.esgz", GO_BLOBS / "keep-diff-id.toc.tar.gz"
    estargz("verify", str(blob), "--external-toc", str(toc))
    assert (
        estargz("unpack", str(blob), "-", "--external-toc", str(toc)).stdout
        == INPUT.read_bytes()
    )
    result = estargz("ls", str(blob), check=False)
    assert result.returncode == 1 and b"--external-toc" in result.stderr
    # The layer is all there before the footer: unpack needs no TOC.
    assert estargz("unpack", str(blob), "-").stdout == INPUT.read_bytes()


def test_corrupt_blob_verify_names_entry(tmp_path: Path) -> None:
    data = bytearray((GO_BLOBS / "default.esgz").read_bytes())
    data[120] ^= 0x55
    broken = tmp_path / "broken.esgz"
    broken.write_bytes(bytes(data))
    result = estargz("verify", str(broken), check=False)
    assert result.returncode == 1
    assert b"Traceback" not in result.stderr and b"offset" in result.stderr


def test_extract_into_a_file_and_stdin_blob(tmp_path: Path) -> None:
    result = estargz("extract", str(GO_BLOBS / "default.esgz"), str(INPUT), check=False)
    assert result.returncode == 1 and b"cannot extract into" in result.stderr
    assert b"Traceback" not in result.stderr
    blob = (GO_BLOBS / "default.esgz").read_bytes()
    listing = estargz("ls", "-", stdin=blob).stdout.decode()
    assert "usr/bin/tool" in listing
    assert estargz("-q", "verify", str(GO_BLOBS / "default.esgz")).stdout == b""
    assert estargz("verify", str(GO_BLOBS / "default.esgz"), "-q").stdout == b""


def one_line_error(result: subprocess.CompletedProcess[bytes], message: str) -> None:
    err = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 1, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("estargz: error: ") and message in err, err


def pax_tar(entries: list[tuple[str, dict[str, str]]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, pax in entries:
            info = tarfile.TarInfo(name)
            info.size = 2
            info.pax_headers = pax
            tar.addfile(info, io.BytesIO(b"hi"))
    return raw.getvalue()


def blob_with_toc(toc_json: bytes) -> bytes:
    from estargz import _native
    from estargz._format import footer, toc_tar

    return _native.MemberCompressor(6).compress(toc_tar(toc_json)) + footer(0)


def remove_deep(path: Path) -> None:
    """Remove a tree too deep for shutil.rmtree (which recurses before Python
    3.12), such as pytest's clean-up of old temporary directories."""
    from estargz._extract import _remove_tree

    parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _remove_tree(parent, path.name)
    finally:
        os.close(parent)


@pytest.fixture
def deep_target(tmp_path: Path) -> Iterator[Path]:
    """A directory to extract deep trees into, removed afterwards."""
    target = tmp_path / "root"
    yield target
    if os.path.lexists(target):
        remove_deep(target)


def test_deep_paths_list_verify_and_extract(tmp_path: Path, deep_target: Path) -> None:
    layer, blob = tmp_path / "deep.tar", tmp_path / "deep.esgz"
    deep = "d/" * 1500 + "f"
    layer.write_bytes(pax_tar([(deep, {})]))
    estargz("convert", str(layer), str(blob))
    assert deep in estargz("ls", str(blob)).stdout.decode()
    assert estargz("verify", str(blob)).stdout.startswith(b"ok: ")
    estargz("extract", str(blob), str(deep_target))
    assert deep_target.joinpath(*deep.split("/")[:10]).is_dir()


def test_hostile_names_and_numbers_are_one_line_errors(tmp_path: Path) -> None:
    # A NUL in a name: a tar can carry it in a PAX record, which convert
    # refuses as Go does; a TOC can carry it too, which every reader command
    # refuses in one line.
    layer, blob = tmp_path / "nul.tar", tmp_path / "nul.esgz"
    layer.write_bytes(pax_tar([("x", {"path": "a\x00b"})]))
    one_line_error(
        estargz("convert", str(layer), str(blob), check=False),
        "tar: entry 'a\\x00b' at offset 1024: a NUL byte in the name",
    )
    blob.write_bytes(
        blob_with_toc(
            b'{"version": 1, "entries": [{"name": "a\\u0000b", "type": "dir"}]}'
        )
    )
    for command in (["ls"], ["verify"], ["extract", str(tmp_path / "x")]):
        one_line_error(
            estargz(command[0], str(blob), *command[1:], check=False),
            "('a\\x00b'): the name holds a NUL character",
        )
    huge = tmp_path / "huge.esgz"
    huge.write_bytes(
        blob_with_toc(
            b'{"version": 1, "entries": [{"name": "a", "type": "reg", "size": 1'
            + b"0" * 100_000
            + b"}]}"
        )
    )
    for command in ("info", "ls", "verify"):
        one_line_error(
            estargz(command, str(huge), check=False),
            "TOC entry 0 (at character 27): Exceeds the limit (4300 digits)",
        )
    wide = tmp_path / "wide.esgz"
    wide.write_bytes(
        blob_with_toc(
            b'{"version": 1, "entries": [{"name": "a", "type": "reg", "size": 1'
            + b"0" * 400
            + b"}]}"
        )
    )
    one_line_error(
        estargz("ls", str(wide), check=False),
        "TOC entry 0 ('a'): size (1329-bit number) is larger than",
    )
    # What the OS refuses: one line naming the entry.
    long = tmp_path / "long.esgz"
    long.write_bytes(
        blob_with_toc(
            json.dumps(
                {"version": 1, "entries": [{"name": "n" * 300, "type": "dir"}]}
            ).encode()
        )
    )
    one_line_error(
        estargz("extract", str(long), str(tmp_path / "y"), check=False),
        "nnnnnnnnnnnnnnnnnnnn': File name too long",
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="Limitation: owners are set as root")
def test_an_owner_the_system_cannot_take_is_one_line(tmp_path: Path) -> None:
    layer, blob = tmp_path / "uid.tar", tmp_path / "uid.esgz"
    layer.write_bytes(pax_tar([("x", {"uid": str(1 << 40)})]))
    estargz("convert", str(layer), str(blob))
    assert b" 1099511627776/" in estargz("ls", str(blob)).stdout
    one_line_error(
        estargz("extract", str(blob), str(tmp_path / "x"), check=False),
        "'x': uid 1099511627776 is outside what this system takes",
    )


def test_version_and_help() -> None:
    assert b"zlib-ng 2.3." in estargz("--version").stdout
    result = estargz(check=False)
    assert result.returncode == 2 and b"convert" in result.stderr


def test_ls_escapes_names_that_would_drive_the_terminal(tmp_path: Path) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in ("new\nline", "bell\x07", "latin1-\udce9"):  # b"\xe9": not UTF-8
            info = tarfile.TarInfo(name)
            info.size = 0
            tar.addfile(info)
    layer, blob = tmp_path / "l.tar", tmp_path / "l.esgz"
    layer.write_bytes(raw.getvalue())
    estargz("convert", str(layer), str(blob))
    for encoding in ("utf-8", "ascii"):
        result = subprocess.run(
            [sys.executable, "-m", "estargz", "ls", str(blob)],
            capture_output=True,
            env={**os.environ, "PYTHONIOENCODING": encoding},
        )
        assert result.returncode == 0, result.stderr
        out = result.stdout.decode(encoding)
        assert "new\\x0aline" in out and "bell\\x07" in out, out
        # Go writes U+FFFD for the byte that is not UTF-8 (FORMAT.md §16).
        assert "latin1-\ufffd" in out or "latin1-\\ufffd" in out, out
        assert len(out.splitlines()) == 4  # with the landmark
