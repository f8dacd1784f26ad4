#!/usr/bin/env bash
# Build the Go eStargz reference harness (tests/goharness/main.go) against the
# Debian-packaged stargz-snapshotter sources, in GOPATH mode, offline.
#
# usage: tests/goharness/build.sh [OUTPUT]
#   OUTPUT defaults to build/go/estargz-go under the repository root; a
#   relative OUTPUT is taken relative to the current directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

if [[ $# -gt 1 ]]; then
    echo "usage: $0 [OUTPUT]" >&2
    exit 2
fi
out="${1:-$repo/build/go/estargz-go}"
case "$out" in
    /*) ;;
    *) out="$PWD/$out" ;;
esac

gocode=/usr/share/gocode
if ! command -v go >/dev/null 2>&1; then
    echo "build.sh: 'go' not found; install the Debian package golang-go" >&2
    exit 1
fi
if [[ ! -d "$gocode/src/github.com/containerd/stargz-snapshotter/estargz" ]]; then
    echo "build.sh: $gocode/src/github.com/containerd/stargz-snapshotter/estargz missing;" \
         "install the Debian package golang-github-containerd-stargz-snapshotter-dev" >&2
    exit 1
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/estargz-goharness.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
pkgdir="$tmp/src/estargz-goharness"
mkdir -p "$pkgdir" "$(dirname "$out")" "$repo/build/go-cache"
cp "$here/main.go" "$pkgdir/"

cd "$tmp"
env GOPATH="$tmp:$gocode" \
    GO111MODULE=off \
    GOFLAGS=-buildvcs=false \
    GOCACHE="$repo/build/go-cache" \
    CGO_ENABLED=0 \
    GOPROXY=off \
    go build -trimpath -o "$out" estargz-goharness
echo "built $out" >&2
