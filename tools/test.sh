#!/usr/bin/env bash
# Set up a fresh Debian 12 machine for the full test suite, then run it:
# unit, property, interop (Go stargz), registry and CLI tests, the benchmarks
# once with timing disabled, and the wheel check.  CI runs exactly this.
set -euo pipefail
source "$(dirname "$0")/_common.sh"
cd "$REPO"

build_packages
# Go stargz 0.12 for the interop tests; registry and skopeo for image tests;

apt_install golang-go golang-github-containerd-stargz-snapshotter-dev \
    docker-registry skopeo
make_venv "test,bench"

log "building the Go harness"
bash tests/goharness/build.sh

export ESTARGZ_HYPOTHESIS="${ESTARGZ_HYPOTHESIS:-ci}"
log "test suite"
"$VENV/bin/python" -m pytest tests -p no:cacheprovider "$@"

log "benchmarks, once each, timing disabled"
"$VENV/bin/python" -m pytest bench -p no:cacheprovider --benchmark-disable -q

log "wheel: build, auditwheel repair, fresh venv, tests against the install"
bash tools/check_wheel.sh
