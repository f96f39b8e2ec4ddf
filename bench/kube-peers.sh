#!/usr/bin/env bash
# Build the real Kubernetes peers lbd's proxy is judged against: kube-apiserver
# and kube-proxy from the Go modules of kubernetes $KUBE_VERSION, etcd and
# etcdctl from etcd's modules at the version that release tests with. Test
# tools only: nothing of Go lands in the repository; the go.mod files are
# written here, in a temporary directory, and thrown away.
#
#   bench/kube-peers.sh            build what is missing, print the bin dir
#   bench/kube-peers.sh --print    print the bin dir if complete, else exit 3
#
# Binaries: ${LBD_KUBE_CACHE:-~/.cache/lbd-kube}/$KUBE_VERSION/bin, static
# (CGO_ENABLED=0) so they run in the qemu VM too; rebuilt only when missing.
# The last line on stdout is that directory; progress goes to stderr.
# Exit status: 0 built (or cached), 3 skipped (Go not found: the tests that
# need these binaries skip on it), anything else: the build failed.
set -euo pipefail

KUBE_VERSION=${KUBE_VERSION:-v1.37.2}
# k8s.io/kubernetes pins its staging modules (k8s.io/api, client-go, ...) at
# v0.0.0 with replace lines into ./staging: outside that tree each is
# replaced with its published release, v0.MINOR.PATCH.
STAGING_VERSION=v0.${KUBE_VERSION#v1.}
# hack/lib/etcd.sh's ETCD_VERSION in kubernetes v1.37.2 (and its go.mod's
# go.etcd.io/etcd/client/v3).
ETCD_VERSION=${ETCD_VERSION:-v3.7.0}
cache=${LBD_KUBE_CACHE:-$HOME/.cache/lbd-kube}
bin=$cache/$KUBE_VERSION/bin
want=(kube-apiserver kube-proxy etcd etcdctl)

complete() {
  local b
  for b in "${want[@]}"; do [ -x "$bin/$b" ] || return 1; done
}

if complete; then
  echo "$bin"
  exit 0
fi
if [ "${1:-}" = --print ]; then
  exit 3
fi
# One build at a time (parallel tests, CI and a developer): the others wait
# and find the binaries built.
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if complete; then
  echo "$bin"
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "kube-peers: skipped: Go not found (kube-apiserver, kube-proxy and etcd are built from Go modules)" >&2
  exit 3
fi
# Kubernetes needs a newer Go than Debian 12's (1.19); from Go 1.21 on, go
# fetches the toolchain a module asks for by itself. Older: skip, saying so.
go_minor=$(go env GOVERSION 2>/dev/null | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
if [ -z "$go_minor" ] || [ "$go_minor" -lt 21 ]; then
  echo "kube-peers: skipped: $(go env GOVERSION 2>/dev/null || echo 'this go') is too old to build kubernetes $KUBE_VERSION (Go >= 1.21 fetches the toolchain it needs)" >&2
  exit 3
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOWORK=off
start=$(date +%s)
log() { echo "kube-peers: $* ($(( $(date +%s) - start ))s)" >&2; }

# Each peer gets its own module, so its dependencies resolve as its own
# go.mod says, not as the union with the other's.
tidy() {
  log "resolving $(head -1 "$1/go.mod")"
  (cd "$1" && go mod tidy >/dev/null 2>"$1/tidy.log") || { cat "$1/tidy.log" >&2; exit 1; }
}
# build MODULE_DIR NAME PACKAGE [LDFLAGS]: under nice because the machine
# is shared; -s -w: test tools need no symbols (a third of the size).
build() {
  log "building $2"
  (cd "$1" && nice -n 10 go build -trimpath -ldflags "-s -w ${4:-}" -o "$bin/$2.tmp" "$3")
  mv "$bin/$2.tmp" "$bin/$2"
}

mkdir -p "$bin" "$work/kube" "$work/etcd"

missing_kube=0
for b in kube-apiserver kube-proxy; do [ -x "$bin/$b" ] || missing_kube=1; done
if [ $missing_kube = 1 ]; then
  gomod=$(cd "$work" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
  go_line=$(grep -m1 '^go ' "$gomod")
  {
    echo "module lbd.test/kube-peers"
    echo
    echo "$go_line"
    echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo
    echo "replace ("
    # Every staging module kubernetes replaces into ./staging/src/k8s.io/X.
    sed -n 's|^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/k8s.io/.*|\t\1 => \1 '"$STAGING_VERSION"'|p' "$gomod"
    echo ")"
  } >"$work/kube/go.mod"
  cat >"$work/kube/tools.go" <<'EOF'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
EOF
  v=k8s.io/component-base/version
  minor=${KUBE_VERSION#v1.}
  minor=${minor%%.*}
  ver="-X $v.gitVersion=$KUBE_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor -X $v.gitTreeState=clean"
  tidy "$work/kube"
  for b in kube-apiserver kube-proxy; do
    [ -x "$bin/$b" ] || build "$work/kube" "$b" "k8s.io/kubernetes/cmd/$b" "$ver"
  done
fi

if [ ! -x "$bin/etcd" ] || [ ! -x "$bin/etcdctl" ]; then
  cat >"$work/etcd/go.mod" <<EOF
module lbd.test/etcd-peers

go 1.24

require (
	go.etcd.io/etcd/server/v3 $ETCD_VERSION
	go.etcd.io/etcd/etcdctl/v3 $ETCD_VERSION
)
EOF
  cat >"$work/etcd/tools.go" <<'EOF'
//go:build tools

package tools

import (
	_ "go.etcd.io/etcd/etcdctl/v3"
	_ "go.etcd.io/etcd/server/v3"
)
EOF
  tidy "$work/etcd"
  [ -x "$bin/etcd" ] || build "$work/etcd" etcd go.etcd.io/etcd/server/v3
  [ -x "$bin/etcdctl" ] || build "$work/etcd" etcdctl go.etcd.io/etcd/etcdctl/v3
fi

complete || { echo "kube-peers: build finished but binaries are missing in $bin" >&2; exit 1; }
log "built in $bin: $(cd "$bin" && for b in "${want[@]}"; do printf '%s %s MiB; ' "$b" $(( $(stat -c %s "$b") / 1048576 )); done)"
echo "$bin"
