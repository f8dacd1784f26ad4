#!/usr/bin/env bash
# Set up estargz on a fresh Debian 12 machine and run its main job on a real
# default input: build a real two-layer image (this machine's Python standard
# library and site-packages), convert it with an external TOC, verify it.
# Arguments, if any, go to "estargz image convert SRC DST [options]".
set -euo pipefail
source "$(dirname "$0")/_common.sh"
cd "$REPO"

build_packages
make_venv ""
"$VENV/bin/python" tools/quickstart.py "$@"
