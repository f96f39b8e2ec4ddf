#!/usr/bin/env bash
# run-in-vm.sh - run a command inside a throw-away QEMU VM that boots a stock
# Debian kernel (which has IPVS, nftables, dummy, veth, bridge as modules)
# from a busybox initramfs.  The command's stdout/stderr stream to our
# stdout via the serial console; our exit status is the command's.
#
# lbd's copy of the recipe: the VM tests (tests/*_vm.rs) run through it,
# via cargo-vm-runner.sh and scripts/vm-test.sh.  It installs nothing: the
# host tools come from scripts/install-deps.sh (qemu-system-x86,
# busybox-static, ipvsadm, nftables, iproute2); the only download is the
# kernel .deb of the chosen Debian release, fetched with `apt-get download`
# through a private apt state (sources, lists) in the cache and unpacked
# there, never installed; the host's apt setup is left as it is.
#
# usage: run-in-vm.sh [options] DIR [--] CMD [ARG...]
#   DIR          directory whose contents appear as /payload inside the VM
#                (cwd of CMD).  Dynamically linked ELF files in it get their
#                shared libraries (found with ldd on the host) copied in too.
#                Use an empty dir / "-" for none.
#   CMD ARG...   run as a child of PID 1 (sh) in the VM.  A single argument is
#                a shell string (sh -c), several are an argv (quoted for you).
# options:
#   -m MODS      comma-separated modules to load before CMD
#                (default: ip_vs,ip_vs_rr,ip_vs_wrr,ip_vs_sh,nf_conntrack,dummy,veth)
#   -e NAME=VAL  export an env var to CMD (repeatable)
#   -f FILE[=PATH]  copy the host's FILE to the absolute PATH in the VM
#                (default: FILE's own path; repeatable; its shared libraries
#                too), e.g. the lbd binary at the path a test has from
#                env!("CARGO_BIN_EXE_lbd")
#   -n GUEST=HOST  a NIC (virtio-net, qemu user networking with restrict=on:
#                the guest reaches nothing but these) on which a guest
#                connection to GUEST (IP:PORT in 10.0.2.0/24, e.g.
#                10.0.2.100:6443) is relayed to HOST (IP:PORT on the host's
#                loopback) by a socat per connection (repeatable). The guest
#                is 10.0.2.15/24 on eth0
#   -t SECS      host-side timeout for the whole VM (default 600)
#   -v           verbose: show kernel boot messages
# env:
#   LBD_VM_KERNEL  6.1 (default: Debian 12 bookworm) | 5.10 (Debian 11
#                bullseye): whose linux-image-cloud-amd64 boots.  CMD gets
#                LBD_VM_KERNEL and LBD_VM_KERNEL_RELEASE (uname -r) exported
#   LBD_VM_CACHE cache dir (default ~/.cache/lbd-vm) - kernels, base initramfs,
#                apt state per release (apt/SUITE)
#   VM_DEBIAN_MIRROR, VM_DEBIAN_SECURITY  archive URIs (default: the host's
#                apt sources' .../debian and .../debian-security, else
#                deb.debian.org)
#   VM_KERNEL_PKG  Debian package (default: what that release's
#                linux-image-cloud-amd64 depends on)
#   VM_KERNEL_DEB  use this already-downloaded .deb instead of apt-get download
#   VM_REFRESH=1 re-resolve linux-image-cloud-amd64 (else cached in
#                VM_CACHE/kernel-pkg-KERNEL); a cached name that left the
#                mirror is re-resolved by itself
#   VM_ACCEL     tcg (default) | kvm | auto   (kvm does NOT work on PVM hosts)
#   VM_BIOS      firmware (default /usr/share/qemu/qboot.rom if present; empty = SeaBIOS)
#   VM_SMP       vCPUs (default 2)      VM_MEM  memory in MiB (default 1024)
#   VM_EXTRA_BINS  extra host binaries (space separated) for the base image,
#                e.g. "iptables ipset conntrack keepalived" (libs via ldd)
#   VM_EXTRA_FILES extra host files/dirs copied to the same path, e.g.
#                /usr/lib/x86_64-linux-gnu/xtables (iptables' dlopen()ed plugins)
# exit status: CMD's status; 124 = host timeout; 125 = VM died without status
set -euo pipefail

SELF_VERSION=14   # bump to invalidate cached base initramfs
VM_CACHE=${LBD_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lbd-vm}
VM_ACCEL=${VM_ACCEL:-tcg}
VM_SMP=${VM_SMP:-2}
VM_MEM=${VM_MEM:-1024}
MODS=ip_vs,ip_vs_rr,ip_vs_wrr,ip_vs_sh,nf_conntrack,dummy,veth
ENVS=()
FILES=()
FORWARDS=()
TIMEOUT=600
VERBOSE=0

die() { echo "run-in-vm: $*" >&2; exit 125; }
log() { [ "$VERBOSE" = 1 ] && echo "run-in-vm: $*" >&2 || true; }

while getopts "m:e:f:n:t:vh" o; do
  case $o in
    m) MODS=$OPTARG ;;
    e) ENVS+=("$OPTARG") ;;
    f) FILES+=("$OPTARG") ;;
    n) FORWARDS+=("$OPTARG") ;;
    t) TIMEOUT=$OPTARG ;;
    v) VERBOSE=1 ;;
    *) sed -n '2,60p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND-1))
[ $# -ge 2 ] || { sed -n '2,60p' "$0"; exit 2; }
DIR=$1; shift
[ "${1:-}" = "--" ] && shift
[ $# -ge 1 ] || die "no command"

for t in qemu-system-x86_64 busybox ldd flock timeout truncate dpkg apt-get; do
  command -v $t >/dev/null || die "missing host tool: $t (run scripts/install-deps.sh)"
done
BUSYBOX=$(command -v busybox)
if ldd "$BUSYBOX" >/dev/null 2>&1; then
  die "busybox must be static (apt-get install busybox-static)"; fi

mkdir -p "$VM_CACHE"
exec 9>"$VM_CACHE/.lock"      # serialise cache building between parallel runs

# ---------------------------------------------------------------- kernel ----
# Each selectable kernel is the cloud kernel of one Debian release, fetched
# from Debian's archive with a private apt state under $VM_CACHE/apt/SUITE
# (its own sources.list, lists and cache): the host's apt configuration and
# package lists are neither read for sources nor changed.
VM_KERNEL=${LBD_VM_KERNEL:-6.1}
case $VM_KERNEL in
  6.1)  SUITE=bookworm ;;
  5.10) SUITE=bullseye ;;
  *)    die "LBD_VM_KERNEL must be 6.1 or 5.10 (got $VM_KERNEL)" ;;
esac
# The mirror: the one the host's apt uses for Debian (what this machine
# reaches; scripts/debian-mirror.sh), else deb.debian.org.
mirror_of() { "$(dirname "$0")/../../scripts/debian-mirror.sh" "$1" 2>/dev/null || echo "http://deb.debian.org/$1"; }
MIRROR=${VM_DEBIAN_MIRROR:-$(mirror_of debian)}
SECURITY=${VM_DEBIAN_SECURITY:-$(mirror_of debian-security)}
APTD=$VM_CACHE/apt/$SUITE
APT=(-o "Dir::Etc::SourceList=$APTD/sources.list" -o "Dir::Etc::SourceParts=$APTD/none"
     -o "Dir::Etc::Preferences=$APTD/none" -o "Dir::Etc::PreferencesParts=$APTD/none"
     -o "Dir::State=$APTD/state" -o "Dir::State::Lists=$APTD/lists"
     -o "Dir::State::status=$APTD/status" -o "Dir::Cache=$APTD/cache"
     -o Acquire::Languages=none -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false
     -o Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false
     -o Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false
     -o Acquire::IndexTargets::deb::CNF::DefaultEnabled=false
     -o APT::Sandbox::User=root)   # as root: no "_apt cannot access" warning
apt_setup() {
  mkdir -p "$APTD"/{state,none,lists/partial,cache/archives/partial}
  : > "$APTD/status"
  local k=/usr/share/keyrings/debian-archive-keyring.gpg
  [ -e "$k" ] || die "missing $k (apt-get install debian-archive-keyring)"
  printf 'deb [signed-by=%s] %s %s main\ndeb [signed-by=%s] %s %s-security main\n' \
    "$k" "$MIRROR" "$SUITE" "$k" "$SECURITY" "$SUITE" > "$APTD/sources.list"
  log "apt-get update for $SUITE from $MIRROR"
  apt-get "${APT[@]}" -q update >&2 || die "apt-get update for $SUITE failed"
}
# the ABI package (linux-image-5.10.0-NN-cloud-amd64) the metapackage
# currently depends on
resolve_kernel() {
  apt-cache "${APT[@]}" depends linux-image-cloud-amd64 2>/dev/null |
    awk '/Depends: linux-image-[0-9]/{print $2; exit}'
}
apt_dl() { (cd "$1" && apt-get "${APT[@]}" download -q "$2" >&2); }

flock 9
PKGFILE=$VM_CACHE/kernel-pkg-$VM_KERNEL
if [ -z "${VM_KERNEL_PKG:-}" ]; then
  if [ -n "${VM_KERNEL_DEB:-}" ]; then
    VM_KERNEL_PKG=$(dpkg-deb -f "$VM_KERNEL_DEB" Package)
  elif [ -s "$PKGFILE" ] && [ "${VM_REFRESH:-0}" != 1 ]; then
    VM_KERNEL_PKG=$(cat "$PKGFILE")   # resolving costs an apt-get update
  else
    apt_setup
    VM_KERNEL_PKG=$(resolve_kernel)
    [ -n "$VM_KERNEL_PKG" ] || die "cannot resolve linux-image-cloud-amd64 in $SUITE"
    echo "$VM_KERNEL_PKG" > "$PKGFILE"
  fi
fi
KDIR=$VM_CACHE/$VM_KERNEL_PKG
if [ ! -e "$KDIR/.done" ]; then
  mkdir -p "$KDIR/deb"; rm -rf "$KDIR/root"
  if [ -n "${VM_KERNEL_DEB:-}" ]; then
    cp "$VM_KERNEL_DEB" "$KDIR/deb/"
  elif ls "$KDIR"/deb/*.deb >/dev/null 2>&1; then
    log "using cached $(ls "$KDIR"/deb/*.deb)"      # e.g. restored by CI cache
  else
    log "fetching $VM_KERNEL_PKG"
    [ -s "$APTD/sources.list" ] || apt_setup
    apt_dl "$KDIR/deb" "$VM_KERNEL_PKG" || kernel_gone=1
  fi
  if [ "${kernel_gone:-0}" = 1 ]; then
    # a pinned ABI package vanishes from the mirror after the next kernel
    # security update (or the lists are stale): refresh, take the newest
    rm -rf "$KDIR"
    apt_setup
    new=$(resolve_kernel)
    [ -n "$new" ] || die "cannot download $VM_KERNEL_PKG"
    [ "$new" != "$VM_KERNEL_PKG" ] && echo "run-in-vm: warning: $VM_KERNEL_PKG unavailable, using $new" >&2
    VM_KERNEL_PKG=$new; KDIR=$VM_CACHE/$VM_KERNEL_PKG
    echo "$VM_KERNEL_PKG" > "$PKGFILE"
    mkdir -p "$KDIR/deb"; rm -rf "$KDIR/root"
    apt_dl "$KDIR/deb" "$VM_KERNEL_PKG" || die "cannot download $VM_KERNEL_PKG"
  fi
  dpkg -x "$KDIR"/deb/*.deb "$KDIR/root"
  KV=$(ls "$KDIR/root/lib/modules")
  # the .deb ships no modules.dep (postinst runs depmod); busybox depmod
  # writes modules.dep/.alias/.symbols (full transitive dependency lists)
  "$BUSYBOX" depmod -b "$KDIR/root" "$KV"
  echo "$KV" > "$KDIR/kver"
  touch "$KDIR/.done"
fi
KV=$(cat "$KDIR/kver")
KROOT=$KDIR/root
MODROOT=$KROOT/lib/modules/$KV
VMLINUZ=$KROOT/boot/vmlinuz-$KV

# ------------------------------------------------------- base initramfs ----
# Modules shipped in the VM (everything below these paths + their deps).
# Kernel auto-loading (request_module -> /sbin/modprobe = busybox) works for
# all of them, e.g. "ipvsadm -s wrr" pulls ip_vs_wrr, nft pulls nft_* exprs.
MOD_GLOBS="kernel/net/netfilter kernel/net/ipv4/netfilter kernel/net/ipv6/netfilter
 kernel/net/bridge kernel/net/sched kernel/net/8021q kernel/net/ipv4/ipip.ko
 kernel/net/ipv4/tunnel4.ko kernel/net/ipv4/ip_tunnel.ko kernel/net/ipv6/ip6_tunnel.ko
 kernel/drivers/net/dummy.ko kernel/drivers/net/veth.ko kernel/drivers/net/macvlan.ko
 kernel/drivers/net/ipvlan kernel/drivers/net/vxlan kernel/drivers/net/tun.ko
 kernel/drivers/net/nlmon.ko kernel/lib/libcrc32c.ko
 kernel/drivers/net/virtio_net.ko kernel/drivers/virtio"
TOOLS="ip ipvsadm nft ${VM_EXTRA_BINS:-}"
# tcpdump (optional): captures on nlmon inside the VM (fixture refresh)
command -v tcpdump >/dev/null && TOOLS="$TOOLS tcpdump"
# Debian's busybox-static is built with FEATURE_SH_STANDALONE/PREFER_APPLETS:
# its ash (and env, xargs...) run the *applet* "ip" even when /usr/sbin/ip
# comes first in PATH.  So the command runs under dash (/bin/sh) and bash.
SHELLS="dash bash"

KEY=$( { echo "$SELF_VERSION $KV $MOD_GLOBS ${VM_EXTRA_FILES:-}"; for t in $TOOLS $SHELLS; do
          p=$(command -v "$t" || true); [ -n "$p" ] && ls -lL "$p"; done;
        sed -n '/^#BEGIN-INIT/,/^#END-INIT/p' "$0"; } | md5sum | cut -c1-12)
BASE=$VM_CACHE/base-$KV-$KEY.cpio

# copy_libs FILE STAGE : copy the shared libraries FILE needs into STAGE,
# at the same absolute paths (dereferenced), plus the ELF interpreter.
copy_libs() {
  local f=$1 st=$2 l
  if ldd "$f" 2>/dev/null | grep -q 'not found'; then
    echo "run-in-vm: warning: $f has unresolved libraries:" >&2
    ldd "$f" | grep 'not found' >&2
  fi
  ldd "$f" 2>/dev/null | awk '/=> \//{print $3} /^\t\/[^ ]+ \(/{print $1}' |
  while read -r l; do
    [ -e "$st$l" ] && continue
    mkdir -p "$st$(dirname "$l")"
    cp -L "$l" "$st$l"
  done
}

if [ ! -e "$BASE" ]; then
  log "building base initramfs $BASE"
  ST=$(mktemp -d "$VM_CACHE/stage.XXXXXX")
  mkdir -p "$ST"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,etc,payload,root,var,mnt}
  ln -s ../run "$ST/var/run"
  cp "$BUSYBOX" "$ST/bin/busybox"
  for a in $("$BUSYBOX" --list); do
    [ "$a" = busybox ] && continue
    ln -sf /bin/busybox "$ST/bin/$a"
  done
  ln -sf /bin/busybox "$ST/sbin/modprobe"   # kernel request_module() helper
  for t in $SHELLS; do
    p=$(command -v "$t") || die "missing host tool: $t"
    rm -f "$ST/bin/$t"; cp -L "$p" "$ST/bin/$t"; copy_libs "$p" "$ST"
  done
  ln -sf dash "$ST/bin/sh"
  for t in $TOOLS; do
    p=$(command -v "$t") || die "missing host tool: $t"
    rm -f "$ST/bin/$t"; cp -L "$p" "$ST/usr/sbin/$t"
    copy_libs "$p" "$ST"
  done
  for f in ${VM_EXTRA_FILES:-}; do
    [ -e "$f" ] || die "VM_EXTRA_FILES: no such file: $f"
    mkdir -p "$ST$(dirname "$f")"; cp -aL "$f" "$ST$(dirname "$f")/"
    find "$f" -type f -name '*.so*' | while read -r so; do copy_libs "$so" "$ST"; done
  done
  # iproute2 config (rt_tables etc.) is optional, ship it if present
  [ -d /usr/share/iproute2 ] && mkdir -p "$ST/usr/share" && cp -r /usr/share/iproute2 "$ST/usr/share/"
  [ -d /etc/iproute2 ] && cp -r /etc/iproute2 "$ST/etc/"
  echo "root:x:0:0:root:/root:/bin/sh" > "$ST/etc/passwd"
  echo "root:x:0:" > "$ST/etc/group"
  printf '127.0.0.1 localhost\n::1 localhost\n' > "$ST/etc/hosts"
  printf 'hosts: files\n' > "$ST/etc/nsswitch.conf"
  # getprotobyname()/getservbyname(): ipset "tcp:443", nft "dport https"...
  for f in /etc/protocols /etc/services /etc/ethertypes; do [ -e $f ] && cp -L $f "$ST/etc/"; done
  # TLS clients (kube-rs with rustls) load the system roots and fail without
  # any, even when they only talk plain HTTP to a test API server
  if [ -e /etc/ssl/certs/ca-certificates.crt ]; then
    mkdir -p "$ST/etc/ssl/certs"; cp -L /etc/ssl/certs/ca-certificates.crt "$ST/etc/ssl/certs/"
  fi
  # kernel modules: requested subtrees + transitive deps from modules.dep
  mkdir -p "$ST/lib/modules/$KV"
  ( cd "$MODROOT"
    for g in $MOD_GLOBS; do [ -e "$g" ] && find "$g" -name '*.ko*'; done | sort -u > "$ST/.mods"
    # closure: modules.dep lines are "mod: dep1 dep2 ..." (already transitive)
    awk 'NR==FNR{want[$1]=1; next} { m=$1; sub(":$","",m); if (m in want) { print m; for(i=2;i<=NF;i++) print $i } }' \
        "$ST/.mods" modules.dep | sort -u > "$ST/.mods.all"
    tar -cf - -T "$ST/.mods.all" modules.builtin modules.order modules.builtin.modinfo 2>/dev/null
  ) | tar -xf - -C "$ST/lib/modules/$KV"
  rm -f "$ST/.mods" "$ST/.mods.all"
  "$BUSYBOX" depmod -b "$ST" "$KV"
  # PID 1
  sed -n '/^#BEGIN-INIT/,/^#END-INIT/p' "$0" | sed '1d;$d' > "$ST/init"
  chmod 755 "$ST/init"
  # Stored UNcompressed: under TCG the guest needs ~0.7s to gunzip 8 MB,
  # which costs more than reading 21 MB.  (lz4 -l is no good either: the
  # kernel's unlz4 fails on an lz4 archive that is followed by another cpio.)
  ( cd "$ST" && find . ! -name . | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc -R 0:0 2>/dev/null ) \
    > "$BASE.tmp"
  # a following cpio is only recognised if it starts 4-byte aligned
  # (zero padding between archives is skipped by the kernel)
  truncate -s %4 "$BASE.tmp"
  mv "$BASE.tmp" "$BASE"
  rm -rf "$ST"
fi
flock -u 9

# ------------------------------------------------------ payload initramfs ---
WORK=$(mktemp -d "${TMPDIR:-/tmp}/run-in-vm.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
PST=$WORK/stage
mkdir -p "$PST/payload" "$PST/.vm"
if [ "$DIR" != "-" ]; then
  [ -d "$DIR" ] || die "not a directory: $DIR"
  cp -a "$DIR"/. "$PST/payload/"
  # shared libraries of dynamically linked ELF executables in DIR
  while IFS= read -r -d '' f; do
    if head -c4 "$f" 2>/dev/null | grep -q $'^\x7fELF' && ldd "$f" >/dev/null 2>&1; then
      copy_libs "$f" "$PST"
    fi
  done < <(find "$PST/payload" -type f -perm -u+x -print0)
fi
for f in "${FILES[@]+"${FILES[@]}"}"; do
  src=${f%%=*}; dst=${f#*=}
  case $dst in /*) ;; *) die "-f $f: $dst is not an absolute path" ;; esac
  [ -f "$src" ] || die "-f $f: no such file: $src"
  mkdir -p "$PST$(dirname "$dst")"; cp -L "$src" "$PST$dst"
  if ldd "$src" >/dev/null 2>&1; then copy_libs "$src" "$PST"; fi
done
# the command, quoted for sh
q() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }
{
  echo "cd /payload"
  # which kernel this is, for tests whose expectations depend on it
  echo "export LBD_VM_KERNEL=$(q "$VM_KERNEL") LBD_VM_KERNEL_RELEASE=$(q "$KV")"
  for e in "${ENVS[@]+"${ENVS[@]}"}"; do echo "export $(q "$e")"; done
  if [ $# -eq 1 ]; then
    printf '%s\n' "$1"
  else
    printf 'exec'; for a in "$@"; do printf ' %s' "$(q "$a")"; done; echo
  fi
} > "$PST/.vm/cmd"
echo "$MODS" | tr ', ' '\n\n' | sed '/^$/d' > "$PST/.vm/modules"
# user networking: the guest's side of each -n forward; the NIC is set up
# by init before CMD runs
NET=()
if [ ${#FORWARDS[@]} -gt 0 ]; then
  fwd=""
  for f in "${FORWARDS[@]}"; do
    guest=${f%%=*}; host=${f#*=}
    case $guest in 10.0.2.*:[0-9]*) ;; *) die "-n $f: GUEST must be 10.0.2.X:PORT" ;; esac
    case $host in 127.*:[0-9]*|localhost:[0-9]*) ;; *) die "-n $f: HOST must be on the host's loopback" ;; esac
    command -v socat >/dev/null || die "missing host tool: socat (for -n)"
    fwd="$fwd,guestfwd=tcp:$guest-cmd:socat - TCP:$host"
  done
  NET=(-netdev "user,id=n0,restrict=on,net=10.0.2.0/24$fwd" -device virtio-net-pci,netdev=n0,romfile=)
  echo "10.0.2.15/24" > "$PST/.vm/net"
fi
# uncompressed: building it is instant and the guest need not decompress
( cd "$PST" && find . ! -name . | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc -R 0:0 2>/dev/null ) > "$WORK/payload.cpio"
# the kernel unpacks concatenated cpio archives (each may be compressed)
cat "$BASE" "$WORK/payload.cpio" > "$WORK/initrd"

# ------------------------------------------------------------------ boot ----
case $VM_ACCEL in
  tcg)  ACCEL=(-machine q35,accel=tcg -cpu max) ;;
  kvm)  ACCEL=(-machine q35,accel=kvm -cpu host,-arch-capabilities) ;;
  # auto: KVM only if the CPU advertises VT-x/AMD-V and the host is not a
  # PVM guest (kvm_pvm hangs a stock kernel at 100% CPU, see notes)
  auto) if [ -w /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ] && \
           grep -qwE 'vmx|svm' /proc/cpuinfo; then
          ACCEL=(-machine q35,accel=kvm -cpu host)
        else ACCEL=(-machine q35,accel=tcg -cpu max); fi ;;
  *) die "VM_ACCEL must be tcg, kvm or auto" ;;
esac
# qboot (from qemu-system-data) starts Linux ~0.4s sooner than SeaBIOS under TCG
BIOS=()
VM_BIOS=${VM_BIOS-/usr/share/qemu/qboot.rom}
[ -n "$VM_BIOS" ] && [ -e "$VM_BIOS" ] && BIOS=(-bios "$VM_BIOS")
# "quiet" = console loglevel 4: kernel errors/oopses/panics still reach the log
if [ "$VERBOSE" = 1 ]; then KLOG="loglevel=7"; else KLOG="quiet"; fi
: > "$WORK/status"
set +e
timeout -k 5 "$TIMEOUT" qemu-system-x86_64 -nodefaults -no-user-config \
  "${ACCEL[@]}" "${BIOS[@]+"${BIOS[@]}"}" -smp "$VM_SMP" -m "$VM_MEM" -display none -no-reboot \
  -chardev stdio,id=con,signal=off -serial chardev:con \
  -serial file:"$WORK/status" \
  "${NET[@]+"${NET[@]}"}" \
  -kernel "$VMLINUZ" -initrd "$WORK/initrd" \
  -append "console=ttyS0 $KLOG panic=-1 rdinit=/init edd=off mitigations=off tsc=reliable no_timer_check i8042.noaux i8042.nokbd i8042.nopnp" \
  </dev/null
qrc=$?
set -e
[ $qrc -eq 124 ] && { echo "run-in-vm: timed out after ${TIMEOUT}s" >&2; exit 124; }
st=$(tr -dc '0-9\n' < "$WORK/status" | grep -m1 -E '^[0-9]+$' || true)
if [ -z "$st" ]; then echo "run-in-vm: VM exited (qemu rc=$qrc) without a status" >&2; exit 125; fi
exit "$st"

#BEGIN-INIT
#!/bin/busybox sh
# PID 1 inside the VM (busybox ash)
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
# what udev would add: `nft -f /dev/stdin` and bash's <(...) need them
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
# A file -f put under /tmp or /run (a checkout under /tmp: its lbd binary
# at the host's path) must stay visible; the initramfs is RAM already, so
# only an empty one gets its own tmpfs.
for d in /tmp /run; do
  [ -n "$(ls -A "$d" 2>/dev/null)" ] || mount -t tmpfs "${d#/}" "$d"
done
mount -t tmpfs shm /dev/shm
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
stty -onlcr -echo 2>/dev/null </dev/console
hostname vm
ip link set lo up
fail=0
for m in $(cat /.vm/modules); do
  modprobe "$m" || { echo "vm-init: modprobe $m failed" >&2; fail=1; }
done
if [ -s /.vm/net ]; then
  modprobe virtio_pci && modprobe virtio_net &&
    ip link set eth0 up && ip addr add "$(cat /.vm/net)" dev eth0 ||
    { echo "vm-init: no NIC for the -n forwards" >&2; fail=1; }
fi
if [ $fail = 0 ]; then
  /bin/sh /.vm/cmd </dev/null
  rc=$?
else
  rc=125
fi
# make sure the console UART has drained before power-off: stty's
# tcsetattr(TCSADRAIN) blocks until the output queue is empty
stty -onlcr </dev/console 2>/dev/null
echo "$rc" > /dev/ttyS1
sync
echo 0 > /proc/sys/kernel/printk     # no "reboot: Power down" line
poweroff -f
#END-INIT
