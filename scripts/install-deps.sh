#!/usr/bin/env bash
# Installs what building, testing and the demo need on Debian 12 (as root).
# The Rust toolchain itself is expected to be installed (rustup).
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
  echo "install-deps: run as root (apt-get)" >&2
  exit 1
fi
PKGS=(
  # rustc links with the system C compiler, and ring (rustls) compiles C:
  # a fresh Debian 12 has neither gcc nor the C library's headers and crt
  # files (gcc only recommends libc6-dev, and recommends are off below).
  # g++: libfuzzer-sys builds libFuzzer (scripts/fuzz-smoke.sh). git:
  # build.rs records the commit for `lbd version`. (No pkg-config: no
  # dependency links a system library.)
  gcc g++ libc6-dev git
  iproute2 procps psmisc openssl curl socat tcpdump   # namespaces, demo, checks
  nftables ipvsadm                                    # kernel state judges
  keepalived                                          # VRRP interop peer
  haproxy iperf3 wrk nginx-light jq                   # benchmarks against haproxy
  qemu-system-x86 busybox-static                      # the IPVS VM harness
  iptables ipset conntrack                            # real kube-proxy in the VM; judges of cleanup-kube-proxy and conntrack cleanup
  rpm musl-tools systemd file binutils                # packages: .rpm checks, static musl build, unit verify
  podman containerd                                   # the OCI image archive, loaded and run by both
  debootstrap                                         # packages: the bullseye userland (tests/packaging.sh)
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# Debian starts these services on install; lbd's tests run their own copies.
for s in haproxy keepalived nginx containerd; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active -q "$s" 2>/dev/null; then
    systemctl stop "$s" || true
  fi
done
echo "install-deps: ok"
