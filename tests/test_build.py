"""The compiled extension: static zlib-ng, private symbols, no shared zlib."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import estargz
from estargz import _native

EXTENSION = Path(_native.__file__)


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is needed for this test (Debian package binutils)")
    return found


def test_extension_exports_no_zlib_ng_symbol() -> None:
    out = subprocess.run(
        [tool("nm"), "-D", "--defined-only", str(EXTENSION)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    exported = [line.split()[-1] for line in out.splitlines() if line.strip()]
    assert exported, "nm listed no dynamic symbols at all"
    assert not [name for name in exported if "zng_" in name or "zlibng" in name]
    # Only the module init function is ours to export.
    assert [name for name in exported if name.startswith("PyInit_")] == [
        "PyInit__native"
    ]


def test_extension_needs_no_shared_zlib() -> None:
    out = subprocess.run(
        [tool("readelf"), "-d", str(EXTENSION)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    needed = [line for line in out.splitlines() if "(NEEDED)" in line]
    assert not [line for line in needed if "libz" in line], needed


def test_zlib_ng_is_linked_statically() -> None:
    out = subprocess.run(
        [tool("nm"), str(EXTENSION)], check=True, capture_output=True, text=True
    ).stdout
    # The deflate and inflate code lives in the module itself.
    assert " zng_deflate" in out or "zng_deflate\n" in out
    assert estargz.zlib_ng_version().startswith("2.3.")


def test_package_ships_stub_typing_marker_and_licence() -> None:
    package = Path(estargz.__file__).parent
    assert (package / "_native.pyi").is_file()
    assert (package / "py.typed").is_file()
    assert "Jean-loup Gailly" in (package / "LICENSE.zlib-ng.md").read_text()
