#!/usr/bin/env bash
# Builds crictl and critest (cri-tools) with `go` from the Go module proxy and caches them.
# crictl is cri-tools' client, which tests drive crictld with; it is never installed on PATH by us.
# critest is a Go *test* binary: it is compiled from a throwaway module that requires cri-tools.
# Usage: hack/install-cri-tools.sh   -> prints the bin dir holding crictl and critest
set -euo pipefail
CRI_TOOLS_VERSION=${CRI_TOOLS_VERSION:-v1.37.0}
cache=${CRICTLD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/crictld}
bin=$cache/cri-tools-$CRI_TOOLS_VERSION
mkdir -p "$bin"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local
if [ ! -x "$bin/crictl" ]; then
  GOBIN=$bin go install "sigs.k8s.io/cri-tools/cmd/crictl@$CRI_TOOLS_VERSION" >&2
fi
if [ ! -x "$bin/critest" ]; then
  mod=$(mktemp -d)
  trap 'rm -rf "$mod"' EXIT
  (cd "$mod" && go mod init crictld.local/critest >/dev/null 2>&1 &&
     go get "sigs.k8s.io/cri-tools@$CRI_TOOLS_VERSION" >&2 &&
     go test -c -o "$bin/critest" sigs.k8s.io/cri-tools/cmd/critest >&2)
fi
echo "$bin"
