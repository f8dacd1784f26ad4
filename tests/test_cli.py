"""The ``estargz`` command line, run as a real process."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
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


def test_version_and_help() -> None:
    assert b"zlib-ng 2.3." in estargz("--version").stdout
    result = estargz(check=False)
    assert result.returncode == 2 and b"convert" in result.stderr
