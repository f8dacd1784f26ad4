#!/usr/bin/env bash
# Set up estargz on a fresh Debian 12 machine and run its main job on a real
# default input.  (Until the layer writer lands: the native core's benchmark
# over the Python standard library's own files, with same-run ratios.)
set -euo pipefail
source "$(dirname "$0")/_common.sh"
cd "$REPO"

build_packages
make_venv "bench"
"$VENV/bin/python" -m pytest bench/test_bench_native.py -p no:cacheprovider -q \
    --benchmark-columns=median,rounds "$@"
