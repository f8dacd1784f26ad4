"""Interop with Go stargz (Debian's stargz-snapshotter 0.12, through the
harness in tests/goharness): Go reads and verifies what we write, we read
and verify what Go writes, and both describe the same layer in the TOC.

Go 0.12 knows neither innerOffset nor external TOCs; those modes are checked
against the newest Go's blobs in tests/data/go-blobs instead.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from helpers import GO_BLOBS, convertible_tars, plain_tar, sha256, tar_files

from estargz import writer
from estargz.reader import open_blob

pytestmark = pytest.mark.needs_go
REPO = Path(__file__).resolve().parent.parent
# Inputs estargz converts and Go 0.12 refuses ("unsupported input tar entry
# 'g'"): estargz applies PAX global headers to the entries after them.
GO_REFUSES = {"pax-global-header.tar"}


@pytest.fixture(scope="session")
def go(tmp_path_factory: pytest.TempPathFactory) -> Path:
    binary = REPO / "build" / "go" / "estargz-go"
    if not binary.exists():
        result = subprocess.run(
            ["bash", str(REPO / "tests" / "goharness" / "build.sh"), str(binary)],
            capture_output=True,
            text=True,
        )
        if result.returncode:
            pytest.fail(
                "cannot build the Go harness (needs Debian's golang-go and "
                f"golang-github-containerd-stargz-snapshotter-dev): {result.stderr}"
            )
    return binary


def run_go(go: Path, *args: str) -> Any:
    result = subprocess.run([str(go), *args], capture_output=True)
    if result.returncode:
        raise AssertionError(f"Go harness {args[0]} failed: {result.stderr.decode()}")
    if args[0] in ("toc",):
        return json.loads(result.stdout)
    if args[0] == "cat":
        return result.stdout
    return json.loads(result.stdout)


def semantic(toc: dict[str, Any]) -> list[dict[str, Any]]:
    """TOC entries without offsets, and with user/group names filled in as a
    reader would (Go writes them once per writer part, which depends on its
    worker count)."""
    users: dict[int, str] = {}
    groups: dict[int, str] = {}
    entries = []
    for entry in toc["entries"] or []:
        entry = {k: v for k, v in entry.items() if k not in ("offset", "innerOffset")}
        if entry["type"] != "chunk":
            uid, gid = entry.get("uid", 0), entry.get("gid", 0)
            if entry.get("userName"):
                users[uid] = entry["userName"]
            if users.get(uid):
                entry["userName"] = users[uid]
            if entry.get("groupName"):
                groups[gid] = entry["groupName"]
            if groups.get(gid):
                entry["groupName"] = groups[gid]
        entries.append(entry)
    return entries


def go_converts(go: Path, source: Path, out: Path, *options: str) -> bool:
    result = subprocess.run(
        [str(go), "convert", "-workers", "1", *options, str(source), str(out)],
        capture_output=True,
    )
    return result.returncode == 0


@pytest.mark.parametrize("path", convertible_tars(), ids=lambda p: p.name)
def test_go_verifies_ours_and_tocs_agree(go: Path, path: Path, tmp_path: Path) -> None:
    ours = tmp_path / "ours.esgz"
    result = writer.convert(path, ours, chunk_size=1000)
    theirs = tmp_path / "go.esgz"
    converted = go_converts(go, path, theirs, "-chunk-size", "1000")
    assert converted == (path.name not in GO_REFUSES)
    if not converted:
        # Go cannot convert it, but reads and verifies what we made of it.
        assert run_go(go, "verify", "-toc-digest", result.toc_digest, str(ours))["ok"]
        return
    our_toc = run_go(go, "toc", str(ours))
    go_toc = run_go(go, "toc", str(theirs))
    assert semantic(our_toc) == semantic(go_toc)
    if path.name == "hardlink-missing-target.tar":
        # Go writes a blob its own reader refuses; ours is the same blob.
        return
    report = run_go(go, "verify", "-toc-digest", result.toc_digest, str(ours))
    assert report["ok"] and report["tocDigest"] == result.toc_digest
    # Go reads back every regular file with the input's bytes.
    files = tar_files(plain_tar(path))
    with open_blob(theirs) as go_blob:
        go_blob.verify()
        for name, content in files.items():
            entry = go_blob.toc.lookup(name)
            if entry is not None and entry.type == "reg":
                assert go_blob.read(name) == content
                assert run_go(go, "cat", str(ours), name) == content


@pytest.mark.parametrize("level", [9, 1])
def test_real_layer_both_ways(go: Path, tmp_path: Path, level: int) -> None:
    """A real layer (this machine's Python standard library) converted by
    both; each verifies the other's blob."""
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"]) / "email"
    layer = tmp_path / "layer.tar"
    with tarfile.open(layer, "w") as tar:
        for parent in ("usr", "usr/lib", "usr/lib/python3"):
            tar.add(root.parent, arcname=parent, recursive=False)
        tar.add(root, arcname="usr/lib/python3/email")
    ours = tmp_path / "ours.esgz"
    result = writer.convert(layer, ours, compression_level=level)
    go_report = run_go(go, "verify", "-toc-digest", result.toc_digest, str(ours))
    assert go_report["ok"]
    theirs = tmp_path / "go.esgz"
    assert go_converts(go, layer, theirs, "-level", str(level))
    go_result = run_go(go, "toc", str(theirs))
    assert semantic(go_result) == semantic(run_go(go, "toc", str(ours)))
    with open_blob(theirs) as blob:
        blob.verify()
    # Prioritized files land where Go puts them.
    names = ["usr/lib/python3/email/utils.py", "usr/lib/python3/email/message.py"]
    listing = tmp_path / "prio.txt"
    listing.write_text("\n".join(names))
    writer.convert(layer, ours, prioritized_files=names)
    assert go_converts(go, layer, theirs, "-prioritized", str(listing))
    assert semantic(run_go(go, "toc", str(ours))) == semantic(
        run_go(go, "toc", str(theirs))
    )
    run_go(go, "verify", str(ours))


def test_keep_diff_id_keeps_the_diff_id_of_every_input(
    go: Path, tmp_path: Path
) -> None:
    for path in convertible_tars():
        if path.name == "name-stargz-index-json.tar":
            continue
        result = writer.convert(
            path, tmp_path / "b.esgz", external_toc=tmp_path / "t.gz", keep_diff_id=True
        )
        assert result.diff_id == sha256(plain_tar(path)), path.name


def test_go_reference_blobs_are_verified_by_go_too(go: Path) -> None:
    expected = json.loads((GO_BLOBS / "expected.json").read_text())
    for name in ("default.esgz", "prioritized.esgz"):
        report = run_go(
            go,
            "verify",
            "-toc-digest",
            expected[name]["tocDigest"],
            str(GO_BLOBS / name),
        )
        assert report["ok"]
