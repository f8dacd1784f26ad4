# Shared by tools/*.sh: system packages and the virtual environment.
# shellcheck shell=bash

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${ESTARGZ_VENV:-$REPO/.venv}"

log() { printf '\n== %s\n' "$*" >&2; }

# Install Debian packages that are missing (needs root or sudo).
apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { echo "need root to install: ${missing[*]}" >&2; return 1; }
        sudo=sudo
    fi
    log "installing Debian packages: ${missing[*]}"
    local install=($sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q
        --no-install-recommends "${missing[@]}")
    # Package lists may be empty or stale on a fresh machine: update once.
    "${install[@]}" 2>/dev/null || { $sudo apt-get update -q && "${install[@]}"; }
}

# What building estargz needs beyond Python and gcc.
build_packages() {
    apt_install ca-certificates binutils make
    # A Debian python3 needs its headers and venv; a self-built Python has both.
    if ! "$PYTHON" -c "import sysconfig, os, sys; h = sysconfig.get_paths()['include']; sys.exit(0 if os.path.exists(os.path.join(h, 'Python.h')) else 1)"; then
        apt_install python3-dev
    fi
    if ! "$PYTHON" -c "import ensurepip" 2>/dev/null; then
        apt_install python3-venv
    fi
}

# Create the virtual environment (once) and install estargz into it.
make_venv() {
    local extras="$1"
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating $VENV"
        "$PYTHON" -m venv "$VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip
    fi
    log "installing estargz[$extras] (builds zlib-ng once, then the extension)"
    if [ -n "$extras" ]; then
        "$VENV/bin/python" -m pip install -q -e "$REPO[$extras]"
    else
        "$VENV/bin/python" -m pip install -q -e "$REPO"
    fi
}
