#!/usr/bin/env bash
# Set up estargz on a fresh Debian 12 machine and run its main job on a real
# default input: convert a real layer (this machine's Python standard
# library as a tar) to eStargz, then read it back and verify all of it.
set -euo pipefail
source "$(dirname "$0")/_common.sh"
cd "$REPO"

build_packages
make_venv ""
"$VENV/bin/python" tools/quickstart.py "$@"
