#!/usr/bin/env python3
"""Build three real, uncompressed container-layer tars for the estargz benchmarks.

Layers (written to --out, default ``bench/layers/`` under the repo root):

* ``debian-minbase.tar``  -- ``debootstrap --variant=minbase bookworm`` root fs.
* ``site-packages.tar``   -- ``pip install --target`` of pinned numpy/pandas/scipy
  (binary wheels only), laid out as ``usr/local/lib/python3.11/site-packages/``
  plus ``usr/local/bin/`` like a ``python:3.11`` image layer.
* ``shared-libs.tar``     -- large shared libraries: the auditwheel-vendored
  libraries (``*.libs/``) of the site-packages layer plus the shared objects
  under ``usr/lib/`` of a fixed list of Debian bookworm packages.

Each tar is built only if it does not exist yet (``--force`` rebuilds).  The
tars are written by GNU tar with ``--sort=name --numeric-owner --format=pax``,
relative member names (``bin``, ``etc/passwd`` ...), no atime/ctime PAX
records, and mtimes clamped to ``--source-date-epoch``, so tarring the same
tree twice gives the same bytes.  A ``<layer>.tar.json`` sidecar records how
the layer was built (inputs, versions, time taken, sha256).

Standard library only; Python 3.9+.  Needs root (debootstrap, device nodes,
ownership), GNU tar >= 1.28, and for shared-libs.tar apt-get and dpkg-deb.
"""

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time

# --------------------------------------------------------------------------
# Pinned inputs
# --------------------------------------------------------------------------

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

# Layer paths use the Python version of the target image, not of the host.
TARGET_PY = "3.11"

# Exact versions, the full dependency closure, installed with --no-deps so pip
# never resolves anything on its own.  All have cp311 manylinux wheels for
# x86_64 and aarch64.
PIP_PINS = [
    "numpy==2.2.6",
    "scipy==1.15.3",
    "pandas==2.2.3",
    "python-dateutil==2.9.0.post0",
    "pytz==2025.2",
    "six==1.17.0",
    "tzdata==2025.2",
]

# Debian bookworm packages whose shared objects go into shared-libs.tar:
#   libllvm15        one ~117 MB library (libLLVM-15.so.1) + symlink
#   libicu72         ICU, incl. the ~31 MB libicudata, plus symlinks
#   libgl1-mesa-dri  one ~26 MB Mesa driver hard-linked under 13 names
DEB_LIB_PACKAGES = ["libllvm15", "libicu72", "libgl1-mesa-dri"]

# Default for clamping mtimes (2024-01-01T00:00:00Z); SOURCE_DATE_EPOCH wins.
DEFAULT_EPOCH = 1704067200

LAYERS = ["debian-minbase", "site-packages", "shared-libs"]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class BuildError(Exception):
    pass


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def log(msg):
    print(msg, flush=True)


def run(cmd, logfile=None, env=None, cwd=None):
    """Run cmd; output goes to logfile (appended) if given.  Raise BuildError
    with the tail of the output on failure."""
    log("  $ " + " ".join(cmd))
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    if logfile is None:
        rc = subprocess.call(cmd, env=full_env, cwd=cwd)
        if rc != 0:
            raise BuildError(f"command failed with exit code {rc}: {' '.join(cmd)}")
        return
    with open(logfile, "ab") as fh:
        fh.write(("\n$ " + " ".join(cmd) + "\n").encode())
        fh.flush()
        rc = subprocess.call(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=full_env, cwd=cwd
        )
    if rc != 0:
        with open(logfile, "rb") as fh:
            tail = fh.read()[-4000:].decode("utf-8", "replace")
        raise BuildError(
            f"command failed with exit code {rc}: {' '.join(cmd)}\n"
            f"--- last lines of {logfile} ---\n{tail}"
        )


def which(name):
    return shutil.which(name) or shutil.which(
        name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin:/bin"
    )


def mounts_under(path):
    """Mount points at or below path (from /proc/self/mountinfo)."""
    path = os.path.realpath(path)
    found = []
    try:
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                mp = line.split()[4]
                mp = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), mp)
                if mp == path or mp.startswith(path.rstrip("/") + "/"):
                    found.append(mp)
    except OSError:
        pass
    return found


def safe_rmtree(path):
    """rm -rf, but never through a mount point (e.g. a chroot's /proc or
    bind-mounted /dev left behind by an interrupted debootstrap)."""
    if not os.path.lexists(path):
        return
    left = mounts_under(path)
    for mp in sorted(left, reverse=True):
        subprocess.call(["umount", mp])
    left = mounts_under(path)
    if left:
        raise BuildError(
            "refusing to delete {}: still mounted below it: {}".format(
                path, ", ".join(left)
            )
        )
    shutil.rmtree(path)


def check_gnu_tar():
    tar = which("tar")
    if not tar:
        raise BuildError("GNU tar not found")
    out = subprocess.run([tar, "--version"], stdout=subprocess.PIPE, text=True).stdout
    m = re.search(r"GNU tar\)? (\d+)\.(\d+)", out)
    if not m or (int(m.group(1)), int(m.group(2))) < (1, 28):
        raise BuildError(
            "need GNU tar >= 1.28 (for --sort=name); found: %s"
            % (out.splitlines()[0] if out else "?")
        )
    return tar


def deb_arch():
    try:
        return subprocess.run(
            ["dpkg", "--print-architecture"],
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"x86_64": "amd64", "aarch64": "arm64"}.get(
            platform.machine(), platform.machine()
        )


def make_layer_tar(root, out_tar, epoch, logfile):
    """Tar the contents of root (members relative, no leading ./) into out_tar
    atomically.  Deterministic for a given tree."""
    tar = check_gnu_tar()
    names = sorted(os.listdir(root), key=os.fsencode)
    if not names:
        raise BuildError(f"nothing to tar in {root}")
    tmp = out_tar + ".tmp"
    if os.path.exists(tmp):
        os.unlink(tmp)
    cmd = [
        tar,
        "--create",
        "--file",
        tmp,
        "--directory",
        root,
        "--sort=name",
        "--numeric-owner",
        "--format=pax",
        # no atime/ctime (change every run), and no sub-second mtime PAX
        # records: the ustar header keeps whole-second mtimes, so PAX
        # extended headers only appear where needed (long names etc.),
        # as in layers written by docker.
        "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime,delete=mtime",
        "--one-file-system",
    ]
    if epoch is not None:
        cmd += [f"--mtime=@{epoch}", "--clamp-mtime"]
    cmd += ["--", *names]
    run(cmd, logfile, env={"LC_ALL": "C"})
    os.replace(tmp, out_tar)


def layer_stats(path):
    """Stream through a tar (never loads it whole) and count its entries."""
    st = {
        "path": os.path.relpath(path, REPO_ROOT)
        if path.startswith(REPO_ROOT)
        else path,
        "size_bytes": os.path.getsize(path),
    }
    st["size_mb"] = round(st["size_bytes"] / 1e6, 1)
    counts = dict(
        entries=0,
        regular_files=0,
        directories=0,
        symlinks=0,
        hardlinks=0,
        char_devices=0,
        block_devices=0,
        fifos=0,
    )
    reg_bytes = 0
    largest = 0
    with tarfile.open(path, mode="r|") as tf:
        for ti in tf:
            counts["entries"] += 1
            if ti.isreg():
                counts["regular_files"] += 1
                reg_bytes += ti.size
                largest = max(largest, ti.size)
            elif ti.isdir():
                counts["directories"] += 1
            elif ti.issym():
                counts["symlinks"] += 1
            elif ti.islnk():
                counts["hardlinks"] += 1
            elif ti.ischr():
                counts["char_devices"] += 1
            elif ti.isblk():
                counts["block_devices"] += 1
            elif ti.isfifo():
                counts["fifos"] += 1
        tf.members = []
    st.update(counts)
    st["regular_file_bytes"] = reg_bytes
    st["largest_file_bytes"] = largest
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    st["sha256"] = h.hexdigest()
    return st


def meta_path(tar_path):
    return tar_path + ".json"


def read_meta(tar_path):
    try:
        with open(meta_path(tar_path)) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def write_meta(tar_path, meta):
    tmp = meta_path(tar_path) + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(meta, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, meta_path(tar_path))


# --------------------------------------------------------------------------
# Layer builders.  Each fills `root` and returns a dict of build inputs.
# --------------------------------------------------------------------------


def ensure_debootstrap():
    path = which("debootstrap")
    if path:
        return path
    log(
        "debootstrap is not installed; installing it with apt-get "
        "(apt-get update && apt-get install -y --no-install-recommends debootstrap) ..."
    )
    if os.geteuid() != 0:
        raise BuildError(
            "debootstrap missing and not running as root; "
            "install it with: apt-get install debootstrap"
        )
    run(["apt-get", "update"])
    run(
        ["apt-get", "install", "-y", "--no-install-recommends", "debootstrap"],
        env={"DEBIAN_FRONTEND": "noninteractive"},
    )
    path = which("debootstrap")
    if not path:
        raise BuildError(
            "apt-get install debootstrap succeeded but debootstrap is not on PATH"
        )
    return path


def build_debian_minbase(root, args, logfile):
    if os.geteuid() != 0:
        raise BuildError("debootstrap needs root")
    debootstrap = ensure_debootstrap()
    if not os.path.exists(DEBIAN_KEYRING):
        raise BuildError(
            f"{DEBIAN_KEYRING} missing (apt-get install debian-archive-keyring)"
        )
    version = subprocess.run(
        [debootstrap, "--version"], stdout=subprocess.PIPE, text=True
    ).stdout.strip()
    cmd = [debootstrap, "--variant=minbase", SUITE, root, args.mirror]
    try:
        run(cmd, logfile)
    finally:
        # debootstrap unmounts /proc, /sys ... itself; make sure.
        for mp in sorted(mounts_under(root), reverse=True):
            subprocess.call(["umount", mp])
    left = mounts_under(root)
    if left:
        raise BuildError(
            "still mounted inside the new root fs: {}".format(", ".join(left))
        )
    # debootstrap copies the *host's* /etc/resolv.conf and /etc/hostname into
    # the target (setup_etc); they are not part of Debian and a container
    # runtime mounts its own, so drop them.
    removed = []
    for rel in ("etc/resolv.conf", "etc/hostname"):
        p = os.path.join(root, rel)
        if os.path.lexists(p):
            os.unlink(p)
            removed.append(rel)
    deb_version = ""
    try:
        with open(os.path.join(root, "etc/debian_version")) as fh:
            deb_version = fh.read().strip()
    except OSError:
        pass
    return {
        "command": " ".join([*cmd[:3], "DIR", args.mirror]),
        "debootstrap_version": version,
        "debian_version": deb_version,
        "arch": deb_arch(),
        "removed_host_files": removed,
    }


def fix_records(sp, bin_dir):
    """Point the dist-info RECORD entries of the console scripts at their new
    place (site-packages/../../../bin) with the hash and size of the rewritten
    files, so RECORD no longer depends on the host interpreter's path."""
    import base64

    for entry in sorted(os.listdir(sp)):
        record = os.path.join(sp, entry, "RECORD")
        if not entry.endswith(".dist-info") or not os.path.isfile(record):
            continue
        with open(record, "rb") as fh:
            lines = fh.read().split(b"\n")
        changed = False
        for i, line in enumerate(lines):
            m = re.match(rb"^\.\./\.\./bin/([^,/]+),", line)
            if not m:
                continue
            script = os.path.join(bin_dir, os.fsdecode(m.group(1)))
            if not os.path.isfile(script):
                continue
            with open(script, "rb") as fh:
                data = fh.read()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(
                b"="
            )
            lines[i] = b"../../../bin/%s,sha256=%s,%d" % (m.group(1), digest, len(data))
            changed = True
        if changed:
            with open(record, "wb") as fh:
                fh.write(b"\n".join(lines))


def find_target_python(requested):
    if requested:
        return requested
    if sys.version_info[:2] == tuple(int(x) for x in TARGET_PY.split(".")):
        return sys.executable
    p = which("python" + TARGET_PY)
    if p:
        return p
    raise BuildError(
        f"need a Python {TARGET_PY} interpreter with pip to install the wheels "
        "(pass --python PATH)"
    )


def build_site_packages(root, args, logfile):
    py = find_target_python(args.python)
    ver = subprocess.run(
        [py, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    ).stdout.strip()
    if ver != TARGET_PY:
        raise BuildError(f"{py} is Python {ver}, need {TARGET_PY}")
    sp_rel = f"usr/local/lib/python{TARGET_PY}/site-packages"
    sp = os.path.join(root, sp_rel)
    report_path = os.path.join(os.path.dirname(root), "pip-report.json")
    cmd = [
        py,
        "-m",
        "pip",
        "install",
        "--target",
        sp,
        "--only-binary=:all:",
        "--no-deps",
        "--disable-pip-version-check",
        "--no-input",
        "--no-warn-script-location",
        "--report",
        report_path,
        *PIP_PINS,
    ]
    # SOURCE_DATE_EPOCH makes py_compile write hash-based .pyc files (no
    # embedded install-time mtime); PYTHONHASHSEED=0 makes marshalled sets
    # stable.  Both only affect the .pyc files pip compiles.
    env = {
        "SOURCE_DATE_EPOCH": str(
            args.epoch if args.epoch is not None else DEFAULT_EPOCH
        ),
        "PYTHONHASHSEED": "0",
    }
    run(cmd, logfile, env=env)
    # pip --target compiles inside a random /tmp/pip-target-XXXX directory,
    # and that path ends up in every .pyc (co_filename).  Recompile in place
    # so the .pyc files name the path they have in the image.
    run(
        [
            py,
            "-m",
            "compileall",
            "-f",
            "-q",
            "-j",
            "0",
            "-s",
            sp,
            "-p",
            "/" + sp_rel,
            "--invalidation-mode",
            "checked-hash",
            sp,
        ],
        logfile,
        env=env,
    )
    pip_version = subprocess.run(
        [py, "-m", "pip", "--version"], stdout=subprocess.PIPE, text=True
    ).stdout.split()[1]

    # pip --target puts console scripts in <target>/bin; in an image they are
    # in /usr/local/bin with the image's interpreter in the shebang.
    bin_src = os.path.join(sp, "bin")
    scripts = []
    if os.path.isdir(bin_src):
        bin_dst = os.path.join(root, "usr/local/bin")
        os.makedirs(os.path.dirname(bin_dst), exist_ok=True)
        os.rename(bin_src, bin_dst)
        shebang = re.compile(rb"^#!\S*python[0-9.]*[ \t]*\r?\n")
        for name in sorted(os.listdir(bin_dst)):
            p = os.path.join(bin_dst, name)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            with open(p, "rb") as fh:
                data = fh.read()
            m = shebang.match(data)
            if m:
                with open(p, "wb") as fh:  # keeps the file and its mode
                    fh.write(
                        b"#!/usr/local/bin/python%s\n" % TARGET_PY.encode()
                        + data[m.end() :]
                    )
            scripts.append("usr/local/bin/" + name)
        fix_records(sp, bin_dst)

    # Sanity check: the tree imports on its own (no host site-packages).
    check = (
        f"import sys; sys.path.insert(0, {sp!r}); "
        "import numpy, scipy, scipy.linalg, pandas; "
        "print('numpy', numpy.__version__, 'scipy', scipy.__version__, "
        "'pandas', pandas.__version__)"
    )
    run([py, "-S", "-c", check], logfile, env={"PYTHONDONTWRITEBYTECODE": "1"})

    wheels = []
    try:
        with open(report_path) as fh:
            rep = json.load(fh)
        for item in rep.get("install", []):
            di = item.get("download_info", {})
            wheels.append(
                {
                    "url": di.get("url", "").rsplit("/", 1)[-1],
                    "sha256": di.get("archive_info", {}).get("hashes", {}).get("sha256")
                    or di.get("archive_info", {}).get("hash", ""),
                }
            )
    except (OSError, ValueError):
        pass
    return {
        "pins": PIP_PINS,
        "python": ver,
        "pip_version": pip_version,
        "site_packages": sp_rel,
        "scripts": scripts,
        "wheels": wheels,
    }


def apt_private(workdir, mirror):
    """apt-get options for a private apt state that sees exactly
    '<mirror> bookworm main' for the host architecture (independent of the
    host's sources.list, preferences and installed packages)."""
    for d in (
        "lists/partial",
        "cache/archives/partial",
        "etc/sources.list.d",
        "etc/preferences.d",
        "etc/apt.conf.d",
    ):
        os.makedirs(os.path.join(workdir, d), exist_ok=True)
    with open(os.path.join(workdir, "etc/sources.list"), "w") as fh:
        fh.write(f"deb [signed-by={DEBIAN_KEYRING}] {mirror} {SUITE} main\n")
    status = os.path.join(workdir, "status")
    open(status, "w").close()
    return [
        "-o",
        "APT::Architecture=" + deb_arch(),
        "-o",
        "APT::Architectures=" + deb_arch(),
        "-o",
        "Dir::Etc::SourceList=" + os.path.join(workdir, "etc/sources.list"),
        "-o",
        "Dir::Etc::SourceParts=" + os.path.join(workdir, "etc/sources.list.d"),
        "-o",
        "Dir::Etc::Preferences=" + os.path.join(workdir, "etc/preferences"),
        "-o",
        "Dir::Etc::PreferencesParts=" + os.path.join(workdir, "etc/preferences.d"),
        "-o",
        "Dir::State::Lists=" + os.path.join(workdir, "lists"),
        "-o",
        "Dir::State::status=" + status,
        "-o",
        "Dir::Cache=" + os.path.join(workdir, "cache"),
        "-o",
        "APT::Sandbox::User=root",
        "-o",
        "Acquire::Languages=none",
        "-q",
    ]


def build_shared_libs(root, args, logfile, site_tar):
    tar = check_gnu_tar()
    for tool in ("apt-get", "dpkg-deb"):
        if not which(tool):
            raise BuildError(f"{tool} not found (needed for shared-libs.tar)")
    if not os.path.exists(DEBIAN_KEYRING):
        raise BuildError(
            f"{DEBIAN_KEYRING} missing (apt-get install debian-archive-keyring)"
        )
    os.makedirs(root)

    # 1. the vendored libraries of the wheels, straight out of site-packages.tar
    pattern = "usr/local/lib/python*/site-packages/*.libs/*"
    run(
        [
            tar,
            "-x",
            "-f",
            site_tar,
            "-C",
            root,
            "--wildcards",
            "--no-wildcards-match-slash",
            pattern,
        ],
        logfile,
        env={"LC_ALL": "C"},
    )

    # 2. the shared objects of a fixed list of Debian packages
    work = os.path.dirname(root)
    aptdir = os.path.join(work, "apt")
    opts = apt_private(aptdir, args.mirror)
    run(["apt-get", *opts, "update"], logfile)
    debdir = os.path.join(work, "debs")
    os.makedirs(debdir, exist_ok=True)
    run(["apt-get", *opts, "download", *DEB_LIB_PACKAGES], logfile, cwd=debdir)
    debs = []
    for name in sorted(os.listdir(debdir)):
        if not name.endswith(".deb"):
            continue
        p = os.path.join(debdir, name)
        fields = subprocess.run(
            ["dpkg-deb", "-f", p, "Package", "Version"],
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        ).stdout
        info = dict(line.split(": ", 1) for line in fields.strip().splitlines())
        debs.append(
            {
                "package": info.get("Package"),
                "version": info.get("Version"),
                "file": name,
            }
        )
        run(["dpkg-deb", "-x", p, root], logfile)

    # 3. keep only the rule's files: everything under site-packages/*.libs/,
    # and under usr/lib/ only names matching *.so or *.so.* (files, symlinks,
    # hard links); then drop directories left empty.
    so_name = re.compile(r"\.so(\.|$)")
    sp_libs = re.compile(r"^usr/local/lib/python[^/]+/site-packages/[^/]+\.libs/")
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        rel_dir = os.path.relpath(dirpath, root)
        for f in filenames + [
            d for d in dirnames if os.path.islink(os.path.join(dirpath, d))
        ]:
            rel = f if rel_dir == "." else rel_dir + "/" + f
            keep = bool(sp_libs.match(rel)) or (
                rel.startswith("usr/lib/") and so_name.search(f)
            )
            if not keep:
                os.unlink(os.path.join(dirpath, f))
        if dirpath != root and not os.listdir(dirpath):
            os.rmdir(dirpath)
    # Directories created implicitly (by tar -x for the wheel libs) or by
    # dpkg-deb get a fixed mode so the layer does not depend on the umask.
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                os.chmod(p, 0o755)
    return {
        "deb_packages": debs,
        "mirror": args.mirror,
        "suite": SUITE,
        "from_site_packages": pattern,
        "rule": "all files under {}, plus names matching *.so / *.so.* under usr/lib/ "
        "from Debian {} packages {}".format(
            pattern, SUITE, ", ".join(DEB_LIB_PACKAGES)
        ),
    }


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------


def build_layer(name, args, out):
    tar_path = os.path.join(out, name + ".tar")
    work = os.path.join(out, ".work", name)
    logdir = os.path.join(out, "logs")
    os.makedirs(logdir, exist_ok=True)
    logfile = os.path.join(logdir, name + ".log")
    with open(logfile, "w") as fh:
        fh.write(
            "make_layers.py {}  started {}\n".format(
                name, time.strftime("%Y-%m-%dT%H:%M:%S%z")
            )
        )
    log(f"== building {name} (log: {os.path.relpath(logfile)})")
    t0 = time.monotonic()
    safe_rmtree(work)
    os.makedirs(work)
    root = os.path.join(work, "root")
    if name == "debian-minbase":
        inputs = build_debian_minbase(root, args, logfile)
    elif name == "site-packages":
        os.makedirs(root)
        inputs = build_site_packages(root, args, logfile)
    elif name == "shared-libs":
        site_tar = os.path.join(out, "site-packages.tar")
        if not os.path.exists(site_tar):
            log("   shared-libs.tar needs site-packages.tar; building that first")
            report(build_layer("site-packages", args, out))
        inputs = build_shared_libs(root, args, logfile, site_tar)
    else:
        raise BuildError(f"unknown layer {name}")
    t_fill = time.monotonic() - t0
    make_layer_tar(root, tar_path, args.epoch, logfile)
    seconds = time.monotonic() - t0
    if not args.keep_work:
        safe_rmtree(work)
        try:
            os.rmdir(os.path.join(out, ".work"))
        except OSError:
            pass
    stats = layer_stats(tar_path)
    meta = {
        "layer": name,
        "build_seconds": round(seconds, 1),
        "fill_seconds": round(t_fill, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source_date_epoch": args.epoch,
        "machine": platform.machine(),
        "inputs": inputs,
        "stats": stats,
    }
    write_meta(tar_path, meta)
    stats = dict(stats, layer=name, build_seconds=meta["build_seconds"], cached=False)
    return stats


def existing_stats(name, out):
    tar_path = os.path.join(out, name + ".tar")
    if not os.path.exists(tar_path):
        return None
    meta = read_meta(tar_path)
    st = layer_stats(tar_path)
    return dict(st, layer=name, build_seconds=meta.get("build_seconds"), cached=True)


def report(st):
    took = (
        ("{:.1f} s".format(st["build_seconds"]))
        if st.get("build_seconds") is not None
        else "?"
    )
    state = ("cached (built in " + took + ")") if st["cached"] else ("built in " + took)
    log(
        f"{st['path']:<40} {st['size_mb']:8.1f} MB  {st['entries']:7d} entries  "
        f"{st['regular_files']:7d} regular files  {state}"
    )
    return st


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--out",
        default=os.path.join(REPO_ROOT, "bench", "layers"),
        help="output directory (default: bench/layers/ in the repo)",
    )
    ap.add_argument(
        "--force", action="store_true", help="rebuild layers that already exist"
    )
    ap.add_argument(
        "--list",
        action="store_true",
        help="print stats of the existing layers as JSON and exit",
    )
    ap.add_argument(
        "--only",
        action="append",
        choices=LAYERS,
        help="build only this layer (repeatable)",
    )
    ap.add_argument(
        "--mirror",
        default=DEFAULT_MIRROR,
        help=f"Debian mirror for debootstrap and apt (default {DEFAULT_MIRROR})",
    )
    ap.add_argument(
        "--python",
        help=f"Python {TARGET_PY} interpreter used to run pip "
        f"(default: this one if it is {TARGET_PY}, else python{TARGET_PY} on PATH)",
    )
    ap.add_argument(
        "--source-date-epoch",
        dest="epoch",
        type=int,
        default=int(os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_EPOCH)),
        help="clamp mtimes newer than this "
        f"(default: $SOURCE_DATE_EPOCH or {DEFAULT_EPOCH})",
    )
    ap.add_argument(
        "--keep-mtimes",
        action="store_const",
        const=None,
        dest="epoch",
        help="do not clamp mtimes",
    )
    ap.add_argument(
        "--keep-work",
        action="store_true",
        help="keep the unpacked trees under OUT/.work",
    )
    args = ap.parse_args(argv)
    out = os.path.abspath(args.out)
    names = args.only or LAYERS

    if args.list:
        res = [s for s in (existing_stats(n, out) for n in names) if s]
        json.dump(res, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0

    os.umask(0o022)
    os.makedirs(out, exist_ok=True)
    results = []
    try:
        for name in names:
            tar_path = os.path.join(out, name + ".tar")
            if os.path.exists(tar_path) and not args.force:
                results.append(report(existing_stats(name, out)))
                continue
            results.append(report(build_layer(name, args, out)))
    except BuildError as e:
        log(f"\nERROR: {e}")
        return 1
    log(f"\n{'layer':<16} {'MB':>9} {'entries':>9} {'regular':>9} {'seconds':>10}")
    for st in results:
        log(
            f"{st['layer']:<16} {st['size_mb']:9.1f} {st['entries']:9d} "
            f"{st['regular_files']:9d} {st['build_seconds']!s:>10}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
