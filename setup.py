"""Build the estargz extension: zlib-ng (static, native zng_ API) plus Cython.

zlib-ng's source is never part of this repository.  The build takes it from
one of these places, in order:

* ``ESTARGZ_ZLIB_NG_PREFIX``: an installed zlib-ng whose ``lib/`` holds a
  position-independent ``libz-ng.a`` and whose ``include/`` holds
  ``zlib-ng.h`` (distribution builds).
* ``ESTARGZ_ZLIB_NG_SOURCE``: a zlib-ng source tree, or the pinned PyPI sdist
  ``zlib_ng-1.1.0.tar.gz`` (offline builds).
* otherwise the pinned sdist is looked up in the cache directory
  (``ESTARGZ_ZLIB_NG_CACHE``, default ``build/zlib-ng-cache``) and fetched
  from PyPI when absent.  Its SHA-256 is checked in every case.

The static library is built once per platform under ``build/`` and reused by
later builds, which keeps a cibuildwheel run from compiling it per Python.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import urllib.request
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ZLIB_NG_SDIST = "zlib_ng-1.1.0.tar.gz"
ZLIB_NG_SDIST_SHA256 = (
    "08a3a8468d4f130e3dc80d28ec42fcc7a878a57dfed616233e791066327d78a3"
)
ZLIB_NG_SDIST_URL = (
    "https://files.pythonhosted.org/packages/25/c8/"
    "2914b13c7972dccf8774947ffe781b761b483aa190e55a4aa89886982daa/" + ZLIB_NG_SDIST
)
ZLIB_NG_VERSION = "2.3.3"
FETCH_COMMAND = (
    "pip download --no-binary :all: --no-deps zlib-ng==1.1.0 -d build/zlib-ng-cache"
)

HERE = Path(__file__).resolve().parent
BUILD = HERE / "build"

CYTHON_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "initializedcheck": False,
    "cdivision": True,
    "embedsignature": True,
    "auto_pickle": False,
    "autotestdict": False,
}


def _log(message: str) -> None:
    print(f"estargz build: {message}", flush=True)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checked_sdist(path: Path) -> Path:
    found = _sha256_of(path)
    if found != ZLIB_NG_SDIST_SHA256:
        raise SystemExit(
            f"estargz build: {path} has sha256 {found}, "
            f"expected {ZLIB_NG_SDIST_SHA256}; delete it and build again"
        )
    return path


def _fetch_sdist(cache: Path) -> Path:
    """Download the pinned sdist into ``cache`` (pip first, then plain HTTPS)."""
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / ZLIB_NG_SDIST
    if target.exists():
        return _checked_sdist(target)

    pip = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:"]
    pip += ["--no-deps", "--no-build-isolation", "zlib-ng==1.1.0", "-d", str(cache)]
    _log("fetching " + ZLIB_NG_SDIST)
    # The isolated build environment may hide pip; plain HTTPS is the fallback.
    result = subprocess.run(pip, capture_output=True, text=True)
    if result.returncode != 0 or not target.exists():
        partial = target.with_suffix(".part")
        try:
            with urllib.request.urlopen(ZLIB_NG_SDIST_URL, timeout=120) as response:
                with partial.open("wb") as out:
                    shutil.copyfileobj(response, out)
        except OSError as exc:
            raise SystemExit(
                f"estargz build: cannot fetch {ZLIB_NG_SDIST} ({exc}); "
                f"fetch it with `{FETCH_COMMAND}` or set ESTARGZ_ZLIB_NG_SOURCE"
            ) from exc
        partial.replace(target)
    return _checked_sdist(target)


def _unpack_sdist(sdist: Path, dest: Path) -> Path:
    """Extract only the bundled zlib-ng tree of the sdist into ``dest``."""
    marker = dest / ".complete"
    if marker.exists():
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    prefix = "zlib_ng-1.1.0/src/zlib_ng/zlib-ng/"
    with tarfile.open(sdist) as archive:
        for member in archive.getmembers():
            if not member.name.startswith(prefix) or not member.isfile():
                continue
            relative = member.name[len(prefix) :]
            if relative.startswith("/") or ".." in relative.split("/"):
                raise SystemExit(f"estargz build: unsafe path {member.name} in sdist")
            out = dest / relative
            out.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(member)
            assert source is not None
            with source, out.open("wb") as f:
                shutil.copyfileobj(source, f)
            os.chmod(out, member.mode & 0o755)
    if not (dest / "CMakeLists.txt").exists():
        raise SystemExit(f"estargz build: {sdist} holds no zlib-ng source tree")
    marker.touch()
    return dest


def _source_tree() -> Path:
    given = os.environ.get("ESTARGZ_ZLIB_NG_SOURCE")
    if given:
        path = Path(given).resolve()
        if path.is_dir():
            if not (path / "CMakeLists.txt").exists():
                raise SystemExit(f"estargz build: {path} is not a zlib-ng source tree")
            return path
        return _unpack_sdist(_checked_sdist(path), BUILD / "zlib-ng-src")
    cache = Path(os.environ.get("ESTARGZ_ZLIB_NG_CACHE", BUILD / "zlib-ng-cache"))
    return _unpack_sdist(_fetch_sdist(cache.resolve()), BUILD / "zlib-ng-src")


def _cmake() -> str:
    found = shutil.which("cmake")
    if found:
        return found
    try:
        import cmake  # type: ignore[import-not-found]
    except ImportError as exc:
        raise SystemExit(
            "estargz build: cmake is required (pip install cmake)"
        ) from exc
    return os.path.join(cmake.CMAKE_BIN_DIR, "cmake")


def _build_zlib_ng() -> Path:
    """Return an install prefix holding a static, PIC, native-API zlib-ng."""
    given = os.environ.get("ESTARGZ_ZLIB_NG_PREFIX")
    if given:
        prefix = Path(given).resolve()
        if not _static_library(prefix).exists():
            raise SystemExit(f"estargz build: no libz-ng.a under {prefix}/lib*")
        return prefix

    tag = f"{sysconfig.get_platform()}-{platform.machine()}".replace("/", "_")
    prefix = BUILD / f"zlib-ng-{ZLIB_NG_VERSION}-{tag}"
    if (prefix / ".complete").exists():
        return prefix

    source = _source_tree()
    work = BUILD / f"zlib-ng-cmake-{tag}"
    if work.exists():
        shutil.rmtree(work)
    cmake = _cmake()
    options = {
        "CMAKE_BUILD_TYPE": "Release",
        "CMAKE_INSTALL_PREFIX": str(prefix),
        "CMAKE_INSTALL_LIBDIR": "lib",
        "CMAKE_POSITION_INDEPENDENT_CODE": "ON",
        "CMAKE_C_VISIBILITY_PRESET": "hidden",
        "BUILD_SHARED_LIBS": "OFF",
        "ZLIB_COMPAT": "OFF",
        "BUILD_TESTING": "OFF",
        "WITH_GTEST": "OFF",
        "WITH_GZFILEOP": "OFF",
        "WITH_NATIVE_INSTRUCTIONS": "OFF",
        "WITH_RUNTIME_CPU_DETECTION": "ON",
    }
    configure = [cmake, "-S", str(source), "-B", str(work)]
    configure += [f"-D{key}={value}" for key, value in options.items()]
    _log("building zlib-ng " + ZLIB_NG_VERSION)
    subprocess.run(configure, check=True)
    jobs = str(os.cpu_count() or 1)
    subprocess.run(
        [cmake, "--build", str(work), "--config", "Release", "-j", jobs], check=True
    )
    subprocess.run([cmake, "--install", str(work), "--config", "Release"], check=True)
    if not _static_library(prefix).exists():
        raise SystemExit(f"estargz build: zlib-ng install in {prefix} has no libz-ng.a")
    shutil.copy(source / "LICENSE.md", prefix / "LICENSE.zlib-ng.md")
    (prefix / ".complete").touch()
    return prefix


def _static_library(prefix: Path) -> Path:
    for libdir in ("lib", "lib64"):
        candidate = prefix / libdir / "libz-ng.a"
        if candidate.exists():
            return candidate
    return prefix / "lib" / "libz-ng.a"


def _check_version(prefix: Path) -> None:
    header = (prefix / "include" / "zlib-ng.h").read_text()
    match = re.search(r'#define ZLIBNG_VERSION "([^"]+)"', header)
    if not match or not match.group(1).startswith("2.3."):
        found = match.group(1) if match else "unknown"
        raise SystemExit(f"estargz build: zlib-ng 2.3.x required, found {found}")


class BuildExt(build_ext):
    """Build zlib-ng first, then the extension, then place its stub and licence."""

    def build_extensions(self) -> None:
        prefix = _build_zlib_ng()
        _check_version(prefix)
        self._zlib_ng_prefix = prefix
        for ext in self.extensions:
            ext.include_dirs.append(str(prefix / "include"))
            ext.extra_objects.append(str(_static_library(prefix)))
        super().build_extensions()

    def run(self) -> None:
        super().run()
        # The stub lives beside the Cython source; it is installed beside the
        # compiled module, as is zlib-ng's licence (its source is not shipped).
        package_dir = Path(self.get_ext_fullpath("estargz._native")).parent
        package_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(
            HERE / "src" / "_native" / "_native.pyi", package_dir / "_native.pyi"
        )
        prefix = getattr(self, "_zlib_ng_prefix", None)
        if prefix is not None and (prefix / "LICENSE.zlib-ng.md").exists():
            shutil.copy(
                prefix / "LICENSE.zlib-ng.md", package_dir / "LICENSE.zlib-ng.md"
            )


def _extensions() -> list[Extension]:
    from Cython.Build import cythonize

    compile_args = ["-O3", "-fvisibility=hidden", "-Wall", "-Wno-unused-function"]
    if os.environ.get("ESTARGZ_WERROR") == "1":
        compile_args.append("-Werror")
    link_args = []
    if sys.platform.startswith("linux"):
        # Keep every symbol of the static archive out of the dynamic table.
        link_args.append("-Wl,--exclude-libs,ALL")
    native = Extension(
        "estargz._native",
        sources=["src/_native/_native.pyx", "src/_native/sha256.c"],
        include_dirs=["src/_native"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
    annotate = os.environ.get("ESTARGZ_ANNOTATE") == "1"
    return cythonize(
        [native],
        compiler_directives=CYTHON_DIRECTIVES,
        annotate=annotate,
        build_dir="build/cython",
    )


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
