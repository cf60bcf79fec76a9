#!/usr/bin/env bash
# Builds kubelet with `go` from the Go module proxy and caches it outside the repo, keyed by version;
# the kubelet end-to-end tests (tests/integration/test_kubelet.py) run it standalone against crictld.
# k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces the k8s.io/* staging modules with
# local paths (./staging/src/k8s.io/...). So kubelet is built from a throwaway wrapper module that
# requires k8s.io/kubernetes@$KUBELET_VERSION and replaces each staging module with its published
# tag (v1.34.N -> v0.34.N). v1.34 is the newest minor that still runs on cgroup v1.
# Usage: hack/install-kubelet.sh   -> prints the bin dir holding kubelet
set -euo pipefail
KUBELET_VERSION=${KUBELET_VERSION:-v1.34.12}
cache=${CRICTLD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/crictld}
bin=$cache/kubelet-$KUBELET_VERSION
command -v go >/dev/null 2>&1 || export PATH=$PATH:/usr/local/go/bin
export GOFLAGS=-mod=mod GOTOOLCHAIN=local
if [ ! -x "$bin/kubelet" ]; then
  mkdir -p "$bin"
  staging=v0.${KUBELET_VERSION#v1.}
  mod=$(mktemp -d)
  trap 'rm -rf "$mod"' EXIT
  start=$(date +%s)
  (
    cd "$mod"
    go mod init crictld.local/kubelet >/dev/null 2>&1
    go mod download -json "k8s.io/kubernetes@$KUBELET_VERSION" >/dev/null
    k8smod=$(go mod download -json "k8s.io/kubernetes@$KUBELET_VERSION" |
               sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
    # Every staging module is required as `k8s.io/<name> v0.0.0` and replaced by a local path.
    names=$(sed -n 's#^[[:space:]]*\(k8s.io/[A-Za-z0-9._-]*\) v0\.0\.0$#\1#p' "$k8smod")
    [ -n "$names" ] || { echo "no staging modules found in $k8smod" >&2; exit 1; }
    args=(-require="k8s.io/kubernetes@$KUBELET_VERSION")
    for n in $names; do args+=(-replace="$n=$n@$staging"); done
    go mod edit "${args[@]}"
    printf 'package tools\n\nimport _ "k8s.io/kubernetes/cmd/kubelet"\n' > tools.go
    go mod tidy >&2
    pkg=k8s.io/component-base/version
    ldflags="-s -w -X $pkg.gitVersion=$KUBELET_VERSION -X $pkg.gitTreeState=clean"
    ldflags+=" -X $pkg.gitMajor=1 -X $pkg.gitMinor=$(echo "$KUBELET_VERSION" | cut -d. -f2)"
    CGO_ENABLED=0 go build -p 2 -trimpath -ldflags "$ldflags" -o "$bin/kubelet.tmp" \
      k8s.io/kubernetes/cmd/kubelet >&2
  )
  mv "$bin/kubelet.tmp" "$bin/kubelet"
  echo "built kubelet $KUBELET_VERSION in $(( $(date +%s) - start ))s" >&2
fi
echo "$bin"
