"""Linters and type checkers run as tests, so CI catches drift."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PYTHON_TREES = ["src/estargz", "tests", "bench", "setup.py", "tools"]

pytestmark = pytest.mark.skipif(
    not (REPO / "src" / "_native" / "_native.pyx").exists(),
    reason="Limitation: needs the source tree, which an sdist-only install lacks",
)


def run(*command: str) -> None:
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_lint() -> None:
    run(sys.executable, "-m", "ruff", "check", *PYTHON_TREES)


def test_ruff_format() -> None:
    run(sys.executable, "-m", "ruff", "format", "--check", *PYTHON_TREES)


def test_mypy_strict() -> None:
    run(sys.executable, "-m", "mypy", "--strict", "src/estargz")


def test_stubs_match_the_extension() -> None:
    run(sys.executable, "-m", "mypy.stubtest", "estargz._native")


def test_cython_lint() -> None:
    linter = shutil.which("cython-lint")
    if linter is None:
        pytest.fail("cython-lint is needed (pip install cython-lint)")
    run(linter, "--max-line-length", "88", "src/_native")
